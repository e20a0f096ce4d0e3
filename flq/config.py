"""The run configuration: every knob of ``[tool.flwr.app.config]``, typed and checked once.

Flower hands both apps ``context.run_config`` (a flat dict of TOML scalars, defaults from
pyproject.toml fused with ``-c`` overrides). ``RunConfig.from_flower`` turns it into one
frozen dataclass and reports *every* bad value in one clear error, so a typo in
``flwr run . -c '...'`` fails in the first second instead of deep inside a library.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import PurePath
from typing import Any

from .codec.update_codec import SCHEMES as CODECS
from .metrics.summary import higher_is_better_for
from .scheduler.bandit import parts_off
from .scheduler.registry import SCHEDULERS
from .scheduler.spread import SpreadError, parse_factor_spread, parse_int_spread
from .sim.clock import CLOCKS, HANDSHAKE_RTTS, POLICIES
from .strategy.aggregation import AGGREGATION_RULES, AGGREGATION_WEIGHTS, FAIRNESS_Q_MAX
from .strategy.server_optimizer import SERVER_OPTIMIZERS
from .task.chat_data import EMBEDDED_CHAT, GENERATIVE_TASKS, INSTRUCTION_TASK
from .task.data import EMBEDDED_TEXT, ROW_SUFFIXES, TEXT_SUFFIXES, check_encoding
from .task.images import IMAGE_FILE_SUFFIXES, IMAGE_SOURCES, IMAGE_TASK
from .task.lr_schedule import LR_SCHEDULES
from .task.partition import LABEL_PARTITIONERS

CLASS_WEIGHTINGS = ("none", "balanced")
TASKS = ("sequence-classification", "causal-lm", INSTRUCTION_TASK, "image-classification")
PARTITIONERS = ("iid", "dirichlet", "pathological")
BITS = (4, 8, 16, 32)
QUANT_TYPES = ("nf4", "fp4")
TRANSPORTS = tuple(HANDSHAKE_RTTS)


class ConfigError(ValueError):
    """A run-config value is missing, of the wrong type, or out of range."""


class NodeConfigError(ConfigError):
    """A node's configuration (``--node-config``) lacks what FLQ needs."""


