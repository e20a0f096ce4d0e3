"""FLQ ClientApp: trains the LoRA adapter it is sent, at the rank and bits it is told.

Three handlers:

* ``query``: who this node is (partition, data size, tier), asked once at the start;
* ``train``: load the backbone at the assigned bits and an adapter at the assigned rank,
  overwrite it with the received global adapter, train up to ``local-steps`` steps (or what
  fits the time budget), reply with the update as a delta and what was measured;
* ``evaluate``: score the global adapter on this node's own test split (fairness).

The backbone never leaves the node; only the adapter's trainable tensors travel.
"""

from __future__ import annotations

import sys

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .adapter import AdapterState, pad_to_rank, subtract, truncate_to_rank
from .config import NodeConfigError, RunConfig
from .strategy import wire
from .transport.flower_records import adapter_to_array_record, array_record_to_adapter, encoded_to_array_record
from .transport.update_codec import encode_with_feedback
from .task.lora import get_lora_model
from .task.partition import client_split
from .task.specs import backbone_spec, data_spec, lora_spec
from .task.train import evaluate as evaluate_adapter
from .task.train import make_batches, train_steps

from .logs import log, quiet_libraries

quiet_libraries()
app = ClientApp()


def node_partition(context: Context) -> tuple[int, int]:
    """(partition-id, num-partitions) from the node config (simulation sets both)."""
    nc = context.node_config
    try:
        pid, n = int(nc["partition-id"]), int(nc["num-partitions"])
    except KeyError as exc:
        raise NodeConfigError(
            f"node config needs {exc.args[0]!r}: start the SuperNode with "
            "--node-config 'partition-id=0 num-partitions=N'"
        ) from None
    if not 0 <= pid < n:
        raise NodeConfigError(f"partition-id={pid} outside [0, num-partitions={n})")
    return pid, n


def node_tier(context: Context, cfg: RunConfig) -> str:
    """The node's tier: ``tier`` in its node config, else none (reference machine)."""
    return str(context.node_config.get("tier", "reference"))


def in_simulation() -> bool:
    """True inside Flower's Ray simulation engine (the clock is virtual there)."""
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


RESIDUALS_KEY = "flq-error-feedback"


def encode_update(delta: AdapterState, codec: str, error_feedback: bool, rank: int, context: Context):
    """Encode the update; with error feedback, add last round's residual and keep the new one.

    The residual lives in ``context.state`` (Flower keeps it across rounds for this node). When
    the node's rank changes, the residual is truncated or zero-padded to the new rank.
    """
    if not error_feedback or codec in ("fp32",):
        return adapter_to_array_record(delta, codec)
    stored = context.state.array_records.get(RESIDUALS_KEY)
    residuals = array_record_to_adapter(stored) if stored is not None else {}
    residuals = {k: v for k, v in pad_to_rank(truncate_to_rank(residuals, rank), rank).items() if k in delta}
    encoded, new_residuals = encode_with_feedback(delta, residuals, codec)
    context.state[RESIDUALS_KEY] = adapter_to_array_record(new_residuals, "fp32")
    return encoded_to_array_record(encoded)


@app.query()
def query(msg: Message, context: Context) -> Message:
    cfg = RunConfig.from_flower(context.run_config)
    pid, n = node_partition(context)
    split = client_split(data_spec(cfg), pid, n)
    metrics = MetricRecord({
        wire.PARTITION_ID: pid,
        wire.NUM_PARTITIONS: n,
        wire.NUM_TRAIN: len(split.train.texts),
        "simulated": int(in_simulation()),
    })
    info = ConfigRecord({wire.TIER: node_tier(context, cfg)})
    return Message(RecordDict({wire.METRICS: metrics, wire.INFO: info}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = RunConfig.from_flower(context.run_config)
    pid, n = node_partition(context)
    ask = msg.content[wire.CONFIG]
    server_round = int(ask[wire.SERVER_ROUND])
    rank, bits, max_steps = int(ask[wire.RANK]), int(ask[wire.BITS]), int(ask[wire.LOCAL_STEPS])

    split = client_split(data_spec(cfg), pid, n)
    model = get_lora_model(backbone_spec(cfg, bits), lora_spec(cfg))
    model.use_rank(rank)
    received = array_record_to_adapter(msg.content[wire.ARRAYS])
    model.load_adapter_state(received)

    seed = cfg.seed * 1_000_003 + server_round * 1_009 + pid
    torch.manual_seed(seed)
    batches = make_batches(cfg.task, split.train, model.tokenizer, cfg.batch_size, cfg.max_seq_length, seed)
    stats = train_steps(model.model, batches, max_steps, cfg.learning_rate, cfg.weight_decay)
    # The delta is taken from what this client actually decoded, so with a quantized
    # broadcast the update still carries exactly what local training changed.
    delta = subtract(model.adapter_state(), received)
    update = encode_update(delta, str(ask[wire.CODEC_UP]), bool(ask.get(wire.ERROR_FEEDBACK, False)), rank, context)

    metrics = MetricRecord({
        wire.NUM_EXAMPLES: stats.num_examples,
        wire.STEPS: stats.steps,
        wire.LOSS_BEFORE: stats.loss_before,
        wire.LOSS_AFTER: stats.loss_after,
        wire.COMPUTE_S: stats.compute_s,
        wire.PEAK_MEM_MB: stats.peak_mem_mb,
        wire.PARTITION_ID: pid,
    })
    info = ConfigRecord({wire.TIER: node_tier(context, cfg), wire.STATUS: "ok"})
    content = RecordDict({wire.ARRAYS: update, wire.METRICS: metrics, wire.INFO: info})
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg = RunConfig.from_flower(context.run_config)
    pid, n = node_partition(context)
    ask = msg.content[wire.CONFIG]
    split = client_split(data_spec(cfg), pid, n)
    model = get_lora_model(backbone_spec(cfg, int(ask.get(wire.BITS, cfg.backbone_bits))), lora_spec(cfg))
    model.use_rank(int(ask[wire.RANK]))
    model.load_adapter_state(array_record_to_adapter(msg.content[wire.ARRAYS]))
    stats = evaluate_adapter(model.model, cfg.task, split.test, model.tokenizer, cfg.eval_batch_size, cfg.max_seq_length)
    metrics = MetricRecord({
        wire.SCORE: stats.score,
        wire.LOSS: stats.loss,
        wire.NUM_EXAMPLES: stats.num_examples,
        wire.PARTITION_ID: pid,
    })
    info = ConfigRecord({wire.TIER: node_tier(context, cfg)})
    return Message(RecordDict({wire.METRICS: metrics, wire.INFO: info}), reply_to=msg)
