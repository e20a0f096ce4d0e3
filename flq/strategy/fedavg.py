"""``FLQFedAvg``: Flower's FedAvg for LoRA adapters of different ranks, under a deadline.

What it adds to ``flwr.serverapp.strategy.FedAvg``:

* per-client messages: each sampled node gets its own config (rank, bits, local steps,
  time budget) from the scheduler, and the global adapter truncated to its rank;
* replies are decoded and validated one by one: a bad reply (wrong keys or shapes, rank
  above r_max, NaN/Inf) is rejected with a logged reason and counted, never crashing
  the round (stock FedAvg sums arrays of different shapes and crashes);
* the round's time on the run's clock and each client's on-time status (``accounting``);
* aggregation across ranks by a selectable pure-numpy rule, then a server optimizer; each
  client's update norm and cosine to the aggregate are recorded (``diagnostics``);
* optionally SCAFFOLD: a control variate sent with the adapter, updated from the accepted
  clients' control deltas (``scaffold``);
* ``start`` runs the rounds, evaluates, and hands every finished round to a recorder
  (``recording``), which writes records and checkpoints; it resumes from a checkpoint.

The hooks keep no state between calls: ``configure_train`` returns the round's plan (a
``TrainRound``), ``aggregate_train`` takes it back and returns a ``RoundResult`` with the new
global adapter, which the loop in ``start`` owns (as numpy at r_max).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

import numpy as np
from flwr.app import ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result

from ..adapter import AdapterState, truncate_to_rank
from ..codec.flower_records import adapter_to_array_record
from ..logs import log
from ..metrics.records import ClientEvalRecord
from ..scheduler.base import RankScheduler
from ..scheduler.spread import SpreadError
from ..sim.clock import NO_MISFIT, ClockModel
from ..status import ClientStatus
from .accounting import (
    ClientPlan,
    ResumePoint,
    RoundAccounting,
    RoundResult,
    clock_budget_spent,
    round_outcome,
    scheduler_report,
)
from .aggregation import client_weight, fairness_factor, make_aggregator
from .diagnostics import UpdateDiagnostics
from .messages import (
    TrainRound,
    client_eval_metrics,
    evaluate_messages,
    query_profiles,
    read_eval_reply,
    read_train_reply,
    reply_metrics,
    send_and_receive_timed,
    train_message,
    wait_for_nodes,
)
from .recording import RoundRecorder, RoundSnapshot, RunStart
from .roster import Roster
from .scaffold import ScaffoldControl
from .server_optimizer import ServerOptimizer
from .spec import StrategySpec

# A server-side evaluation: (round, global adapter) -> metrics with "score" and "loss".
EvaluateFn = Callable[[int, AdapterState], Mapping[str, float] | None]


class NoClientsError(RuntimeError):
    """No connected node could take part (each one's reason is in the message)."""


class FLQFedAvg(FedAvg):
    def __init__(self, spec: StrategySpec, scheduler: RankScheduler, clock_model: ClockModel | None = None) -> None:
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=1.0,
            min_train_nodes=1,
            min_evaluate_nodes=1,
            min_available_nodes=spec.min_available_nodes,
        )
        self.spec = spec
        self.scheduler = scheduler
        clock_model = clock_model or ClockModel.for_transport({})
        self.roster = Roster(spec.seed)
        self.optimizer = ServerOptimizer(spec.server_optimizer)
        self.control = ScaffoldControl(spec.rank_max) if spec.scaffold else None
        self.diagnostics = UpdateDiagnostics(spec.rank_max, spec.seed)
        # "auto" is resolved once the nodes have described themselves (discover_nodes).
        self.accounting = RoundAccounting(clock_model, spec.clock, spec.deadline_s, spec.policy, spec.batch_size)

    def summary(self) -> None:
        log.info("FLQFedAvg: scheduler=%s %s", self.scheduler.name, self.spec.describe())

    # -- nodes ------------------------------------------------------------------------------
    def discover_nodes(self, grid: Grid, timeout: float) -> None:
        """Ask every connected node who it is (partition, tier, data size) in one query round."""
        node_ids = wait_for_nodes(grid, self.spec.min_available_nodes)
        answers, errors = query_profiles(grid, node_ids, timeout)
        for node, (metrics, info) in answers.items():
            self.roster.note(node, metrics, info)
        if errors and len(errors) == len(node_ids):
            reasons = sorted(set(errors.values()))
            raise NoClientsError("no client can take part: " + " | ".join(reasons[:3]))
        self.roster.exclude(errors)
        taking_part = self.roster.available(node_ids)
        for n in taking_part:
            self.roster.profile(n)
        if self.accounting.clock == "auto":
            self.accounting.clock = "virtual" if self.roster.all_simulated(taking_part) else "real"
        virtual = self.accounting.clock == "virtual"
        how = "measured compute x tier factor + modelled transfers" if virtual else "wall time"
        log.info("clock: %s (%s)", self.accounting.clock, how)
        self._check_misfit(taking_part)

    def _check_misfit(self, node_ids: list[int]) -> None:
        """``compute-misfit`` is a virtual-clock experiment: every node must resolve it now, not mid-run."""
        model = self.accounting.clock_model
        if model.compute_misfit == NO_MISFIT:
            return
        if self.accounting.clock == "real":
            log.warning("compute-misfit %s is ignored: a deployment's clock is real time", model.compute_misfit)
            return
        for node in map(self.roster.profile, node_ids):
            try:
                model.misfit(node.partition_id, node.num_partitions, node.tier)
            except SpreadError as exc:
                raise ValueError(f"compute-misfit: {exc}") from None

    def _connected(self, grid: Grid) -> list[int]:
        return wait_for_nodes(grid, self.spec.min_available_nodes)

    # -- train ------------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, global_state: AdapterState, config: ConfigRecord, grid: Grid
    ) -> TrainRound:
        node_ids = self.roster.sample(self._connected(grid), self.spec.clients_per_round)
        clients = [self.roster.profile(n).info() for n in node_ids]
        started = time.perf_counter()
        assignments = self.scheduler.assign(server_round, clients, self.accounting.deadline_s)
        assign_s = time.perf_counter() - started
        plans: dict[int, ClientPlan] = {}
        messages = []
        clock, rtts = self.accounting.clock, self.accounting.clock_model.handshake_rtts
        for node in node_ids:
            a = self.accounting.within_tier_ceiling(self.roster.profile(node).tier, assignments[node])
            if not 1 <= a.rank <= self.spec.rank_max:
                raise ValueError(
                    f"scheduler {self.scheduler.name} gave rank {a.rank} outside [1, {self.spec.rank_max}]"
                )
            sent = truncate_to_rank(global_state, a.rank)
            control = self.control.for_rank(global_state, a.rank) if self.control is not None else None
            message, plans[node] = train_message(node, server_round, a, sent, control, config, self.spec, clock, rtts)
            messages.append(message)
        return TrainRound(global_state, plans, messages, assign_s)

    def aggregate_train(
        self,
        server_round: int,
        replies: Iterable[Message],
        train_round: TrainRound,
        arrival_s: Mapping[int, float] | None = None,
    ) -> RoundResult:
        """Check each reply and stream the on-time ones into the aggregator.

        Nothing but the running sums is kept, so memory stays flat in the number of clients.
        ``arrival_s``: when each node's reply arrived (the real clock's client times).
        """
        arrival_s = arrival_s or {}
        result = RoundResult(server_round)
        aggregator = make_aggregator(self.spec.aggregation, train_round.global_state, self.spec.rank_max)
        control_deltas = self.control.start_round(train_round.global_state) if self.control is not None else None
        weighted_losses: list[tuple[float, int]] = []
        seen: set[int] = set()
        self.diagnostics.start_round(train_round.global_state)
        for reply in replies:
            node = reply.metadata.src_node_id
            seen.add(node)
            plan = train_round.plans.get(node)
            if plan is None:
                log.warning("round %d: reply from node %d that was not sampled: ignored", server_round, node)
                continue
            read = read_train_reply(
                reply,
                plan,
                train_round.global_state,
                self.spec.rank_max,
                self.spec.decode_limits,
                scaffold=control_deltas is not None,
            )
            profile = (
                self.roster.profile(node) if reply.has_error() else self.roster.note(node, read.metrics, read.info)
            )
            record = self.accounting.client_record(
                plan, profile, read.status, read.metrics, read.bytes_up, read.reason, arrival_s.get(node)
            )
            self.accounting.apply_deadline(record)
            result.clients.append(record)
            if read.delta is not None:
                self.diagnostics.note(record, read.delta)
            if read.state is not None and record.status == ClientStatus.OK:
                scale = self.accounting.batch_scale(plan, record.tier)
                weight = client_weight(self.spec.aggregation_weight, record.num_examples, record.steps, scale)
                weight *= fairness_factor(self.spec.fairness_q, record.loss_before)
                aggregator.add(read.state, weight)
                if control_deltas is not None:
                    control_deltas.add(read.control_delta)
                if record.loss_after is not None:
                    weighted_losses.append((record.loss_after, record.num_examples))
        for node, plan in train_round.plans.items():  # sampled but silent: the grid timed out
            if node not in seen:
                result.clients.append(self.accounting.silent_record(plan, self.roster.profile(node)))
        result.round_s = self.accounting.round_time(result.clients, seen)
        result.reports = [scheduler_report(r) for r in result.clients]
        result.num_accepted = aggregator.num_clients
        if control_deltas is not None:  # only the accepted clients' deltas; N: the federation's nodes
            self.control.apply(control_deltas, self.roster.num_taking_part())
        if aggregator.num_clients:
            trained_rank = max(c.rank for c in result.clients if c.status == ClientStatus.OK)
            aggregated = aggregator.result()
            self.diagnostics.finish(result.clients, train_round.global_state, aggregated)
            result.global_state = self.optimizer.step(train_round.global_state, aggregated, trained_rank)
            if weighted_losses:
                losses, weights = zip(*weighted_losses, strict=True)
                result.train_loss = float(np.average(losses, weights=weights))
        else:
            log.warning("round %d: no update accepted; the global adapter is unchanged", server_round)
        return result

    # -- federated evaluation (each client's own test split: fairness) ------------------------
    def configure_evaluate(
        self, server_round: int, global_state: AdapterState, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        node_ids = self.roster.available(self._connected(grid))
        return evaluate_messages(node_ids, server_round, global_state, config, self.spec)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> list[ClientEvalRecord]:
        records = []
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                log.warning("evaluation on node %d failed: %s", node, reply.error.reason)
                continue
            profile = self.roster.note(node, *reply_metrics(reply))
            records.append(read_eval_reply(reply, profile))
        return records

    # -- the loop ---------------------------------------------------------------------------
    def start(
        self,
        grid: Grid,
        initial_state: AdapterState,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: EvaluateFn | None = None,
        *,
        recorder: RoundRecorder | None = None,
        resume: ResumePoint | None = None,
        clock_budget_s: float | None = None,
    ) -> Result:
        """Flower's loop, plus: a query round first, a snapshot of every round for the recorder,
        and an optional time budget on the run's clock.

        ``initial_state``: the global adapter to start from (a resumed run's checkpoint).
        ``timeout`` bounds each message exchange in real seconds (in a deployment the deadline
        policy sets it; in simulation the clock is virtual). With ``clock_budget_s``, the round
        that brings the clock to the budget is the last (clients evaluate on it, as on round
        ``num_rounds``). ``Result.arrays`` holds the final global adapter.
        """
        self.summary()
        train_config = train_config or ConfigRecord()
        evaluate_config = evaluate_config or ConfigRecord()
        resume = resume or ResumePoint(1, 0.0)
        if resume.rng_state:
            self.roster.restore_rng(resume.rng_state)
        if resume.optimizer_state:
            self.optimizer.load_state_dict(resume.optimizer_state)
        if resume.control_state and self.control is not None:
            self.control.load_state_dict(resume.control_state)
        global_state, clock_s = initial_state, resume.clock_s
        result = Result()
        self.discover_nodes(grid, timeout)
        if self.accounting.clock == "real" and self.accounting.deadline_s is not None:
            timeout = min(timeout, self.accounting.deadline_s)  # a deployment's deadline is real seconds
        if recorder is not None:
            recorder.on_start(RunStart(self.accounting.clock, self.accounting.clock_model, self.roster.profiles()))
        previous = evaluate_fn(resume.start_round - 1, global_state) if evaluate_fn else None
        if previous is not None:
            result.evaluate_metrics_serverapp[resume.start_round - 1] = MetricRecord(dict(previous))
            if recorder is not None and resume.start_round == 1:
                recorder.on_initial(previous)
        for server_round in range(resume.start_round, num_rounds + 1):
            train_round = self.configure_train(server_round, global_state, train_config, grid)
            replies, arrival_s = send_and_receive_timed(grid, train_round, timeout)
            round_result = self.aggregate_train(server_round, replies, train_round, arrival_s)
            if round_result.global_state is not None:
                global_state = round_result.global_state
            result.train_metrics_clientapp[server_round] = MetricRecord(
                {"num-accepted": round_result.num_accepted, "num-sampled": len(train_round.plans)}
            )
            clock_s += round_result.round_s
            last = server_round == num_rounds or clock_budget_spent(clock_s, clock_budget_s)
            client_eval: list[ClientEvalRecord] = []
            if last or self._client_eval_due(server_round):
                messages = self.configure_evaluate(server_round, global_state, evaluate_config, grid)
                client_eval = self.aggregate_evaluate(server_round, grid.send_and_receive(messages, timeout=timeout))
                if client_eval:
                    result.evaluate_metrics_clientapp[server_round] = client_eval_metrics(client_eval)
            metrics = evaluate_fn(server_round, global_state) if evaluate_fn else None
            if metrics is not None:
                result.evaluate_metrics_serverapp[server_round] = MetricRecord(dict(metrics))
            outcome = round_outcome(server_round, round_result.round_s, self.accounting.deadline_s, previous, metrics)
            started = time.perf_counter()
            self.scheduler.observe(server_round, round_result.reports, outcome)
            scheduler_ms = 1000 * (train_round.assign_s + time.perf_counter() - started)
            if recorder is not None:
                recorder.on_round(
                    RoundSnapshot(
                        server_round=server_round,
                        clock=self.accounting.clock,
                        clock_s=clock_s,
                        deadline_s=self.accounting.deadline_s,
                        policy=self.spec.policy,
                        result=round_result,
                        global_state=global_state,
                        metrics=metrics,
                        client_eval=client_eval,
                        scheduler_name=self.scheduler.name,
                        scheduler_state=self.scheduler.state_dict(),
                        scheduler_ms=scheduler_ms,
                        rng_state=self.roster.rng_state(),
                        optimizer_state=self.optimizer.state_dict(),
                        control_state=self.control.state_dict() if self.control is not None else {},
                    )
                )
            previous = metrics
            if last:
                if server_round < num_rounds:
                    log.info(
                        "clock budget %.1f s reached after round %d (%.1f s)", clock_budget_s, server_round, clock_s
                    )
                break
        result.arrays = adapter_to_array_record(global_state, "fp32")
        return result

    def _client_eval_due(self, server_round: int) -> bool:
        """Every ``client_eval_every`` rounds (the last round is always evaluated: fairness is
        measured on the final adapter)."""
        every = self.spec.client_eval_every
        return every > 0 and server_round % every == 0
