"""The scheduler-evidence report on synthetic runs whose numbers are known by construction."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from flq.metrics.arm_plots import score_band
from flq.metrics.records import ClientEvalRecord, ClientRoundRecord, RoundRecord, append_round

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
from evidence_report import (  # noqa: E402
    Protocol,
    RunRef,
    _paired_difference,
    pairing_problems,
    run_facts,
    write_evidence_report,
)
from matrix import client_label_histograms  # noqa: E402

TARGET, DEADLINE, BUDGET = 0.7, 10.0, 30.0
TIERS = ("gpu-24g", "cpu-edge")


def rounds(
    round_s: float, scores: list[float], seed: int, late_edge: bool = False, shift: int = 0
) -> list[RoundRecord]:
    """Two of four partitions per round (the same for every arm of a seed unless ``shift``)."""
    out, clock = [], 0.0
    for i, score in enumerate(scores, 1):
        clock += round_s
        pids = sorted({(seed + i + shift) % 4, (seed + 2 * i + 1 + shift) % 4})
        clients = [
            ClientRoundRecord(
                node_id=100 + p,
                status="late" if late_edge and TIERS[p % 2] == "cpu-edge" else "ok",
                partition_id=p,
                tier=TIERS[p % 2],
                bits=16,
                steps=4,
                num_examples=32,
                compute_s=round_s / 2,
                measured_compute_s=0.5,
                comm_s=0.1,
                round_s=round_s,
                on_time=round_s <= DEADLINE,
            )
            for p in pids
        ]
        evals = [ClientEvalRecord(100 + p, p, TIERS[p % 2], score - 0.1 * (p % 2), 1.0, 10) for p in range(4)]
        out.append(
            RoundRecord(
                i,
                "virtual",
                clock,
                round_s,
                float(i),
                DEADLINE,
                "budget",
                "accuracy",
                score,
                1.0,
                1.0,
                1000,
                2000,
                len(clients),
                len(clients),
                clients,
                evals,
            )  # fmt: skip
        )
    return out


def protocol() -> Protocol:
    return Protocol(
        command="python benchmarks/scheduler_evidence.py --size smoke",
        size="smoke",
        settings={
            "model": "minilm-l6",
            "data": "BBC News",
            "items": "articles",
            "clients": 4,
            "tiers": "cycle:gpu-24g,cpu-edge",
            "per_round": 2,
            "steps": 4,
            "batch_size": 8,
        },  # fmt: skip
        seeds=[0, 1, 2],
        target=TARGET,
        deadline_s=DEADLINE,
        deadline_steps=14.0,
        reference_step_s=0.141,
        clock_budget_s=BUDGET,
        server_test_size=200,
    )


SCORES = [0.5, 0.6, 0.75, 0.8, 0.85, 0.9]  # sustained from round 3 on


def write_runs(tmp_path: Path) -> list[RunRef]:
    # fixed-wait's rounds are 20 s, fixed-budget's 10 s, bandit's 5 s: the same scores per round,
    # so bandit reaches the target 4x sooner than fixed-wait and 2x sooner than fixed-budget, every seed.
    refs = []
    for seed in (0, 1, 2):
        for arm, round_s in (("fixed-wait", 20.0), ("fixed-budget", 10.0), ("bandit", 5.0)):
            run_dir = tmp_path / f"{arm}-{seed}"
            for record in rounds(round_s, SCORES, seed, late_edge=arm == "fixed-budget"):
                append_round(run_dir, record)
            refs.append(RunRef("dirichlet:0.3", arm, seed, run_dir))
    return refs


def test_run_facts_read_the_sustained_target_fairness_and_work():
    facts = run_facts(rounds(10.0, SCORES, seed=0, late_edge=True), protocol())
    assert facts.ttt_sustained == 30.0  # round 3 at 10 s per round
    assert facts.ttt == pytest.approx(20.0 + (0.7 - 0.6) / (0.75 - 0.6) * 10.0)
    assert facts.score_at_budget == 0.75  # round 3 ends at exactly 30 s
    assert run_facts(rounds(10.0, SCORES[:2], seed=0), protocol()).score_at_budget is None  # ended at 20 s
    assert facts.fair_target["worst"] == pytest.approx(0.65) and facts.fair_target["round"] == 3
    assert facts.work["cpu-edge"]["examples_per_client_round"] == 0.0  # late every time
    assert facts.bits == {"gpu-24g": [16]}


def test_with_a_compute_misfit_work_is_counted_per_tier_and_true_speed():
    from dataclasses import replace

    records = rounds(10.0, SCORES, seed=0, late_edge=True)
    misfit = replace(protocol(), settings={**protocol().settings, "compute_misfit": "list:1,1,3,1"})
    facts = run_facts(records, misfit)  # partition 2 is a gpu-24g three times slower than its tier
    sampled = [c.partition_id for r in records for c in r.clients]
    assert set(facts.work) == {"gpu-24g x1", "gpu-24g x3", "cpu-edge x1"}
    assert facts.work["gpu-24g x3"]["client_rounds"] == sampled.count(2)
    assert facts.work["gpu-24g x1"]["client_rounds"] == sampled.count(0)
    assert facts.work["gpu-24g x3"]["examples_per_client_round"] == 32.0  # accepted every time
    assert facts.bits == {"gpu-24g x1": [16], "gpu-24g x3": [16]}
    assert set(run_facts(records, protocol()).work) == {"gpu-24g", "cpu-edge"}  # no misfit: per tier


def test_label_mix_fairness_uses_every_clients_labels_from_the_runs_own_config(tmp_path):
    from flq.config import RunConfig
    from flq.task.partition import partition_label_histograms
    from flq.task.specs import data_spec

    config = RunConfig().replace(partitioner="dirichlet", dirichlet_alpha=0.3, server_test_size=200, seed=3)
    run = {"config": config.to_dict(), "nodes": [{"num_partitions": 4}]}
    (tmp_path / "run.json").write_text(json.dumps(run))
    hists = client_label_histograms(tmp_path)
    assert hists == partition_label_histograms(data_spec(config), 4)
    assert client_label_histograms(tmp_path / "missing") is None

    records = rounds(10.0, SCORES, seed=0)
    for r in records:
        r.per_class_score = [r.score] * len(hists[0])  # every class equally good: every client scores r.score
    facts = run_facts(records, protocol(), hists)
    assert facts.mix_target["clients"] == 4 and facts.mix_target["worst"] == pytest.approx(0.75)
    assert run_facts(records, protocol()).mix_target is None  # no histograms: no label-mix fairness


def test_the_report_gives_the_ratios_targets_and_pairing_it_was_built_with(tmp_path):
    path = write_evidence_report(write_runs(tmp_path), protocol(), tmp_path / "report.md")
    text = path.read_text()
    assert "| bandit | 3/3 | 15 ± 0 | 13.3 ± 0 | 0.9 ± 0 | 0.78 ± 0 | 100.0% | 6 ± 0 |" in text  # 0.6-0.9: 0.78
    ratios = next(line for line in text.splitlines() if line.startswith("| bandit | 4.00x"))
    assert ratios.startswith(
        "| bandit | 4.00x [4.00, 4.00] | 2.00x [2.00, 2.00] | 4.00x [4.00, 4.00] | 2.00x [2.00, 2.00] |"
    )
    assert "- bandit >= 1.5x sooner than fixed-wait, CI above 1: met" in text
    assert "- bandit >= 1.2x sooner than fixed-budget, CI above 1: met" in text
    assert "seed 0: paired" in text and "seed 2: paired" in text
    assert "Command: `python benchmarks/scheduler_evidence.py --size smoke`" in text
    assert "### Ablations" not in text  # no ablation arm ran
    for suffix in ("_score_vs_clock.png", "_tier_work.png", "_tradeoff.png"):
        assert (tmp_path / f"report{suffix}").stat().st_size > 0


def test_the_report_names_the_data_set_it_ran_on(tmp_path):
    default = write_evidence_report(write_runs(tmp_path / "bbc"), protocol(), tmp_path / "bbc.md").read_text()
    assert "BBC News, 4 clients" in default and "held-out articles" in default
    digits = replace(protocol(), settings={**protocol().settings, "data": "digits", "items": "images"})
    text = write_evidence_report(write_runs(tmp_path / "digits"), digits, tmp_path / "digits.md").read_text()
    assert "digits, 4 clients" in text and "held-out images" in text and "BBC" not in text


def test_only_the_bandit_arms_are_told_a_steps_fixed_cost_and_the_report_says_so(tmp_path):
    from scheduler_evidence import arm_overrides

    assert arm_overrides("bandit", 4.5)["step-fixed-examples"] == 4.5
    assert arm_overrides("bandit-no-caution", 4.5)["step-fixed-examples"] == 4.5
    assert "step-fixed-examples" not in arm_overrides("fixed-budget", 4.5)
    assert "step-fixed-examples" not in arm_overrides("bandit", 0.0)
    told = replace(protocol(), settings={**protocol().settings, "step_fixed_examples": 4.5})
    text = write_evidence_report(write_runs(tmp_path / "told"), told, tmp_path / "told.md").read_text()
    assert "`step-fixed-examples 4.5`" in text
    plain = write_evidence_report(write_runs(tmp_path / "plain"), protocol(), tmp_path / "plain.md").read_text()
    assert "step-fixed-examples" not in plain


def test_the_image_task_is_planned_only_with_a_deadline_in_seconds_and_a_target():
    def plan(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, str(BENCHMARKS / "scheduler_evidence.py"), "--dry-run", "--seeds", "0", *args]
        return subprocess.run(command, capture_output=True, text=True, cwd=BENCHMARKS.parent)

    no_deadline = plan("--data", "digits", "--target", "0.4")
    assert no_deadline.returncode == 2 and "give --deadline" in no_deadline.stderr
    assert "give --target" in plan("--data", "digits", "--deadline", "0.5").stderr
    planned = plan("--data", "digits", "--deadline", "0.5", "--target", "0.4")
    assert planned.returncode == 0, planned.stderr
    assert "deadline 0.5 s" in planned.stdout and "target 0.4" in planned.stdout


def test_an_ablation_is_compared_with_the_whole_bandit_seed_by_seed(tmp_path):
    # bandit-no-caution: 10 s rounds (bandit's are 5 s) and the edge tier late. Seeds 0 and 2 sample an
    # edge client every round, seed 1 in rounds 2, 4, 6: 0%, 50%, 0% of its rounds on time, bandit's 100%.
    refs = write_runs(tmp_path)
    for seed in (0, 1, 2):
        run_dir = tmp_path / f"ablation-{seed}"
        for record in rounds(10.0, SCORES, seed, late_edge=True):
            append_round(run_dir, record)
        refs.append(RunRef("dirichlet:0.3", "bandit-no-caution", seed, run_dir))
    text = write_evidence_report(refs, protocol(), tmp_path / "report.md").read_text()
    assert "### Ablations: the whole `bandit` against it with one part off" in text
    # sustained 30 s vs 15 s, first crossing 26.7 s vs 13.3 s; at 30 s bandit scores 0.9, the ablation 0.75;
    # the last five scores to 30 s: bandit's 0.6-0.9 (mean 0.78), the ablation's three, 0.5-0.75 (0.617)
    assert (
        "| bandit-no-caution | 2.00x [2.00, 2.00] | 2.00x [2.00, 2.00] | +0.150 [+0.150, +0.150] "
        "| +0.163 [+0.163, +0.163] | +0.833 [+0.500, +1.000] |"
    ) in text


def test_arms_that_sampled_other_clients_are_named():
    same = run_facts(rounds(5.0, SCORES, seed=0), protocol())
    other = run_facts(rounds(5.0, SCORES, seed=0, shift=1), protocol())
    assert pairing_problems({"fixed-wait": same, "bandit": same}) == []
    problems = pairing_problems({"fixed-wait": same, "bandit": other})
    assert problems and problems[0].startswith("bandit sampled other clients than fixed-wait in round(s) [1,")


def test_score_band_is_mean_min_max_over_seeds_once_every_seed_has_a_score():
    fast, slow = rounds(5.0, [0.5, 0.9], seed=0), rounds(10.0, [0.7, 0.8], seed=0)
    mean, low, high = score_band([fast, slow], np.array([4.0, 5.0, 10.0, 20.0]))
    assert np.isnan(mean[:2]).all()  # at 5 s the slow seed has no evaluation yet
    assert mean[2] == pytest.approx(0.8) and (low[2], high[2]) == (0.7, 0.9)  # (0.9 + 0.7) / 2
    assert np.isnan(mean[3])  # the fast seed ended at 10 s: its score is not carried on
    alone, _, _ = score_band([slow], np.array([20.0, 25.0]))
    assert alone[0] == 0.8 and np.isnan(alone[1])


def test_a_paired_difference_over_one_seed_has_no_interval_and_over_several_a_bootstrap_one():
    assert _paired_difference({7: 0.91, 71: None}, {7: 0.88, 71: 0.9}) == "+0.030, one pair: no CI (1 of 2 pairs)"
    # two equal differences: every resample has the same mean, so the interval is that point
    assert _paired_difference({0: 0.5, 1: 0.7}, {0: 0.4, 1: 0.6}) == "+0.100 [+0.100, +0.100]"


def test_a_report_over_one_seed_shows_no_target_met_on_a_ratio_it_has_no_interval_for(tmp_path):
    refs = [r for r in write_runs(tmp_path) if r.seed == 0]
    text = write_evidence_report(refs, protocol(), tmp_path / "report.md").read_text()
    assert "| bandit | 4.00x, one pair: no CI | 2.00x, one pair: no CI |" in text
    assert "- bandit >= 1.5x sooner than fixed-wait, CI above 1: not shown (one pair) (4.00x, one pair: no CI)" in text
    assert "- bandit >= 1.2x sooner than fixed-budget, CI above 1: not shown (one pair)" in text
