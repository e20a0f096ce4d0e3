"""SCAFFOLD control variates: the server's update across ranks, the local correction, the client's
``c_i`` update, the reply checks and bytes, checkpoint and resume, and the run-config key."""

import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from flq import client_app, wire
from flq.codec.flower_records import adapter_to_array_record, array_record_nbytes, array_record_to_adapter
from flq.config import ConfigError, RunConfig
from flq.run_recorder import RunRecorder, load_control_state, save_checkpoint
from flq.scheduler.base import FixedRankScheduler, SchedulerDefaults
from flq.strategy.accounting import ResumePoint, RoundResult
from flq.strategy.fedavg import FLQFedAvg
from flq.strategy.recording import RoundSnapshot
from flq.strategy.scaffold import (
    ScaffoldControl,
    client_control_at_rank,
    client_control_update,
    merge_client_control,
)
from flq.strategy.spec import StrategySpec
from flq.task.specs import backbone_spec, lora_spec
from flq.task.train import make_batches, train_steps
from tests.test_strategy import GLOBAL, R_MAX, NodeList, client_delta, make_strategy, reply
from tests.test_strategy_loop import ClientGrid, Snapshots, initial_adapter
from tests.test_train import fresh_classifier, toy_classification

A, B, HEAD = "m.q.lora_A.weight", "m.q.lora_B.weight", "m.score.weight"


@pytest.fixture(autouse=True)
def server_identity():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


def template(rank=4):
    return {A: np.zeros((rank, 2), np.float32), B: np.zeros((3, rank), np.float32), HEAD: np.zeros(2, np.float32)}


def filled(rank, value):
    return {k: np.full_like(v, value) for k, v in template(rank).items()}


# -- (1) the server's update rule, by hand ----------------------------------------------------
def test_the_server_adds_the_accepted_deltas_zero_padded_over_the_federations_size():
    control = ScaffoldControl(rank_max=4)
    deltas = control.start_round(template())
    deltas.add(filled(2, 1.0))  # a rank-2 client
    deltas.add(filled(4, 2.0))  # a rank-4 client
    control.apply(deltas, num_nodes=5)
    # c += (|S| / N) * mean_S delta = (2 / 5) * (delta_1 + delta_2) / 2, delta_1 zero above rank 2.
    c = control.for_rank(template(), 4)
    np.testing.assert_allclose(c[A], [[0.6, 0.6], [0.6, 0.6], [0.4, 0.4], [0.4, 0.4]])
    np.testing.assert_allclose(c[B], [[0.6, 0.6, 0.4, 0.4]] * 3)
    np.testing.assert_allclose(c[HEAD], [0.6, 0.6])
    assert c[A].dtype == np.float32 and control.state[f"c/{A}"].dtype == np.float64
    # A client at rank 2 is sent the first two components only.
    sent = control.for_rank(template(), 2)
    assert sent[A].shape == (2, 2) and sent[B].shape == (3, 2)
    np.testing.assert_allclose(sent[A], 0.6)
    # A round of rank-1 clients only: components above rank 1 keep their control as it was.
    deltas = control.start_round(template())
    deltas.add(filled(1, -1.0))
    control.apply(deltas, num_nodes=5)
    c = control.for_rank(template(), 4)
    np.testing.assert_allclose(c[A][:, 0], [0.4, 0.6, 0.4, 0.4])
    np.testing.assert_allclose(c[B][0], [0.4, 0.6, 0.4, 0.4])
    np.testing.assert_allclose(c[HEAD], 0.4)


def test_no_accepted_client_leaves_c_unchanged_and_n_is_never_below_the_accepted_count():
    control = ScaffoldControl(rank_max=4)
    control.apply(control.start_round(template()), num_nodes=5)
    assert not any(v.any() for v in control.for_rank(template(), 4).values())
    deltas = control.start_round(template())
    deltas.add(filled(4, 1.0))
    deltas.add(filled(4, 3.0))
    control.apply(deltas, num_nodes=1)  # a roster that knows fewer nodes than replied: N = |S|
    np.testing.assert_allclose(control.for_rank(template(), 4)[A], 2.0)