@dataclass(frozen=True)
class RunConfig:
    # task, model, data
    task: str = "sequence-classification"
    model: str = "smollm2-135m"
    data: str = "bbc-news"
    text_column: str = "text"
    label_column: str = "label"
    data_encoding: str = "utf-8"  # decodes CSV, JSONL and text files (not bbc-news, always latin-1)
    # instruction data (task="instruction"; flq/task/chat.py): prompt/response(/system) columns or chat messages
    prompt_column: str = "prompt"
    response_column: str = "response"
    system_column: str = "system"
    messages_column: str = "messages"
    system_prompt: str = ""  # a system message for examples that carry none ("": none)
    packing: bool = False  # several short examples per block (attention crosses them; loss stays on responses)
    generation_samples: int = 32  # held-out prompts the server answers at every evaluation (ROUGE-L, exact match)
    max_new_tokens: int = 32
    max_seq_length: int = 64
    server_test_size: int = 300
    local_test_fraction: float = 0.2
    # partitioning
    partitioner: str = "dirichlet"
    dirichlet_alpha: float = 0.3
    classes_per_client: int = 2
    # federated loop
    num_server_rounds: int = 6
    clients_per_round: int = 4
    local_steps: int = 8
    batch_size: int = 8
    eval_batch_size: int = 32
    learning_rate: float = 0.002
    weight_decay: float = 0.0
    lr_schedule: str = "constant"  # across rounds: constant | cosine (flq.task.lr_schedule)
    lr_warmup_rounds: int = 0
    max_grad_norm: float = 0.0  # 0: no clipping
    proximal_mu: float = 0.0  # FedProx; 0: off
    scaffold: bool = False  # SCAFFOLD control variates (flq/strategy/scaffold.py); doubles the bytes per round
    class_weighting: str = "none"  # none | balanced (classification: each local class weighs the same)
    restricted_softmax: float = 1.0  # FedRS: a client's logits of classes it lacks x this in its loss; 1: off
    seed: int = 42
    target_score: float = 0.85
    # LoRA and backbone
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: str = "auto"
    backbone_bits: int = 16
    quant_type: str = "nf4"
    aggregation: str = "rank-wise"
    aggregation_weight: str = "examples-per-step"
    fairness_q: float = 0.0  # q-FFL: weights also x (loss before training)^q; 0: off (flq.strategy.aggregation)
    # server optimizer over the aggregated update (Reddi et al.; flq/strategy/server_optimizer.py)
    server_optimizer: str = "fedavg"
    server_lr: float = 1.0
    server_beta1: float = 0.9
    server_beta2: float = 0.99
    server_tau: float = 0.001
    # who gets which rank and bits
    scheduler: str = "fixed"
    base_rank: int = 0
    client_ranks: str = ""
    client_bits: str = ""
    bandit_off: str = ""  # ablations: bandit parts switched off (flq.scheduler.bandit.BANDIT_PARTS)
    step_fixed_examples: float = 0.0  # a training step's fixed cost, in examples' worth (docs/schedulers.md)
    # tiers, clock and deadline (docs/clock.md)
    tiers: str = "reference"
    tier_file: str = ""
    # simulation only: each client's true compute over its tier's factor, which no scheduler is
    # told (a throttled or mis-declared device); the virtual clock charges it (docs/clock.md)
    compute_misfit: str = "1"
    transport: str = "quic"
    clock: str = "auto"
    deadline_s: float = 0.0
    deadline_steps: float = 0.0  # the deadline in reference steps of the model (server_app.round_deadline_s)
    policy: str = "wait"
    clock_budget_s: float = 0.0
    client_eval_every: int = 0
    # what travels
    update_codec: str = "fp32"
    broadcast_codec: str = "fp32"
    error_feedback: bool = True
    # outputs
    output_dir: str = "runs"
    export_merged: bool = False  # also write the adapter merged into a full model folder (merged/)
    run_name: str = ""
    resume: bool = False

    # -- derived ---------------------------------------------------------------------
    @property
    def lora_scaling(self) -> float:
        """alpha / r at the global rank; kept for every client rank (see docs/architecture.md)."""
        return self.lora_alpha / self.lora_rank

    @property
    def start_rank(self) -> int:
        """The rank ``fixed`` gives everyone, and adaptive schedulers' starting average."""
        return self.base_rank or self.lora_rank

    @property
    def clock_budget(self) -> float | None:
        return self.clock_budget_s if self.clock_budget_s > 0 else None

    @property
    def higher_is_better(self) -> bool:
        return higher_is_better_for(self.score_name)

    @property
    def score_name(self) -> str:
        return {"causal-lm": "perplexity", INSTRUCTION_TASK: "rouge-l"}.get(self.task, "accuracy")

    def to_dict(self) -> dict[str, Any]:
        return {_flower_key(f.name): getattr(self, f.name) for f in fields(self)}

    # -- parsing ---------------------------------------------------------------------
    @classmethod
    def from_flower(cls, run_config: Mapping[str, Any]) -> RunConfig:
        """Build from Flower's flat run config (kebab-case keys); unknown keys are errors."""
        known = {_flower_key(f.name): f for f in fields(cls)}
        errors: list[str] = []
        values: dict[str, Any] = {}
        for key, raw in run_config.items():
            field = known.get(key)
            if field is None:
                errors.append(f"unknown key {key!r}")
                continue
            try:
                values[field.name] = _coerce(raw, field.type)
            except (TypeError, ValueError) as exc:
                errors.append(f"{key}={raw!r}: {exc}")
        if errors:
            raise ConfigError("bad run config: " + "; ".join(errors) + _hint(known))
        config = cls(**values)
        config.validate()
        return config

    def replace(self, **changes: Any) -> RunConfig:
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new

    def validate(self) -> None:
        errors = []

        def check(ok: bool, message: str) -> None:
            if not ok:
                errors.append(message)

        check(self.task in TASKS, f"task must be one of {TASKS}, got {self.task!r}")
        check(self.partitioner in PARTITIONERS, f"partitioner must be one of {PARTITIONERS}")
        check(self.backbone_bits in BITS, f"backbone-bits must be one of {BITS}")
        check(self.quant_type in QUANT_TYPES, f"quant-type must be one of {QUANT_TYPES}")
        check(self.aggregation in AGGREGATION_RULES, f"aggregation must be one of {AGGREGATION_RULES}")
        check(
            self.aggregation_weight in AGGREGATION_WEIGHTS,
            f"aggregation-weight must be one of {AGGREGATION_WEIGHTS}, got {self.aggregation_weight!r}",
        )
        check(
            0 <= self.fairness_q <= FAIRNESS_Q_MAX,
            f"fairness-q must be in [0, {FAIRNESS_Q_MAX:g}], got {self.fairness_q!r}",
        )
        check(
            self.server_optimizer in SERVER_OPTIMIZERS,
            f"server-optimizer must be one of {SERVER_OPTIMIZERS}, got {self.server_optimizer!r}",
        )
        check(self.server_lr > 0, "server-lr must be > 0")
        check(
            0 <= self.server_beta1 < 1 and 0 <= self.server_beta2 < 1, "server-beta1 and server-beta2 must be in [0, 1)"
        )
        check(self.server_tau > 0, "server-tau must be > 0")
        check(self.scheduler in SCHEDULERS, f"scheduler must be one of {SCHEDULERS}")
        try:
            off = parts_off(self.bandit_off)
        except ValueError as exc:
            errors.append(f"bandit-off: {exc}")
        else:
            check(not off or self.scheduler == "bandit", 'bandit-off switches parts of scheduler="bandit" only')
        check(0 <= self.base_rank <= self.lora_rank, "base-rank must be in [0, lora-rank] (0 = lora-rank)")
        check(self.clock in CLOCKS, f"clock must be one of {CLOCKS}")
        check(self.policy in POLICIES, f"policy must be one of {POLICIES}")
        check(self.deadline_s >= 0, "deadline-s must be >= 0 (0 = no deadline)")
        check(
            math.isfinite(self.deadline_steps) and self.deadline_steps >= 0,
            "deadline-steps must be a finite number >= 0 (0 = none: deadline-s decides)",
        )
        check(
            not (self.deadline_s > 0 and self.deadline_steps > 0),
            "set one of deadline-s and deadline-steps (the other 0), not both",
        )
        check(self.clock_budget_s >= 0, "clock-budget-s must be >= 0 (0 = no budget: num-server-rounds decides)")
        check(
            self.policy == "wait" or self.deadline_s > 0 or self.deadline_steps > 0,
            f"policy {self.policy!r} needs a deadline: deadline-s > 0 or deadline-steps > 0",
        )
        check(self.transport in TRANSPORTS, f"transport must be one of {TRANSPORTS}")
        check(self.client_eval_every >= 0, "client-eval-every must be >= 0")
        for key, spec, allowed in (("client-ranks", self.client_ranks, None), ("client-bits", self.client_bits, BITS)):
            if spec:
                try:
                    parse_int_spread(
                        spec, key, allowed=allowed, low=1, high=self.lora_rank if allowed is None else None
                    )
                except SpreadError as exc:
                    errors.append(str(exc))
        try:
            parse_factor_spread(self.compute_misfit, "compute-misfit")
        except SpreadError as exc:
            errors.append(str(exc))
        check(self.update_codec in CODECS, f"update-codec must be one of {CODECS}")
        check(self.broadcast_codec in CODECS, f"broadcast-codec must be one of {CODECS}")
        check(self.max_seq_length >= 8, "max-seq-length must be >= 8")
        check(self.server_test_size >= 1, "server-test-size must be >= 1")
        check(0.0 < self.local_test_fraction < 1.0, "local-test-fraction must be in (0, 1)")
        check(self.dirichlet_alpha > 0, "dirichlet-alpha must be > 0")
        check(self.classes_per_client >= 1, "classes-per-client must be >= 1")
        check(self.num_server_rounds >= 1, "num-server-rounds must be >= 1")
        check(self.clients_per_round >= 0, "clients-per-round must be >= 0 (0 = all)")
        check(self.local_steps >= 1, "local-steps must be >= 1")
        check(self.batch_size >= 1 and self.eval_batch_size >= 1, "batch sizes must be >= 1")
        check(
            math.isfinite(self.step_fixed_examples) and self.step_fixed_examples >= 0,
            f"step-fixed-examples must be a finite number >= 0, got {self.step_fixed_examples}",
        )
        check(self.learning_rate > 0, "learning-rate must be > 0")
        check(self.weight_decay >= 0, "weight-decay must be >= 0")
        check(self.lr_schedule in LR_SCHEDULES, f"lr-schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        check(self.lr_warmup_rounds >= 0, "lr-warmup-rounds must be >= 0")
        check(self.max_grad_norm >= 0, "max-grad-norm must be >= 0 (0: no clipping)")
        check(self.proximal_mu >= 0, "proximal-mu must be >= 0 (0: no proximal term)")
        check(self.class_weighting in CLASS_WEIGHTINGS, f"class-weighting must be one of {CLASS_WEIGHTINGS}")
        check(
            self.class_weighting == "none" or self.task not in GENERATIVE_TASKS,
            f"class-weighting applies to classification tasks, not {self.task}",
        )
        check(
            0.0 <= self.restricted_softmax <= 1.0,
            f"restricted-softmax must be in [0, 1] (1: off), got {self.restricted_softmax!r}",
        )
        check(
            self.restricted_softmax == 1.0 or self.task not in GENERATIVE_TASKS,
            f"restricted-softmax applies to classification tasks, not {self.task}",
        )
        check(self.generation_samples >= 0, "generation-samples must be >= 0")
        check(self.max_new_tokens >= 1, "max-new-tokens must be >= 1")
        check(self.lora_rank >= 1, "lora-rank must be >= 1")
        check(self.lora_alpha > 0, "lora-alpha must be > 0")
        check(0.0 <= self.lora_dropout < 1.0, "lora-dropout must be in [0, 1)")
        check(bool(self.lora_targets.strip()), "lora-targets must not be empty")
        check(bool(self.output_dir.strip()), "output-dir must not be empty")
        check("/" not in self.run_name and ".." not in self.run_name, "run-name must be a plain name")
        encoding_problem = check_encoding(self.data_encoding)
        if encoding_problem:
            errors.append(encoding_problem)
        errors.extend(self.cross_check())
        if errors:
            raise ConfigError("bad run config: " + "; ".join(errors))

    def cross_check(self) -> list[str]:
        """Combinations of task, partitioner, data and target that cannot work, each with what would.

        Only what the config alone decides (names and file suffixes); what needs the data itself
        (its classes, its size) is checked when the ServerApp loads it, before any client starts.
        Hints are written as ``-c`` overrides (``key="value"``).
        """
        problems = []
        task, data = self.task, self.data
        if task == "causal-lm" and self.partitioner in LABEL_PARTITIONERS:
            problems.append(
                f'partitioner="{self.partitioner}" splits clients by label and task="causal-lm" data has no labels: '
                'set partitioner="iid"'
            )
        kind = data_kind(data)
        if self.packing and task != INSTRUCTION_TASK:
            problems.append(f'packing joins instruction examples and task="{task}": set packing=false')
        if task == INSTRUCTION_TASK and self.generation_samples < 1:
            problems.append(
                'task="instruction" is scored by the ROUGE-L of generated answers: set generation-samples >= 1'
            )
        if task == INSTRUCTION_TASK and kind == "plain-text":
            problems.append(
                f'data="{data}" is plain text and task="instruction" needs prompts and answers: '
                'set data="bbc-headlines" or a .csv/.jsonl/.json/.parquet file with prompt/response columns '
                'or chat messages (or task="causal-lm")'
            )
        elif task == INSTRUCTION_TASK and data in EMBEDDED_TEXT:
            problems.append(
                f'data="{data}" is not instruction data: set data="bbc-headlines" (its articles and their titles)'
            )
        elif task != INSTRUCTION_TASK and kind == "chat":
            problems.append(f'data="{data}" is instruction data: set task="instruction"')
        if task == IMAGE_TASK and kind in ("text", "plain-text"):
            problems.append(
                f'data="{data}" is text and task="{task}" needs images: set data="digits", an .npz or a folder '
                'of class folders of images (or task="sequence-classification")'
            )
        elif task != IMAGE_TASK and kind == "images":
            problems.append(
                f'data="{data}" is images and task="{task}" needs text: set task="{IMAGE_TASK}" (or data="bbc-news", '
                f"a {'/'.join(ROW_SUFFIXES + TEXT_SUFFIXES[:1])} file or a folder)"
            )
        elif task == "sequence-classification" and kind == "plain-text":
            problems.append(
                f'data="{data}" is plain text without labels and task="{task}" needs labels: use a '
                f'{"/".join(ROW_SUFFIXES)} file with a label column or a folder per class (or task="causal-lm")'
            )
        if task == "causal-lm" and self.target_score <= 1.0:
            problems.append(
                f'target-score={self.target_score:g} is below 1, which no perplexity reaches (task="causal-lm" '
                "is scored by perplexity, lower is better): set target-score to a perplexity, e.g. 30"
            )
        elif task != "causal-lm" and not 0.0 < self.target_score <= 1.0:
            problems.append(
                f"target-score={self.target_score:g} is {'a ROUGE-L' if task == INSTRUCTION_TASK else 'an accuracy'} "
                f'for task="{task}": set it in (0, 1]'
            )
        return problems

    def lora_target_list(self) -> list[str] | str:
        """``all-linear`` / ``auto`` as is, else the comma-separated module names."""
        value = self.lora_targets.strip()
        if value in ("all-linear", "auto"):
            return value
        return [t.strip() for t in value.split(",") if t.strip()]


def data_kind(data: str) -> str:
    """What ``data`` names, as far as its name tells: text | plain-text (no labels) | chat (instruction
    data) | images | unknown (a folder, or a file type the loaders will judge)."""
    if data in EMBEDDED_CHAT:
        return "chat"
    if data in EMBEDDED_TEXT or data.startswith("hf:"):
        return "text"
    if data in IMAGE_SOURCES:
        return "images"
    suffix = PurePath(data).suffix.lower()
    if suffix in ROW_SUFFIXES:
        return "text"
    if suffix in TEXT_SUFFIXES:
        return "plain-text"
    if suffix in IMAGE_FILE_SUFFIXES:
        return "images"
    return "unknown"


def _flower_key(field_name: str) -> str:
    return field_name.replace("_", "-")


def _coerce(raw: Any, type_name: Any) -> Any:
    """TOML gives int/float/bool/str; accept ints where floats are expected, nothing looser."""
    type_name = type_name if isinstance(type_name, str) else type_name.__name__
    if type_name == "bool":
        if isinstance(raw, bool):
            return raw
        raise TypeError("expected true or false")
    if type_name == "int":
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise TypeError("expected an integer")
        return raw
    if type_name == "float":
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise TypeError("expected a number")
        return float(raw)
    if type_name == "str":
        if not isinstance(raw, str):
            raise TypeError('expected a string (quote it: key="value")')
        return raw
    raise TypeError(f"unsupported config type {type_name}")


def _hint(known: Mapping[str, Any]) -> str:
    return " (known keys: " + ", ".join(sorted(known)) + ")"
