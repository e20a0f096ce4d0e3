"""QUIC's loss recovery across the whole link grid, on a virtual clock: before and after the reordering work.

Real aioquic connections with FLQ's QUIC settings move one adapter over an emulated link
(``harness.quic_link``: every datagram through ``flq.netem.link``), with time an event clock, so
every cell of the issue's full grid runs in seconds and deterministically per seed. It isolates
the transport's decisions from this machine's CPU; the side-by-side comparison with HTTP on real
processes is benchmarks/transport_throughput.py --grid.

Variants (each a column):
* ``before``: RFC 9002's fixed thresholds, and westwood judging a queue by the smoothed RTT (the
  rule before this change, reproduced here by patching ``path_unqueued``);
* ``floor only``: fixed thresholds, westwood judging a queue by the RTT's floor;
* ``after``: adaptive reordering thresholds with spurious-loss undo, and the RTT's floor (the default).

    .venv/bin/python benchmarks/quic_link_sim.py                     # -> results/quic_link_sim.md/.png
    .venv/bin/python benchmarks/quic_link_sim.py --seeds 1 --sizes-mb 1   # quicker
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from flq.netem.link import LinkDirection  # noqa: E402
from flq.transport import congestion  # noqa: E402
from flq.transport.quic_settings import QuicSettings  # noqa: E402
from harness.quic_link import upload  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
RTTS, LOSSES, JITTERS, RATES = (20, 50, 100, 200), (0.0, 0.01, 0.03), (0, 10), (5, 20, 100)
QUEUE_MS = 100.0
VARIANTS = ("before", "floor only", "after")
FLOOR_RULE = congestion.WestwoodCongestionControl.path_unqueued


def srtt_rule(self) -> bool:
    """The rule before: a queue when the smoothed RTT is above 1.25x the minimum."""
    if self._srtt is None or math.isinf(self._min_rtt):
        return False
    return self._srtt <= congestion.QUEUEING_RTT * self._min_rtt


def run_variant(variant: str, direction: LinkDirection, size: int, seed: int, certs: Path) -> float:
    congestion.WestwoodCongestionControl.path_unqueued = srtt_rule if variant == "before" else FLOOR_RULE
    try:
        settings = QuicSettings(adaptive_reordering=variant == "after")
        return upload(size, direction, direction, certs, settings=settings, seed=seed, time_limit_s=3600).seconds
    finally:
        congestion.WestwoodCongestionControl.path_unqueued = FLOOR_RULE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[1.0, 4.0])
    parser.add_argument("--out", default=str(RESULTS / "quic_link_sim.md"))
    args = parser.parse_args()
    sizes = [int(mb * 1_000_000) for mb in args.sizes_mb]
    seeds = list(range(1, args.seeds + 1))
    rows = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        certs = Path(tmp)
        for rtt, loss, jitter, rate in itertools.product(RTTS, LOSSES, JITTERS, RATES):
            direction = LinkDirection(delay_ms=rtt / 2, jitter_ms=jitter, loss=loss, rate_mbps=rate, queue_ms=QUEUE_MS)
            name = f"{rtt}ms-{loss * 100:g}%" + (f"-j{jitter}" if jitter else "") + f"-r{rate}"
            for size in sizes:
                ideal = size * 8 / (rate * 1e6) + 2 * rtt / 1000  # at the rate, plus handshake and last ack
                times = {v: [run_variant(v, direction, size, seed, certs) for seed in seeds] for v in VARIANTS}
                rows.append((name, size, ideal, times))
                print(
                    f"{name} {size / 1e6:g} MB: "
                    + ", ".join(f"{v} {statistics.median(t):.2f} s" for v, t in times.items())
                    + f" (at the rate {ideal:.2f} s)",
                    flush=True,
                )
    out = Path(args.out)
    out.write_text(report(rows, seeds, args, time.monotonic() - started))
    plot(rows, out.with_suffix(".png"))
    print(f"written to {out}")


def report(rows, seeds, args, wall_s: float) -> str:
    def med(xs):
        return statistics.median(xs)

    speedups = [med(t["before"]) / med(t["after"]) for _, _, _, t in rows]
    jittery = [s for (name, *_), s in zip(rows, speedups, strict=True) if "-j" in name]
    steady = [s for (name, *_), s in zip(rows, speedups, strict=True) if "-j" not in name]
    efficiency = [ideal / med(t["after"]) for _, _, ideal, t in rows]
    lines = [
        "# QUIC loss recovery across the link grid, on a virtual clock: before and after",
        "",
        f"Written by `benchmarks/quic_link_sim.py --seeds {args.seeds} --sizes-mb "
        f"{' '.join(f'{s:g}' for s in args.sizes_mb)}` on {time.strftime('%Y-%m-%d %H:%M')} "
        f"({wall_s / 60:.1f} min). Real aioquic connections (FLQ's settings, westwood) upload one adapter over "
        f"an emulated link, the same both ways, with a {QUEUE_MS:g} ms drop-tail queue at the rate; time is "
        "an event clock, so this measures the protocol's decisions, not this machine's CPU. Medians over seeds "
        f"{seeds} (the link's loss and jitter draws). *before*: RFC 9002's fixed thresholds and a queue judged "
        "by the smoothed RTT; *floor only*: fixed thresholds, queue judged by the RTT's recent floor; *after*: "
        "adaptive reordering thresholds with spurious-loss undo, and the floor (FLQ's default). "
        "*at rate*: size / rate + 2 RTT.",
        "",
        f"Speed-up after/before: jittery links median {med(jittery):.2f}x (min {min(jittery):.2f}x, max "
        f"{max(jittery):.2f}x); links without jitter median {med(steady):.2f}x (min {min(steady):.2f}x, max "
        f"{max(steady):.2f}x). *after* reaches {med(efficiency):.0%} of the at-rate time in the median cell "
        f"(worst {min(efficiency):.0%}).",
        "",
        "| link | adapter | before s | floor only s | after s | at rate s | before / after |",
        "|---|---|---|---|---|---|---|",
    ]
    for (name, size, ideal, t), speedup in zip(rows, speedups, strict=True):
        lines.append(
            f"| {name} | {size / 1e6:g} MB | {med(t['before']):.2f} | {med(t['floor only']):.2f} | "
            f"{med(t['after']):.2f} | {ideal:.2f} | {speedup:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(10.0, 0.14 * len(rows)), 4.8), layout="constrained")
    ax = fig.add_subplot()
    xs = range(len(rows))
    for variant, marker in zip(VARIANTS, "xo.", strict=True):
        ax.scatter(
            xs, [statistics.median(t[variant]) / ideal for _, _, ideal, t in rows], marker=marker, label=variant, s=14
        )
    ax.set_yscale("log")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(list(xs), [f"{n} {s / 1e6:g}MB" for n, s, _, _ in rows], rotation=90, fontsize=5)
    ax.set_ylabel("upload time / time at the link's rate")
    ax.set_title("One adapter over each emulated link (virtual clock): QUIC loss recovery before and after")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=130)


if __name__ == "__main__":
    main()