# -- (3) the client's side, by hand --------------------------------------------------------------
def test_the_clients_control_update_is_option_two_by_hand():
    c_i, c = filled(2, 0.5), filled(2, 0.25)
    sent, trained = filled(2, 1.0), filled(2, 0.9)
    new = client_control_update(c_i, c, sent, trained, steps=4, learning_rate=0.05)
    # c_i - c + (x - y) / (K lr) = 0.5 - 0.25 + 0.1 / 0.2
    for key in new:
        np.testing.assert_allclose(new[key], 0.75, rtol=1e-6)
        assert new[key].dtype == np.float32
    unchanged = client_control_update(c_i, c, sent, trained, steps=0, learning_rate=0.05)
    assert all(np.array_equal(unchanged[k], c_i[k]) for k in c_i)


def test_a_client_keeps_the_components_above_its_current_rank():
    stored = {k: np.arange(v.size, dtype=np.float32).reshape(v.shape) + 1 for k, v in template(4).items()}
    c_at_2 = client_control_at_rank(stored, filled(2, 0.0), 2)
    np.testing.assert_array_equal(c_at_2[A], stored[A][:2])
    np.testing.assert_array_equal(c_at_2[B], stored[B][:, :2])
    kept = merge_client_control(stored, filled(2, -1.0))  # trained at rank 2 this round
    assert kept[A].shape == (4, 2) and kept[B].shape == (3, 4)
    np.testing.assert_array_equal(kept[A][:2], -1.0)
    np.testing.assert_array_equal(kept[A][2:], stored[A][2:])
    np.testing.assert_array_equal(kept[B][:, 2:], stored[B][:, 2:])
    np.testing.assert_array_equal(kept[HEAD], -1.0)
    # Up to a higher rank: new components start at zero (SCAFFOLD's c_i = 0); first round: all zero.
    c_at_8 = client_control_at_rank(kept, filled(8, 0.0), 8)
    assert c_at_8[A].shape == (8, 2) and not c_at_8[A][4:].any()
    assert all(not v.any() for v in client_control_at_rank({}, filled(4, 1.0), 4).values())
    assert adapter_rank_of(merge_client_control({}, filled(2, 1.0))) == 2


def adapter_rank_of(state):
    return state[A].shape[0]


def train_message(records):
    return Message(RecordDict(records), dst_node_id=7, message_type=MessageType.TRAIN)


def test_the_client_app_keeps_c_i_in_its_context_across_rank_changes():
    context = Context(1, 7, {}, RecordDict(), {})
    c4 = filled(4, 0.25)
    msg = train_message({wire.CONTROL: adapter_to_array_record(c4, "fp32")})
    c, c_i = client_app.read_control(msg, context, 4)
    assert all(not v.any() for v in c_i.values())  # no c_i yet: zero
    sent, trained = filled(4, 1.0), filled(4, 0.9)
    record = client_app.update_control(context, c, c_i, sent, trained, steps=2, learning_rate=0.1)
    delta = array_record_to_adapter(record)
    np.testing.assert_allclose(delta[A], 0.25, rtol=1e-6)  # c_i+ - 0 = -c + (x - y) / (K lr) = -0.25 + 0.5
    # Next round at rank 2: c_i is the kept one, truncated; what is kept above rank 2 survives.
    c2 = filled(2, 0.0)
    msg = train_message({wire.CONTROL: adapter_to_array_record(c2, "fp32")})
    _, c_i = client_app.read_control(msg, context, 2)
    assert c_i[A].shape == (2, 2)
    np.testing.assert_allclose(c_i[A], 0.25, rtol=1e-6)
    record = client_app.update_control(context, c2, c_i, filled(2, 1.0), filled(2, 0.8), steps=2, learning_rate=0.1)
    np.testing.assert_allclose(array_record_to_adapter(record)[A], 1.0, rtol=1e-5)  # (x - y) / (K lr)
    kept = array_record_to_adapter(context.state.array_records[client_app.CONTROL_KEY])
    assert kept[A].shape == (4, 2) and kept[B].shape == (3, 4)
    np.testing.assert_allclose(kept[A][:2], 1.25, rtol=1e-6)
    np.testing.assert_allclose(kept[A][2:], 0.25, rtol=1e-6)
    assert client_app.read_control(train_message({}), context, 2) is None  # the server sent no control: off


# -- (2) the correction in local training ---------------------------------------------------------
def random_correction(lm, seed=0, scale=0.1):
    rng = np.random.default_rng(seed)
    return {k: (scale * rng.normal(size=v.shape)).astype(np.float32) for k, v in lm.adapter_state().items()}


def by_parameter_name(lm, correction):
    names = lm.parameter_names()
    return {names[k]: torch.from_numpy(v) for k, v in correction.items()}


