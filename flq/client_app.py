"""FLQ ClientApp: trains the LoRA adapter it is sent, at the rank and bits it is told.

Three handlers:

* ``query``: who this node is (partition, data size, tier, memory limit), asked once;
* ``train``: load the backbone at the assigned bits and an adapter at the assigned rank,
  overwrite it with the received global adapter, train up to ``local-steps`` steps (or what
  fits the time budget), reply with the update as a delta and what was measured (with
  SCAFFOLD, also the change of this node's control variate);
* ``evaluate``: score the global adapter on this node's own test split (fairness).

The backbone never leaves the node; only the adapter's trainable tensors travel. A node's tier
comes from its ``--node-config tier=...`` (deployment) or the run config's ``tiers`` mix by
partition id (simulation, where Flower only gives ``partition-id``). The tier's hints drive
local training: ``batch_size`` replaces the run's, ``mixed_precision`` trains a 32-bit backbone
under half-precision autocast (``local_training``); its ``max_rank`` is enforced by the strategy.
The same handlers serve every task (text or image classification, causal LM).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from . import wire
from .adapter import AdapterState, num_parameters, pad_to_rank, subtract, truncate_to_rank
from .codec.flower_records import (
    adapter_to_array_record,
    array_record_nbytes,
    array_record_to_adapter,
    encoded_to_array_record,
)
from .codec.update_codec import encode_adapter, encode_with_feedback, encoded_nbytes
from .config import NodeConfigError, RunConfig
from .logs import log, quiet_libraries
from .scheduler.priors import own_batch_size
from .scheduler.spread import parse_factor_spread
from .sim.clock import comm_seconds, misfit_for
from .sim.tiers import TierProfile, assign_tiers, load_tiers
from .status import ClientStatus
from .strategy.scaffold import client_control_at_rank, client_control_update, merge_client_control
from .task.cost import estimate_train_memory_mb, model_shape
from .task.lora import LoraModel, get_lora_model
from .task.lr_schedule import round_learning_rate
from .task.model_cache import resolve_model
from .task.models import resolve_device
from .task.partition import client_split
from .task.specs import backbone_spec, data_spec, generation_spec, lora_spec
from .task.train import autocast_dtype, class_loss_options, make_batches, set_torch_threads, train_steps
from .task.train import evaluate as evaluate_adapter

quiet_libraries()
app = ClientApp()

RESIDUALS_KEY = "flq-error-feedback"
CONTROL_KEY = "flq-scaffold-control"  # this node's SCAFFOLD c_i, kept across rounds


@dataclass(frozen=True)
class Node:
    """This node as FLQ sees it."""

    partition_id: int
    num_partitions: int
    tier: TierProfile
    simulated: bool


def in_simulation() -> bool:
    """True inside Flower's Ray simulation engine (the clock is virtual there)."""
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def this_node(context: Context, cfg: RunConfig) -> Node:
    nc = context.node_config
    try:
        pid, n = int(nc["partition-id"]), int(nc["num-partitions"])
    except KeyError as exc:
        raise NodeConfigError(
            f"node config needs {exc.args[0]!r}: start the SuperNode with "
            "--node-config 'partition-id=0 num-partitions=N tier=\"cpu-edge\"'"
        ) from None
    if not 0 <= pid < n:
        raise NodeConfigError(f"partition-id={pid} outside [0, num-partitions={n})")
    tiers = load_tiers(cfg.tier_file or None)
    name = str(nc["tier"]) if "tier" in nc else assign_tiers(cfg.tiers, n, known=tiers)[pid]
    if name not in tiers:
        raise NodeConfigError(f"unknown tier {name!r}; known: {sorted(tiers)} (or add it to tier-file)")
    simulated = in_simulation()
    if not simulated:
        set_torch_threads(tiers[name].threads)  # a CPU tier really gets its few threads
    return Node(pid, n, tiers[name], simulated)


@dataclass(frozen=True)
class LocalTraining:
    """How this node trains: its batch size and autocast dtype (None: full precision)."""

    batch_size: int
    autocast: torch.dtype | None


