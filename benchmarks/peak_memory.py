"""Peak memory of one client's LoRA training on SmolLM2-135M at 4, 8, 16 and 32 backbone bits.

Each bit width runs in its own fresh process (so one width's allocations cannot hide
another's): load the backbone through FLQ's task layer, attach LoRA at the run's default
rank on the default targets, then train a few steps on BBC News batches exactly as a client
does (``train_steps``). Reported per width: resident memory after loading (freed heap
returned to the OS first, ``malloc_trim``), the peak during
training (RSS high-water mark reset at the start of training, ``/proc/self/clear_refs``),
the peak while loading, and the estimate FLQ's schedulers use for memory limits
(``flq.task.cost``). On CPU this is RSS; on CUDA the same script reports max allocated.

    .venv/bin/python benchmarks/peak_memory.py            # writes results/peak_memory.md
    .venv/bin/python benchmarks/peak_memory.py --bits 4 16 --steps 2
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def measure(bits: int, steps: int, rank: int, batch_size: int, seq_len: int) -> dict:
    """Load, attach LoRA and train in this process; return the figures (MB)."""
    from flq.config import RunConfig
    from flq.task.cost import estimate_train_memory_mb, model_shape
    from flq.task.lora import get_lora_model
    from flq.task.model_cache import resolve_model
    from flq.task.partition import client_split
    from flq.task.specs import backbone_spec, data_spec, lora_spec
    from flq.task.train import make_batches, rss_peak_mb, train_steps

    cfg = RunConfig(lora_rank=rank, batch_size=batch_size, max_seq_length=seq_len, backbone_bits=bits)
    split = client_split(data_spec(cfg), 0, 4)
    model = get_lora_model(backbone_spec(cfg, bits), lora_spec(cfg))
    model.use_rank(rank)
    load_peak_mb = rss_peak_mb()  # VmHWM since the process started: loading's own peak
    # Hand freed heap back to the OS so the figures below are what the model holds, not what
    # loading (conversion buffers, quantization) left in glibc's free lists.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    loaded_mb = _rss_mb()
    adapter_params = sum(p.numel() for p in model.trainable_parameters())
    batches = make_batches(cfg.task, split.train, model.tokenizer, batch_size, seq_len, seed=0)
    stats = train_steps(model.model, batches, steps, cfg.learning_rate)
    device = next(model.model.parameters()).device
    return {
        "bits": bits,
        "device": str(device),
        "loaded_mb": loaded_mb,
        "train_peak_mb": stats.peak_mem_mb,
        "load_peak_mb": load_peak_mb,
        "estimate_mb": estimate_train_memory_mb(
            model_shape(resolve_model(cfg.model)), bits, adapter_params, batch_size, seq_len
        ),
        "adapter_params": adapter_params,
        "steps": stats.steps,
        "loss_before": stats.loss_before,
        "loss_after": stats.loss_after,
    }


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 8, 16, 32], choices=[4, 8, 16, 32])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child process mode
    parser.add_argument("--report", type=Path, default=RESULTS / "peak_memory.md")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.bits[0], args.steps, args.rank, args.batch_size, args.seq_len)))
        return

    rows = []
    for bits in args.bits:
        print(f"[peak-memory] {bits}-bit backbone ...", flush=True)
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                "--bits",
                str(bits),
                "--steps",
                str(args.steps),
                "--rank",
                str(args.rank),
                "--batch-size",
                str(args.batch_size),
                "--seq-len",
                str(args.seq_len),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if child.returncode != 0:
            sys.exit(f"{bits}-bit run failed:\n{child.stderr[-3000:]}")
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(
            f"  loaded {r['loaded_mb']:.0f} MB, training peak {r['train_peak_mb']:.0f} MB, "
            f"estimate {r['estimate_mb']:.0f} MB",
            flush=True,
        )

    base = next((r for r in rows if r["bits"] == 16), rows[0])
    lines = [
        "# Peak memory per client by backbone bits (SmolLM2-135M + LoRA)",
        "",
        f"Each width in a fresh process on {platform.machine()} ({rows[0]['device']}): load through `flq.task`, "
        f"LoRA rank {args.rank} on the default targets (q, k, v, o) with the trainable 5-class head, "
        f"{args.steps} AdamW steps of batch {args.batch_size} x {args.seq_len} tokens of BBC News. "
        "RSS in MB (CUDA: max allocated). 'after load' is measured after `malloc_trim` returned the heap "
        "that loading freed; 'training peak' is the high-water mark over the training steps alone; 'loading "
        "peak' is the high-water mark while loading (conversion and quantization buffers); 'estimate' is `flq.task.cost.estimate_train_memory_mb`, what the schedulers and the tier "
        "memory check use.",
        "",
        f"Command: `.venv/bin/python benchmarks/peak_memory.py --steps {args.steps}`",
        "",
        "| backbone bits | after load (MB) | training peak (MB) | loading peak (MB) | vs 16-bit peak | estimate (MB) | loss first -> after |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['bits']} | {r['loaded_mb']:.0f} | {r['train_peak_mb']:.0f} | {r['load_peak_mb']:.0f} | "
            f"{r['train_peak_mb'] / base['train_peak_mb']:.2f}x | {r['estimate_mb']:.0f} | "
            f"{r['loss_before']:.3f} -> {r['loss_after']:.3f} |"
        )
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
