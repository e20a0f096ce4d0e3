"""Calibrated tiers from measured step times: the pure half of ``flq calibrate``.

``flq calibrate`` (flq/launch/calibrate.py) measures seconds per local training step on the
machine it runs on, at one or more torch thread counts; this module turns those measurements
into what it writes: a JSON record of them (``calibration_record``) and a tier file in the
format of flq/sim/tiers.toml (``tier_file_text``), one CPU tier per thread count, whose

    compute_factor = the tier's median s/step / the reference's median s/step

because the virtual clock charges ``measured_compute_s x compute_factor`` and the measured
seconds come from the machine that runs the simulation (docs/clock.md). The reference is that
machine's median at one thread count, read from an earlier ``flq calibrate`` JSON made there
(``reference_from_record``); without one it is this run's own median at its largest thread
count (``reference_from_run``), so the factors are relative to this machine at full threads.
A reference only makes sense for the same step: same architecture, bits, batch, sequence
length, LoRA rank and targets (``workload_differences``).

No torch here: numpy and the standard library, testable alone.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .clock import PICKUP_S
from .tiers import REFERENCE_TIER, TierProfile, tier_from_dict

FORMAT = "flq-calibration/1"
DEFAULT_PREFIX = "local"
HEADER_WIDTH = 110  # the tier file's comment lines, before "# "
FACTOR_DIGITS = 4  # significant digits of a written compute_factor: step times vary more than that
# Copied from the base tier: what a measurement of compute cannot tell.
NETWORK_KEYS = ("uplink_mbps", "downlink_mbps", "rtt_ms", "loss")
# What makes two measurements the same step: a reference must match on every one of these.
WORKLOAD_KEYS = (
    "task",
    "architecture",
    "backbone_bits",
    "quant_type",
    "batch_size",
    "max_seq_length",
    "lora_rank",
    "lora_targets",
    "packing",
    "device",
)
NOISY_SPREAD = 0.5  # (p90 - p10) / median beyond which a measurement is flagged as noisy
BUSY_LOAD = 1.0  # a 1-minute load average from this on means another process kept a core busy
TOKENS_TOLERANCE = 0.05  # relative difference of tokens per step beyond which a reference is flagged
# Tier names go into tier mixes (``groups:a,b``), so no commas, colons, '=' or spaces.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Key order of a written tier table: flq/sim/tiers.toml's.
_TIER_KEY_ORDER = (
    "description",
    "compute_factor",
    "memory_limit_mb",
    "threads",
    "uplink_mbps",
    "downlink_mbps",
    "rtt_ms",
    "loss",
    "max_rank",
    "batch_size",
    "mixed_precision",
    "startup_s",
)


class CalibrationError(ValueError):
    """A calibration cannot be made as asked (bad reference, bad prefix, mismatched workload)."""


# -- measurements --------------------------------------------------------------------------
@dataclass(frozen=True)
class StepSummary:
    n: int
    median_s: float
    p10_s: float
    p90_s: float
    min_s: float
    max_s: float

    @property
    def spread(self) -> float:
        """(p90 - p10) / median: how noisy the steps were (0: all alike)."""
        return (self.p90_s - self.p10_s) / self.median_s if self.median_s > 0 else math.inf


def summarize(step_s: Sequence[float]) -> StepSummary:
    """Median, 10th and 90th percentiles (numpy's linear interpolation), min and max of step times."""
    values = np.asarray(list(step_s), dtype=float)
    if values.size == 0:
        raise CalibrationError("no measured steps")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise CalibrationError(f"step times must be finite and > 0, got {values.tolist()}")
    p10, median, p90 = np.percentile(values, [10, 50, 90])
    return StepSummary(
        int(values.size), float(median), float(p10), float(p90), float(values.min()), float(values.max())
    )


@dataclass(frozen=True)
class Measurement:
    """One thread count's measured steps (warm-up steps excluded)."""

    threads: int
    step_s: tuple[float, ...]
    cores: tuple[int, ...] | None = None  # the CPU affinity it ran under; None: not pinned
    tokens_per_step: float | None = None  # mean input tokens per measured step (None: no token inputs)
    examples_per_step: float | None = None
    peak_mem_mb: float | None = None
    # seconds from start to exit of fresh processes building a round's model and data (startup_probe)
    startup_process_s: tuple[float, ...] = ()

    @property
    def summary(self) -> StepSummary:
        return summarize(self.step_s)

    @property
    def startup_s(self) -> float | None:
        """A deployed round's start-up on this many threads: the median process plus the mean pickup."""
        if not self.startup_process_s:
            return None
        return round(float(np.median(self.startup_process_s)) + PICKUP_S, 2)

    def to_dict(self) -> dict[str, Any]:
        s = self.summary
        return {
            "threads": self.threads,
            "cores": None if self.cores is None else list(self.cores),
            "median_s": s.median_s,
            "p10_s": s.p10_s,
            "p90_s": s.p90_s,
            "min_s": s.min_s,
            "max_s": s.max_s,
            "spread": s.spread,
            "steps": s.n,
            "step_s": list(self.step_s),
            "tokens_per_step": self.tokens_per_step,
            "examples_per_step": self.examples_per_step,
            "peak_mem_mb": self.peak_mem_mb,
            "startup_process_s": list(self.startup_process_s),
            "startup_s": self.startup_s,
        }


# -- the reference -------------------------------------------------------------------------
@dataclass(frozen=True)
class Reference:
    """The step time compute factors divide by: the simulating machine's median s/step."""

    step_s: float
    threads: int
    source: str  # "this run" or the reference JSON's path
    machine: str  # a one-line description of the machine it was measured on
    tokens_per_step: float | None = None

    @property
    def from_this_run(self) -> bool:
        return self.source == THIS_RUN

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "threads": self.threads,
            "median_s": self.step_s,
            "machine": self.machine,
            "tokens_per_step": self.tokens_per_step,
        }


