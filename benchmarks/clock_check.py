"""The virtual clock against the real one: one configuration run both ways on this machine.

1. ``flq calibrate`` measures this machine's seconds per training step at 1 and 2 threads (the
   factors are relative to 2 threads, what the simulation's clients use here) and each thread
   count's per-round start-up (fresh processes that import the ClientApp and build its model and
   data, plus the mean wait on Flower's polling). Each tier gets its own emulated link.
2. Per tier, the same run config twice: a real deployment (``flq launch``: one flq-superlink, real
   flq-supernodes pinned to the tier's cores, each tier behind its emulated link; clock ``real``) and
   a simulation (``flwr run``, one client at a time on both cores; clock ``virtual``). The 1-core tier
   runs two nodes (one per core), the 2-core tier one node: no two clients share a core, and each
   node has its own emulated link, as if on its own machine.
3. Per client per round (same partition, same round, the fixed scheduler so both do the same work):
   the virtual clock's round time (the prediction) against the deployment's (reply arrival after
   the send), and the absolute error relative to the measured time; the same without the start-up
   term shows what it is worth.

    .venv/bin/python benchmarks/clock_check.py --rounds 4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from matrix import markdown_table, write_report  # noqa: E402

from flq.sim.calibration import tier_file_text  # noqa: E402
from flq.sim.tiers import load_tiers  # noqa: E402
from harness.processes import BIN  # noqa: E402
from harness.simulation import LocalSimulation, to_toml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# Each tier's link: asymmetric, like the packaged edge tiers (flq/sim/tiers.toml).
LINKS = {
    1: {"uplink_mbps": 10.0, "downlink_mbps": 20.0, "rtt_ms": 40.0, "loss": 0.0},
    2: {"uplink_mbps": 20.0, "downlink_mbps": 50.0, "rtt_ms": 20.0, "loss": 0.0},
}
NODES = {1: 2, 2: 1}  # nodes per tier on a 2-core host: no two clients share a core


def run_config(args) -> dict:
    return {
        "model": "smollm2-135m",
        "num-server-rounds": args.rounds,
        "local-steps": args.local_steps,
        "batch-size": 8,
        "max-seq-length": 64,
        "server-test-size": 60,
        "scheduler": "fixed",
        "policy": "wait",
        "seed": args.seed,
    }


def calibrate(work: Path, args) -> dict:
    """Calibrated tiers with this benchmark's links, written to work/tiers.toml."""
    out = work / "calibration"
    step = " ".join(
        f"{k}={to_toml(v)}" for k, v in run_config(args).items() if k in ("model", "batch-size", "max-seq-length")
    )
    command = [
        str(BIN / "flq"), "calibrate", "--app", str(ROOT), "-c", step, "--threads", "1", "2",
        "--steps", str(args.calibration_steps), "--startup-runs", str(args.startup_runs),
        "--prefix", "clk", "--out", str(out), "--force",
    ]  # fmt: skip
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    calibrated = load_tiers(out / "tiers.toml")
    tiers = [dataclasses.replace(calibrated[f"clk-cpu-{t}t"], **LINKS[t]) for t in (1, 2)]
    (work / "tiers.toml").write_text(
        tier_file_text(tiers, ["flq calibrate's tiers with benchmarks/clock_check.py's links"])
    )
    return {t.threads: t for t in tiers}


def launch(work: Path, tier, args) -> Path:
    """A real deployment of ``tier`` behind its emulated link; returns its run directory."""
    name = f"real-{tier.name}"
    run = {**run_config(args), "tier-file": str(work / "tiers.toml")}
    lines = [
        "[experiment]", f'name = "{name}"', f'app = "{ROOT}"', "timeout-s = 3600", "",
        "[run]", *(f"{k} = {to_toml(v)}" for k, v in run.items()), "",
        # one group per node: a group shares one emulated link, and each client has its own, as on its own machine
        *(line for _ in range(NODES[tier.threads]) for line in (
            "[[supernodes]]", f'tier = "{tier.name}"', "count = 1", f"cpus = {tier.threads}", "")),
        "[network]", "emulate = true", "queue-ms = 100", "",
    ]  # fmt: skip
    experiment = work / f"{name}.toml"
    experiment.write_text("\n".join(lines))
    results = work / name
    command = [str(BIN / "flq"), "launch", str(experiment), "--results", str(results)]
    print("$", " ".join(command), flush=True)
    shutil.rmtree(results, ignore_errors=True)  # the launcher wants a fresh folder
    code = subprocess.run(command, cwd=ROOT, env={**os.environ, "FLWR_DISABLE_UPDATE_CHECK": "1"}).returncode
    if code != 0:
        raise SystemExit(f"the deployment of {tier.name} failed (exit {code}): see {results}")
    return results / name


def simulate(work: Path, tier, args) -> Path:
    overrides = {
        **run_config(args),
        "tier-file": str(work / "tiers.toml"),
        "tiers": tier.name,
        "clients-per-round": NODES[tier.threads],  # what the launcher sets: every node, each round
    }
    name = f"virtual-{tier.name}"
    with LocalSimulation(work / f"sim-{tier.name}") as sim:
        run = sim.run(overrides, NODES[tier.threads], name, out_dir=work / "sim-runs", num_cpus=2)
        status = sim.last_run_status()
    if status != "finished:completed":
        raise SystemExit(f"the simulation of {tier.name} ended {status}:\n{run.log[-3000:]}")
    return run.run_dir


def client_rounds(run_dir: Path) -> dict[tuple[int, int], dict]:
    """(partition, round) -> that client's record, for accepted training replies."""
    out = {}
    for line in (run_dir / "rounds.jsonl").read_text().splitlines():
        record = json.loads(line)
        for c in record["clients"]:
            if c["status"] == "ok":
                out[(c["partition_id"], record["server_round"])] = {**c, "clock": record["clock"]}
    return out


