"""The strategy's traffic with the grid: waiting for nodes, building the messages, timed
exchanges, and reading replies.

Out: a node's assignment and adapter become its train message, with the ``ClientPlan`` its
reply is read against. In: a train reply becomes a ``TrainReply`` (status, what the client
measured, the decoded and validated update) that the round's accounting records.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from .. import wire
from ..adapter import AdapterState, add
from ..codec.array_codec import CodecError, DecodeLimits
from ..codec.flower_records import adapter_to_array_record, array_record_nbytes, array_record_to_adapter
from ..logs import log
from ..metrics.records import ClientEvalRecord
from ..scheduler.base import Assignment
from ..sim.clock import SERVER_REPLY_POLL_S
from ..status import ClientStatus
from .accounting import ClientPlan
from .roster import NodeProfile
from .spec import StrategySpec
from .validation import validate_update


@dataclass(frozen=True)
class TrainRound:
    """One round's plan: a message and a ``ClientPlan`` per sampled node (iterates the messages)."""

    global_state: AdapterState  # the global adapter the plans were cut from
    plans: dict[int, ClientPlan]
    messages: list[Message]
    assign_s: float  # the scheduler's decision time

    def __iter__(self) -> Iterator[Message]:
        return iter(self.messages)


def wait_for_nodes(grid: Grid, at_least: int) -> list[int]:
    """The connected nodes' ids, once there are ``at_least`` of them."""
    while len(ids := sorted(grid.get_node_ids())) < at_least:
        log.info("waiting for nodes: %d connected, %d needed", len(ids), at_least)
        time.sleep(1.0)
    return ids


def profile_queries(node_ids: Iterable[int]) -> list[Message]:
    """One query per node: who are you (partition, tier, data size, memory)?"""
    return [
        Message(
            RecordDict({wire.CONFIG: ConfigRecord({"ask": "profile"})}), dst_node_id=n, message_type=MessageType.QUERY
        )
        for n in node_ids
    ]


