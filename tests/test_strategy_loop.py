"""``FLQFedAvg.start``: the round loop, what the recorder receives, and resuming.

The grid stands in for Flower's in-memory one (it numbers pushed messages the same way) and
answers as ClientApps do: a profile on query, a deterministic update per node and round on
train, a score on evaluate.
"""

from uuid import uuid4

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from flq import wire
from flq.codec.flower_records import adapter_to_array_record, array_record_to_adapter
from flq.scheduler.base import FixedRankScheduler, SchedulerDefaults
from flq.strategy.accounting import ResumePoint
from flq.strategy.fedavg import FLQFedAvg
from flq.strategy.recording import RoundRecorder
from flq.strategy.server_optimizer import ServerOptimizerSpec
from flq.strategy.spec import StrategySpec

R_MAX = 4
NODES = (21, 22, 23, 24, 25, 26)


@pytest.fixture(autouse=True)
def server_identity():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


class ClientGrid:
    """Six nodes that answer every message at once, as their ClientApps would."""

    def __init__(self):
        self.outbox: dict[str, Message] = {}
        self.trained: list[tuple[int, int]] = []  # (round, node) of every train message

    def get_node_ids(self):
        return list(NODES)

    def push_messages(self, messages):
        ids = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = str(uuid4())  # as Flower's InMemoryGrid numbers them
            self.outbox[m.metadata.message_id] = self.answer(m)
            ids.append(m.metadata.message_id)
        return ids

    def pull_messages(self, ids):
        return [self.outbox.pop(i) for i in list(ids) if i in self.outbox]

    def send_and_receive(self, messages, timeout):
        return self.pull_messages(self.push_messages(messages))

    def answer(self, m: Message) -> Message:
        node, pid = m.metadata.dst_node_id, NODES.index(m.metadata.dst_node_id)
        info = ConfigRecord({wire.TIER: "reference", wire.STATUS: "ok"})
        if m.metadata.message_type == MessageType.QUERY:
            metrics = MetricRecord({wire.PARTITION_ID: pid, wire.NUM_PARTITIONS: 6, wire.SIMULATED: 1})
            return Message(RecordDict({wire.METRICS: metrics, wire.INFO: info}), reply_to=m)
        if m.metadata.message_type == MessageType.EVALUATE:
            metrics = MetricRecord({wire.SCORE: 0.5 + pid / 100, wire.LOSS: 1.0, wire.NUM_EXAMPLES: 10})
            return Message(RecordDict({wire.METRICS: metrics, wire.INFO: info}), reply_to=m)
        server_round = int(m.content[wire.CONFIG][wire.SERVER_ROUND])
        self.trained.append((server_round, node))
        received = array_record_to_adapter(m.content[wire.ARRAYS])
        rng = np.random.default_rng(1000 * server_round + node)  # the same update whenever asked again
        delta = {k: (0.1 * rng.normal(size=v.shape)).astype(np.float32) for k, v in received.items()}
        metrics = MetricRecord(
            {
                wire.NUM_EXAMPLES: 16,
                wire.STEPS: 2,
                wire.COMPUTE_S: 1.0 + pid,
                wire.LOSS_BEFORE: 1.0,
                wire.LOSS_AFTER: 0.8,
            }
        )
        content = RecordDict(
            {wire.ARRAYS: adapter_to_array_record(delta, "fp32"), wire.METRICS: metrics, wire.INFO: info}
        )
        return Message(content, reply_to=m)


class Snapshots(RoundRecorder):
    def __init__(self):
        self.started, self.initial, self.rounds = None, None, []

    def on_start(self, start):
        self.started = start

    def on_initial(self, metrics):
        self.initial = metrics

    def on_round(self, snapshot):
        self.rounds.append(snapshot)


def initial_adapter():
    rng = np.random.default_rng(0)
    return {
        "m.q.lora_A.weight": rng.normal(size=(R_MAX, 6)).astype(np.float32),
        "m.q.lora_B.weight": np.zeros((5, R_MAX), np.float32),
        "m.score.weight": rng.normal(size=(3, 6)).astype(np.float32),
    }


def run(num_rounds=3, resume=None, initial=None, evaluated=None, **spec):
    strategy = FLQFedAvg(
        StrategySpec(rank_max=R_MAX, clients_per_round=2, seed=7, **spec),
        FixedRankScheduler(SchedulerDefaults(rank=R_MAX, rank_max=R_MAX)),
    )
    grid, recorder = ClientGrid(), Snapshots()

    def evaluate_fn(server_round, state):
        if evaluated is not None:
            evaluated.append((server_round, state))
        return {"score": float(server_round), "loss": 1.0 / (server_round + 1)}

    result = strategy.start(
        grid,
        initial if initial is not None else initial_adapter(),
        num_rounds=num_rounds,
        timeout=5.0,
        evaluate_fn=evaluate_fn,
        recorder=recorder,
        resume=resume,
    )
    return result, recorder, grid


