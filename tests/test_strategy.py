"""FLQFedAvg with real Flower messages: per-client configs, truncation, reply validation.

Replies are built as a ClientApp builds them (``Message(content, reply_to=...)``); the grid is
a minimal one that lists nodes and answers the query round as ClientApps do.
"""

from dataclasses import replace

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from flq import wire
from flq.adapter import adapter_rank, subtract, truncate_to_rank
from flq.codec.flower_records import adapter_to_array_record, array_record_to_adapter
from flq.config import ConfigError, RunConfig
from flq.scheduler.base import SchedulerDefaults, TableScheduler
from flq.strategy.aggregation import aggregate, client_adapter_from_delta
from flq.strategy.fedavg import FLQFedAvg
from flq.strategy.spec import StrategySpec

R_MAX = 8


NODES = (11, 12, 13, 14, 15, 16)


class NodeList:
    """The part of a Grid that discovery and sampling use: node ids, and query replies."""

    def __init__(self, node_ids=NODES):
        self.node_ids = list(node_ids)

    def get_node_ids(self):
        return self.node_ids

    def send_and_receive(self, messages, timeout):
        """Each node answers the query round as the ClientApp does: partition 0-5, tier cpu."""
        replies = []
        for m in messages:
            pid = NODES.index(m.metadata.dst_node_id)
            metrics = MetricRecord(
                {wire.PARTITION_ID: pid, wire.NUM_PARTITIONS: 6, wire.NUM_TRAIN: 50, wire.SIMULATED: 1}
            )
            content = RecordDict({wire.METRICS: metrics, wire.INFO: ConfigRecord({wire.TIER: "cpu"})})
            replies.append(Message(content, reply_to=m))
        return replies


@pytest.fixture(autouse=True)
def server_identity():
    # A ServerApp process has these set by Flower; replies need them.
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


def global_adapter(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "m.q.lora_A.weight": rng.normal(size=(R_MAX, 6)).astype(np.float32),
        "m.q.lora_B.weight": rng.normal(size=(5, R_MAX)).astype(np.float32),
        "m.score.weight": rng.normal(size=(3, 6)).astype(np.float32),
    }


GLOBAL = global_adapter()


def make_strategy(scheduler=None, **spec):
    scheduler = scheduler or TableScheduler(
        SchedulerDefaults(rank=8, rank_max=R_MAX), ranks="cycle:2,4,8", bits="groups:4,8,16"
    )
    strategy = FLQFedAvg(StrategySpec(rank_max=R_MAX, seed=0, **spec), scheduler)
    strategy.discover_nodes(NodeList(), timeout=1.0)
    return strategy


def reply(msg, delta, codec="fp32", examples=40, compute_s=1.0, steps=5, loss_before=1.0):
    metrics = MetricRecord(
        {
            wire.NUM_EXAMPLES: examples,
            wire.STEPS: steps,
            wire.COMPUTE_S: compute_s,
            wire.LOSS_BEFORE: loss_before,
            wire.LOSS_AFTER: 0.5,
        }
    )
    if codec == "raw":  # a client not using FLQ's codec: plain numpy arrays, whatever they hold
        arrays = ArrayRecord({k: Array(v) for k, v in delta.items()})
    else:
        arrays = adapter_to_array_record(delta, codec)
    content = RecordDict({wire.ARRAYS: arrays, wire.METRICS: metrics, wire.INFO: ConfigRecord({wire.STATUS: "ok"})})
    return Message(content, reply_to=msg)


def client_delta(msg, scale=0.1, seed=1):
    received = array_record_to_adapter(msg.content[wire.ARRAYS])
    rng = np.random.default_rng(seed)
    return {k: (scale * rng.normal(size=v.shape)).astype(np.float32) for k, v in received.items()}