def local_training(
    cfg: RunConfig, tier: TierProfile, bits: int, device: torch.device | None = None, batch_cap: int = 0
) -> LocalTraining:
    """The tier's hints applied: a Jetson trains at its own batch size, under fp16/bf16 autocast.

    ``batch_cap`` (> 0): the scheduler's examples per step for this round, when one step of
    the client's own batch would miss the deadline; it only ever lowers the batch.
    """
    device = resolve_device("auto") if device is None else device
    batch_size = own_batch_size(tier, cfg.batch_size)
    if batch_cap > 0:
        batch_size = min(batch_size, batch_cap)
    return LocalTraining(batch_size, autocast_dtype(tier.mixed_precision, bits, device))


def tier_info(node: Node, **extra: str) -> ConfigRecord:
    return ConfigRecord({wire.TIER: node.tier.name, **extra})


@app.query()
def query(msg: Message, context: Context) -> Message:
    cfg = RunConfig.from_flower(context.run_config)
    node = this_node(context, cfg)
    split = client_split(data_spec(cfg), node.partition_id, node.num_partitions)
    metrics = MetricRecord(
        {
            wire.PARTITION_ID: node.partition_id,
            wire.NUM_PARTITIONS: node.num_partitions,
            wire.NUM_TRAIN: len(split.train),
            wire.MEMORY_LIMIT_MB: float(node.tier.memory_limit_mb or 0.0),
            wire.SIMULATED: int(node.simulated),
        }
    )
    return Message(RecordDict({wire.METRICS: metrics, wire.INFO: tier_info(node)}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = RunConfig.from_flower(context.run_config)
    node = this_node(context, cfg)
    ask = msg.content[wire.CONFIG]
    server_round = int(ask[wire.SERVER_ROUND])
    rank, bits, max_steps = int(ask[wire.RANK]), int(ask[wire.BITS]), int(ask[wire.LOCAL_STEPS])
    local = local_training(cfg, node.tier, bits, batch_cap=int(ask.get(wire.BATCH_SIZE, 0)))
    received = array_record_to_adapter(msg.content[wire.ARRAYS])

    too_big = memory_problem(cfg, node.tier, bits, num_parameters(received), local.batch_size)
    if too_big:
        log.warning("partition %d (%s): %s", node.partition_id, node.tier.name, too_big)
        info = tier_info(node, **{wire.STATUS: ClientStatus.OOM.value, wire.REASON: too_big})
        metrics = MetricRecord({wire.PARTITION_ID: node.partition_id, wire.NUM_EXAMPLES: 0})
        return Message(RecordDict({wire.METRICS: metrics, wire.INFO: info}), reply_to=msg)

    split = client_split(data_spec(cfg), node.partition_id, node.num_partitions)
    model = get_lora_model(backbone_spec(cfg, bits), lora_spec(cfg))
    model.use_rank(rank)
    model.load_adapter_state(received)
    control = read_control(msg, context, rank)  # SCAFFOLD: (c, c_i) at this rank, or None when off

    codec = str(ask[wire.CODEC_UP])
    should_stop = None
    if wire.BUDGET_S in ask:
        virtual = str(ask.get(wire.CLOCK, "virtual")) == "virtual"
        upload = encoded_nbytes(encode_adapter(received, codec, lz4=False))  # an upper bound: no LZ4
        download = sum(array_record_nbytes(r) for r in msg.content.array_records.values())
        if control is not None:  # the control delta goes up beside the update, in fp32
            upload += encoded_nbytes(encode_adapter(control[0], "fp32", lz4=False))
        # what the round costs outside training: the link and this tier's per-round start-up
        comm_s = comm_seconds(node.tier, upload, download, int(ask.get(wire.HANDSHAKE_RTTS, 1))) + node.tier.startup_s
        should_stop = budget_stopper(float(ask[wire.BUDGET_S]), charged_compute_factor(cfg, node, virtual), comm_s)

    seed = cfg.seed * 1_000_003 + server_round * 1_009 + node.partition_id
    torch.manual_seed(seed)
    batches = make_batches(
        cfg.task, split.train, model.processor, local.batch_size, cfg.max_seq_length, seed, cfg.packing
    )
    learning_rate = round_learning_rate(
        cfg.learning_rate, cfg.lr_schedule, server_round, cfg.num_server_rounds, cfg.lr_warmup_rounds
    )
    stats = train_steps(
        model.model,
        batches,
        max_steps,
        learning_rate,
        cfg.weight_decay,
        should_stop,
        autocast=local.autocast,
        proximal_mu=cfg.proximal_mu,
        max_grad_norm=cfg.max_grad_norm,
        **class_loss_options(split.train.labels, split.train.num_labels, cfg.class_weighting, cfg.restricted_softmax),
        control_correction=None if control is None else control_correction(model, *control),
    )
    # The delta is taken from what this client actually decoded, so with a quantized
    # broadcast the update still carries exactly what local training changed.
    trained = model.adapter_state()
    delta = subtract(trained, received)
    update = encode_update(delta, codec, bool(ask.get(wire.ERROR_FEEDBACK, False)), rank, context)

    metrics = MetricRecord(
        {
            wire.NUM_EXAMPLES: stats.num_examples,
            wire.STEPS: stats.steps,
            wire.LOSS_BEFORE: stats.loss_before,
            wire.LOSS_AFTER: stats.loss_after,
            wire.COMPUTE_S: stats.compute_s,
            wire.PEAK_MEM_MB: stats.peak_mem_mb,
            wire.TORCH_THREADS: torch.get_num_threads(),
            wire.PARTITION_ID: node.partition_id,
        }
    )
    content = RecordDict(
        {wire.ARRAYS: update, wire.METRICS: metrics, wire.INFO: tier_info(node, **{wire.STATUS: ClientStatus.OK.value})}
    )
    if control is not None:
        c, c_i = control
        content[wire.CONTROL_DELTA] = update_control(context, c, c_i, received, trained, stats.steps, learning_rate)
    return Message(content, reply_to=msg)


def memory_problem(cfg: RunConfig, tier: TierProfile, bits: int, adapter_params: int, batch_size: int) -> str:
    """Why this tier's memory cannot hold the assignment ('' if it can, or if unknown)."""
    if not tier.memory_limit_mb:
        return ""
    try:
        shape = model_shape(resolve_model(cfg.model))
    except (OSError, ValueError):
        return ""  # a hub model not on disk yet: nothing to size it from
    need = estimate_train_memory_mb(shape, bits, adapter_params, batch_size, cfg.max_seq_length)
    if need <= tier.memory_limit_mb:
        return ""
    return (
        f"needs ~{need:.0f} MB at {bits} bits (batch {batch_size} x {cfg.max_seq_length}), "
        f"tier {tier.name} has {tier.memory_limit_mb:.0f} MB"
    )


def charged_compute_factor(cfg: RunConfig, node: Node, virtual: bool) -> float:
    """What the run's clock charges per measured compute second: the tier's factor times the
    node's ``compute-misfit`` on the virtual clock (the node knows its true speed, the
    scheduler does not), 1 on the real one."""
    if not virtual:
        return 1.0
    misfit = misfit_for(
        parse_factor_spread(cfg.compute_misfit, "compute-misfit"),
        node.partition_id,
        node.num_partitions,
        node.tier.name,
    )
    return node.tier.compute_factor * misfit


def budget_stopper(
    budget_s: float, compute_factor: float, comm_s: float, margin: float = 0.1
) -> Callable[[int, float], bool]:
    """Stop before the next step would push compute (on the run's clock) plus transfers past the budget.

    The next step is predicted conservatively, as the slowest step so far plus ``margin``:
    step times vary (caches, contention), and a client that overruns its budget is late.
    At least one step is always taken: an update of one step is worth more than none.
    """
    slowest = 0.0
    last_elapsed = 0.0

    def should_stop(steps_done: int, measured_s: float) -> bool:
        nonlocal slowest, last_elapsed
        if steps_done == 0:
            return False
        slowest = max(slowest, measured_s - last_elapsed)
        last_elapsed = measured_s
        next_step = slowest * (1.0 + margin)
        return (measured_s + next_step) * compute_factor + comm_s > budget_s

    return should_stop


def encode_update(delta: AdapterState, codec: str, error_feedback: bool, rank: int, context: Context) -> ArrayRecord:
    """Encode the update; with error feedback, add last round's residual and keep the new one.

    The residual lives in ``context.state`` (Flower keeps it across rounds for this node). When
    the node's rank changes, the residual is truncated or zero-padded to the new rank.
    """
    if not error_feedback or codec == "fp32":
        return adapter_to_array_record(delta, codec)
    stored = context.state.array_records.get(RESIDUALS_KEY)
    residuals = array_record_to_adapter(stored) if stored is not None else {}
    residuals = {k: v for k, v in pad_to_rank(truncate_to_rank(residuals, rank), rank).items() if k in delta}
    encoded, new_residuals = encode_with_feedback(delta, residuals, codec)
    context.state[RESIDUALS_KEY] = adapter_to_array_record(new_residuals, "fp32")
    return encoded_to_array_record(encoded)


def read_control(msg: Message, context: Context, rank: int) -> tuple[AdapterState, AdapterState] | None:
    """SCAFFOLD's ``(c, c_i)`` at ``rank``: the server's control variate as sent, and this node's own
    as kept in ``context.state`` (zero where it has none yet); None when the server sent no control."""
    record = msg.content.get(wire.CONTROL)
    if record is None:
        return None
    c = array_record_to_adapter(record)
    stored = context.state.array_records.get(CONTROL_KEY)
    return c, client_control_at_rank(array_record_to_adapter(stored) if stored is not None else {}, c, rank)


def control_correction(model: LoraModel, c: AdapterState, c_i: AdapterState) -> dict[str, torch.Tensor]:
    """``c - c_i`` keyed by the trainable parameters' names (what ``train_steps`` matches them by)."""
    names = model.parameter_names()
    return {names[key]: torch.from_numpy(value) for key, value in subtract(c, c_i).items()}


def update_control(
    context: Context,
    c: AdapterState,
    c_i: AdapterState,
    sent: AdapterState,
    trained: AdapterState,
    steps: int,
    learning_rate: float,
) -> ArrayRecord:
    """Keep this node's new ``c_i+`` and return ``delta_c_i = c_i+ - c_i`` for the reply (fp32).

    ``learning_rate`` is the round's (``round_learning_rate``) and ``steps`` the steps taken.
    Components above this round's rank stay as kept (``merge_client_control``).
    """
    new = client_control_update(c_i, c, sent, trained, steps, learning_rate)
    stored = context.state.array_records.get(CONTROL_KEY)
    kept = merge_client_control(array_record_to_adapter(stored) if stored is not None else {}, new)
    context.state[CONTROL_KEY] = adapter_to_array_record(kept, "fp32")
    return adapter_to_array_record(subtract(new, c_i), "fp32")


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg = RunConfig.from_flower(context.run_config)
    node = this_node(context, cfg)
    ask = msg.content[wire.CONFIG]
    split = client_split(data_spec(cfg), node.partition_id, node.num_partitions)
    model = get_lora_model(backbone_spec(cfg, int(ask.get(wire.BITS, cfg.backbone_bits))), lora_spec(cfg))
    model.use_rank(int(ask[wire.RANK]))
    model.load_adapter_state(array_record_to_adapter(msg.content[wire.ARRAYS]))
    stats = evaluate_adapter(
        model.model,
        cfg.task,
        split.test,
        model.processor,
        cfg.eval_batch_size,
        cfg.max_seq_length,
        generation_spec(cfg),
    )
    metrics = MetricRecord(
        {
            wire.SCORE: stats.score,
            wire.LOSS: stats.loss,
            wire.NUM_EXAMPLES: stats.num_examples,
            wire.PARTITION_ID: node.partition_id,
        }
    )
    if stats.classes is not None:
        metrics[wire.BALANCED_ACCURACY] = stats.classes.balanced_accuracy
        metrics[wire.MACRO_F1] = stats.classes.macro_f1
    return Message(RecordDict({wire.METRICS: metrics, wire.INFO: tier_info(node)}), reply_to=msg)
