"""A training step's fixed cost, in examples' worth: the run config's ``step-fixed-examples``.

Runs ``flq calibrate`` (the ClientApp's own training step, docs/clock.md) at several batch sizes,
each ``--repeats`` times in alternating order, fits ``seconds = per_example * (fixed + batch)``
to the medians (flq/sim/calibration.py ``fit_step_cost``) and prints ``fixed`` with a 95%
bootstrap CI over the measured points, and the command. ``-c`` takes the run config as
``flq calibrate`` does (model, task, data, bits):

    .venv/bin/python benchmarks/step_fixed_cost.py \\
        -c 'task="image-classification" data="digits" model="mobilevit-tiny-random" backbone-bits=32'

Exit status 2 when a calibration fails (its message is printed) or the fit is impossible.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flq.sim.calibration import fit_step_cost  # noqa: E402

BOOTSTRAP_RESAMPLES = 2000


def measure_median(run_config: list[str], batch: int, args: argparse.Namespace, out: Path) -> float:
    """Median seconds per step of one ``flq calibrate`` run at ``batch``."""
    command = [str(Path(sys.executable).parent / "flq"), "calibrate"]
    for item in run_config:
        command += ["-c", item]
    command += ["--batch-size", str(batch), "--threads", str(args.threads), "--steps", str(args.steps)]
    command += ["--warmup", str(args.warmup), "--startup-runs", "0", "--out", str(out), "--force"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"flq calibrate at batch {batch} failed: {done.stderr.strip() or done.stdout.strip()}")
    record = json.loads((out / "calibration.json").read_text())
    return float(record["measurements"][0]["median_s"])


def bootstrap_ci(batches: np.ndarray, seconds: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% percentile CI of the fixed cost over resampled (batch, median) points."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(BOOTSTRAP_RESAMPLES):
        pick = rng.integers(0, len(batches), len(batches))
        try:
            values.append(fit_step_cost(batches[pick], seconds[pick]).fixed_examples)
        except ValueError:  # one batch size drawn, or no growth: no fit in this resample
            continue
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--run-config", action="append", default=[], help="as flq calibrate takes it")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--repeats", type=int, default=2, help="calibrations per batch size (alternating order)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100, help="measured steps per calibration")
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    if len(set(args.batch_sizes)) < 2 or min(args.batch_sizes) < 1 or args.repeats < 1:
        parser.error("give two or more batch sizes >= 1 and --repeats >= 1")
    batches, seconds = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for batch in args.batch_sizes if repeat % 2 == 0 else reversed(args.batch_sizes):
                try:
                    median = measure_median(args.run_config, batch, args, Path(tmp) / f"b{batch}-r{repeat}")
                except RuntimeError as exc:
                    print(exc, file=sys.stderr)
                    return 2
                print(f"batch {batch:>3}, repeat {repeat + 1}: median {median * 1000:.2f} ms per step", flush=True)
                batches.append(batch)
                seconds.append(median)
    b, t = np.asarray(batches, dtype=np.float64), np.asarray(seconds, dtype=np.float64)
    try:
        line = fit_step_cost(b, t)
    except ValueError as exc:
        print(f"no fit: {exc}", file=sys.stderr)
        return 2
    low, high = bootstrap_ci(b, t)
    print(
        f"step: {line.fixed_s * 1000:.2f} ms fixed + {line.per_example_s * 1000:.3f} ms per example; "
        f"step-fixed-examples = {line.fixed_examples:.1f} (95% bootstrap CI [{low:.1f}, {high:.1f}], "
        f"{len(b)} medians)"
    )
    print("command: .venv/bin/python " + " ".join(shlex.quote(a) for a in sys.argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
