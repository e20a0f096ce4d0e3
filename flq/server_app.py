"""FLQ ServerApp: builds the task, scheduler and strategy from the run config, runs rounds.

Per round it evaluates the global adapter on the server's held-out set, appends a JSON line
to ``rounds.jsonl``, checkpoints the adapter and scheduler, and prints a progress line. At
the end it writes ``summary.json`` and the final adapter in peft format (``adapter/rank<R>/``, with its
label names and model card; with ``export-merged``, also merged into a full model in ``merged/``:
``flq.task.export``).
Set ``resume=true`` with the same ``run-name`` to continue a run from its last checkpoint.
"""

from __future__ import annotations

import json
import platform
from datetime import datetime
from pathlib import Path

import torch
from flwr.app import Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from . import __version__
from .adapter import AdapterState, adapter_rank, lora_pairs, nbytes, num_parameters
from .codec.flower_records import array_record_to_adapter
from .codec.update_codec import bytes_per_element
from .config import ConfigError, NodeConfigError, RunConfig
from .logs import log, quiet_libraries
from .metrics.classification import to_metric_values
from .metrics.generation import to_generation_metric_values
from .metrics.model_card import CardFacts, model_card
from .metrics.plots import write_run_figures
from .metrics.records import RUN_INFO_FILE, read_rounds
from .metrics.summary import summarize, write_summary
from .run_recorder import RunRecorder, load_checkpoint, load_control_state, load_optimizer_state
from .scheduler.priors import MemoryModel
from .scheduler.registry import build_for_run
from .sim.clock import ClockModel
from .sim.tiers import TierError, load_tiers
from .status import ClientStatus
from .strategy.accounting import ResumePoint, clock_budget_spent
from .strategy.fedavg import FLQFedAvg, NoClientsError
from .strategy.spec import StrategySpec
from .task.chat_data import GENERATIVE_TASKS
from .task.cost import estimate_step_seconds, estimate_train_memory_mb, model_shape, reference_step_seconds
from .task.data import DataError
from .task.export import BASE_CONFIG_FILE, base_model_reference, export_adapter, export_merged
from .task.lora import LoraModel
from .task.model_cache import ModelNotFoundError, resolve_model
from .task.models import ModelTaskError
from .task.partition import check_partitioning, load_source, server_test_data
from .task.specs import backbone_spec, data_spec, generation_spec, lora_spec
from .task.train import EvalStats, evaluate

quiet_libraries()
app = ServerApp()
GENERATIONS_FILE = "generations.jsonl"  # instruction: a few generated answers per evaluation, by round


class ServerEvaluator:
    """Scores a global adapter on the server's held-out set (the ``evaluate_fn`` of a run)."""

    def __init__(self, cfg: RunConfig, generations_file: Path | None = None) -> None:
        self.cfg = cfg
        self.generations_file = generations_file  # instruction: sample answers of every evaluation (JSONL)
        torch.manual_seed(cfg.seed)  # the random head and LoRA init are the run's initial adapter
        self.model = LoraModel(backbone_spec(cfg), lora_spec(cfg))
        self.model.use_rank(cfg.lora_rank)
        self.test = server_test_data(data_spec(cfg))

    def initial_adapter(self) -> AdapterState:
        return self.model.adapter_state()

    def evaluation(self, state: AdapterState) -> EvalStats:
        self.model.load_adapter_state(state)
        cfg = self.cfg
        return evaluate(
            self.model.model,
            cfg.task,
            self.test,
            self.model.processor,
            cfg.eval_batch_size,
            cfg.max_seq_length,
            generation_spec(cfg),
        )

    def __call__(self, server_round: int, state: AdapterState) -> MetricRecord:
        stats = self.evaluation(state)
        if stats.generation is not None and self.generations_file is not None:
            write_generations(self.generations_file, server_round, stats.generation.samples)
        return metric_record(stats)

    def export(self, state: AdapterState, out_dir: Path, card: str | None = None) -> Path:
        """Save ``state`` as a peft adapter folder ``out_dir/rank<R>/`` (``PeftModel.from_pretrained(base,
        that folder)``), with the base model's config (label names) and ``card``; returns the folder."""
        self.model.load_adapter_state(state)
        return export_adapter(self.model, out_dir, self.label_names, card)

    @property
    def label_names(self) -> list[str] | None:
        return None if self.cfg.task in GENERATIVE_TASKS else load_source(data_spec(self.cfg)).label_names

    def card(self, run_dir: Path, records: list, summary: dict) -> str:
        """The exported adapter's model card: task, data, federation, rounds and scores of this run."""
        cfg = self.cfg
        trained = {c.node_id for r in records for c in r.clients if c.status == ClientStatus.OK}
        return model_card(
            CardFacts(
                run_name=run_dir.name,
                base_model=base_model_reference(self.model),
                adapter_dir=f"rank{self.model.rank}",
                config_file=BASE_CONFIG_FILE,
                config=cfg.to_dict(),
                summary=summary,
                num_examples=len(load_source(data_spec(cfg))),
                server_test_size=len(self.test),
                label_names=self.label_names,
                num_clients=_federation_size(run_dir, records),
                clients_trained=len(trained),
            )
        )