def trained(tiny_llama_dir, steps, correction=None, lr=1e-2):
    """(x, y): a fresh classifier's adapter before and after ``steps`` steps, with ``correction``
    (``c - c_i`` by adapter key; None: off), the same batches every time."""
    lm = fresh_classifier(tiny_llama_dir)
    x = lm.adapter_state()
    batches = make_batches("sequence-classification", toy_classification(), lm.tokenizer, 8, 16, 0)
    by_name = None if correction is None else by_parameter_name(lm, correction)
    assert train_steps(lm.model, batches, steps, lr, control_correction=by_name).steps == steps
    return x, lm.adapter_state()


def test_adapter_keys_map_to_the_trainable_parameters_by_name(tiny_llama_dir):
    lm = fresh_classifier(tiny_llama_dir)
    names = lm.parameter_names()
    params = dict(lm.model.named_parameters())
    assert set(names) == set(lm.adapter_state())
    assert {names[k] for k in names} == {n for n, p in params.items() if p.requires_grad}
    some_a = next(k for k in names if k.endswith(".lora_A.weight"))
    assert names[some_a] == some_a.replace(".lora_A.weight", ".lora_A.rank4.weight")
    head = next(k for k in names if "lora_" not in k)
    assert names[head].endswith(".modules_to_save.rank4.weight")
    for key, value in lm.adapter_state().items():
        np.testing.assert_array_equal(params[names[key]].detach().numpy(), value)
    lm.use_rank(2)  # another adapter, other parameters
    assert all(".rank2." in n for n in lm.parameter_names().values())


def test_a_zero_correction_is_bit_exactly_no_correction(tiny_llama_dir):
    lm = fresh_classifier(tiny_llama_dir)
    zero = {k: np.zeros_like(v) for k, v in lm.adapter_state().items()}
    _, plain = trained(tiny_llama_dir, 3)
    _, corrected = trained(tiny_llama_dir, 3, zero)
    for key in plain:
        np.testing.assert_array_equal(corrected[key], plain[key])


def test_each_step_moves_the_parameters_by_minus_lr_times_the_correction(tiny_llama_dir):
    lr = 1e-2
    d = random_correction(fresh_classifier(tiny_llama_dir))
    x, plain = trained(tiny_llama_dir, 1, lr=lr)
    _, corrected = trained(tiny_llama_dir, 1, d, lr=lr)
    for key in plain:  # one step: the same AdamW step from the same x, then - lr * (c - c_i)
        np.testing.assert_allclose(corrected[key], plain[key] - lr * d[key], rtol=1e-5, atol=1e-7)
    # Over several steps the trajectories part: the correction changes where gradients are taken.
    _, plain3 = trained(tiny_llama_dir, 3, lr=lr)
    _, corrected3 = trained(tiny_llama_dir, 3, d, lr=lr)
    assert any(not np.allclose(corrected3[k], plain3[k] - 3 * lr * d[k], atol=1e-6) for k in plain3)


def test_a_mismatched_correction_is_refused(tiny_llama_dir):
    lm = fresh_classifier(tiny_llama_dir)
    by_name = by_parameter_name(lm, random_correction(lm))
    batches = make_batches("sequence-classification", toy_classification(), lm.tokenizer, 8, 16, 0)
    missing = dict(list(by_name.items())[1:])
    with pytest.raises(ValueError, match="missing"):
        train_steps(lm.model, batches, 1, 1e-2, control_correction=missing)
    name = next(iter(by_name))
    with pytest.raises(ValueError, match="shape"):
        train_steps(lm.model, batches, 1, 1e-2, control_correction={**by_name, name: torch.zeros(1)})


