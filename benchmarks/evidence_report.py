"""The scheduler-evidence report: tables, paired statistics and figures from finished runs.

Everything is rebuilt from each run's ``rounds.jsonl`` (flq/metrics), so the report can be
redone without running anything. Used by ``scheduler_evidence.py``; tested on synthetic runs in
tests/test_evidence_report.py.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matrix import client_label_histograms

from flq.metrics.arm_plots import plot_score_bands, plot_tier_work, plot_tradeoff
from flq.metrics.paired import (
    NO_INTERVAL,
    bootstrap_ci,
    has_interval,
    mean_std,
    paired_ratio,
    proportion_ci_half_width,
)
from flq.metrics.records import ClientRoundRecord, RoundRecord, read_rounds
from flq.metrics.summary import (
    bytes_per_round,
    fairness_at_clock,
    label_mix_fairness_at_clock,
    late_score_at_clock,
    round_within_deadline,
    score_at_clock,
    sustained_time_to_target,
    time_to_target,
    work_per_tier,
)
from flq.scheduler.spread import parse_factor_spread
from flq.sim.clock import NO_MISFIT, misfit_for
from flq.status import ClientStatus

REFERENCES = ("fixed-wait", "fixed-budget")  # the arms every other is divided by
FOCUS = "bandit"  # the arm the issue's targets are about
ABLATION_PREFIX = f"{FOCUS}-no-"  # an ablation arm: the focus arm with one part off
# The end of a run read from several evaluations, not only the one at the equal clock (one swings by
# its held-out CI, and every ablation's difference shares the same focus runs).
LATE_EVALUATIONS = 5


@dataclass(frozen=True)
class RunRef:
    partition: str
    arm: str
    seed: int
    run_dir: Path


@dataclass(frozen=True)
class Protocol:
    command: str
    size: str
    settings: dict[str, Any]
    seeds: list[int]
    target: float
    deadline_s: float
    deadline_steps: float | None  # None: the deadline was given in seconds
    reference_step_s: float  # the model's estimated reference step (flq/task/cost.py)
    clock_budget_s: float
    server_test_size: int
    matrix_wall_s: float | None = None


@dataclass
class RunFacts:
    """What the report needs of one run."""

    ttt: float | None  # first crossing, interpolated
    ttt_sustained: float | None  # two consecutive evaluations
    score_at_budget: float | None  # None when the run ended before the equal clock (its round cap)
    late_score: float | None  # mean of the last LATE_EVALUATIONS scores to the equal clock (same None)
    rounds: int
    clock_s: float
    on_time_rounds: int
    judged_rounds: int
    mb_per_round: float
    fair_target: dict | None
    fair_budget: dict | None
    mix_target: dict | None  # label-mix fairness (flq.metrics.summary.label_mix_scores), all clients
    mix_budget: dict | None
    work: dict[str, dict[str, float]]
    bits: dict[str, list[int]]
    sampled: list[tuple[int, ...]]
    test_sizes: dict[int, int]
    wall_s: float
    records: list[RoundRecord] = field(repr=False, default_factory=list)

    @property
    def on_time_share(self) -> float | None:
        """The share of judged rounds within the deadline (None when no round was judged)."""
        return self.on_time_rounds / self.judged_rounds if self.judged_rounds else None


def misfit_group(protocol: Protocol) -> Callable[[ClientRoundRecord], str] | None:
    """With a ``compute-misfit`` (settings ``compute_misfit``), work is counted per tier and true
    speed ("cpu-edge x3": three times slower than its tier); None: per tier."""
    spread = parse_factor_spread(str(protocol.settings.get("compute_misfit", "1")), "compute-misfit")
    if spread == NO_MISFIT:
        return None
    clients = int(protocol.settings["clients"])

    def group(c: ClientRoundRecord) -> str:
        return f"{c.tier or 'untiered'} x{misfit_for(spread, c.partition_id, clients, c.tier):g}"

    return group


def run_facts(records: list[RoundRecord], protocol: Protocol, histograms: list[list[int]] | None = None) -> RunFacts:
    target, budget = protocol.target, protocol.clock_budget_s
    first = time_to_target(records, target, True)
    sustained = sustained_time_to_target(records, target, True)
    judged = [round_within_deadline(r, protocol.deadline_s) for r in records]
    group = misfit_group(protocol)
    reached_budget = bool(records) and records[-1].clock_s >= budget
    bits: dict[str, set[int]] = {}
    test_sizes: dict[int, int] = {}
    for r in records:
        for c in r.clients:
            if c.status == ClientStatus.OK:
                bits.setdefault(group(c) if group else c.tier or "untiered", set()).add(c.bits)
        for e in r.client_eval:
            if e.partition_id is not None:
                test_sizes[e.partition_id] = e.num_examples
    return RunFacts(
        ttt=first.clock_s if first else None,
        ttt_sustained=sustained.clock_s if sustained else None,
        score_at_budget=score_at_clock(records, budget) if reached_budget else None,
        late_score=late_score_at_clock(records, budget, LATE_EVALUATIONS) if reached_budget else None,
        rounds=len(records),
        clock_s=records[-1].clock_s if records else 0.0,
        on_time_rounds=sum(judged),
        judged_rounds=len(judged),
        mb_per_round=sum(bytes_per_round(records)[k] for k in ("bytes_up_per_round", "bytes_down_per_round")) / 1e6,
        fair_target=fairness_at_clock(records, sustained.clock_s, True) if sustained else None,
        fair_budget=fairness_at_clock(records, budget, True) if reached_budget else None,
        mix_target=label_mix_fairness_at_clock(records, sustained.clock_s, histograms)
        if sustained and histograms
        else None,
        mix_budget=label_mix_fairness_at_clock(records, budget, histograms) if reached_budget and histograms else None,
        work=work_per_tier(records, group),
        bits={t: sorted(b) for t, b in sorted(bits.items())},
        sampled=[tuple(sorted(c.partition_id for c in r.clients if c.partition_id is not None)) for r in records],
        test_sizes=test_sizes,
        wall_s=records[-1].wall_s if records else 0.0,
        records=records,
    )


def load_facts(refs: Sequence[RunRef], protocol: Protocol) -> dict[tuple[str, str, int], RunFacts | None]:
    """Facts per (partition, arm, seed); None for a run that left no round records."""
    out = {}
    for ref in refs:
        try:
            records = read_rounds(ref.run_dir)
        except (FileNotFoundError, ValueError):
            records = []
        out[(ref.partition, ref.arm, ref.seed)] = (
            run_facts(records, protocol, client_label_histograms(ref.run_dir)) if records else None
        )
    return out


# -- checks and statistics ----------------------------------------------------------------
def pairing_problems(by_arm: dict[str, RunFacts]) -> list[str]:
    """Where arms of one seed did not sample the same partitions per round (over the rounds both
    ran) or saw different local test splits: each problem in words; [] when the pairing held."""
    arms = [(a, f) for a, f in by_arm.items() if f is not None]
    if len(arms) < 2:
        return []
    (ref_arm, ref), problems = arms[0], []
    for arm, facts in arms[1:]:
        n = min(len(ref.sampled), len(facts.sampled))
        differ = [i + 1 for i in range(n) if ref.sampled[i] != facts.sampled[i]]
        if differ:
            problems.append(f"{arm} sampled other clients than {ref_arm} in round(s) {differ}")
        common = set(ref.test_sizes) & set(facts.test_sizes)
        if any(ref.test_sizes[p] != facts.test_sizes[p] for p in common):
            problems.append(f"{arm} saw other local test splits than {ref_arm}")
    return problems


def _fmt(value: float | None, spec: str = ".3g") -> str:
    return "n/a" if value is None else format(value, spec)


def mean_pm_std(values: Sequence[float | None], spec: str = ".3g") -> str:
    """``mean ± std`` over the present values, ``(k/n)`` when some are missing, ``n/a`` if none."""
    mean, std, n = mean_std(values)
    if mean is None:
        return "n/a"
    if std is not None and std <= 1e-9 * max(abs(mean), 1.0):
        std = 0.0  # float noise of equal values
    text = format(mean, spec) + (f" ± {format(std, spec)}" if std is not None else "")
    return text + (f" ({n}/{len(values)})" if n < len(values) else "")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


# -- the report ---------------------------------------------------------------------------
def write_evidence_report(refs: Sequence[RunRef], protocol: Protocol, path: Path) -> Path:
    facts = load_facts(refs, protocol)
    partitions = list(dict.fromkeys(r.partition for r in refs))
    arms = list(dict.fromkeys(r.arm for r in refs))
    seeds = list(dict.fromkeys(r.seed for r in refs))
    figures = {
        "score": path.with_name(path.stem + "_score_vs_clock.png"),
        "work": path.with_name(path.stem + "_tier_work.png"),
        "tradeoff": path.with_name(path.stem + "_tradeoff.png"),
    }
    parts = [_header(protocol, figures)]
    bands, work_panels, tradeoff = {}, {}, {}
    for partition in partitions:

        def cell(arm: str, seed: int, p: str = partition) -> RunFacts | None:
            return facts.get((p, arm, seed))

        parts.append(_partition_section(partition, arms, seeds, cell, protocol))
        bands[partition] = {a: [f.records for s in seeds if (f := cell(a, s))] for a in arms}
        work_panels[partition] = {a: _mean_work(cell, a, seeds) for a in arms}
        tradeoff[partition] = {
            a: (
                mean_std([f.ttt_sustained if (f := cell(a, s)) else None for s in seeds])[0],
                mean_std([(f.mix_target or {}).get("worst") if (f := cell(a, s)) else None for s in seeds])[0],
            )
            for a in arms
        }
    parts.append(_timing_section(facts, protocol))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(parts) + "\n")
    plot_score_bands(bands, figures["score"], target=protocol.target, clock_budget=protocol.clock_budget_s)
    plot_tier_work(work_panels, figures["work"], "examples that counted per sampled client-round")
    plot_tradeoff(
        tradeoff,
        figures["tradeoff"],
        "time to target, sustained (clock s, mean)",
        "worst client (label mix) at the target clock",
    )
    return path


def _header(p: Protocol, figures: dict[str, Path]) -> str:
    s = p.settings
    deadline = (
        f"{p.deadline_s:g} s = {p.deadline_steps:g} reference steps of {p.reference_step_s:.3g} s (the model's "
        "estimated step, flq/task/cost.py)"
        if p.deadline_steps is not None
        else f"{p.deadline_s:g} s (given in seconds; the model's estimated reference step is {p.reference_step_s:.3g} s)"
    )
    half = proportion_ci_half_width(0.5, p.server_test_size)
    wall = f" The matrix took {p.matrix_wall_s / 60:.1f} min of wall time here." if p.matrix_wall_s else ""
    misfit = (
        f" Clients are not what their tier says: `compute-misfit {s['compute_misfit']}` (each client's true compute "
        "over its tier's, charged by the virtual clock and spent by its budget stop, told to no scheduler; "
        "docs/clock.md)."
        if misfit_group(p)
        else ""
    )
    fixed_cost = s.get("step_fixed_examples", 0.0)
    step_cost = (
        f" The bandit arms are told a training step's fixed cost: `step-fixed-examples {fixed_cost:g}` "
        "(docs/schedulers.md)."
        if fixed_cost
        else ""
    )
    return "\n\n".join(
        [
            f"# The scheduler's evidence (issue 20), size `{p.size}`",
            f"Command: `{p.command}`",
            f"{s['model']} + LoRA (r_max 16, start 8, svd aggregation weighted per step), "
            f"{s['data']}, "
            f"{s['clients']} clients (tiers `{s['tiers']}`), {s['per_round']} sampled per round, "
            f"<= {s['steps']} local steps, int8 updates with error feedback; seeds {p.seeds}, paired: every arm "
            f"of a seed has the same partitions and client sample per round (checked below per seed). "
            f"Deadline {deadline}. Every arm runs until its virtual clock reaches {p.clock_budget_s:g} s "
            f"(equal clock; the round that reaches it is its last). Target accuracy {p.target:g} on "
            f"{p.server_test_size} held-out {s['items']}: one evaluation's 95% CI half-width is at most "
            f"±{half:.3f} (at accuracy 0.5; per partition below at the scores measured).{misfit}{step_cost}{wall}",
            "Time to target, *sustained*: the first evaluation from which the score stays at or above the target "
            "for two consecutive evaluations; *first crossing*: interpolated, as flq/metrics/summary.py's "
            "`time_to_target`. Ratios: per seed, the reference arm's time over this arm's (> 1: sooner), geometric "
            "mean over the seeds where both reached the target, 95% percentile-bootstrap CI over seeds (10,000 "
            "resamples, seeded). Fairness: worst and p10 client accuracy, on the clients' own test splits and by label "
            "mix (defined under each fairness table), at the arm's own sustained target clock and at the equal clock.",
            f"Figures: `{figures['score'].name}` (score vs clock, mean and min-max band over seeds), "
            f"`{figures['work'].name}` (work per tier), `{figures['tradeoff'].name}` (time to target vs worst "
            "client by label mix at the target clock).",
        ]
    )


def _partition_section(partition: str, arms: list[str], seeds: list[int], cell, p: Protocol) -> str:
    def column(arm: str, get) -> list:
        return [get(f) if (f := cell(arm, s)) else None for s in seeds]

    main_rows, fair_rows, work_rows = [], [], []
    misfit = misfit_group(p) is not None
    tiers = sorted({t for a in arms for s in seeds if (f := cell(a, s)) for t in f.work})
    for arm in arms:
        runs = [cell(arm, s) for s in seeds]
        done = [f for f in runs if f]
        judged = sum(f.judged_rounds for f in done)
        main_rows.append(
            [
                arm,
                f"{sum(f.ttt_sustained is not None for f in done)}/{len(seeds)}",
                mean_pm_std(column(arm, lambda f: f.ttt_sustained)),
                mean_pm_std(column(arm, lambda f: f.ttt)),
                mean_pm_std(column(arm, lambda f: f.score_at_budget)),
                mean_pm_std(column(arm, lambda f: f.late_score)),
                f"{sum(f.on_time_rounds for f in done) / judged:.1%}" if judged else "n/a",
                mean_pm_std(column(arm, lambda f: f.rounds)),
                mean_pm_std(column(arm, lambda f: f.mb_per_round)),
            ]
        )
        fair_rows.append(
            [
                arm,
                *(
                    mean_pm_std(column(arm, lambda f, w=when, k=key: (getattr(f, w) or {}).get(k)))
                    for when in ("fair_target", "fair_budget", "mix_target", "mix_budget")
                    for key in ("worst", "p10")
                ),
            ]
        )
        work_rows.append(
            [arm]
            + [_tier_work_cell([f.work[t] for f in done if t in f.work]) for t in tiers]
            + [", ".join(f"{t} {sorted({b for f in done for b in f.bits.get(t, [])})}" for t in tiers)]
        )
    ratio_rows = _ratio_rows(arms, seeds, cell)
    pairing = []
    for s in seeds:
        problems = pairing_problems({a: cell(a, s) for a in arms})
        pairing.append(f"seed {s}: " + ("; ".join(problems) if problems else "paired (same sample every common round)"))
    failed = [f"{a} seed {s}" for a in arms for s in seeds if cell(a, s) is None]
    short = [f"{a} seed {s}" for a in arms for s in seeds if (f := cell(a, s)) and f.clock_s < p.clock_budget_s]
    scores = [f.score_at_budget for a in arms for s in seeds if (f := cell(a, s)) and f.score_at_budget is not None]
    ci = (
        f"At the mean score at equal clock here ({statistics.fmean(scores):.3f}) one evaluation's 95% CI half-width "
        f"is ±{proportion_ci_half_width(statistics.fmean(scores), p.server_test_size):.3f}."
        if scores
        else ""
    )
    sizes = sorted(next((f.test_sizes for a in arms for s in seeds if (f := cell(a, s)) and f.test_sizes), {}).values())
    splits = (
        f"Clients' own test splits (fairness): {min(sizes)} to {max(sizes)} examples, median "
        f"{statistics.median(sizes):g} (first seed)"
        + ("; a client with one test example scores 0 or 1." if min(sizes) < 2 else ".")
        if sizes
        else ""
    )
    sections = [
        f"## Partition `{partition}`",
        " ".join(x for x in (ci, splits) if x),
        "### Time to target and score at equal clock",
        table(
            [
                "arm",
                "reached (sustained)",
                "time to target, sustained (clock s)",
                "time to target, first crossing (clock s)",
                f"score at {p.clock_budget_s:g} s",
                f"mean of the last {LATE_EVALUATIONS} scores to {p.clock_budget_s:g} s",
                "rounds within deadline (pooled)",
                "rounds run",
                "MB / round",
            ],
            main_rows,
        ),
        "### Paired ratios (how many times sooner; 95% bootstrap CI over seeds)",
        table(
            ["arm", *(f"vs {r}, sustained" for r in REFERENCES), *(f"vs {r}, first crossing" for r in REFERENCES)],
            ratio_rows,
        ),
        *_ablation_section(arms, seeds, cell),
        "### Fairness",
        "Own split: the sampled clients' accuracy on their own test splits (a few examples each under "
        "severe skew). Label mix: every client's expected accuracy, the global model's per-class accuracy on "
        "the held-out set weighted by the client's label counts (flq/metrics/summary.py `label_mix_scores`).",
        table(
            [
                "arm",
                *(
                    f"{key}, {kind}, at {when}"
                    for kind in ("own split", "label mix")
                    for when in ("target clock", "equal clock")
                    for key in ("worst", "p10")
                ),
            ],
            fair_rows,
        ),
        "### Work per tier (examples reaching the model per sampled client-round; accepted share) and bits trained"
        + (
            f" (tier x true compute over its tier's, `compute-misfit {p.settings['compute_misfit']}`)" if misfit else ""
        ),
        table(["arm", *tiers, "bits trained, by tier"], work_rows),
        _targets(arms, seeds, cell),
        "Pairing: " + "; ".join(pairing) + ("" if not failed else f". Failed runs: {', '.join(failed)}"),
        (
            f"Ended by the round cap before the equal clock (no score or fairness at {p.clock_budget_s:g} s): "
            + ", ".join(short)
            if short
            else ""
        ),
    ]
    return "\n\n".join(s for s in sections if s)


def _tier_work_cell(works: list[dict[str, float]]) -> str:
    if not works:
        return "n/a"
    examples = statistics.fmean(w["examples_per_client_round"] for w in works)
    return f"{examples:.1f} ({statistics.fmean(w['accepted_share'] for w in works):.0%})"


def _by_seed(cell, arm: str, seeds: list[int], attr: str) -> dict[int, Any]:
    """One ``RunFacts`` attribute of an arm, per seed (None where that run is missing)."""
    return {s: getattr(f, attr) if (f := cell(arm, s)) else None for s in seeds}


def _ratio_rows(arms: list[str], seeds: list[int], cell) -> list[list[str]]:
    rows = []
    for arm in arms:
        row = [arm]
        for attr in ("ttt_sustained", "ttt"):
            for ref in REFERENCES:
                if ref not in arms or ref == arm:
                    row.append("—")
                    continue
                row.append(paired_ratio(_by_seed(cell, ref, seeds, attr), _by_seed(cell, arm, seeds, attr)).describe())
        rows.append(row)
    return rows


def _ablation_section(arms: list[str], seeds: list[int], cell) -> list[str]:
    """The whole focus arm against each of its ablations, paired per seed (empty without ablations)."""
    ablations = [a for a in arms if a.startswith(ABLATION_PREFIX)]
    if FOCUS not in arms or not ablations:
        return []
    rows = []
    for arm in ablations:
        row = [arm]
        for attr in ("ttt_sustained", "ttt"):
            row.append(paired_ratio(_by_seed(cell, arm, seeds, attr), _by_seed(cell, FOCUS, seeds, attr)).describe())
        for attr in ("score_at_budget", "late_score", "on_time_share"):
            row.append(_paired_difference(_by_seed(cell, FOCUS, seeds, attr), _by_seed(cell, arm, seeds, attr)))
        rows.append(row)
    return [
        f"### Ablations: the whole `{FOCUS}` against it with one part off",
        f"Ratios: how many times sooner the whole `{FOCUS}` reaches the target than the ablation (> 1: the part "
        "helps). Differences: the whole arm's value minus the ablation's, paired per seed, mean and 95% bootstrap "
        "CI over seeds. What each part does: docs/schedulers.md#ablations.",
        table(
            [
                "ablation",
                f"{FOCUS} vs it, sustained",
                f"{FOCUS} vs it, first crossing",
                "score at equal clock, difference",
                f"mean of the last {LATE_EVALUATIONS} scores to equal clock, difference",
                "share of rounds within deadline, difference",
            ],
            rows,
        ),
    ]


def _paired_difference(focus: dict[int, float | None], other: dict[int, float | None]) -> str:
    """``+0.012 [-0.004, +0.030]``: mean of focus minus other over the seeds where both have a value,
    with its bootstrap CI over those seeds."""
    diffs = [a - b for s, a in focus.items() if a is not None and (b := other.get(s)) is not None]
    if not diffs:
        return "n/a"
    if not has_interval(len(diffs)):
        text = f"{diffs[0]:+.3f}, {NO_INTERVAL}"
    else:
        low, high = bootstrap_ci(diffs, lambda x: x.mean(axis=1))
        text = f"{statistics.fmean(diffs):+.3f} [{low:+.3f}, {high:+.3f}]"
    return text + ("" if len(diffs) == len(focus) else f" ({len(diffs)} of {len(focus)} pairs)")


def _targets(arms: list[str], seeds: list[int], cell) -> str:
    """The issue's targets for the focus arm, each met or not, with its numbers."""
    if FOCUS not in arms or not all(r in arms for r in REFERENCES):
        return ""

    lines = []
    for ref, wanted in zip(REFERENCES, (1.5, 1.2), strict=True):
        r = paired_ratio(_by_seed(cell, ref, seeds, "ttt_sustained"), _by_seed(cell, FOCUS, seeds, "ttt_sustained"))
        met = r.estimate is not None and r.estimate >= wanted and r.ci[0] > 1.0
        verdict = "not shown (one pair)" if not r.has_interval else "met" if met else "not met"
        lines.append(f"- {FOCUS} >= {wanted}x sooner than {ref}, CI above 1: {verdict} ({r.describe()})")
    done = [f for s in seeds if (f := cell(FOCUS, s))]
    judged = sum(f.judged_rounds for f in done)
    share = sum(f.on_time_rounds for f in done) / judged if judged else None
    lines.append(
        f"- >= 95% of {FOCUS}'s rounds within the deadline: {'met' if share is not None and share >= 0.95 else 'not met'} "
        f"({_fmt(share, '.1%')})"
    )
    for when, kind in (("fair_target", "own split"), ("mix_target", "label mix")):
        worst = {
            a: mean_std([(getattr(f, when) or {}).get("worst") if (f := cell(a, s)) else None for s in seeds])[0]
            for a in (FOCUS, "fixed-budget")
        }
        ok = None not in worst.values() and worst[FOCUS] >= worst["fixed-budget"]
        lines.append(
            f"- worst client ({kind}) at the target clock no lower than fixed-budget's: {'met' if ok else 'not met'} "
            f"({_fmt(worst[FOCUS], '.3f')} vs {_fmt(worst['fixed-budget'], '.3f')}, means over the seeds that "
            "reached it)"
        )
    return "### The issue's targets\n\n" + "\n".join(lines)


