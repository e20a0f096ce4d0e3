"""``flq calibrate``: measure seconds per local training step here, write a tier file for it.

One local step is what a client's ``compute_s`` measures: a batch, forward, backward and an
AdamW step on the LoRA adapter (``flq.task.train.train_steps`` on a ``flq.task.lora.LoraModel``),
built from the run config exactly as the ClientApp builds it (``flq.task.specs``), so the model,
task, data, bits, batch size and sequence length follow the run's keys: the app's
``[tool.flwr.app.config]`` defaults, ``-c 'key=value ...'`` overrides as ``flwr run`` takes
them, then the explicit flags. It runs on the CPU, once per ``--threads`` count (torch threads,
and the process pinned to that many cores), with warm-up steps left out, and writes

* ``OUT/calibration.json``: the machine, the step (workload), every step's seconds and each
  thread count's median, p10 and p90, the reference and the factors;
* ``OUT/tiers.toml``: one tier per thread count in flq/sim/tiers.toml's format
  (flq/sim/calibration.py turns the measurements into it).

Exit status: 0 written; 2 bad input (run config, thread counts, model, reference, output
folder), nothing measured or written; 130 interrupted. docs/clock.md, "Calibrating to your hardware".
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import platform
import sys
import tempfile
import time
import tomllib
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..config import ConfigError, RunConfig
from ..sim.calibration import (
    DEFAULT_PREFIX,
    CalibrationError,
    Measurement,
    Reference,
    base_tier,
    calibrated_tiers,
    calibration_record,
    check_prefix,
    header_lines,
    load_note,
    machine_line,
    noise_notes,
    reference_from_record,
    reference_from_run,
    threads_text,
    tier_file_text,
    tokens_note,
    workload_line,
)
from ..sim.tiers import REFERENCE_TIER, TierError, TierProfile, load_tiers
from .startup_probe import time_probes

JSON_NAME = "calibration.json"
TIERS_NAME = "tiers.toml"
CAUSAL_LM_TARGET = 30.0  # a perplexity: any valid target will do, a step does not depend on it
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "asimd", "sve")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--run-config",
        action="append",
        metavar="'KEY=VALUE ...'",
        help="run-config overrides as `flwr run -c` takes them (repeatable), or one .toml file",
    )
    parser.add_argument(
        "--app", type=Path, default=Path("."), help="the Flower app whose run-config defaults apply (default: .)"
    )
    parser.add_argument("--model", help="run config's model (an embedded name, a local folder or a hub id)")
    parser.add_argument("--task", help="run config's task")
    parser.add_argument("--backbone-bits", type=int, help="run config's backbone-bits (4, 8, 16, 32)")
    parser.add_argument("--batch-size", type=int, help="run config's batch-size")
    parser.add_argument("--max-seq-length", type=int, help="run config's max-seq-length")
    parser.add_argument("--lora-rank", type=int, help="the LoRA rank to train at (default: the run's starting rank)")
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        metavar="T",
        help="torch thread counts to measure (default: 1, 2, 4, ... and all usable cores)",
    )
    parser.add_argument("--steps", type=int, default=10, help="measured steps per thread count (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up steps per thread count, not counted (default 2)")
    parser.add_argument(
        "--startup-runs",
        type=int,
        default=3,
        help="fresh processes timed per thread count for the tiers' startup_s, a deployed round's start-up "
        "(default 3; 0: not measured, startup_s left out)",
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin the process to T cores (os.sched_setaffinity) for T threads"
    )
    parser.add_argument(
        "--reference",
        type=Path,
        metavar="REF.json",
        help="an `flq calibrate` JSON from the machine that runs the simulations: factors are relative to it "
        "(default: this machine at its largest measured thread count)",
    )
    parser.add_argument(
        "--reference-threads",
        type=int,
        metavar="T",
        help="the reference's thread count (default: the largest it measured: the threads simulated clients use)",
    )
    parser.add_argument(
        "--base-tier",
        default=REFERENCE_TIER,
        help=f"the tier whose network keys (and memory limit) the new tiers copy (default: {REFERENCE_TIER})",
    )
    parser.add_argument(
        "--tier-file", help="a tier file holding --base-tier, over the packaged ones (default: the run's tier-file)"
    )
    parser.add_argument("--memory-mb", type=float, help="memory_limit_mb of the new tiers (default: the base tier's)")
    parser.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help=f"tier names are PREFIX-cpu-Tt (default: {DEFAULT_PREFIX})"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("calibration"),
        help=f"folder for {JSON_NAME} and {TIERS_NAME} (default: ./calibration)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite files already in --out")


@dataclasses.dataclass
class Plan:
    cfg: RunConfig
    rank: int
    threads: list[int]
    steps: int
    warmup: int
    startup_runs: int
    pin: bool
    usable_cores: list[int]
    base: TierProfile
    prefix: str
    memory_mb: float | None
    out: Path
    reference_path: Path | None
    reference_record: Any
    reference_threads: int | None
    made_out: bool = False  # the output folder did not exist: removed again if nothing is written


def run(args: argparse.Namespace) -> int:
    try:
        plan = make_plan(args)
    except CalibrationError as exc:
        return _fail(str(exc))
    try:
        return calibrate(plan, progress=lambda line: print(line, flush=True))
    except CalibrationError as exc:
        _remove_empty(plan)
        return _fail(str(exc))
    except KeyboardInterrupt:
        _remove_empty(plan)
        print("flq calibrate: interrupted, nothing written", file=sys.stderr)
        return 130


def _remove_empty(plan: Plan) -> None:
    if plan.made_out:
        with contextlib.suppress(OSError):
            plan.out.rmdir()  # only if still empty


def _fail(message: str) -> int:
    print(f"flq calibrate: error: {message}", file=sys.stderr)
    return 2


# -- checks before anything heavy -----------------------------------------------------------
def make_plan(args: argparse.Namespace) -> Plan:
    """Every input checked, the output folder proven writable, torch not yet imported."""
    cfg = run_config(args)
    rank = args.lora_rank if args.lora_rank is not None else cfg.start_rank
    if rank < 1:
        raise CalibrationError(f"--lora-rank must be >= 1, got {rank}")
    if args.steps < 1:
        raise CalibrationError(f"--steps must be >= 1, got {args.steps}")
    if args.warmup < 0:
        raise CalibrationError(f"--warmup must be >= 0, got {args.warmup}")
    if args.startup_runs < 0:
        raise CalibrationError(f"--startup-runs must be >= 0, got {args.startup_runs}")
    pin = not args.no_pin and hasattr(os, "sched_setaffinity")
    usable = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    threads = check_threads(args.threads, len(usable), os.cpu_count() or len(usable), pin)
    check_prefix(args.prefix)
    if args.memory_mb is not None and args.memory_mb <= 0:
        raise CalibrationError(f"--memory-mb must be > 0, got {args.memory_mb:g}")
    try:
        tiers = load_tiers(args.tier_file or cfg.tier_file or None)
    except TierError as exc:
        raise CalibrationError(str(exc)) from None
    base = base_tier(tiers, args.base_tier)
    record = None
    if args.reference is not None:
        record = read_reference(args.reference)
        if args.reference_threads is not None and args.reference_threads < 1:
            raise CalibrationError(f"--reference-threads must be >= 1, got {args.reference_threads}")
    elif args.reference_threads is not None and args.reference_threads not in threads:
        raise CalibrationError(
            f"--reference-threads {args.reference_threads}: without --reference it must be one of --threads {threads}"
        )
    check_model(cfg.model)
    made_out = not args.out.exists()
    check_output(args.out, args.force, args.reference)
    return Plan(
        cfg=cfg,
        rank=rank,
        threads=threads,
        steps=args.steps,
        warmup=args.warmup,
        startup_runs=args.startup_runs,
        pin=pin,
        usable_cores=usable,
        base=base,
        prefix=args.prefix,
        memory_mb=args.memory_mb,
        out=args.out,
        reference_path=args.reference,
        reference_record=record,
        reference_threads=args.reference_threads,
        made_out=made_out,
    )


def run_config(args: argparse.Namespace) -> RunConfig:
    """The app's defaults, then ``-c`` overrides, then the explicit flags, validated as a run's."""
    values = app_defaults(args.app)
    flags = {
        "model": args.model,
        "task": args.task,
        "backbone-bits": args.backbone_bits,
        "batch-size": args.batch_size,
        "max-seq-length": args.max_seq_length,
    }
    given = {**parse_overrides(args.run_config), **{k: v for k, v in flags.items() if v is not None}}
    values.update(given)
    # Keys that shape a federation, not a step, fitted to the task unless given: a causal-LM step
    # is the same whatever the run's target and partitioner, which the run config checks against it.
    if values.get("task") == "causal-lm":
        if "partitioner" not in given:
            values["partitioner"] = "iid"
        if "target-score" not in given:
            values["target-score"] = CAUSAL_LM_TARGET
    try:
        return RunConfig.from_flower(values)
    except ConfigError as exc:
        raise CalibrationError(str(exc)) from None


def app_defaults(app: Path) -> dict[str, Any]:
    """``[tool.flwr.app.config]`` of ``app/pyproject.toml``; {} (FLQ's defaults) if there is none."""
    pyproject = app / "pyproject.toml"
    if not pyproject.is_file():
        if app != Path("."):
            raise CalibrationError(f"--app {app}: no pyproject.toml there")
        return {}
    try:
        with open(pyproject, "rb") as fh:
            config = tomllib.load(fh).get("tool", {}).get("flwr", {}).get("app", {}).get("config")
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CalibrationError(f"{pyproject}: {exc}") from None
    if config is None:
        if app != Path("."):
            raise CalibrationError(f"{pyproject} has no [tool.flwr.app.config]: not a Flower app")
        return {}
    return dict(config)


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``-c`` values exactly as ``flwr run`` parses them."""
    if not items:
        return {}
    from flwr.common.config import parse_config_args

    try:
        return dict(parse_config_args(items))
    except Exception as exc:  # flwr raises click's exception, TOML errors, missing files
        message = getattr(exc, "message", None) or str(exc)
        raise CalibrationError(f"-c {' '.join(items)!r}: {' '.join(message.split())}") from None


def check_threads(requested: list[int] | None, usable: int, logical: int, pin: bool) -> list[int]:
    """The thread counts to measure, in the order given, without repeats."""
    if not requested:
        counts = [t for t in (1, 2, 4, 8, 16, 32, 64, 128) if t < usable] + [usable]
        return sorted(set(counts))
    limit = usable if pin else logical
    for t in requested:
        if t < 1:
            raise CalibrationError(f"--threads {t}: a thread count must be >= 1")
        if t > limit:
            where = (
                f"this process may use {usable} of this machine's {logical} logical cores"
                if pin
                else f"this machine has {logical} logical cores"
            )
            raise CalibrationError(f"--threads {t}: {where}")
    return list(dict.fromkeys(requested))


def read_reference(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise CalibrationError(f"reference {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"reference {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise CalibrationError(f"reference {path}: not JSON ({exc})") from None


def check_model(model: str) -> None:
    """Refuse, at once, a model name that names nothing: not embedded, not a folder, not prepared,
    not a hub id in the local cache nor of the ``org/name`` form (which may be downloaded)."""
    from ..task.model_cache import EMBEDDED_MODELS, prepared_model_dir

    if model in EMBEDDED_MODELS or prepared_model_dir(model) is not None:
        return
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise CalibrationError(f"model directory {path} has no config.json")
        return
    if model.startswith((".", "/", "~")) or path.suffix.lower() == ".gguf":
        raise CalibrationError(f"model {model!r}: no such file or directory")
    if "/" in model or _in_hub_cache(model):
        return
    raise CalibrationError(
        f"unknown model {model!r}: not an embedded model ({', '.join(sorted(EMBEDDED_MODELS))}), a local folder, "
        "a name made by `flq prepare-model`, or a Hugging Face hub id (org/name)"
    )


def _in_hub_cache(model: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(model, "config.json"), str)
    except Exception:
        return False


def check_output(out: Path, force: bool, reference: Path | None) -> None:
    """Make ``out`` and prove it writable; refuse to overwrite (without --force) or to replace the reference."""
    targets = [out / JSON_NAME, out / TIERS_NAME]
    if reference is not None and any(_same_file(reference, t) for t in targets):
        raise CalibrationError(f"--out {out} would overwrite the reference {reference}: choose another --out")
    existing = [str(t) for t in targets if t.exists()]
    if existing and not force:
        raise CalibrationError(f"{', '.join(existing)} already exist(s): pass --force to overwrite, or another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".flq-calibrate-", delete=True):
            pass
    except OSError as exc:
        raise CalibrationError(f"cannot write to --out {out}: {exc.strerror or exc}") from None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


# -- measuring ------------------------------------------------------------------------------
def calibrate(plan: Plan, progress: Callable[[str], None] = print) -> int:
    cfg = plan.cfg
    machine = machine_info()
    settings = {
        "created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "warmup_steps": plan.warmup,
        "steps": plan.steps,
        "pinned": plan.pin,
        "load_average_before": _load_average(),
    }
    progress(f"flq calibrate on {machine_line(machine)}; torch {machine['torch']}")
    busy = load_note(settings["load_average_before"], machine["usable_cores"])
    if busy:
        progress(f"note: {busy}")
    model, data, workload = load_workload(cfg, plan.rank, progress)
    notes: list[str] = [busy] if busy else []
    if plan.reference_record is not None:
        reference, notes = reference_from_record(
            plan.reference_record, str(plan.reference_path), workload, plan.reference_threads
        )
        progress(
            f"reference: {plan.reference_path} ({reference.machine}) at {threads_text(reference.threads)}, "
            f"{reference.step_s:.4g} s/step"
        )
    progress(f"step: {workload_line(workload)}")
    measurements = measure(model, data, cfg, plan, progress)
    settings["load_average_after"] = _load_average()
    if plan.reference_record is None:
        reference = reference_from_run(measurements, machine_line(machine), plan.reference_threads)
    note = tokens_note(measurements, reference)
    notes += ([note] if note else []) + noise_notes(measurements)
    tiers = calibrated_tiers(
        measurements,
        reference,
        plan.base,
        plan.prefix,
        cpu_model=machine.get("cpu_model") or "",
        memory_limit_mb=plan.memory_mb,
        when=settings["created"][:10],
    )
    record = calibration_record(machine, workload, settings, measurements, reference, tiers, notes)
    header = header_lines(tiers, measurements, reference, machine, workload, settings, plan.base.name, notes)
    json_path, tiers_path = plan.out / JSON_NAME, plan.out / TIERS_NAME
    write_text(json_path, json.dumps(record, indent=2) + "\n")
    write_text(tiers_path, tier_file_text(tiers, header))
    progress("")
    progress(summary_table(measurements, tiers, reference))
    for line in notes:
        progress(f"note: {line}")
    progress(f"wrote {json_path} and {tiers_path}")
    return 0


def load_workload(cfg: RunConfig, rank: int, progress: Callable[[str], None]):
    """The LoRA model at ``rank`` on the CPU and the run's training data, as a client builds them."""
    from transformers.utils import logging as hf_logging

    from ..task.data import DataError
    from ..task.lora import LoraModel
    from ..task.models import ModelTaskError
    from ..task.partition import load_source
    from ..task.specs import backbone_spec, data_spec, lora_spec

    progress(f"loading {cfg.model} ({cfg.task}, {cfg.backbone_bits}-bit) and data {cfg.data} ...")
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    try:
        spec = dataclasses.replace(backbone_spec(cfg), device="cpu")
        # transformers' load report (a classifier's new head) and deprecation notes are not news here
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model = LoraModel(spec, lora_spec(cfg))
            architecture = _architecture(model.base)
            params = sum(p.numel() for p in model.base.parameters())
            model.use_rank(rank)
        data = load_source(data_spec(cfg))
    except (DataError, ModelTaskError) as exc:
        raise CalibrationError(_one_line(exc)) from None
    except (OSError, ValueError, ImportError) as exc:
        raise CalibrationError(f"cannot load model {cfg.model!r} or data {cfg.data!r}: {_one_line(exc)}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    trainable = sum(p.numel() for p in model.trainable_parameters())
    workload = {
        "model": cfg.model,
        "task": cfg.task,
        "data": cfg.data,
        "architecture": architecture,
        "backbone_bits": cfg.backbone_bits,
        "quant_type": cfg.quant_type if cfg.backbone_bits == 4 else None,
        "batch_size": cfg.batch_size,
        "max_seq_length": cfg.max_seq_length,
        "lora_rank": rank,
        "lora_targets": model.targets if isinstance(model.targets, str) else list(model.targets),
        "packing": cfg.packing,
        "device": "cpu",
        "model_params_as_loaded": int(params),
        "trainable_params": int(trainable),
    }
    return model, data, workload


def _architecture(base) -> dict[str, Any]:
    """The backbone's shape from its config: what a reference measured on another machine must share."""
    config = base.config
    keys = (
        "model_type",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "vocab_size",
    )
    shape = {k: getattr(config, k) for k in keys if isinstance(getattr(config, k, None), str | int)}
    if len(shape) <= 1:  # not a transformer config with these names (e.g. a vision model)
        shape["parameters"] = int(sum(p.numel() for p in base.parameters()))
    return shape


def measure(model, data, cfg: RunConfig, plan: Plan, progress: Callable[[str], None]) -> list[Measurement]:
    """Each thread count's step times, through ``train_steps`` as a client trains."""
    import torch

    from ..task.train import class_loss_options, make_batches, set_torch_threads, train_steps

    torch.manual_seed(cfg.seed)
    batches = _CountingBatches(
        make_batches(cfg.task, data, model.processor, cfg.batch_size, cfg.max_seq_length, cfg.seed, cfg.packing)
    )
    class_options = class_loss_options(data.labels, data.num_labels, cfg.class_weighting, cfg.restricted_softmax)
    threads_before = torch.get_num_threads()
    omp_before = os.environ.get("OMP_NUM_THREADS")
    affinity_before = os.sched_getaffinity(0) if plan.pin else None
    total = plan.warmup + plan.steps
    measurements = []
    try:
        for t in plan.threads:
            cores = tuple(plan.usable_cores[:t]) if plan.pin else None
            set_torch_threads(t)
            if cores is not None:
                os.sched_setaffinity(0, cores)
            where = f"cores {_ranges(cores)}" if cores is not None else "not pinned"
            progress(
                f"{t} thread{'s' if t != 1 else ''} ({where}): {plan.warmup} warm-up + {plan.steps} measured steps"
            )
            stamps: list[float] = []

            def should_stop(done: int, _measured: float, stamps=stamps, t=t) -> bool:
                stamps.append(time.perf_counter())
                if done:
                    kind = "warm-up" if done <= plan.warmup else "step"
                    index = done if done <= plan.warmup else done - plan.warmup
                    of = plan.warmup if done <= plan.warmup else plan.steps
                    progress(f"  {t}t {kind} {index}/{of}: {stamps[-1] - stamps[-2]:.3f} s")
                return done >= total

            batches.start()
            stats = train_steps(
                model.model,
                batches,
                total + 1,  # the callback stops before the extra step: every step is timed between two calls
                cfg.learning_rate,
                cfg.weight_decay,
                should_stop,
                proximal_mu=cfg.proximal_mu,
                max_grad_norm=cfg.max_grad_norm,
                **class_options,
            )
            if stats.steps != total or len(stamps) != total + 1:
                raise CalibrationError(f"{t} threads: trained {stats.steps} steps, expected {total}")
            step_s = tuple(b - a for a, b in itertools.pairwise(stamps))[plan.warmup :]
            tokens, examples = batches.means(plan.warmup)
            startup = time_probes(cfg.to_dict(), plan.rank, cores, t, plan.startup_runs, progress)
            m = Measurement(t, step_s, cores, tokens, examples, stats.peak_mem_mb, tuple(startup))
            s = m.summary
            progress(
                f"  {t}t: median {s.median_s:.3f} s/step (p10 {s.p10_s:.3f}, p90 {s.p90_s:.3f})"
                + ("" if m.startup_s is None else f", start-up {m.startup_s:.2f} s a round")
            )
            measurements.append(m)
    finally:
        torch.set_num_threads(threads_before)
        if omp_before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = omp_before
        if affinity_before is not None:
            os.sched_setaffinity(0, affinity_before)
    return measurements


class _CountingBatches:
    """The run's batch iterator, its first batch prepared before any timing (causal-LM blocks are
    built on the first ``next``), recording each batch's input tokens and examples."""

    def __init__(self, batches: Iterator[dict]) -> None:
        first = next(batches)
        self._it = itertools.chain([first], batches)
        self.tokens: list[int | None] = []
        self.examples: list[int] = []

    def start(self) -> None:
        self.tokens, self.examples = [], []

    def __iter__(self) -> _CountingBatches:
        return self

    def __next__(self) -> dict:
        batch = next(self._it)
        ids = batch.get("input_ids")
        self.tokens.append(int(ids.numel()) if ids is not None else None)
        self.examples.append(int(batch["labels"].shape[0]))
        return batch

    def means(self, skip: int) -> tuple[float | None, float | None]:
        tokens, examples = self.tokens[skip:], self.examples[skip:]
        mean_tokens = sum(tokens) / len(tokens) if tokens and None not in tokens else None
        return mean_tokens, (sum(examples) / len(examples) if examples else None)


def summary_table(measurements: list[Measurement], tiers: list[TierProfile], reference: Reference) -> str:
    rows = ["threads  median s/step  p10 s    p90 s    factor  start-up s  tier"]
    for m, tier in zip(measurements, tiers, strict=True):
        s = m.summary
        startup = "-" if m.startup_s is None else f"{m.startup_s:.4g}"
        rows.append(
            f"{m.threads:>7}  {s.median_s:>13.4g}  {s.p10_s:>7.4g}  {s.p90_s:>7.4g}  {tier.compute_factor:>6.4g}  "
            f"{startup:>10}  {tier.name}"
        )
    where = "this machine" if reference.from_this_run else reference.source
    rows.append(f"factor = median / {reference.step_s:.4g} s/step ({where} at {threads_text(reference.threads)})")
    return "\n".join(rows)


# -- this machine ---------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    import torch

    cpuinfo = _cpuinfo()
    flags = set(cpuinfo.get("flags", cpuinfo.get("Features", "")).split())
    return {
        "hostname": platform.node(),
        "cpu_model": cpuinfo.get("model name") or platform.processor() or platform.machine(),
        "cpu_flags": [f for f in CPU_FLAGS if f in flags],
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_mb": _memory_mb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_default_threads": torch.get_num_threads(),
    }


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} elsewhere)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    if fields:
                        break
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    return fields


def _memory_mb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20)
    except (ValueError, OSError, AttributeError):
        return None


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _ranges(cores: tuple[int, ...]) -> str:
    """``0-3,6`` for (0, 1, 2, 3, 6)."""
    parts, start, prev = [], None, None
    for c in sorted(cores):
        if start is None:
            start = prev = c
        elif c == prev + 1:
            prev = c
        else:
            parts.append(f"{start}-{prev}" if prev != start else str(start))
            start = prev = c
    if start is not None:
        parts.append(f"{start}-{prev}" if prev != start else str(start))
    return ",".join(parts)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


def write_text(path: Path, text: str) -> None:
    """Write via a temporary file and a rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise CalibrationError(f"cannot write {path}: {exc.strerror or exc}") from None