# -- (3) the client's c_i update on a tiny model ------------------------------------------------------
def test_c_i_becomes_the_mean_adamw_direction_whatever_the_correction(tiny_llama_dir):
    """c_i+ = c_i - c + (x - y) / (K lr): the correction's own K lr (c - c_i) cancels, so what is
    left is the mean of the optimizer's K steps over lr, as recorded around each step."""
    lr, steps = 1e-2, 3
    lm = fresh_classifier(tiny_llama_dir)
    c = random_correction(lm, seed=1)
    c_i = random_correction(lm, seed=2)
    names = lm.parameter_names()
    key_of = {id(p): k for k, p in ((k, dict(lm.model.named_parameters())[n]) for k, n in names.items())}
    x = lm.adapter_state()
    before, directions = {}, {k: np.zeros_like(v, dtype=np.float64) for k, v in x.items()}

    def pre(optimizer, args, kwargs):
        for group in optimizer.param_groups:
            for p in group["params"]:
                before[id(p)] = p.detach().clone()

    def post(optimizer, args, kwargs):
        for group in optimizer.param_groups:
            for p in group["params"]:
                directions[key_of[id(p)]] += ((before[id(p)] - p.detach()) / lr).numpy()

    hooks = [register_optimizer_step_pre_hook(pre), register_optimizer_step_post_hook(post)]
    try:
        batches = make_batches("sequence-classification", toy_classification(), lm.tokenizer, 8, 16, 0)
        correction = {k: c[k] - c_i[k] for k in c}
        train_steps(lm.model, batches, steps, lr, control_correction=by_parameter_name(lm, correction))
    finally:
        for h in hooks:
            h.remove()
    new = client_control_update(c_i, c, x, lm.adapter_state(), steps, lr)
    for key in new:
        np.testing.assert_allclose(new[key], directions[key] / steps, atol=2e-4)
    assert any(np.abs(new[k]).max() > 0.1 for k in new)  # AdamW's steps are of order lr: directions ~ 1


def test_with_one_step_c_i_plus_does_not_depend_on_the_correction(tiny_llama_dir):
    lr = 1e-2
    lm = fresh_classifier(tiny_llama_dir)
    c, c_i = random_correction(lm, seed=1), random_correction(lm, seed=2)
    zero = {k: np.zeros_like(v) for k, v in c.items()}
    x, plain = trained(tiny_llama_dir, 1, lr=lr)
    _, corrected = trained(tiny_llama_dir, 1, {k: c[k] - c_i[k] for k in c}, lr=lr)
    without = client_control_update(zero, zero, x, plain, 1, lr)
    with_correction = client_control_update(c_i, c, x, corrected, 1, lr)
    for key in without:
        np.testing.assert_allclose(with_correction[key], without[key], atol=2e-4)


def test_the_client_app_trains_with_scaffold_and_replies_with_its_control_delta(
    tiny_llama_dir, keyword_csv, monkeypatch
):
    monkeypatch.setattr(client_app, "in_simulation", lambda: True)  # keep this process's torch threads
    cfg = RunConfig(
        model=str(tiny_llama_dir), data=str(keyword_csv), max_seq_length=16, server_test_size=60, lora_rank=4,
        batch_size=4, learning_rate=0.01, scaffold=True,
    )  # fmt: skip
    context = Context(1, 7, {"partition-id": 0, "num-partitions": 3}, RecordDict(), cfg.to_dict())
    model = client_app.get_lora_model(backbone_spec(cfg, 32), lora_spec(cfg))
    model.use_rank(4)
    x = model.adapter_state()
    c = {k: (0.01 * np.random.default_rng(3).normal(size=v.shape)).astype(np.float32) for k, v in x.items()}
    ask = ConfigRecord({wire.SERVER_ROUND: 1, wire.RANK: 4, wire.BITS: 32, wire.LOCAL_STEPS: 2, wire.CODEC_UP: "fp32"})
    content = {
        wire.ARRAYS: adapter_to_array_record(x, "fp32"),
        wire.CONFIG: ask,
        wire.CONTROL: adapter_to_array_record(c, "fp32"),
    }
    answer = client_app.train(train_message(content), context)
    steps = int(answer.content[wire.METRICS][wire.STEPS])
    assert steps == 2
    delta = array_record_to_adapter(answer.content[wire.ARRAYS])
    control_delta = array_record_to_adapter(answer.content[wire.CONTROL_DELTA])
    # First round: c_i = 0, so delta_c_i = c_i+ = -c + (x - y) / (K lr), with y = x + delta.
    for key in x:
        expected = -c[key] + (-delta[key]) / (steps * cfg.learning_rate)
        np.testing.assert_allclose(control_delta[key], expected, rtol=1e-4, atol=1e-4)
    kept = array_record_to_adapter(context.state.array_records[client_app.CONTROL_KEY])
    assert all(np.array_equal(kept[k], control_delta[k]) for k in kept)


# -- the strategy: what travels, what is accepted, what c becomes ----------------------------------------
def control_reply(msg, control_delta, raw=False, **kwargs):
    """A reply with an update and ``control_delta`` (``raw``: plain numpy Arrays, whatever they hold)."""
    answer = reply(msg, client_delta(msg), **kwargs)
    if control_delta is not None:
        answer.content[wire.CONTROL_DELTA] = (
            ArrayRecord({k: Array(v) for k, v in control_delta.items()})
            if raw
            else adapter_to_array_record(control_delta, "fp32")
        )
    return answer


