"""Build a scheduler by name: the one place the run config meets the scheduler classes.

``SCHEDULERS`` (the names), which options each one takes from a run (``build_for_run``), and
how ``build_scheduler`` passes priors: nothing outside this module branches on a scheduler name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .bandit import BanditScheduler, parts_off
from .base import FixedRankScheduler, RankScheduler, SchedulerDefaults, TableScheduler
from .lite import LiteScheduler
from .spread import parse_spread
from .tier import TierScheduler

if TYPE_CHECKING:  # flq.config imports SCHEDULERS from here
    from ..config import RunConfig


def build_for_run(cfg: RunConfig, *, tiers: Mapping[str, Any] | None = None, **priors: Any) -> RankScheduler:
    """The scheduler ``cfg.scheduler`` with the run's defaults and the options the run sets.

    ``priors``: what ``build_scheduler`` takes (``step_time_prior``, ``bytes_per_rank``) plus,
    for the schedulers that use one, a ``memory_model``.
    """
    defaults = SchedulerDefaults(
        rank=cfg.start_rank,
        rank_max=cfg.lora_rank,
        bits=cfg.backbone_bits,
        local_steps=cfg.local_steps,
        batch_size=cfg.batch_size,
        step_fixed_examples=cfg.step_fixed_examples,
        tier_ranks=_tier_table(cfg.client_ranks),
        tier_bits=_tier_table(cfg.client_bits),
    )
    memory_model = priors.pop("memory_model", None)
    options: dict[str, Any] = {}
    if cfg.scheduler == "table":
        options = {"ranks": cfg.client_ranks, "bits": cfg.client_bits}
    elif cfg.scheduler == "bandit":
        options["stop_on_budget"] = cfg.policy == "budget"
        options.update(parts_off(cfg.bandit_off))  # ablations: each named part switched off
        if memory_model is not None:
            options["memory_model"] = memory_model
    return build_scheduler(cfg.scheduler, defaults, tiers=tiers, seed=cfg.seed, **priors, **options)


def _tier_table(spec: str) -> dict[str, int]:
    """``tier:NAME=VALUE,...`` as a dict (the ``tier`` scheduler's table); {} for other specs."""
    if not spec.startswith("tier:"):
        return {}
    return {name: int(value) for name, value in parse_spread(spec).by_tier}


def build_scheduler(
    name: str,
    defaults: SchedulerDefaults,
    *,
    tiers: Mapping[str, Any] | None = None,
    step_time_prior: Mapping[int, float] | None = None,
    bytes_per_rank: float | None = None,
    seed: int = 0,
    **options: Any,
) -> RankScheduler:
    """The scheduler ``name`` with the run's defaults and priors; ``options`` go to its class.

    ``tiers``: tier profiles by name (objects with TierProfile's attributes);
    ``step_time_prior``: reference seconds per local step by backbone bits;
    ``bytes_per_rank``: adapter bytes on the wire per rank unit, each way;
    ``seed``: for schedulers that draw random numbers (none of the current ones does: their
    decisions are deterministic functions of what they observed). A scheduler that does not
    use a prior ignores it; an option it does not know is a TypeError.
    """
    builder = _BUILDERS.get(name)
    if builder is None:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    priors = {"tiers": tiers, "step_time_prior": step_time_prior, "bytes_per_rank": bytes_per_rank}
    return builder(defaults, priors, options)


def _fixed(defaults: SchedulerDefaults, priors: dict, options: dict) -> RankScheduler:
    _no_options("fixed", options)
    return FixedRankScheduler(defaults)


def _table(defaults: SchedulerDefaults, priors: dict, options: dict) -> RankScheduler:
    """``ranks`` / ``bits``: per-client value specs (flq.scheduler.spread), e.g. ``cycle:2,4,8``."""
    return TableScheduler(defaults, **options)


def _tier(defaults: SchedulerDefaults, priors: dict, options: dict) -> RankScheduler:
    return TierScheduler(defaults, tiers=priors["tiers"], **options)


def _bandit(defaults: SchedulerDefaults, priors: dict, options: dict) -> RankScheduler:
    return BanditScheduler(defaults, **priors, **options)


def _lite(defaults: SchedulerDefaults, priors: dict, options: dict) -> RankScheduler:
    return LiteScheduler(defaults, tiers=priors["tiers"], **options)


def _solver(defaults: SchedulerDefaults, priors: dict, options: dict) -> RankScheduler:
    from .solver import SolverScheduler  # cvxpy loads only for the baseline that needs it

    return SolverScheduler(defaults, **priors, **options)


def _no_options(name: str, options: dict) -> None:
    if options:
        raise TypeError(f"scheduler {name!r} takes no options, got {sorted(options)}")


_BUILDERS: dict[str, Callable[[SchedulerDefaults, dict, dict], RankScheduler]] = {
    "fixed": _fixed,
    "table": _table,
    "tier": _tier,
    "bandit": _bandit,
    "lite": _lite,
    "solver": _solver,
}

SCHEDULERS = tuple(_BUILDERS)