THIS_RUN = "this run"


def reference_from_run(measurements: Sequence[Measurement], machine: str, threads: int | None = None) -> Reference:
    """This run's median at ``threads`` (default: the largest thread count measured)."""
    if not measurements:
        raise CalibrationError("no measurements")
    chosen = _at_threads(measurements, threads, where="this run")
    return Reference(chosen.summary.median_s, chosen.threads, THIS_RUN, machine, chosen.tokens_per_step)


def _at_threads(measurements: Sequence[Measurement], threads: int | None, where: str) -> Measurement:
    by_threads = {m.threads: m for m in measurements}
    if threads is None:
        return by_threads[max(by_threads)]
    if threads not in by_threads:
        raise CalibrationError(f"{where} has no measurement at {threads} threads (it has {sorted(by_threads)})")
    return by_threads[threads]


def reference_from_record(
    record: Any, source: str, workload: Mapping[str, Any], threads: int | None = None
) -> tuple[Reference, list[str]]:
    """The reference in an earlier ``flq calibrate`` JSON (``record``, already parsed), at ``threads``
    (default: its largest thread count), checked against this run's ``workload``.

    Returns it and notes worth printing (e.g. a different data set); raises ``CalibrationError``
    when the record is not a calibration or measured a different step."""
    where = f"reference {source}"
    if not isinstance(record, Mapping) or record.get("format") != FORMAT:
        found = record.get("format") if isinstance(record, Mapping) else type(record).__name__
        raise CalibrationError(f"{where}: not an `flq calibrate` JSON (format {found!r}, expected {FORMAT!r})")
    try:
        measurements = [
            Measurement(
                threads=int(m["threads"]),
                step_s=tuple(float(x) for x in m["step_s"]),
                tokens_per_step=None if m.get("tokens_per_step") is None else float(m["tokens_per_step"]),
            )
            for m in record["measurements"]
        ]
        theirs = dict(record["workload"])
        machine = machine_line(record.get("machine", {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise CalibrationError(f"{where}: malformed ({type(exc).__name__}: {exc})") from None
    if not measurements:
        raise CalibrationError(f"{where}: has no measurements")
    differences = workload_differences(workload, theirs)
    if differences:
        raise CalibrationError(
            f"{where} measured a different step ({'; '.join(differences)}): calibrate both machines with the "
            "same model, bits, batch size, max sequence length and LoRA settings"
        )
    chosen = _at_threads(measurements, threads, where=where)
    reference = Reference(chosen.summary.median_s, chosen.threads, source, machine, chosen.tokens_per_step)
    notes = []
    if workload.get("data") != theirs.get("data"):
        notes.append(f"the reference trained on data {theirs.get('data')!r}, this run on {workload.get('data')!r}")
    if workload.get("model") != theirs.get("model"):
        notes.append(f"the reference named the model {theirs.get('model')!r}, this run {workload.get('model')!r}")
    return reference, notes


def workload_differences(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> list[str]:
    """``key: ours vs theirs`` for every ``WORKLOAD_KEYS`` entry the two measurements disagree on."""
    return [
        f"{key}: {_short(ours.get(key))} here vs {_short(theirs.get(key))} there"
        for key in WORKLOAD_KEYS
        if _normalise(ours.get(key)) != _normalise(theirs.get(key))
    ]


def tokens_note(measurements: Iterable[Measurement], reference: Reference) -> str | None:
    """A warning when this run's steps saw a different number of tokens than the reference's."""
    if reference.from_this_run or not reference.tokens_per_step:
        return None
    for m in measurements:
        if m.tokens_per_step and abs(m.tokens_per_step / reference.tokens_per_step - 1) > TOKENS_TOLERANCE:
            return (
                f"steps here averaged {m.tokens_per_step:.0f} tokens, the reference's {reference.tokens_per_step:.0f}: "
                "the data differ in length, so the factors also carry that difference"
            )
    return None


def noise_notes(measurements: Iterable[Measurement], limit: float = NOISY_SPREAD) -> list[str]:
    """A warning per thread count whose steps varied by more than ``limit`` x the median (p10 to p90)."""
    notes = []
    for m in measurements:
        s = m.summary
        if s.spread > limit:
            notes.append(
                f"at {m.threads} threads the steps varied widely (p10 {s.p10_s:.3g} s to p90 {s.p90_s:.3g} s, "
                f"{s.spread:.0%} of the median): the machine was busy or too few steps were measured; rerun on an "
                "idle machine with more --steps"
            )
    return notes


def load_note(load_average: Sequence[float] | None, usable_cores: int | None) -> str | None:
    """A warning when other work kept a core busy before measuring (1-minute load average >= 1)."""
    if not load_average or load_average[0] < BUSY_LOAD:
        return None
    return (
        f"other work was running (1-minute load average {load_average[0]:g} on {usable_cores or '?'} usable cores "
        "before measuring): it takes CPU time from the steps, most from thread counts that need its cores; "
        "calibrate on an idle machine"
    )


def _normalise(value: Any) -> Any:
    # JSON turns tuples into lists; compare their contents.
    if isinstance(value, tuple | list):
        return [_normalise(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _normalise(v) for k, v in value.items()}
    return value


def _short(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return repr(value)


def machine_line(machine: Mapping[str, Any]) -> str:
    """``CPU model, N logical cores, host H`` from a calibration's machine block."""
    parts = [str(machine.get("cpu_model") or "unknown CPU")]
    if machine.get("logical_cores"):
        parts.append(f"{machine['logical_cores']} logical cores")
    if machine.get("hostname"):
        parts.append(f"host {machine['hostname']}")
    return ", ".join(parts)


# -- tiers ---------------------------------------------------------------------------------
def compute_factor(step_s: float, reference_s: float) -> float:
    """``step_s / reference_s`` to ``FACTOR_DIGITS`` significant digits."""
    if not (step_s > 0 and reference_s > 0 and math.isfinite(step_s) and math.isfinite(reference_s)):
        raise CalibrationError(f"step times must be finite and > 0, got {step_s!r} and reference {reference_s!r}")
    return float(f"{step_s / reference_s:.{FACTOR_DIGITS}g}")


def tier_name(prefix: str, threads: int) -> str:
    return f"{prefix}-cpu-{threads}t"


def check_prefix(prefix: str) -> None:
    if not NAME.fullmatch(prefix):
        raise CalibrationError(
            f"tier name prefix {prefix!r}: letters, digits, '.', '_' and '-' only, starting with a letter or digit "
            "(tier names go into tier mixes such as groups:a,b)"
        )


def calibrated_tiers(
    measurements: Sequence[Measurement],
    reference: Reference,
    base: TierProfile,
    prefix: str = DEFAULT_PREFIX,
    cpu_model: str = "",
    memory_limit_mb: float | None = None,
    when: str = "",
) -> list[TierProfile]:
    """One CPU tier per measurement: its factor against ``reference``, ``threads`` as measured, the
    network keys of ``base``, and ``memory_limit_mb`` (default: ``base``'s). Hints (max rank, batch,
    mixed precision) are not copied: the factor was measured at the calibration's batch, in its precision."""
    check_prefix(prefix)
    if len({m.threads for m in measurements}) != len(measurements):
        raise CalibrationError(f"one measurement per thread count, got {[m.threads for m in measurements]}")
    memory = base.memory_limit_mb if memory_limit_mb is None else memory_limit_mb
    tiers = []
    for m in measurements:
        median = m.summary.median_s
        values: dict[str, Any] = {
            "description": _description(m.threads, median, cpu_model, base.name, when),
            "compute_factor": compute_factor(median, reference.step_s),
            "threads": m.threads,
            **{key: getattr(base, key) for key in NETWORK_KEYS},
        }
        if memory:
            values["memory_limit_mb"] = memory
        if m.startup_s is not None:
            values["startup_s"] = m.startup_s
        name = tier_name(prefix, m.threads)
        tiers.append(tier_from_dict(name, values, where="flq calibrate"))  # the loader's own checks
    return tiers


def _description(threads: int, median_s: float, cpu_model: str, base: str, when: str) -> str:
    what = f"{cpu_model}, " if cpu_model else ""
    stamp = f" on {when}" if when else ""
    return f"{what}{threads_text(threads)}: {median_s:.3g} s/step by flq calibrate{stamp}; network of {base!r}"


def threads_text(threads: int) -> str:
    return f"{threads} thread{'' if threads == 1 else 's'}"


def tier_file_text(tiers: Sequence[TierProfile], header: Sequence[str] = ()) -> str:
    """The tiers as a TOML tier file, in flq/sim/tiers.toml's layout (``load_tiers`` reads it back)."""
    lines = [f"# {line}".rstrip() for line in header]
    for tier in tiers:
        if not NAME.fullmatch(tier.name):
            raise CalibrationError(f"tier name {tier.name!r} cannot be written as a bare TOML key")
        lines += ["", f"[tiers.{tier.name}]"]
        values = tier.to_dict()
        for key in _TIER_KEY_ORDER:
            value = values[key]
            if value is None or (key == "description" and not value):
                continue
            if (key == "mixed_precision" and value is False) or (key == "startup_s" and not value):
                continue
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CalibrationError(f"cannot write {value!r} in a tier file")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON's string escapes are TOML basic-string escapes
    raise CalibrationError(f"cannot write {value!r} in a tier file")


def header_lines(
    tiers: Sequence[TierProfile],
    measurements: Sequence[Measurement],
    reference: Reference,
    machine: Mapping[str, Any],
    workload: Mapping[str, Any],
    settings: Mapping[str, Any],
    base: str,
    notes: Sequence[str] = (),
) -> list[str]:
    """The tier file's comment: where the numbers come from and what the factors are relative to."""
    lines = [
        f"FLQ tier profiles calibrated by `flq calibrate` on {settings.get('created', '?')}.",
        "",
        f"Measured on: {machine_line(machine)}; torch {machine.get('torch', '?')}.",
        "Step: " + workload_line(workload) + ".",
        f"Per thread count: {_count(settings.get('warmup_steps'), 'warm-up step')} (not counted), then "
        f"{_count(settings.get('steps'), 'measured step')}"
        + (", the process pinned to that many cores." if settings.get("pinned") else ", not pinned to cores."),
    ]
    load = settings.get("load_average_before"), settings.get("load_average_after")
    if all(isinstance(x, list | tuple) and x for x in load):
        lines.append(
            f"Load average (1 min) before / after: {load[0][0]:g} / {load[1][0]:g} on "
            f"{machine.get('usable_cores') or '?'} usable cores."
        )
    lines += [
        "",
        "compute_factor = this tier's median seconds per step / the reference's median seconds per step.",
    ]
    at = f"at {threads_text(reference.threads)} ({reference.step_s:.4g} s/step)"
    if reference.from_this_run:
        full = reference.threads == max(m.threads for m in measurements)
        lines.append(
            f"Reference: THIS machine {at}"
            + (", the most threads measured" if full else "")
            + f". The factors are relative to this machine at {'full' if full else 'those'} threads, not to the "
            "machine that runs your simulations, whose measured seconds the virtual clock multiplies: to calibrate "
            "against it, run `flq calibrate` there too and pass its JSON here with --reference."
        )
    else:
        lines.append(f"Reference: {reference.source}, measured on {reference.machine}, {at}.")
    lines += [
        f"Network keys{' and memory_limit_mb' if any(t.memory_limit_mb for t in tiers) else ''} copied from "
        f"tier {base!r}; edit them to the link these clients have.",
    ]
    lines += [f"Note: {note}" for note in notes]
    if any(m.startup_s is not None for m in measurements):
        lines.append(
            f"startup_s = the median of {_count(len(measurements[0].startup_process_s), 'fresh process')} that "
            "import the ClientApp and build a round's model and data on those cores (as Flower starts one per "
            f"message), plus {PICKUP_S:g} s, the mean wait on Flower's polling (docs/clock.md)."
        )
    lines += ["", "threads  median s/step   p10 s    p90 s    factor  start-up s  tier"]
    for m, tier in zip(measurements, tiers, strict=True):
        s = m.summary
        startup = "-" if m.startup_s is None else f"{m.startup_s:.4g}"
        lines.append(
            f"{m.threads:>7}  {s.median_s:>13.4g}  {s.p10_s:>7.4g}  {s.p90_s:>7.4g}  {tier.compute_factor:>7.4g}  "
            f"{startup:>10}  {tier.name}"
        )
    names = ",".join(t.name for t in tiers)
    lines += [
        "",
        'Use: tier-file = "<this file>" in the run config (or an experiment\'s [run]), then name the tiers,',
        f'e.g. tiers = "{names if len(tiers) == 1 else "groups:" + names}".',
    ]
    return [part for line in lines for part in _wrap(line)]


def _wrap(line: str) -> list[str]:
    return (
        textwrap.wrap(line, HEADER_WIDTH, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False)
        if len(line) > HEADER_WIDTH
        else [line]
    )


def _count(n: Any, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def workload_line(workload: Mapping[str, Any]) -> str:
    targets = workload.get("lora_targets")
    targets = ",".join(targets) if isinstance(targets, list | tuple) else targets
    bits = workload.get("backbone_bits")
    quant = f" {workload['quant_type']}" if bits == 4 and workload.get("quant_type") else ""
    return (
        f"{workload.get('model')} ({workload.get('task')}), {bits}-bit{quant} backbone, LoRA rank "
        f"{workload.get('lora_rank')} on {targets}, batch {workload.get('batch_size')} x "
        f"{workload.get('max_seq_length')} tokens max, data {workload.get('data')}, forward + backward + AdamW "
        f"on {workload.get('device')}"
    )


def calibration_record(
    machine: Mapping[str, Any],
    workload: Mapping[str, Any],
    settings: Mapping[str, Any],
    measurements: Sequence[Measurement],
    reference: Reference,
    tiers: Sequence[TierProfile],
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """The JSON ``flq calibrate`` writes; another run reads it back with ``reference_from_record``."""
    return {
        "format": FORMAT,
        "created": settings.get("created"),
        "machine": dict(machine),
        "workload": _normalise(dict(workload)),
        "settings": dict(settings),
        "measurements": [m.to_dict() for m in measurements],
        "reference": reference.to_dict(),
        "tiers": [
            {"name": t.name, "threads": t.threads, "compute_factor": t.compute_factor, "startup_s": t.startup_s}
            for t in tiers
        ],
        "notes": list(notes),
    }


def base_tier(tiers: Mapping[str, TierProfile], name: str = REFERENCE_TIER) -> TierProfile:
    if name not in tiers:
        raise CalibrationError(f"base tier {name!r} not found; known: {', '.join(sorted(tiers))}")
    return tiers[name]


@dataclass(frozen=True)
class StepCostLine:
    """A step's seconds as ``per_example_s * (fixed_examples + batch)``: the run config's
    ``step-fixed-examples`` is ``fixed_examples`` (docs/schedulers.md, "A step's fixed cost")."""

    fixed_s: float  # seconds a step takes whatever its batch
    per_example_s: float
    fixed_examples: float  # fixed_s / per_example_s


def fit_step_cost(batch_sizes: Sequence[float], seconds: Sequence[float]) -> StepCostLine:
    """Least-squares line of step seconds on batch size (medians measured at two or more sizes).

    Raises ValueError for fewer than two distinct batch sizes, or when the time does not grow
    with the batch (no per-example cost to count the fixed one in).
    """
    b, t = np.asarray(batch_sizes, dtype=np.float64), np.asarray(seconds, dtype=np.float64)
    if b.shape != t.shape or np.unique(b).size < 2:
        raise ValueError("measure the step at two or more batch sizes")
    per_example, fixed = np.polyfit(b, t, 1)
    if not per_example > 0:
        raise ValueError(f"the step's time does not grow with its batch (slope {per_example:.3g} s per example)")
    return StepCostLine(float(fixed), float(per_example), float(max(fixed, 0.0) / per_example))