def test_each_node_gets_its_own_config_and_the_global_truncated_to_its_rank():
    strategy = make_strategy()
    plan = strategy.configure_train(1, GLOBAL, ConfigRecord({"shared": 1}), NodeList([11, 12, 13, 14, 15, 16]))
    messages = list(plan)
    assert len(messages) == 6
    configs = {m.metadata.dst_node_id: m.content[wire.CONFIG] for m in messages}
    assert [configs[n][wire.RANK] for n in (11, 12, 13, 14, 15, 16)] == [2, 4, 8, 2, 4, 8]
    assert [configs[n][wire.BITS] for n in (11, 12, 13, 14, 15, 16)] == [4, 4, 8, 8, 16, 16]
    assert len({id(c) for c in configs.values()}) == 6  # a copy per node, not one shared record
    for m in messages:
        sent = array_record_to_adapter(m.content[wire.ARRAYS])
        rank = m.content[wire.CONFIG][wire.RANK]
        assert adapter_rank(sent) == rank  # never more components than its rank
        for key, value in truncate_to_rank(GLOBAL, rank).items():
            np.testing.assert_array_equal(sent[key], value)


def test_bad_replies_are_rejected_with_reasons_and_the_round_goes_on():
    strategy = make_strategy()
    nodes = [11, 12, 13, 14, 15, 16]
    plan = strategy.configure_train(1, GLOBAL, ConfigRecord(), NodeList(nodes))
    messages = {m.metadata.dst_node_id: m for m in plan}
    good = [
        reply(messages[11], client_delta(messages[11])),
        reply(messages[13], client_delta(messages[13]), codec="int8"),
    ]
    too_high = {k: np.zeros_like(v) for k, v in GLOBAL.items()}  # rank 8 from a rank-4 client
    nan = client_delta(messages[14])
    nan["m.q.lora_A.weight"][0, 0] = np.nan
    missing = dict(client_delta(messages[15]))
    missing.pop("m.score.weight")
    failed = Message(
        Error(code=1, reason="Traceback (most recent call last):\n  ...\nRuntimeError: out of memory"),
        reply_to=messages[16],
    )
    before = {k: v.copy() for k, v in GLOBAL.items()}
    result = strategy.aggregate_train(
        1,
        good
        + [reply(messages[12], too_high), reply(messages[14], nan, codec="raw"), reply(messages[15], missing), failed],
        plan,
    )
    by_node = {c.node_id: c for c in result.clients}
    assert [by_node[n].status for n in nodes] == ["ok", "rejected", "ok", "rejected", "rejected", "failed"]
    assert "rank" in by_node[12].reason
    # Diagnostics: every decoded update has its norm and its cosine to the round's aggregate.
    assert by_node[11].update_norm > 0 and -1.0 <= by_node[11].cosine_to_aggregate <= 1.0
    assert by_node[16].update_norm is None and by_node[16].cosine_to_aggregate is None  # it sent nothing
    assert "non-finite" in by_node[14].reason.lower() or "nan" in by_node[14].reason.lower()
    assert "m.score.weight" in by_node[15].reason
    assert by_node[16].reason == "client error: RuntimeError: out of memory"
    assert result.num_accepted == 2
    assert by_node[13].bytes_up < by_node[11].bytes_up * 2  # int8 reply at rank 8 vs fp32 at rank 2
    # The global moved, by the accepted clients only, aggregated across their ranks.
    deltas = [array_record_to_adapter(g.content[wire.ARRAYS]) for g in good]
    expected = aggregate(
        "rank-wise", [client_adapter_from_delta(before, d) for d in deltas], [40.0, 40.0], before, R_MAX
    )
    for key in before:
        np.testing.assert_allclose(result.global_state[key], expected[key], rtol=1e-6)
    assert any(not np.array_equal(before[k], result.global_state[k]) for k in before)
    assert set(result.global_state) == set(before)