def sent_control(msg):
    return array_record_to_adapter(msg.content[wire.CONTROL])


def test_the_strategy_sends_c_applies_accepted_deltas_and_counts_their_bytes():
    strategy = make_strategy(scaffold=True, deadline_s=2.0, policy="drop")
    nodes = [11, 12, 13, 14, 15, 16]  # ranks 2, 4, 8, 2, 4, 8
    plan = strategy.configure_train(1, GLOBAL, ConfigRecord(), NodeList(nodes))
    messages = {m.metadata.dst_node_id: m for m in plan}
    for node, m in messages.items():
        rank = m.content[wire.CONFIG][wire.RANK]
        c = sent_control(m)
        assert c[A].shape == (rank, 6) and c[B].shape == (5, rank) and not any(v.any() for v in c.values())
        both = array_record_nbytes(m.content[wire.ARRAYS]) + array_record_nbytes(m.content[wire.CONTROL])
        assert plan.plans[node].bytes_down == both
    ones = lambda m, v: {k: np.full_like(a, v) for k, a in sent_control(m).items()}  # noqa: E731
    nan = ones(messages[12], 1.0)
    nan[A][0, 0] = np.nan
    wrong_rank = {k: np.ones_like(v) for k, v in GLOBAL.items()}  # rank 8 from a rank-2 client
    replies = [
        control_reply(messages[11], ones(messages[11], 1.0)),  # rank 2: accepted
        control_reply(messages[12], nan, raw=True),  # rejected: NaN in its control delta
        control_reply(messages[13], ones(messages[13], 2.0)),  # rank 8: accepted
        control_reply(messages[14], wrong_rank),  # rejected: its control delta is not at its rank
        control_reply(messages[15], ones(messages[15], 100.0), compute_s=5.0),  # late: dropped
        Message(Error(code=1, reason="RuntimeError: boom"), reply_to=messages[16]),  # failed
    ]
    result = strategy.aggregate_train(1, replies, plan)
    by_node = {r.node_id: r for r in result.clients}
    assert [by_node[n].status for n in nodes] == ["ok", "rejected", "ok", "rejected", "late", "failed"]
    assert "SCAFFOLD control delta" in by_node[12].reason and "non-finite" in by_node[12].reason
    assert "SCAFFOLD control delta" in by_node[14].reason and "rank" in by_node[14].reason
    for node in (11, 13):
        answer = replies[nodes.index(node)]
        both = array_record_nbytes(answer.content[wire.ARRAYS]) + array_record_nbytes(
            answer.content[wire.CONTROL_DELTA]
        )
        assert by_node[node].bytes_up == both
    # c += (1 / N) * (delta_11 + delta_13), N = 6 nodes; delta_11 is zero above rank 2.
    c = strategy.control.for_rank(GLOBAL, R_MAX)
    np.testing.assert_allclose(c[A][:, 0], [0.5, 0.5] + [2 / 6] * 6, rtol=1e-6)
    np.testing.assert_allclose(c[B][0], [0.5, 0.5] + [2 / 6] * 6, rtol=1e-6)
    np.testing.assert_allclose(c[HEAD], 0.5, rtol=1e-6)
    # Next round a node is sent the new c at its rank.
    plan = strategy.configure_train(2, result.global_state, ConfigRecord(), NodeList(nodes))
    m12 = next(m for m in plan if m.metadata.dst_node_id == 12)
    np.testing.assert_allclose(sent_control(m12)[A][:, 0], [0.5, 0.5, 2 / 6, 2 / 6], rtol=1e-6)


def test_a_reply_without_its_control_delta_is_rejected_and_scaffold_off_sends_none():
    strategy = make_strategy(scaffold=True)
    plan = strategy.configure_train(1, GLOBAL, ConfigRecord(), NodeList([11]))
    (message,) = list(plan)
    result = strategy.aggregate_train(1, [control_reply(message, None)], plan)
    assert result.clients[0].status == "rejected" and "no SCAFFOLD control delta" in result.clients[0].reason
    assert result.num_accepted == 0
    off = make_strategy()
    (message,) = list(off.configure_train(1, GLOBAL, ConfigRecord(), NodeList([11])))
    assert wire.CONTROL not in message.content.array_records and off.control is None


