"""``FLQFedAvg``: Flower's FedAvg for LoRA adapters of different ranks, under a deadline.

What it adds to ``flwr.serverapp.strategy.FedAvg``:

* per-client messages: each sampled node gets its own config (rank, bits, local steps,
  time budget) from the scheduler, and the global adapter truncated to its rank;
* replies are decoded and validated one by one: a bad reply (wrong keys or shapes, rank
  above r_max, NaN/Inf) is rejected with a logged reason and counted, never crashing
  the round (stock FedAvg sums arrays of different shapes and crashes);
* the round's time on the run's clock and each client's on-time status (deadline policy);
* aggregation across ranks by a selectable pure-numpy rule, in float32;
* ``start`` runs the rounds, evaluates, records one JSON line per round, checkpoints the
  global adapter and the scheduler every round, and resumes from a checkpoint.

The global adapter is kept as numpy at r_max in ``self.global_state``.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result

from ..adapter import AdapterState, add, truncate_to_rank
from ..metrics.records import (
    STATUS_FAILED,
    STATUS_LATE,
    STATUS_OK,
    STATUS_OOM,
    STATUS_REJECTED,
    ClientEvalRecord,
    ClientRoundRecord,
)
from ..scheduler.base import Assignment, ClientInfo, ClientReport, RankScheduler, RoundOutcome
from ..sim.clock import ClockModel, round_time
from ..sim.tiers import REFERENCE_TIER, TierError
from ..transport.array_codec import DEFAULT_LIMITS, CodecError, DecodeLimits
from ..transport.flower_records import adapter_to_array_record, array_record_nbytes, array_record_to_adapter
from . import wire
from .aggregation import AGGREGATION_RULES, AGGREGATION_WEIGHTS, client_weight, make_aggregator
from .validation import validate_update

from ..logs import log



class NoClientsError(RuntimeError):
    """No connected node could take part (each one's reason is in the message)."""


@dataclass
class NodeProfile:
    """What a node told us about itself (query round or replies)."""

    node_id: int
    partition_id: int | None = None
    tier: str | None = None
    num_train: int | None = None
    memory_limit_mb: float | None = None
    num_partitions: int | None = None
    simulated: bool | None = None

    def info(self) -> ClientInfo:
        return ClientInfo(self.node_id, self.tier, self.partition_id, self.memory_limit_mb, self.num_train,
                          self.num_partitions)


@dataclass
class ClientPlan:
    node_id: int
    assignment: Assignment
    sent: AdapterState           # what the node received (global truncated to its rank)
    bytes_down: int


@dataclass
class RoundResult:
    """What one training round produced, for the recorder and the scheduler."""

    server_round: int
    clients: list[ClientRoundRecord] = field(default_factory=list)
    reports: list[ClientReport] = field(default_factory=list)
    round_s: float = 0.0
    train_loss: float | None = None
    scheduler_ms: float | None = None


class FLQFedAvg(FedAvg):
    def __init__(
        self,
        *,
        scheduler: RankScheduler,
        rank_max: int,
        clients_per_round: int = 0,
        min_available_nodes: int = 1,
        deadline_s: float | None = None,
        policy: str = "wait",
        update_codec: str = "fp32",
        broadcast_codec: str = "fp32",
        error_feedback: bool = False,
        decode_limits: DecodeLimits = DEFAULT_LIMITS,
        aggregation: str = "rank-wise",
        aggregation_weight: str = "examples-per-step",
        clock_model: ClockModel | None = None,
        clock: str = "auto",
        seed: int = 0,
        client_eval_every: int = 0,
        batch_size: int = 8,
    ) -> None:
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=1.0,
            min_train_nodes=1,
            min_evaluate_nodes=1,
            min_available_nodes=min_available_nodes,
        )
        if policy not in ("wait", "drop", "budget"):
            raise ValueError(f"unknown deadline policy {policy!r}")
        if policy != "wait" and deadline_s is None:
            raise ValueError(f"policy {policy!r} needs a deadline")
        self.scheduler = scheduler
        self.rank_max = rank_max
        self.clients_per_round = clients_per_round
        self.deadline_s = deadline_s if policy != "wait" else None
        self.policy = policy
        self.update_codec = update_codec
        self.broadcast_codec = broadcast_codec
        self.error_feedback = error_feedback
        self.decode_limits = decode_limits
        if aggregation not in AGGREGATION_RULES:
            raise ValueError(f"unknown aggregation rule {aggregation!r}; choose one of {AGGREGATION_RULES}")
        self.aggregation = aggregation
        if aggregation_weight not in AGGREGATION_WEIGHTS:
            raise ValueError(f"unknown aggregation weight {aggregation_weight!r}; choose one of {AGGREGATION_WEIGHTS}")
        self.aggregation_weight = aggregation_weight
        if clock not in ("auto", "virtual", "real"):
            raise ValueError(f"clock must be auto, virtual or real, got {clock!r}")
        self.clock_model = clock_model or ClockModel.for_transport({})
        self.clock = clock  # "auto" is resolved once the nodes have described themselves
        self._warned_tiers: set[str] = set()
        self.client_eval_every = client_eval_every
        self.batch_size = batch_size  # the run's examples per step (a tier may have its own)
        self.rng = random.Random(seed)
        self.nodes: dict[int, NodeProfile] = {}
        self.excluded: set[int] = set()  # nodes that failed to describe themselves
        self.global_state: AdapterState = {}
        self.plans: dict[int, ClientPlan] = {}
        self.last_round = RoundResult(0)
        self.clock_s = 0.0  # the run's clock after the last finished round (virtual or real seconds)
        self._assign_s = 0.0
        self.last_client_eval: list[ClientEvalRecord] = []

    def encode(self, state: AdapterState, codec: str | None = None) -> ArrayRecord:
        """The adapter as it travels to clients (the broadcast codec unless told otherwise)."""
        return adapter_to_array_record(state, codec or self.broadcast_codec)

    def summary(self) -> None:
        log.info(
            "FLQFedAvg: rank_max=%d scheduler=%s policy=%s deadline=%s codecs: update=%s%s broadcast=%s",
            self.rank_max, self.scheduler.name, self.policy, self.deadline_s, self.update_codec,
            "+error-feedback" if self.error_feedback else "", self.broadcast_codec,
        )

    # -- sampling -------------------------------------------------------------------------
    def discover_nodes(self, grid: Grid, timeout: float) -> None:
        """Ask every connected node who it is (partition, tier, data size) in one query round."""
        node_ids = self._wait_for_nodes(grid)
        messages = [
            Message(RecordDict({wire.CONFIG: ConfigRecord({"ask": "profile"})}), dst_node_id=n,
                    message_type=MessageType.QUERY)
            for n in node_ids
        ]
        errors: dict[int, str] = {}
        for reply in grid.send_and_receive(messages, timeout=timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                errors[node] = _last_line(reply.error.reason)
                log.warning("node %d cannot take part: %s", node, errors[node])
                continue
            self._update_profile(node, reply.content)
        if errors and len(errors) == len(node_ids):
            reasons = sorted(set(errors.values()))
            raise NoClientsError("no client can take part: " + " | ".join(reasons[:3]))
        for n in node_ids:
            if n not in errors:
                self.nodes.setdefault(n, NodeProfile(n))
        self.excluded = set(errors)
        if self.clock == "auto":
            simulated = [self.nodes[n].simulated for n in node_ids if n not in errors]
            self.clock = "virtual" if simulated and all(simulated) else "real"
        log.info("clock: %s (%s)", self.clock,
                 "measured compute x tier factor + modelled transfers" if self.clock == "virtual" else "wall time")

    def _wait_for_nodes(self, grid: Grid) -> list[int]:
        while len(ids := sorted(grid.get_node_ids())) < self.min_available_nodes:
            log.info("waiting for nodes: %d connected, %d needed", len(ids), self.min_available_nodes)
            time.sleep(1.0)
        return ids

    def _update_profile(self, node: int, content: RecordDict) -> None:
        profile = self.nodes.setdefault(node, NodeProfile(node))
        metrics = content.get(wire.METRICS, MetricRecord())
        info = content.get(wire.INFO, ConfigRecord())
        if wire.PARTITION_ID in metrics:
            profile.partition_id = int(metrics[wire.PARTITION_ID])
        if wire.SIMULATED in metrics:
            profile.simulated = bool(metrics[wire.SIMULATED])
        if wire.NUM_PARTITIONS in metrics:
            profile.num_partitions = int(metrics[wire.NUM_PARTITIONS])
        if wire.NUM_TRAIN in metrics:
            profile.num_train = int(metrics[wire.NUM_TRAIN])
        if metrics.get(wire.MEMORY_LIMIT_MB):
            profile.memory_limit_mb = float(metrics[wire.MEMORY_LIMIT_MB])
        if info.get(wire.TIER):
            profile.tier = str(info[wire.TIER])

    def sample(self, grid: Grid) -> list[int]:
        """Seeded sample of connected nodes, ordered by partition id for reproducibility."""
        connected = [n for n in self._wait_for_nodes(grid) if n not in self.excluded]
        for n in connected:
            self.nodes.setdefault(n, NodeProfile(n))
        ordered = sorted(connected, key=lambda n: (self.nodes[n].partition_id is None, self.nodes[n].partition_id, n))
        k = self.clients_per_round or len(ordered)
        return sorted(self.rng.sample(ordered, min(k, len(ordered))), key=ordered.index)

    # -- train ---------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        node_ids = self.sample(grid)
        clients = [self.nodes[n].info() for n in node_ids]
        started = time.perf_counter()
        assignments = self.scheduler.assign(server_round, clients, self.deadline_s)
        self._assign_s = time.perf_counter() - started
        self.plans = {}
        messages = []
        for node in node_ids:
            a = self._within_tier_ceiling(node, assignments[node])
            if not 1 <= a.rank <= self.rank_max:
                raise ValueError(f"scheduler {self.scheduler.name} gave rank {a.rank} outside [1, {self.rank_max}]")
            sent = truncate_to_rank(self.global_state, a.rank)
            record = self.encode(sent)
            codec_up = a.codec or self.update_codec
            cfg = ConfigRecord(dict(config))  # a copy per node: Flower shares one otherwise
            cfg[wire.SERVER_ROUND] = server_round
            cfg[wire.RANK] = a.rank
            cfg[wire.BITS] = a.bits
            cfg[wire.LOCAL_STEPS] = a.local_steps
            cfg[wire.CODEC_UP] = codec_up
            cfg[wire.CLOCK] = self.clock
            cfg[wire.HANDSHAKE_RTTS] = self.clock_model.handshake_rtts
            cfg[wire.ERROR_FEEDBACK] = self.error_feedback
            if self.policy == "budget" and a.budget_s is not None:
                cfg[wire.BUDGET_S] = float(a.budget_s)
            if a.batch_size is not None:
                cfg[wire.BATCH_SIZE] = int(a.batch_size)
            self.plans[node] = ClientPlan(node, a, sent, array_record_nbytes(record))
            messages.append(
                Message(RecordDict({wire.ARRAYS: record, wire.CONFIG: cfg}), dst_node_id=node,
                        message_type=MessageType.TRAIN)
            )
        return messages

    def _within_tier_ceiling(self, node: int, a: Assignment) -> Assignment:
        """A tier's rank ceiling (e.g. a Jetson's) is a device limit no scheduler may exceed."""
        tier = self._tier_profile(self.nodes[node].tier)
        if tier is None or tier.max_rank is None or a.rank <= tier.max_rank:
            return a
        return replace(a, rank=tier.max_rank)

    def _batch_scale(self, plan: ClientPlan) -> float:
        """The client's own batch over the smaller one its assignment gave (1 if none)."""
        asked = plan.assignment.batch_size
        if not asked:
            return 1.0
        tier = self._tier_profile(self.nodes[plan.node_id].tier) if plan.node_id in self.nodes else None
        own = (tier.batch_size if tier is not None else None) or self.batch_size
        return own / min(asked, own)

    def _tier_profile(self, name: str | None):
        try:
            return self.clock_model.tier(name)
        except TierError:
            if name not in self._warned_tiers:
                self._warned_tiers.add(name)
                log.warning("tier %r is not in the server's tier profiles: timed as the reference machine", name)
            return self.clock_model.tiers.get(REFERENCE_TIER)

    # -- sending, with each reply's arrival time (the real clock) ---------------------------
    def send_and_receive(self, grid: Grid, messages: Iterable[Message], timeout: float) -> list[Message]:
        """Push, then poll for replies like ``Grid.send_and_receive``, noting when each arrives."""
        messages = list(messages)
        start = time.monotonic()
        ids = [i for i in grid.push_messages(messages) if i]
        pending = set(ids)
        self.arrival_s: dict[int, float] = {}
        replies: list[Message] = []
        while pending and time.monotonic() - start < timeout:
            for reply in grid.pull_messages(list(pending)):
                replies.append(reply)
                pending.discard(reply.metadata.reply_to_message_id)
                self.arrival_s[reply.metadata.src_node_id] = time.monotonic() - start
            if pending:
                time.sleep(0.2)
        return replies

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check each reply and stream the on-time ones into the aggregator.

        Nothing but the running sums is kept, so memory stays flat in the number of clients.
        """
        result = RoundResult(server_round)
        aggregator = make_aggregator(self.aggregation, self.global_state, self.rank_max)
        weighted_losses: list[tuple[float, int]] = []
        seen: set[int] = set()
        for reply in replies:
            node = reply.metadata.src_node_id
            seen.add(node)
            plan = self.plans.get(node)
            if plan is None:
                log.warning("round %d: reply from node %d that was not sampled: ignored", server_round, node)
                continue
            record, state = self._check_reply(plan, reply)
            self._apply_deadline(record)
            result.clients.append(record)
            if state is not None and record.status == STATUS_OK:
                aggregator.add(state, client_weight(self.aggregation_weight, record.num_examples, record.steps,
                                                    self._batch_scale(plan)))
                if record.loss_after is not None:
                    weighted_losses.append((record.loss_after, record.num_examples))
        for node, plan in self.plans.items():  # sampled but silent: the grid timed out
            if node not in seen:
                result.clients.append(self._silent_record(plan))
        result.round_s = self._round_time(result.clients, seen)
        result.reports = [self._report(r) for r in result.clients]
        if aggregator.num_clients:
            self.global_state = aggregator.result()
            losses, weights = zip(*weighted_losses) if weighted_losses else ((), ())
            result.train_loss = float(np.average(losses, weights=weights)) if losses else None
        else:
            log.warning("round %d: no update accepted; the global adapter is unchanged", server_round)
        self.last_round = result
        metrics = MetricRecord({"num-accepted": aggregator.num_clients, "num-sampled": len(self.plans)})
        return adapter_to_array_record(self.global_state, "fp32"), metrics

    def _check_reply(self, plan: ClientPlan, reply: Message) -> tuple[ClientRoundRecord, AdapterState | None]:
        """Decode and validate one reply; never raises for what a client sent."""
        if reply.has_error():
            return self._client_record(plan, STATUS_FAILED, reason=f"client error: {_last_line(reply.error.reason)}"), None
        content = reply.content
        self._update_profile(plan.node_id, content)
        info = content.get(wire.INFO, ConfigRecord())
        metrics = content.get(wire.METRICS, MetricRecord())
        status = str(info.get(wire.STATUS, STATUS_OK))
        if status == STATUS_OOM:
            return self._client_record(plan, STATUS_OOM, metrics, reason=str(info.get(wire.REASON, ""))), None
        arrays = content.get(wire.ARRAYS)
        if not isinstance(arrays, ArrayRecord):
            return self._client_record(plan, STATUS_REJECTED, metrics, reason="reply has no adapter arrays"), None
        bytes_up = array_record_nbytes(arrays)
        try:
            delta = array_record_to_adapter(arrays, self.decode_limits)
        except (CodecError, ValueError, TypeError) as exc:
            return self._client_record(plan, STATUS_REJECTED, metrics, bytes_up, reason=f"undecodable update: {exc}"), None
        reason = validate_update(
            delta, self.global_state, self.rank_max,
            expected_rank=plan.assignment.rank, num_examples=int(metrics.get(wire.NUM_EXAMPLES, 0)),
        )
        if reason is not None:
            log.warning("round reply from node %d rejected: %s", plan.node_id, reason)
            return self._client_record(plan, STATUS_REJECTED, metrics, bytes_up, reason=reason), None
        # The server adds the delta to its exact global (not to the quantized copy the client
        # decoded), so broadcast quantization error never accumulates in the global adapter.
        return self._client_record(plan, STATUS_OK, metrics, bytes_up), add(plan.sent, delta)

    def _client_record(
        self, plan: ClientPlan, status: str, metrics: Mapping | None = None, bytes_up: int = 0, reason: str = ""
    ) -> ClientRoundRecord:
        metrics = metrics or {}
        profile = self.nodes.get(plan.node_id, NodeProfile(plan.node_id))
        measured = float(metrics.get(wire.COMPUTE_S, 0.0))
        compute_s, comm_s = self._client_times(plan.node_id, profile.tier, measured, bytes_up, plan.bytes_down)
        return ClientRoundRecord(
            node_id=plan.node_id,
            status=status,
            partition_id=profile.partition_id,
            tier=profile.tier,
            rank=plan.assignment.rank,
            bits=plan.assignment.bits,
            steps=int(metrics.get(wire.STEPS, 0)),
            num_examples=int(metrics.get(wire.NUM_EXAMPLES, 0)),
            batch_size=int(plan.assignment.batch_size or 0),
            loss_before=_opt_float(metrics.get(wire.LOSS_BEFORE)),
            loss_after=_opt_float(metrics.get(wire.LOSS_AFTER)),
            compute_s=compute_s,
            measured_compute_s=measured,
            comm_s=comm_s,
            round_s=compute_s + comm_s,
            bytes_up=bytes_up,
            bytes_down=plan.bytes_down,
            peak_mem_mb=float(metrics.get(wire.PEAK_MEM_MB, 0.0)),
            threads=int(metrics.get(wire.TORCH_THREADS, 0)),
            on_time=True,
            reason=reason,
        )

    def _client_times(self, node: int, tier: str | None, measured: float, bytes_up: int, bytes_down: int
                      ) -> tuple[float, float]:
        """(compute s, transfer s) on the run's clock.

        Virtual: measured compute x the tier's factor, transfers modelled from the bytes.
        Real: the reply's arrival time after the send; what is not compute is transfer/wait.
        """
        if self.clock == "real":
            arrived = getattr(self, "arrival_s", {}).get(node)
            if arrived is None:
                return measured, 0.0
            return measured, max(0.0, arrived - measured)
        profile = self._tier_profile(tier)
        if profile is None:
            return measured, 0.0
        times = self.clock_model.client_time(profile.name, measured, bytes_up, bytes_down) \
            if profile.name in self.clock_model.tiers else None
        return (times.compute_s, times.comm_s) if times else (measured, 0.0)

    def _apply_deadline(self, record: ClientRoundRecord) -> None:
        """Past the deadline (on the run's clock): late, and under drop/budget discarded."""
        if self.deadline_s is None or record.round_s <= self.deadline_s:
            return
        record.on_time = False
        if record.status == STATUS_OK:
            record.status = STATUS_LATE
            record.reason = f"finished at {record.round_s:.1f}s > deadline {self.deadline_s:.1f}s"

    def _silent_record(self, plan: ClientPlan) -> ClientRoundRecord:
        """A sampled node that sent nothing before the Grid stopped waiting.

        On the real clock with a deadline the Grid's timeout IS the deadline: the node missed it,
        so it is late (dropped by the policy), with no times (none were measured). Otherwise the
        timeout is only a hang guard and a silent node has failed.
        """
        if self.clock == "real" and self.deadline_s is not None:
            record = self._client_record(plan, STATUS_LATE,
                                         reason=f"no reply by the deadline ({self.deadline_s:.1f}s)")
            record.on_time = False
            return record
        return self._client_record(plan, STATUS_FAILED, reason="no reply before the timeout")

    def _round_time(self, clients: list[ClientRoundRecord], replied: set[int]) -> float:
        """The slowest reply; under drop/budget capped at the deadline a late or silent client causes."""
        finish = [None if c.status == STATUS_FAILED or c.node_id not in replied else c.round_s for c in clients]
        return round_time(finish, self.deadline_s, self.policy)

    def _report(self, r: ClientRoundRecord) -> ClientReport:
        return ClientReport(
            node_id=r.node_id, status=r.status, rank=r.rank, bits=r.bits, tier=r.tier, steps=r.steps,
            num_examples=r.num_examples, compute_s=r.compute_s, transfer_s=r.comm_s, round_s=r.round_s,
            bytes_up=r.bytes_up, bytes_down=r.bytes_down, loss_before=r.loss_before, loss_after=r.loss_after,
            on_time=r.on_time,
        )

    # -- federated evaluation (each client's own test split: fairness) ---------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        node_ids = [n for n in self._wait_for_nodes(grid) if n not in self.excluded]
        record = self.encode(self.global_state)
        messages = []
        for node in node_ids:
            cfg = ConfigRecord(dict(config))
            cfg[wire.SERVER_ROUND] = server_round
            cfg[wire.RANK] = self.rank_max
            messages.append(
                Message(RecordDict({wire.ARRAYS: record, wire.CONFIG: cfg}), dst_node_id=node,
                        message_type=MessageType.EVALUATE)
            )
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        self.last_client_eval = []
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                log.warning("evaluation on node %d failed: %s", node, reply.error.reason)
                continue
            self._update_profile(node, reply.content)
            m = reply.content.get(wire.METRICS, MetricRecord())
            profile = self.nodes.get(node, NodeProfile(node))
            self.last_client_eval.append(
                ClientEvalRecord(node, profile.partition_id, profile.tier, float(m.get(wire.SCORE, float("nan"))),
                                 float(m.get(wire.LOSS, float("nan"))), int(m.get(wire.NUM_EXAMPLES, 0)))
            )
        if not self.last_client_eval:
            return None
        scores = [e.score for e in self.last_client_eval]
        return MetricRecord({"client-score-mean": float(np.mean(scores)), "client-score-min": float(np.min(scores))})

    def round_outcome(self, server_round: int, loss_before: float | None, loss_after: float | None,
                      score: float | None) -> RoundOutcome:
        return RoundOutcome(server_round, self.last_round.round_s, self.deadline_s, loss_before, loss_after, score)

    # -- the loop -------------------------------------------------------------------------
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
        *,
        recorder: RoundRecorder | None = None,
        start_round: int = 1,
        start_clock_s: float = 0.0,
        clock_budget_s: float | None = None,
    ) -> Result:
        """Flower's loop, plus: a query round first, per-round records and checkpoints, and an
        optional time budget on the run's clock.

        ``evaluate_fn(round, arrays)`` is the server-side evaluation; its MetricRecord should
        hold ``score`` and ``loss``. ``timeout`` bounds each message exchange in real seconds
        (in a deployment the deadline policy sets it; in simulation the clock is virtual).
        ``start_round`` > 1 resumes a checkpointed run (``global_state`` already restored) whose
        clock stood at ``start_clock_s``. With ``clock_budget_s``, the round that brings the
        clock to the budget is the last (clients evaluate on it, as on round ``num_rounds``).
        """
        self.summary()
        train_config = train_config or ConfigRecord()
        evaluate_config = evaluate_config or ConfigRecord()
        if not self.global_state:
            self.global_state = array_record_to_adapter(initial_arrays, self.decode_limits)
        result = Result()
        self.discover_nodes(grid, timeout)
        if self.clock == "real" and self.deadline_s is not None:
            # A deployment's deadline is real seconds: the Grid stops waiting there.
            timeout = min(timeout, self.deadline_s)
        if recorder is not None:
            recorder.on_start(self)
        previous = evaluate_fn(start_round - 1, self.encode(self.global_state, "fp32")) if evaluate_fn else None
        if previous is not None:
            result.evaluate_metrics_serverapp[start_round - 1] = previous
            if recorder is not None and start_round == 1:
                recorder.on_initial(previous)
        self.clock_s = start_clock_s
        for server_round in range(start_round, num_rounds + 1):
            replies = self.send_and_receive(
                grid, self.configure_train(server_round, initial_arrays, train_config, grid), timeout
            )
            arrays, train_metrics = self.aggregate_train(server_round, replies)
            result.arrays = arrays
            if train_metrics is not None:
                result.train_metrics_clientapp[server_round] = train_metrics
            self.clock_s += self.last_round.round_s
            last = server_round == num_rounds or clock_budget_spent(self.clock_s, clock_budget_s)
            client_eval = None
            if last or self._client_eval_due(server_round):
                eval_replies = grid.send_and_receive(
                    self.configure_evaluate(server_round, arrays, evaluate_config, grid), timeout=timeout
                )
                client_eval = self.aggregate_evaluate(server_round, eval_replies)
                if client_eval is not None:
                    result.evaluate_metrics_clientapp[server_round] = client_eval
            metrics = evaluate_fn(server_round, arrays) if evaluate_fn else None
            if metrics is not None:
                result.evaluate_metrics_serverapp[server_round] = metrics
            outcome = self.round_outcome(
                server_round, _metric(previous, "loss"), _metric(metrics, "loss"), _metric(metrics, "score")
            )
            started = time.perf_counter()
            self.scheduler.observe(server_round, self.last_round.reports, outcome)
            self.last_round.scheduler_ms = 1000 * (self._assign_s + time.perf_counter() - started)
            if recorder is not None:
                recorder.on_round(self, server_round, metrics, self.last_client_eval if client_eval else [])
            previous = metrics
            if last:
                if server_round < num_rounds:
                    log.info("clock budget %.1f s reached after round %d (%.1f s on the clock)",
                             clock_budget_s, server_round, self.clock_s)
                break
        return result

    def _client_eval_due(self, server_round: int) -> bool:
        """Every ``client_eval_every`` rounds (the last round is always evaluated: fairness is
        measured on the final adapter)."""
        return self.client_eval_every > 0 and server_round % self.client_eval_every == 0


class RoundRecorder(ABC):
    """Receives every finished round (records, checkpoints, progress): see flq.run_recorder."""

    def on_start(self, strategy: FLQFedAvg) -> None:
        """The nodes have described themselves and the clock is known."""

    def on_initial(self, metrics: MetricRecord) -> None:
        """The initial global adapter's evaluation (before round 1)."""

    @abstractmethod
    def on_round(self, strategy: FLQFedAvg, server_round: int, metrics: MetricRecord | None,
                 client_eval: list[ClientEvalRecord]) -> None:
        """Called once per finished round, after aggregation and evaluation."""


def clock_budget_spent(clock_s: float, clock_budget_s: float | None) -> bool:
    """Whether a run whose clock stands at ``clock_s`` may start no further round."""
    return clock_budget_s is not None and clock_s >= clock_budget_s


def _metric(record: MetricRecord | None, key: str) -> float | None:
    if record is None or key not in record:
        return None
    return float(record[key])


def _last_line(reason: str) -> str:
    """A ClientApp exception arrives as a whole traceback: its last line says what went wrong."""
    lines = [line for line in str(reason).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else str(reason)


def _opt_float(value) -> float | None:
    return None if value is None else float(value)