@pytest.mark.parametrize("mode, weights", [("examples", [40.0, 20.0]), ("examples-per-step", [10.0, 20.0])])
def test_clients_count_by_examples_or_by_examples_per_step_they_took(mode, weights):
    # Node 11 (40 examples) took 4 steps, node 13 (20 examples) 1 step, as a budget cuts a slow client short.
    strategy = make_strategy(aggregation_weight=mode)
    plan = strategy.configure_train(1, GLOBAL, ConfigRecord(), NodeList([11, 13]))
    messages = {m.metadata.dst_node_id: m for m in plan}
    deltas = [client_delta(messages[11], seed=1), client_delta(messages[13], seed=2)]
    before = {k: v.copy() for k, v in GLOBAL.items()}
    result = strategy.aggregate_train(
        1,
        [reply(messages[11], deltas[0], examples=40, steps=4), reply(messages[13], deltas[1], examples=20, steps=1)],
        plan,
    )
    expected = aggregate("rank-wise", [client_adapter_from_delta(before, d) for d in deltas], weights, before, R_MAX)
    for key in before:
        np.testing.assert_allclose(result.global_state[key], expected[key], rtol=1e-6)


@pytest.mark.parametrize("q, weights", [(0.0, [40.0, 20.0]), (1.0, [40.0 * 0.5, 20.0 * 2.0]), (2.0, [10.0, 80.0])])
def test_fairness_q_weighs_each_client_by_its_loss_before_training_to_the_power_q(q, weights):
    # Node 13's data is served worse by the global model (loss 2.0 against 0.5): with q > 0 it pulls harder.
    strategy = make_strategy(aggregation_weight="examples", fairness_q=q)
    plan = strategy.configure_train(1, GLOBAL, ConfigRecord(), NodeList([11, 13]))
    messages = {m.metadata.dst_node_id: m for m in plan}
    deltas = [client_delta(messages[11], seed=1), client_delta(messages[13], seed=2)]
    before = {k: v.copy() for k, v in GLOBAL.items()}
    replies = [
        reply(messages[11], deltas[0], examples=40, loss_before=0.5),
        reply(messages[13], deltas[1], examples=20, loss_before=2.0),
    ]
    result = strategy.aggregate_train(1, replies, plan)
    expected = aggregate("rank-wise", [client_adapter_from_delta(before, d) for d in deltas], weights, before, R_MAX)
    for key in before:
        np.testing.assert_allclose(result.global_state[key], expected[key], rtol=1e-6)


@pytest.mark.parametrize("q", [-0.5, 21.0, float("nan"), float("inf")])
def test_a_fairness_q_out_of_range_is_refused_by_the_run_config(q):
    with pytest.raises(ConfigError, match=r"fairness-q must be in \[0, 20\]"):
        RunConfig().replace(fairness_q=q)


class BatchCapScheduler(TableScheduler):
    """The table's ranks, and a smaller batch for node 12, as ``bandit`` gives a client late at one step."""

    def assign(self, server_round, clients, deadline_s):
        out = super().assign(server_round, clients, deadline_s)
        return {n: replace(a, batch_size=3) if n == 12 else a for n, a in out.items()}


def test_a_batch_size_from_the_scheduler_reaches_that_client_only():
    strategy = make_strategy(BatchCapScheduler(SchedulerDefaults(rank=8, rank_max=R_MAX), ranks="cycle:2,4,8"))
    configs = {
        m.metadata.dst_node_id: m.content[wire.CONFIG]
        for m in strategy.configure_train(1, GLOBAL, ConfigRecord(), NodeList([11, 12, 13]))
    }
    assert configs[12][wire.BATCH_SIZE] == 3
    assert wire.BATCH_SIZE not in configs[11] and wire.BATCH_SIZE not in configs[13]