def _mean_work(cell, arm: str, seeds: list[int]) -> dict[str, float]:
    done = [f for s in seeds if (f := cell(arm, s))]
    tiers = sorted({t for f in done for t in f.work})
    return {t: statistics.fmean(f.work[t]["examples_per_client_round"] for f in done if t in f.work) for t in tiers}


def _timing_section(facts: dict, p: Protocol) -> str:
    """Measured, per tier: compute and transfer on the clock against the deadline, and this
    machine's seconds per example (how the deadline's reference step compares with measurement)."""
    per_tier: dict[str, dict[str, list[float]]] = {}
    walls = []
    for f in facts.values():
        if f is None:
            continue
        walls.append(f.wall_s)
        for r in f.records:
            for c in r.clients:
                if c.status not in (ClientStatus.OK, ClientStatus.LATE) or c.steps <= 0 or c.num_examples <= 0:
                    continue
                t = per_tier.setdefault(
                    c.tier or "untiered", {"compute": [], "comm": [], "per_example": [], "steps": []}
                )
                t["compute"].append(c.compute_s)
                t["comm"].append(c.comm_s)
                t["per_example"].append(c.measured_compute_s / c.num_examples)
                t["steps"].append(c.steps)
    rows = [
        [
            tier,
            str(len(v["compute"])),
            f"{statistics.median(v['steps']):g}",
            f"{statistics.median(v['compute']):.3g}",
            f"{statistics.median(v['comm']):.3g}",
            f"{statistics.median(v['per_example']) * 1000:.3g}",
        ]
        for tier, v in sorted(per_tier.items())
    ]
    batch = p.settings.get("batch_size", 8)
    measured = [x for v in per_tier.values() for x in v["per_example"]]
    step_note = (
        f"Measured here, median over every trained client-round: {statistics.median(measured) * batch:.3g} s per "
        f"step of {batch} examples before the tier factor, against the {p.reference_step_s:.3g} s estimate the "
        "deadline is scaled by (and the schedulers' prior starts from)."
        if measured and "batch_size" in p.settings
        else ""
    )
    wall = f"Wall time per run: {mean_pm_std(walls, '.0f')} s." if walls else ""
    return "\n\n".join(
        s
        for s in [
            f"## Timing (measured; deadline {p.deadline_s:g} s on the virtual clock)",
            table(
                [
                    "tier",
                    "client-rounds",
                    "median steps",
                    "median compute (clock s)",
                    "median transfer (clock s)",
                    "ms per example (this machine)",
                ],
                rows,
            ),
            step_note,
            wall,
        ]
        if s
    )
