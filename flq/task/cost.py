"""Cost estimates of LoRA training: memory (so a client can refuse work its memory cannot
hold) and time per step (a prior for schedulers, which then learn each client's real times).

An estimate, not a measurement (peak memory is measured while training): weights at the
backbone's bits (embeddings and norms stay at 16 bits when linear layers are quantized),
the LoRA factors and head with their gradients and two AdamW moments in float32, the
activations kept for backward, and a fixed runtime overhead. How near it lands to the
measured peak of SmolLM2 runs: benchmarks/results/peak_memory.md (estimate vs training peak;
docs/clock.md explains its use).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

# Calibrated on the reference machine (SmolLM2-135M, bf16, batch 8 x 64, rank 8; /proc VmRSS/VmHWM)
# against the measured after-load and training peaks of benchmarks/results/peak_memory.md
# (benchmarks/peak_memory.py remeasures them).
RUNTIME_OVERHEAD_MB = 450.0  # Python + torch + transformers + flwr + the client's data
BYTES_PER_WEIGHT = {32: 4.0, 16: 2.0, 8: 1.0 + 0.02, 4: 0.5 + 0.04}  # incl. quantization constants
ACTIVATION_BYTES_PER_VALUE = 100.0  # per batch x seq x hidden x layer: saved activations + allocator slack


@dataclass(frozen=True)
class ModelShape:
    linear_params: int  # parameters in transformer linear layers (quantizable)
    other_params: int  # embeddings, norms, heads (kept at 16/32 bits)
    hidden: int
    layers: int


def model_shape(model_dir: str | Path) -> ModelShape:
    """Parameter counts from a local checkpoint's safetensors header (no weights are read)."""
    path = Path(model_dir)
    config = json.loads((path / "config.json").read_text())
    hidden = int(config.get("hidden_size") or config.get("d_model") or config.get("hidden_sizes", [0])[-1] or 0)
    layers = int(config.get("num_hidden_layers") or config.get("n_layer") or 0)
    linear = other = 0
    for file in sorted(path.glob("*.safetensors")):
        for name, shape in _safetensors_shapes(file).items():
            numel = math.prod(shape)
            if is_block_linear(name, shape):
                linear += numel
            else:
                other += numel
    if linear + other == 0:
        raise ValueError(f"{path}: no safetensors weights to size the model from")
    return ModelShape(linear, other, hidden, layers)


# A repeated block's parameters: ``model.layers.3.`` (Llama, SmolLM2), ``encoder.layer.3.`` (BERT,
# MiniLM), ``h.3.`` (GPT-2), ``blocks.3.``.
_BLOCK = re.compile(r"(^|\.)(layers|layer|h|blocks|block)\.\d+\.")


def is_block_linear(name: str, shape: tuple[int, ...]) -> bool:
    """A linear layer's weight matrix inside a repeated block (what quantization and compute scale
    with): 2-D, not a norm, not an embedding."""
    lowered = name.lower()
    return (
        name.endswith(".weight")
        and len(shape) == 2
        and _BLOCK.search(name) is not None
        and "norm" not in lowered
        and "embed" not in lowered
    )


def _safetensors_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    with open(file, "rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        if not 0 < header_len <= 100_000_000:
            raise ValueError(f"{file}: implausible safetensors header length {header_len}")
        header = json.loads(fh.read(header_len))
    return {name: tuple(int(d) for d in meta["shape"]) for name, meta in header.items() if name != "__metadata__"}


def estimate_train_memory_mb(shape: ModelShape, bits: int, adapter_params: int, batch_size: int, seq_len: int) -> float:
    """Estimated peak memory (MB) of LoRA training at these settings."""
    other_bytes = 4.0 if bits == 32 else 2.0  # embeddings and norms are not quantized
    weights = shape.linear_params * BYTES_PER_WEIGHT[bits] + shape.other_params * other_bytes
    adapter = adapter_params * 4.0 * 4  # weights, gradients, two AdamW moments (float32)
    activations = batch_size * seq_len * shape.hidden * shape.layers * ACTIVATION_BYTES_PER_VALUE
    return (weights + adapter + activations) / 2**20 + RUNTIME_OVERHEAD_MB


# Seconds per local step per (1e9 linear parameters x 1e3 tokens in the batch) on the reference
# machine (2-core x86 CPU), by backbone bits. Measured with SmolLM2-135M, batch 8 x 64 tokens,
# median of 3 steps after a warm-up (the reference step times: docs/clock.md, "How the compute
# factors were calibrated"); 8 and 4 bits are slower than 16 because bitsandbytes dequantizes on
# CPU. A prior only: schedulers replace it with measurements.
STEP_S_PER_GPARAM_KTOKEN = {32: 39.0, 16: 26.0, 8: 50.0, 4: 55.0}


def estimate_step_seconds(shape: ModelShape, bits: int, batch_size: int, seq_len: int) -> float:
    """Reference-machine seconds for one training step (forward, backward, AdamW on the adapter)."""
    return STEP_S_PER_GPARAM_KTOKEN[bits] * (shape.linear_params / 1e9) * (batch_size * seq_len / 1e3)


def reference_step_seconds(model: str, bits: int, batch_size: int, seq_len: int) -> float:
    """``estimate_step_seconds`` of a model by name or path: the unit of ``deadline-steps``.

    Raises OSError or ValueError when the model's files are not on disk (a hub id not fetched).
    """
    from flq.task.model_cache import resolve_model

    return estimate_step_seconds(model_shape(resolve_model(model)), bits, batch_size, seq_len)