@pytest.mark.parametrize("mode, weights", [("examples", [8.0, 3.0]), ("examples-per-step", [8.0, 8.0])])
def test_a_client_given_a_smaller_batch_counts_per_step_as_at_its_own(mode, weights):
    # Node 12 was given batch 3 (one step of 8 would be late) and trained one step of 3 examples.
    strategy = make_strategy(
        BatchCapScheduler(SchedulerDefaults(rank=8, rank_max=R_MAX), ranks="cycle:8"), aggregation_weight=mode
    )
    plan = strategy.configure_train(1, GLOBAL, ConfigRecord(), NodeList([11, 12]))
    messages = {m.metadata.dst_node_id: m for m in plan}
    deltas = [client_delta(messages[11], seed=1), client_delta(messages[12], seed=2)]
    before = {k: v.copy() for k, v in GLOBAL.items()}
    result = strategy.aggregate_train(
        1,
        [reply(messages[11], deltas[0], examples=8, steps=1), reply(messages[12], deltas[1], examples=3, steps=1)],
        plan,
    )
    assert {c.node_id: c.batch_size for c in result.clients} == {11: 0, 12: 3}  # in the records
    expected = aggregate("rank-wise", [client_adapter_from_delta(before, d) for d in deltas], weights, before, R_MAX)
    for key in before:
        np.testing.assert_allclose(result.global_state[key], expected[key], rtol=1e-6)


def test_an_unknown_aggregation_weight_is_refused_by_the_run_config():
    # The strategy trusts its spec: the run config is where a bad value is caught, once.
    with pytest.raises(ConfigError, match="aggregation-weight must be one of .* got 'steps'"):
        RunConfig().replace(aggregation_weight="steps")


def test_a_round_with_no_acceptable_reply_keeps_the_global():
    strategy = make_strategy()
    plan = strategy.configure_train(1, GLOBAL, ConfigRecord(), NodeList([11, 12]))
    messages = list(plan)
    before = {k: v.copy() for k, v in GLOBAL.items()}
    result = strategy.aggregate_train(1, [Message(Error(code=1, reason="gone"), reply_to=m) for m in messages], plan)
    assert result.global_state is None  # no update accepted: the loop keeps its global
    for key in before:
        np.testing.assert_array_equal(GLOBAL[key], before[key])  # and the round did not touch it
    assert [c.status for c in result.clients] == ["failed", "failed"]


def test_a_silent_node_is_recorded_as_failed():
    strategy = make_strategy()
    plan = strategy.configure_train(1, GLOBAL, ConfigRecord(), NodeList([11, 12]))
    messages = list(plan)
    result = strategy.aggregate_train(1, [reply(messages[0], client_delta(messages[0]))], plan)
    statuses = {c.node_id: (c.status, c.reason) for c in result.clients}
    assert statuses[messages[1].metadata.dst_node_id] == ("failed", "no reply before the timeout")


def test_on_the_real_clock_a_node_silent_at_the_deadline_is_late_and_the_round_ends_there():
    # In a deployment the Grid stops waiting at the deadline (its timeout is the deadline), so a
    # node that has not replied by then missed it: late, dropped, counted as such in summaries.
    strategy = make_strategy(deadline_s=5.0, policy="drop", clock="real")
    plan = strategy.configure_train(1, GLOBAL, ConfigRecord(), NodeList([11, 12]))
    messages = list(plan)
    fast, slow = (m.metadata.dst_node_id for m in messages)
    arrival_s = {fast: 2.5}  # what send_and_receive notes for each reply
    result = strategy.aggregate_train(
        1, [reply(messages[0], client_delta(messages[0]), compute_s=2.0)], plan, arrival_s
    )
    records = {c.node_id: c for c in result.clients}
    assert records[fast].status == "ok" and records[fast].round_s == 2.5 and records[fast].on_time
    late = records[slow]
    assert late.status == "late" and not late.on_time and late.reason == "no reply by the deadline (5.0s)"
    assert late.round_s == 0.0 and late.compute_s == 0.0 and late.steps == 0  # nothing was measured
    assert result.round_s == 5.0  # the server waited until the deadline


