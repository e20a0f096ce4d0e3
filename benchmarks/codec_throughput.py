"""Update codec: bytes per scheme and encode/decode throughput, side by side in one run.

Adapters have SmolLM2-135M's shapes: 30 layers, hidden 576, 9 query heads and 3 key/value
heads of 64 (k/v out 192); LoRA on q, k, v, o (A is (r, 576), B is (out, r)), at r = 8 and
r = 64. Two contents per rank:

* ``update``: a trained update, A ~ N(0, 0.02), B ~ N(0, 1e-3): dense, what clients send up;
* ``fresh``: a freshly initialised adapter, A ~ U(+-1/sqrt(576)) (peft's kaiming-uniform
  bound), every B zero: what the server sends down in round 1.

Sizes are the exact bytes the Flower ArrayRecord carries for the tensors (``len(array.data)``
summed), with LZ4 off and with LZ4 where it pays (the default), each as a ratio to the fp32
codec without LZ4; ``npy`` is Flower's stock ``Array(ndarray)`` (np.save) for reference.
Throughput is MB/s of float32 input (1 MB = 1e6 B), from the best process CPU time of
``--repeats`` rounds after one warm-up (the codec is single-threaded, and on a shared machine
wall time mostly measures waiting for a core); within a round every operation runs once,
interleaved, so what load remains (caches, memory bandwidth) hits all schemes alike. ``+EF``
rows time ``ErrorFeedback.encode`` (encode plus the residual update). The LZ4 column adds the
cost of the probes that decide whether to compress. Relative error is ||decoded - x|| / ||x|| over the adapter.

    .venv/bin/python benchmarks/codec_throughput.py           # writes results/codec_throughput.md
    .venv/bin/python benchmarks/codec_throughput.py --quick   # 2 layers, results/tmp/
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import lz4
import numpy as np

from flq.codec.update_codec import SCHEMES, ErrorFeedback, decode_adapter, encode_adapter, encoded_nbytes

RESULTS_DIR = Path(__file__).resolve().parent / "results"
HIDDEN = 576
KV_OUT = 192  # 3 key/value heads of 64
SMOLLM2_LAYERS = 30
RANKS = (8, 64)
EF_SCHEMES = ("int8", "int4")
NPY = "npy (Flower default)"


@dataclass(frozen=True)
class Row:
    adapter: str
    scheme: str
    bytes_raw: int
    bytes_lz4: int
    rel_error: float | None
    encode_raw: float | None  # MB/s of float32 input, LZ4 off
    encode_lz4: float | None  # MB/s, LZ4 where it pays
    decode_lz4: float | None  # MB/s


def smollm2_adapter(rank: int, layers: int, fresh: bool, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(HIDDEN)
    state = {}
    for layer in range(layers):
        for proj, out in (("q", HIDDEN), ("k", KV_OUT), ("v", KV_OUT), ("o", HIDDEN)):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{proj}_proj"
            if fresh:
                a = rng.uniform(-bound, bound, size=(rank, HIDDEN))
                b = np.zeros((out, rank))
            else:
                a = rng.normal(0, 0.02, size=(rank, HIDDEN))
                b = rng.normal(0, 1e-3, size=(out, rank))
            state[f"{prefix}.lora_A.weight"] = a.astype(np.float32)
            state[f"{prefix}.lora_B.weight"] = b.astype(np.float32)
    return state


def best_seconds(tasks: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best CPU time of each task over ``repeats`` rounds; tasks interleave within a round so
    load from other processes on this shared machine hits every task alike."""
    for fn in tasks.values():
        fn()  # warm-up
    best = dict.fromkeys(tasks, float("inf"))
    for _ in range(repeats):
        for label, fn in tasks.items():
            start = time.process_time()  # the codec is single-threaded: CPU time, not waits for a core
            fn()
            best[label] = min(best[label], time.process_time() - start)
    return best


def relative_error(state: dict[str, np.ndarray], decoded: dict[str, np.ndarray]) -> float:
    err = sum(float(np.sum((decoded[k] - v) ** 2, dtype=np.float64)) for k, v in state.items())
    ref = sum(float(np.sum(v.astype(np.float64) ** 2)) for v in state.values())
    return float(np.sqrt(err / ref)) if ref else 0.0


def npy_encode(state: dict[str, np.ndarray]) -> dict[str, bytes]:
    """What Flower's Array(ndarray) ships: one np.save buffer per tensor."""
    out = {}
    for key, value in state.items():
        buffer = io.BytesIO()
        np.save(buffer, value, allow_pickle=False)
        out[key] = buffer.getvalue()
    return out


def npy_decode(encoded: dict[str, bytes]) -> dict[str, np.ndarray]:
    return {k: np.load(io.BytesIO(v), allow_pickle=False) for k, v in encoded.items()}