def compare(real_dir: Path, virtual_dir: Path, tier) -> list[dict]:
    real, virtual = client_rounds(real_dir), client_rounds(virtual_dir)
    rows = []
    for key in sorted(set(real) & set(virtual)):
        r, v = real[key], virtual[key]
        assert r["clock"] == "real" and v["clock"] == "virtual"
        rows.append(
            {
                "tier": tier.name,
                "partition": key[0],
                "round": key[1],
                "steps": (r["steps"], v["steps"]),
                "real_s": r["round_s"],
                "real_compute_s": r["compute_s"],
                "virtual_s": v["round_s"],
                "virtual_compute_s": v["compute_s"],
                "without_startup_s": v["round_s"] - tier.startup_s,
            }
        )
    return rows


def errors(rows: list[dict], key: str) -> np.ndarray:
    return np.array([abs(r[key] - r["real_s"]) / r["real_s"] for r in rows])


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for tier in sorted({r["tier"] for r in rows}):
        mine = [r for r in rows if r["tier"] == tier]
        ax.scatter([r["real_s"] for r in mine], [r["virtual_s"] for r in mine], label=f"{tier} (with start-up)")
        ax.scatter(
            [r["real_s"] for r in mine], [r["without_startup_s"] for r in mine], marker="x", label=f"{tier} (without)"
        )
    top = max(max(r["real_s"], r["virtual_s"]) for r in rows) * 1.1
    ax.plot([0, top], [0, top], color="grey", lw=1)
    ax.fill_between([0, top], [0, top * 0.8], [0, top * 1.2], color="grey", alpha=0.15, label="within 20%")
    ax.set_xlim(0, top), ax.set_ylim(0, top)
    ax.set_xlabel("measured round time, real deployment (s)")
    ax.set_ylabel("virtual clock's round time (s)")
    ax.set_title("Virtual vs real clock, per client per round")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def summary_rows(rows: list[dict]) -> list[list[str]]:
    out = []
    for tier in [*sorted({r["tier"] for r in rows}), "all"]:
        mine = [r for r in rows if tier in ("all", r["tier"])]
        with_s, without = errors(mine, "virtual_s"), errors(mine, "without_startup_s")
        later = errors([r for r in mine if r["round"] > 1], "virtual_s")
        out.append(
            [
                tier, str(len(mine)), f"{np.median(with_s):.1%}", f"{np.percentile(with_s, 90):.1%}",
                f"{np.median(later):.1%}" if later.size else "-",
                f"{np.median(without):.1%}", f"{np.percentile(without, 90):.1%}",
            ]
        )  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--local-steps", type=int, default=4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--calibration-steps", type=int, default=10)
    parser.add_argument("--startup-runs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=RESULTS / "tmp" / "clock_check")
    parser.add_argument("--report", type=Path, default=RESULTS / "clock_check.md")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the deployment's emulated links need root (network namespaces)")
    args.work.mkdir(parents=True, exist_ok=True)
    started, load_before = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), os.getloadavg()
    tiers = calibrate(args.work, args)
    rows = []
    for threads in (1, 2):
        tier = tiers[threads]
        real_dir = launch(args.work, tier, args)
        virtual_dir = simulate(args.work, tier, args)
        rows += compare(real_dir, virtual_dir, tier)
    load_after = os.getloadavg()
    (args.work / "rows.json").write_text(json.dumps(rows, indent=1))
    figure = args.report.with_suffix(".png")
    plot(rows, figure)
    tier_table = markdown_table(
        ["tier", "cores", "compute factor", "startup_s", "link up / down Mb/s, RTT"],
        [
            [t.name, str(t.threads), f"{t.compute_factor:g}", f"{t.startup_s:g}",
             f"{t.uplink_mbps:g} / {t.downlink_mbps:g}, {t.rtt_ms:g} ms"]
            for t in tiers.values()
        ],
    )  # fmt: skip
    detail = markdown_table(
        ["tier", "partition", "round", "steps real / sim", "real s (compute)", "virtual s (compute)", "error",
         "virtual without start-up", "error"],
        [
            [r["tier"], str(r["partition"]), str(r["round"]), "{} / {}".format(*r["steps"]),
             f"{r['real_s']:.2f} ({r['real_compute_s']:.2f})", f"{r['virtual_s']:.2f} ({r['virtual_compute_s']:.2f})",
             f"{(r['virtual_s'] - r['real_s']) / r['real_s']:+.1%}", f"{r['without_startup_s']:.2f}",
             f"{(r['without_startup_s'] - r['real_s']) / r['real_s']:+.1%}"]
            for r in rows
        ],
    )  # fmt: skip
    summary = markdown_table(
        ["tier", "client-rounds", "median abs error", "p90 abs error", "median, rounds >= 2",
         "median abs error without start-up", "p90 without start-up"],
        summary_rows(rows),
    )  # fmt: skip
    command = f"    .venv/bin/python benchmarks/clock_check.py --rounds {args.rounds} --local-steps {args.local_steps}"
    protocol = (
        __doc__.split("\n\n", 1)[1].split("    .venv")[0]
        + f"\nRun {started}, seed {args.seed}; 1-minute load average before / after: {load_before[0]:.2f} / "
        f"{load_after[0]:.2f} (2 cores). Command:\n\n{command}\n\nCalibrated tiers:\n\n{tier_table}\n\n"
        f"Error = |virtual - real| / real per client-round. Figure: `{figure.name}`."
    )
    write_report(args.report, "Virtual clock vs real clock", protocol, summary, "Per client and round:\n\n" + detail)


if __name__ == "__main__":
    main()