def test_on_the_real_clock_without_a_deadline_a_silent_node_has_failed():
    strategy = make_strategy(clock="real")
    plan = strategy.configure_train(1, GLOBAL, ConfigRecord(), NodeList([11, 12]))
    messages = list(plan)
    arrival_s = {messages[0].metadata.dst_node_id: 2.5}
    result = strategy.aggregate_train(
        1, [reply(messages[0], client_delta(messages[0]), compute_s=2.0)], plan, arrival_s
    )
    assert [c.status for c in result.clients] == ["ok", "failed"]
    assert result.round_s == 2.5


def test_the_torch_threads_a_client_reports_are_recorded():
    strategy = make_strategy()
    plan = strategy.configure_train(1, GLOBAL, ConfigRecord(), NodeList([11, 12]))
    messages = list(plan)
    with_threads = reply(messages[0], client_delta(messages[0]))
    with_threads.content[wire.METRICS][wire.TORCH_THREADS] = 3
    result = strategy.aggregate_train(1, [with_threads, reply(messages[1], client_delta(messages[1]))], plan)
    assert [c.threads for c in result.clients] == [3, 0]  # 0: not reported


def test_deadline_drop_discards_late_updates():
    strategy = make_strategy(deadline_s=5.0, policy="drop")
    plan = strategy.configure_train(1, GLOBAL, ConfigRecord(), NodeList([11, 12]))
    messages = list(plan)
    replies = [
        reply(messages[0], client_delta(messages[0]), compute_s=2.0),
        reply(messages[1], client_delta(messages[1]), compute_s=9.0),
    ]
    result = strategy.aggregate_train(1, replies, plan)
    records = {c.node_id: c for c in result.clients}
    late = records[messages[1].metadata.dst_node_id]
    assert late.status == "late" and not late.on_time and "deadline" in late.reason
    assert result.round_s == 5.0  # the server waited until the deadline
    assert records[messages[0].metadata.dst_node_id].status == "ok"


def test_update_is_applied_to_the_exact_global_not_the_quantized_broadcast():
    strategy = make_strategy(broadcast_codec="int4")
    plan = strategy.configure_train(1, GLOBAL, ConfigRecord(), NodeList([13]))  # rank 8
    messages = list(plan)
    before = {k: v.copy() for k, v in GLOBAL.items()}
    received = array_record_to_adapter(messages[0].content[wire.ARRAYS])
    assert any(not np.array_equal(received[k], before[k]) for k in before)  # int4 is lossy
    zero = subtract(received, received)
    result = strategy.aggregate_train(1, [reply(messages[0], zero)], plan)
    for key in before:  # a zero update leaves the exact global (float rounding aside), not the int4 copy
        np.testing.assert_allclose(result.global_state[key], before[key], rtol=1e-6, atol=1e-7)
        assert np.abs(result.global_state[key] - received[key]).max() > 1e-3


def test_a_compute_misfit_every_node_cannot_resolve_fails_at_discovery_not_mid_run(caplog):
    from flq.sim.clock import ClockModel

    scheduler = TableScheduler(SchedulerDefaults(rank=8, rank_max=R_MAX))
    short = ClockModel.for_transport({}, compute_misfit="list:1,2,3")  # 3 values for 6 partitions
    with pytest.raises(ValueError, match="compute-misfit: list: has 3 items for 6 partitions"):
        FLQFedAvg(StrategySpec(rank_max=R_MAX, seed=0), scheduler, short).discover_nodes(NodeList(), timeout=1.0)
    fits = ClockModel.for_transport({}, compute_misfit="list:1,1,1,2,2,2")
    FLQFedAvg(StrategySpec(rank_max=R_MAX, seed=0), scheduler, fits).discover_nodes(NodeList(), timeout=1.0)
    real = FLQFedAvg(StrategySpec(rank_max=R_MAX, seed=0, clock="real"), scheduler, short)
    real.discover_nodes(NodeList(), timeout=1.0)  # a deployment ignores it, and says so
    assert "compute-misfit list:1,2,3 is ignored" in caplog.text