def test_every_round_reaches_the_recorder_as_a_snapshot_of_plain_data():
    evaluated = []
    result, recorder, grid = run(evaluated=evaluated)
    assert recorder.started.clock == "virtual" and len(recorder.started.nodes) == 6
    assert recorder.initial == {"score": 0.0, "loss": 1.0}
    assert [s.server_round for s in recorder.rounds] == [1, 2, 3]
    assert all(len(s.result.clients) == 2 and s.result.num_accepted == 2 for s in recorder.rounds)
    # The clock adds up the rounds' times; each round lasts as long as its slowest client.
    clock = np.cumsum([s.result.round_s for s in recorder.rounds])
    np.testing.assert_allclose([s.clock_s for s in recorder.rounds], clock)
    assert all(s.result.round_s == max(c.round_s for c in s.result.clients) for s in recorder.rounds)
    # Clients evaluate on the final round only (client-eval-every=0), every connected node.
    assert [len(s.client_eval) for s in recorder.rounds] == [0, 0, 6]
    # The evaluator gets each round's global adapter itself, the one the snapshot carries.
    assert [r for r, _ in evaluated] == [0, 1, 2, 3]
    for (_, state), snapshot in zip(evaluated[1:], recorder.rounds, strict=True):
        assert all(np.array_equal(state[k], snapshot.global_state[k]) for k in state)
    first, last = recorder.rounds[0].global_state, recorder.rounds[-1].global_state
    assert any(not np.array_equal(first[k], last[k]) for k in first)  # the global moved
    final = array_record_to_adapter(result.arrays)
    assert all(np.array_equal(final[k], last[k]) for k in last)
    assert sorted(result.evaluate_metrics_serverapp) == [0, 1, 2, 3]


def test_a_run_resumed_from_a_round_snapshot_continues_as_the_uninterrupted_run():
    _, whole, whole_grid = run(num_rounds=3)
    after_two = whole.rounds[1]
    resume = ResumePoint(3, after_two.clock_s, after_two.rng_state)
    _, resumed, resumed_grid = run(num_rounds=3, resume=resume, initial=after_two.global_state)
    assert [s.server_round for s in resumed.rounds] == [3]
    assert resumed_grid.trained == [t for t in whole_grid.trained if t[0] == 3]  # the same clients sampled
    assert resumed.rounds[0].clock_s == pytest.approx(whole.rounds[2].clock_s)
    for key, value in whole.rounds[2].global_state.items():
        np.testing.assert_array_equal(resumed.rounds[0].global_state[key], value)
    assert resumed.initial is None  # the initial evaluation belongs to the run's first part


def test_without_the_sampling_state_a_resumed_run_would_sample_other_clients():
    # The check above can fail: the generator's state is what makes round 3 sample the same nodes.
    _, whole, whole_grid = run(num_rounds=3)
    after_two = whole.rounds[1]
    _, fresh, fresh_grid = run(num_rounds=3, resume=ResumePoint(3, after_two.clock_s), initial=after_two.global_state)
    assert fresh_grid.trained != [t for t in whole_grid.trained if t[0] == 3]


def test_a_resumed_run_continues_the_server_optimizer_bit_exactly():
    adam = {"server_optimizer": ServerOptimizerSpec("fedadam", lr=0.05)}
    _, whole, _ = run(num_rounds=3, **adam)
    after_two = whole.rounds[1]
    assert after_two.optimizer_state  # the moments travel with the round, for the checkpoint
    resume = ResumePoint(3, after_two.clock_s, after_two.rng_state, after_two.optimizer_state)
    _, resumed, _ = run(num_rounds=3, resume=resume, initial=after_two.global_state, **adam)
    for key, value in whole.rounds[2].global_state.items():
        np.testing.assert_array_equal(resumed.rounds[0].global_state[key], value)
    no_moments = ResumePoint(3, after_two.clock_s, after_two.rng_state)
    _, forgot, _ = run(num_rounds=3, resume=no_moments, initial=after_two.global_state, **adam)
    final = whole.rounds[2].global_state
    assert any(not np.array_equal(forgot.rounds[0].global_state[k], final[k]) for k in final)