def query_profiles(
    grid: Grid, node_ids: Iterable[int], timeout: float
) -> tuple[dict[int, tuple[Mapping, Mapping]], dict[int, str]]:
    """Ask every node who it is, in one query round: the (metrics, info) of each node that
    answered, and why each node that raised cannot take part (logged)."""
    answers: dict[int, tuple[Mapping, Mapping]] = {}
    errors: dict[int, str] = {}
    for reply in grid.send_and_receive(profile_queries(node_ids), timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            errors[node] = last_line(reply.error.reason)
            log.warning("node %d cannot take part: %s", node, errors[node])
            continue
        answers[node] = reply_metrics(reply)
    return answers, errors


def train_message(
    node: int,
    server_round: int,
    a: Assignment,
    sent: AdapterState,
    control: AdapterState | None,
    config: ConfigRecord,
    spec: StrategySpec,
    clock: str,
    handshake_rtts: int,
) -> tuple[Message, ClientPlan]:
    """One node's train message (``sent``: the global adapter at its rank; ``control``: SCAFFOLD's
    c at its rank, or None) and the plan its reply is read against."""
    record = adapter_to_array_record(sent, spec.broadcast_codec)
    cfg = ConfigRecord(dict(config))  # a copy per node: Flower shares one otherwise
    cfg[wire.SERVER_ROUND] = server_round
    cfg[wire.RANK] = a.rank
    cfg[wire.BITS] = a.bits
    cfg[wire.LOCAL_STEPS] = a.local_steps
    cfg[wire.CODEC_UP] = a.codec or spec.update_codec
    cfg[wire.CLOCK] = clock
    cfg[wire.HANDSHAKE_RTTS] = handshake_rtts
    cfg[wire.ERROR_FEEDBACK] = spec.error_feedback
    budget_s = float(a.budget_s) if spec.policy == "budget" and a.budget_s is not None else None
    if budget_s is not None:
        cfg[wire.BUDGET_S] = budget_s
    if a.batch_size is not None:
        cfg[wire.BATCH_SIZE] = int(a.batch_size)
    content = RecordDict({wire.ARRAYS: record, wire.CONFIG: cfg})
    if control is not None:  # SCAFFOLD's c at the node's rank, beside the adapter
        content[wire.CONTROL] = adapter_to_array_record(control, "fp32")
    bytes_down = sum(array_record_nbytes(r) for r in content.array_records.values())
    plan = ClientPlan(node, a, sent, bytes_down, budget_s)
    return Message(content, dst_node_id=node, message_type=MessageType.TRAIN), plan


def evaluate_messages(
    node_ids: Iterable[int], server_round: int, global_state: AdapterState, config: ConfigRecord, spec: StrategySpec
) -> list[Message]:
    """The global adapter at r_max to every node, for its own test split."""
    record = adapter_to_array_record(global_state, spec.broadcast_codec)
    messages = []
    for node in node_ids:
        cfg = ConfigRecord(dict(config))
        cfg[wire.SERVER_ROUND] = server_round
        cfg[wire.RANK] = spec.rank_max
        content = RecordDict({wire.ARRAYS: record, wire.CONFIG: cfg})
        messages.append(Message(content, dst_node_id=node, message_type=MessageType.EVALUATE))
    return messages


def send_and_receive_timed(
    grid: Grid, messages: Iterable[Message], timeout: float
) -> tuple[list[Message], dict[int, float]]:
    """Push, then poll like ``Grid.send_and_receive``; also return each reply's arrival (s after the push)."""
    start = time.monotonic()
    pending = {i for i in grid.push_messages(list(messages)) if i}
    arrival_s: dict[int, float] = {}
    replies: list[Message] = []
    while pending and time.monotonic() - start < timeout:
        for reply in grid.pull_messages(list(pending)):
            replies.append(reply)
            pending.discard(reply.metadata.reply_to_message_id)
            arrival_s[reply.metadata.src_node_id] = time.monotonic() - start
        if pending:
            time.sleep(SERVER_REPLY_POLL_S)
    return replies, arrival_s


def reply_metrics(reply: Message) -> tuple[Mapping, Mapping]:
    """(metrics, info) of a reply without an error; empty where the client sent none."""
    return reply.content.get(wire.METRICS, MetricRecord()), reply.content.get(wire.INFO, ConfigRecord())


def read_eval_reply(reply: Message, profile: NodeProfile) -> ClientEvalRecord:
    """The global adapter's score on one client's own test split (NaN where it sent none)."""
    m, _ = reply_metrics(reply)
    score, loss = float(m.get(wire.SCORE, float("nan"))), float(m.get(wire.LOSS, float("nan")))
    balanced, macro_f1 = m.get(wire.BALANCED_ACCURACY), m.get(wire.MACRO_F1)
    return ClientEvalRecord(
        profile.node_id,
        profile.partition_id,
        profile.tier,
        score,
        loss,
        int(m.get(wire.NUM_EXAMPLES, 0)),
        None if balanced is None else float(balanced),
        None if macro_f1 is None else float(macro_f1),
    )


def client_eval_metrics(records: list[ClientEvalRecord]) -> MetricRecord:
    """The clients' evaluation of one round, summed up for Flower's Result."""
    scores = [e.score for e in records]
    return MetricRecord({"client-score-mean": float(np.mean(scores)), "client-score-min": float(np.min(scores))})


@dataclass(frozen=True)
class TrainReply:
    """One train reply, read: what became of it, what the client measured, and its adapter."""

    status: ClientStatus
    metrics: Mapping = field(default_factory=dict)
    info: Mapping = field(default_factory=dict)
    bytes_up: int = 0
    reason: str = ""
    state: AdapterState | None = None  # the client's adapter (what it was sent + its delta) if accepted
    delta: AdapterState | None = None  # its update, as decoded
    control_delta: AdapterState | None = None  # its SCAFFOLD delta_c_i (at its rank) if accepted with SCAFFOLD on


def read_train_reply(
    reply: Message,
    plan: ClientPlan,
    global_state: AdapterState,
    rank_max: int,
    limits: DecodeLimits,
    *,
    scaffold: bool = False,
) -> TrainReply:
    """Decode and validate one train reply; never raises for what a client sent.

    ``scaffold``: the reply must also carry the client's control delta (``wire.CONTROL_DELTA``),
    checked like the update (keys, shapes at the client's rank, float32, finite); a missing or
    malformed one rejects the client. ``bytes_up`` counts every tensor byte the reply carried.
    """
    if reply.has_error():
        return TrainReply(ClientStatus.FAILED, reason=f"client error: {last_line(reply.error.reason)}")
    metrics, info = reply_metrics(reply)
    if str(info.get(wire.STATUS, ClientStatus.OK)) == ClientStatus.OOM:
        return TrainReply(ClientStatus.OOM, metrics, info, reason=str(info.get(wire.REASON, "")))
    arrays = reply.content.get(wire.ARRAYS)
    if not isinstance(arrays, ArrayRecord):
        return TrainReply(ClientStatus.REJECTED, metrics, info, reason="reply has no adapter arrays")
    control = reply.content.get(wire.CONTROL_DELTA)
    bytes_up = array_record_nbytes(arrays) + (array_record_nbytes(control) if isinstance(control, ArrayRecord) else 0)
    try:
        delta = array_record_to_adapter(arrays, limits)
    except (CodecError, ValueError, TypeError) as exc:
        return TrainReply(ClientStatus.REJECTED, metrics, info, bytes_up, f"undecodable update: {exc}")
    num_examples = int(metrics.get(wire.NUM_EXAMPLES, 0))
    reason = validate_update(
        delta, global_state, rank_max, expected_rank=plan.assignment.rank, num_examples=num_examples
    )
    control_delta = None
    if reason is None and scaffold:
        control_delta, reason = _read_control_delta(control, plan, global_state, rank_max, limits)
    if reason is not None:
        log.warning("round reply from node %d rejected: %s", plan.node_id, reason)
        return TrainReply(ClientStatus.REJECTED, metrics, info, bytes_up, reason)
    # The server adds the delta to its exact global (not to the quantized copy the client
    # decoded), so broadcast quantization error never accumulates in the global adapter.
    return TrainReply(
        ClientStatus.OK, metrics, info, bytes_up, state=add(plan.sent, delta), delta=delta, control_delta=control_delta
    )


def _read_control_delta(
    record: object, plan: ClientPlan, global_state: AdapterState, rank_max: int, limits: DecodeLimits
) -> tuple[AdapterState | None, str | None]:
    """(the decoded SCAFFOLD control delta, None) or (None, why the client is rejected)."""
    if not isinstance(record, ArrayRecord):
        return None, "reply has no SCAFFOLD control delta (scaffold is on)"
    try:
        control_delta = array_record_to_adapter(record, limits)
    except (CodecError, ValueError, TypeError) as exc:
        return None, f"undecodable SCAFFOLD control delta: {exc}"
    problem = validate_update(control_delta, global_state, rank_max, expected_rank=plan.assignment.rank)
    if problem is not None:
        return None, f"SCAFFOLD control delta: {problem}"
    return control_delta, None


def last_line(reason: str) -> str:
    """A ClientApp exception arrives as a whole traceback: its last line says what went wrong."""
    lines = [line for line in str(reason).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else str(reason)