# -- (4) checkpoint and resume -------------------------------------------------------------------
class ScaffoldGrid(ClientGrid):
    """The loop test's clients, also replying with a control delta that depends on the c they got."""

    def answer(self, m):
        answer = super().answer(m)
        if m.metadata.message_type == MessageType.TRAIN:
            c = array_record_to_adapter(m.content[wire.CONTROL])
            rng = np.random.default_rng(7 * int(m.content[wire.CONFIG][wire.SERVER_ROUND]) + m.metadata.dst_node_id)
            delta = {k: (0.1 * rng.normal(size=v.shape) - 0.5 * v).astype(np.float32) for k, v in c.items()}
            answer.content[wire.CONTROL_DELTA] = adapter_to_array_record(delta, "fp32")
        return answer


def run_scaffold(num_rounds=3, resume=None, initial=None):
    strategy = FLQFedAvg(
        StrategySpec(rank_max=4, clients_per_round=2, seed=7, scaffold=True),
        FixedRankScheduler(SchedulerDefaults(rank=4, rank_max=4)),
    )
    recorder = Snapshots()
    strategy.start(
        ScaffoldGrid(),
        initial if initial is not None else initial_adapter(),
        num_rounds=num_rounds,
        timeout=5.0,
        recorder=recorder,
        resume=resume,
    )
    return recorder


def test_a_resumed_run_continues_the_control_variate_bit_exactly(tmp_path):
    whole = run_scaffold()
    after_two = whole.rounds[1]
    assert after_two.control_state and all(r.result.num_accepted == 2 for r in whole.rounds)
    # Through the checkpoint files, as server_app resumes.
    recorder = RunRecorder(tmp_path, "accuracy", 3, {})
    recorder.on_round(after_two)
    restored = load_control_state(tmp_path)
    assert set(restored) == set(after_two.control_state)
    for key, value in after_two.control_state.items():
        assert restored[key].dtype == np.float64
        np.testing.assert_array_equal(restored[key], value)
    resume = ResumePoint(3, after_two.clock_s, after_two.rng_state, after_two.optimizer_state, restored)
    resumed = run_scaffold(resume=resume, initial=after_two.global_state)
    for key, value in whole.rounds[2].control_state.items():
        np.testing.assert_array_equal(resumed.rounds[0].control_state[key], value)
    forgot = run_scaffold(resume=ResumePoint(3, after_two.clock_s, after_two.rng_state), initial=after_two.global_state)
    final = whole.rounds[2].control_state
    assert any(not np.array_equal(forgot.rounds[0].control_state[k], final[k]) for k in final)


def test_a_checkpoint_without_scaffold_has_an_empty_control_file(tmp_path):
    save_checkpoint(tmp_path, {"w": np.ones(2, np.float32)}, {"server_round": 1})
    assert (tmp_path / "checkpoint" / "scaffold.npz").is_file() and load_control_state(tmp_path) == {}
    assert load_control_state(tmp_path / "nowhere") == {}
    snapshot = RoundSnapshot(
        server_round=1, clock="virtual", clock_s=1.0, deadline_s=None, policy="wait", result=RoundResult(1),
        global_state={"w": np.ones(2, np.float32)}, metrics=None, client_eval=[], scheduler_name="fixed",
        scheduler_state={}, scheduler_ms=0.0, rng_state=[3, [1], None], optimizer_state={},
    )  # fmt: skip
    assert snapshot.control_state == {}


# -- (5) the run-config key ---------------------------------------------------------------------------
def test_the_run_config_checks_the_scaffold_key():
    assert RunConfig().scaffold is False
    shipped = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert shipped["tool"]["flwr"]["app"]["config"]["scaffold"] is False
    assert RunConfig.from_flower({"scaffold": True}).scaffold is True
    assert RunConfig.from_flower({"scaffold": True}).to_dict()["scaffold"] is True
    with pytest.raises(ConfigError, match="scaffold='yes': expected true or false"):
        RunConfig.from_flower({"scaffold": "yes"})
    with pytest.raises(ConfigError, match="scaffold=1: expected true or false"):
        RunConfig.from_flower({"scaffold": 1})
    spec = StrategySpec.from_run_config(RunConfig(scaffold=True), None)
    assert spec.scaffold and "+scaffold" in spec.describe()
    assert not StrategySpec.from_run_config(RunConfig(), None).scaffold