def metric_record(stats: EvalStats) -> MetricRecord:
    """The server's evaluation as Flower metrics (``RunRecorder`` reads them into the round's record)."""
    metrics = {"score": stats.score, "loss": stats.loss, "num-examples": stats.num_examples}
    if stats.classes is not None:
        metrics.update(to_metric_values(stats.classes))
    if stats.generation is not None:
        metrics.update(to_generation_metric_values(stats.generation.exact_match, stats.generation.response_perplexity))
    return MetricRecord(metrics)


def write_generations(path: Path, server_round: int, samples: list[dict]) -> None:
    """Append an evaluation's sample answers to ``path`` (JSONL, one answer a line, with its round)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        for sample in samples:
            fh.write(json.dumps({"server_round": server_round, **sample}, ensure_ascii=False) + "\n")


def scheduler_priors(cfg: RunConfig, initial: AdapterState) -> dict:
    """Per-step time by bits, wire bytes per rank unit, and a memory model, from estimates."""
    per_rank = sum(initial[a].shape[1] + initial[b].shape[0] for a, b in lora_pairs(initial).values())
    per_element = bytes_per_element(cfg.update_codec) + (bytes_per_element("fp32") if cfg.scaffold else 0)
    priors: dict = {"bytes_per_rank": per_rank * per_element}  # SCAFFOLD's control travels beside, in fp32
    try:
        shape = model_shape(resolve_model(cfg.model))
    except (OSError, ValueError):
        return priors  # a hub model not on disk: schedulers start from their own defaults
    priors["step_time_prior"] = {
        bits: estimate_step_seconds(shape, bits, cfg.batch_size, cfg.max_seq_length) for bits in (4, 8, 16, 32)
    }
    activations = (
        estimate_train_memory_mb(shape, 16, 0, cfg.batch_size, cfg.max_seq_length) - shape.linear_params * 2 / 2**20
    )
    priors["memory_model"] = MemoryModel(
        backbone_mb_16bit=shape.linear_params * 2 / 2**20,
        activation_mb=activations,
        adapter_mb_per_rank=per_rank * 16 / 2**20,  # weights, grads, two AdamW moments in float32
    )
    return priors


def round_deadline_s(cfg: RunConfig) -> float | None:
    """The round deadline in seconds on the run's clock (None under policy wait).

    ``deadline-steps`` counts reference steps of the run's model (docs/clock.md): the same count
    asks the same work of a tier whatever the model, where a deadline in seconds does not.
    """
    if cfg.policy == "wait":
        return None
    if cfg.deadline_s > 0:
        return cfg.deadline_s
    try:
        step_s = reference_step_seconds(cfg.model, cfg.backbone_bits, cfg.batch_size, cfg.max_seq_length)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"deadline-steps needs the size of model {cfg.model!r}, which is not on disk ({exc}): set deadline-s"
        ) from None
    return cfg.deadline_steps * step_s


def resolve_run_dir(cfg: RunConfig) -> Path:
    name = cfg.run_name or datetime.now().strftime("run-%Y%m%d-%H%M%S")
    return (Path(cfg.output_dir).expanduser() / name).resolve()


# Errors in what the user configured: reported in one line, without a library traceback.
USER_ERRORS = (
    ConfigError,
    DataError,
    ModelNotFoundError,
    ModelTaskError,
    NodeConfigError,
    FileExistsError,
    FileNotFoundError,
    NoClientsError,
    TierError,
)


class RunFailed(RuntimeError):
    """A run stopped on a user error (already logged in one line)."""


@app.main()
def main(grid: Grid, context: Context) -> None:
    try:
        cfg = RunConfig.from_flower(context.run_config)
        run_federation(grid, cfg)
    except USER_ERRORS as exc:
        # One line says what to fix; raising makes Flower record the run as failed, not completed.
        log.error("FLQ cannot run: %s", exc)
        raise RunFailed(str(exc)) from None


def run_federation(grid: Grid, cfg: RunConfig) -> Path:
    """Run every round of ``cfg`` on ``grid``; return the run directory."""
    run_dir = resolve_run_dir(cfg)
    log.info("FLQ run directory: %s", run_dir)
    check_partitioning(data_spec(cfg))  # a split that cannot work fails here, before any client starts
    evaluator = ServerEvaluator(cfg, run_dir / GENERATIONS_FILE)
    initial = evaluator.initial_adapter()
    log.info(
        "global adapter: rank %d, %d tensors, %.2fM parameters, %.2f MB in float32",
        adapter_rank(initial),
        len(initial),
        num_parameters(initial) / 1e6,
        nbytes(initial) / 1e6,
    )
    tiers = load_tiers(cfg.tier_file or None)
    deadline_s = round_deadline_s(cfg)
    scheduler = build_for_run(cfg, tiers=tiers, **scheduler_priors(cfg, initial))
    strategy = FLQFedAvg(
        StrategySpec.from_run_config(cfg, deadline_s),
        scheduler,
        ClockModel.for_transport(tiers, cfg.transport, cfg.compute_misfit),
    )
    checkpoint = load_checkpoint(run_dir) if cfg.resume else None
    if cfg.resume and checkpoint is None:
        raise FileNotFoundError(f"resume=true but {run_dir} has no checkpoint (set run-name to the run to resume)")
    if not cfg.resume and (run_dir / "rounds.jsonl").exists():
        raise FileExistsError(f"{run_dir} already holds a run: choose another run-name, or set resume=true")
    state, resume, wall_s = initial, ResumePoint(1, 0.0), 0.0
    if checkpoint is not None:
        state, meta = checkpoint
        scheduler.load_state_dict(meta.get("scheduler", {}))
        resume = ResumePoint(
            int(meta["server_round"]) + 1,
            float(meta["clock_s"]),
            meta.get("rng") or None,
            load_optimizer_state(run_dir),
            load_control_state(run_dir),
        )
        wall_s = float(meta["wall_s"])
        log.info("resuming %s after round %d", run_dir, resume.start_round - 1)

    run_info = {
        "config": cfg.to_dict(),
        "flq_version": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "started": datetime.now().isoformat(timespec="seconds"),
    }
    recorder = RunRecorder(run_dir, cfg.score_name, cfg.num_server_rounds, run_info, wall_s)
    if resume.start_round <= cfg.num_server_rounds and not clock_budget_spent(resume.clock_s, cfg.clock_budget):
        result = strategy.start(
            grid,
            state,
            num_rounds=cfg.num_server_rounds,
            timeout=3600.0,
            evaluate_fn=evaluator,
            recorder=recorder,
            resume=resume,
            clock_budget_s=cfg.clock_budget,
        )
        state = array_record_to_adapter(result.arrays)
    records = read_rounds(run_dir)  # all rounds, also those before a resume
    summary = summarize(records, cfg.target_score, cfg.higher_is_better, deadline_s)
    summary["initial"] = recorder.initial or _previous_initial(run_dir)
    write_summary(run_dir, summary)
    write_run_figures(records, run_dir / "figures", cfg.target_score)
    evaluator.export(state, run_dir / "adapter", evaluator.card(run_dir, records, summary))
    if cfg.export_merged:  # the adapter just exported, merged into a full model folder
        log.info("merged model: %s", export_merged(evaluator.model, run_dir / "merged", evaluator.label_names))
    log.info(
        "FLQ finished %d rounds: %s=%s (target %s reached %s), results in %s",
        len(records),
        cfg.score_name,
        summary.get("final_score"),
        cfg.target_score,
        "never" if summary.get("rounds_to_target") is None else f"at round {summary['rounds_to_target']}",
        run_dir,
    )
    return run_dir


def _federation_size(run_dir: Path, records: list) -> int:
    """Nodes in the federation: those run.json lists, else every client the rounds name."""
    try:
        nodes = json.loads((run_dir / RUN_INFO_FILE).read_text()).get("nodes")
    except (OSError, ValueError):
        nodes = None
    if nodes:
        return len(nodes)
    return len({c.node_id for r in records for c in [*r.clients, *r.client_eval]})


def _previous_initial(run_dir: Path) -> dict:
    """A resumed run keeps the initial evaluation its first part recorded."""
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("initial", {})
    except (OSError, ValueError):
        return {}