def timing_tasks(state: dict[str, np.ndarray]) -> dict[tuple[str, str], Callable[[], object]]:
    """Every timed operation on one adapter, keyed by (scheme, operation)."""
    npy = npy_encode(state)
    tasks: dict[tuple[str, str], Callable[[], object]] = {
        (NPY, "encode_raw"): lambda: npy_encode(state),
        (NPY, "decode"): lambda: npy_decode(npy),
    }
    for scheme in SCHEMES:
        encoded = encode_adapter(state, scheme)
        tasks[(scheme, "encode_raw")] = lambda s=scheme: encode_adapter(state, s, lz4=False)
        tasks[(scheme, "encode_lz4")] = lambda s=scheme: encode_adapter(state, s)
        tasks[(scheme, "decode")] = lambda e=encoded: decode_adapter(e)
    for scheme in EF_SCHEMES:
        feedback = ErrorFeedback()
        tasks[(f"{scheme}+EF", "encode_lz4")] = lambda s=scheme, f=feedback: f.encode(state, s)
    return tasks


def size_rows(name: str, state: dict[str, np.ndarray], speed: dict[tuple[str, str], float]) -> list[Row]:
    npy = npy_encode(state)
    rows = [
        Row(
            name,
            NPY,
            encoded_nbytes(npy),
            encoded_nbytes(npy),
            0.0,
            speed.get((NPY, "encode_raw")),
            None,
            speed.get((NPY, "decode")),
        )
    ]
    for scheme in SCHEMES:
        encoded_lz4 = encode_adapter(state, scheme)
        rows.append(
            Row(
                name,
                scheme,
                encoded_nbytes(encode_adapter(state, scheme, lz4=False)),
                encoded_nbytes(encoded_lz4),
                relative_error(state, decode_adapter(encoded_lz4)),
                speed.get((scheme, "encode_raw")),
                speed.get((scheme, "encode_lz4")),
                speed.get((scheme, "decode")),
            )
        )
    for scheme in EF_SCHEMES:
        size = encoded_nbytes(ErrorFeedback().encode(state, scheme))
        rows.append(Row(name, f"{scheme}+EF", size, size, None, None, speed.get((f"{scheme}+EF", "encode_lz4")), None))
    return rows


def measure_all(layers: int, repeats: int, seed: int) -> tuple[list[Row], dict[str, int]]:
    rows, sizes = [], {}
    for rank in RANKS:
        for fresh in (False, True):
            name = f"r={rank} {'fresh' if fresh else 'update'}"
            state = smollm2_adapter(rank, layers, fresh, seed)
            sizes[name] = sum(v.nbytes for v in state.values())
            print(f"{name}: {sizes[name] / 1e6:.2f} MB fp32", file=sys.stderr)
            best = best_seconds(timing_tasks(state), repeats)
            speed = {key: sizes[name] / 1e6 / seconds for key, seconds in best.items()}
            rows += size_rows(name, state, speed)
    return rows, sizes


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def markdown_report(rows: Sequence[Row], sizes: dict[str, int], context: dict[str, str]) -> str:
    baseline = {r.adapter: r.bytes_raw for r in rows if r.scheme == "fp32"}
    lines = ["# Update codec: bytes and throughput per scheme", ""]
    lines += [f"- {k}: {v}" for k, v in context.items()]
    lines += ["- adapter sizes (raw float32): " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items()), ""]
    lines += [
        "## Bytes on the wire (tensor bytes of the ArrayRecord)",
        "",
        "| adapter | scheme | bytes, LZ4 off | x fewer than fp32 | bytes, LZ4 where it pays | x fewer than fp32 | rel. error |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.scheme.endswith("+EF"):
            continue
        base = baseline[r.adapter]
        lines.append(
            f"| {r.adapter} | {r.scheme} | {r.bytes_raw:,} | {base / r.bytes_raw:.2f} | "
            f"{r.bytes_lz4:,} | {base / r.bytes_lz4:.2f} | {_fmt(r.rel_error, '.2e')} |"
        )
    lines += [
        "",
        "## Throughput (MB/s of float32 input, best CPU time of the timed rounds)",
        "",
        "| adapter | scheme | encode, LZ4 off | encode, LZ4 where it pays | decode |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.adapter} | {r.scheme} | {_fmt(r.encode_raw, '.0f')} | "
            f"{_fmt(r.encode_lz4, '.0f')} | {_fmt(r.decode_lz4, '.0f')} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 layers, 2 repeats, output under results/tmp/")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    layers = 2 if args.quick else SMOLLM2_LAYERS
    repeats = 2 if args.quick else args.repeats
    out = args.out or RESULTS_DIR / ("tmp" if args.quick else "") / "codec_throughput.md"
    rows, sizes = measure_all(layers, repeats, args.seed)
    context = {
        "model": f"SmolLM2-135M shapes, {layers} layers, LoRA on q,k,v,o (A: r x 576; B: 576 or 192 x r)",
        "codec": "int8 blocks of 512, int4 blocks of 128 (defaults); 32 B header per 2-D tensor",
        "timing": f"best CPU time of {repeats} interleaved rounds after one warm-up, single thread",
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, "
        f"Python {platform.python_version()}, numpy {np.__version__}, lz4 {lz4.__version__}",
    }
    report = markdown_report(rows, sizes, context)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(report)
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
