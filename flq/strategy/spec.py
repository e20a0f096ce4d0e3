"""``StrategySpec``: what the strategy needs from a run's configuration, checked once.

Built from the validated ``RunConfig`` (``StrategySpec.from_run_config``), as
``flq.task.specs`` builds the task layer's specs; the strategy trusts it and re-checks nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..codec.array_codec import DEFAULT_LIMITS, DecodeLimits
from .server_optimizer import ServerOptimizerSpec

if TYPE_CHECKING:
    from ..config import RunConfig


@dataclass(frozen=True)
class StrategySpec:
    rank_max: int  # the global adapter's rank (lora-rank)
    clients_per_round: int = 0  # 0: every connected node
    min_available_nodes: int = 1
    deadline_s: float | None = None  # None: no deadline (policy wait)
    policy: str = "wait"  # a flq.sim.clock.POLICIES name
    clock: str = "auto"  # a flq.sim.clock.CLOCKS name; auto is resolved when the nodes describe themselves
    update_codec: str = "fp32"
    broadcast_codec: str = "fp32"
    error_feedback: bool = False
    aggregation: str = "rank-wise"
    aggregation_weight: str = "examples-per-step"
    fairness_q: float = 0.0  # weights also x loss_before^q (q-FFL); 0: off
    batch_size: int = 8  # the run's examples per step (a tier may have its own)
    client_eval_every: int = 0  # 0: clients evaluate on the final round only
    seed: int = 0
    server_optimizer: ServerOptimizerSpec = ServerOptimizerSpec()  # fedavg at lr 1: the rule's result
    scaffold: bool = False  # SCAFFOLD control variates travel with the adapter (flq.strategy.scaffold)
    decode_limits: DecodeLimits = DEFAULT_LIMITS

    @classmethod
    def from_run_config(cls, cfg: RunConfig, deadline_s: float | None) -> StrategySpec:
        """``deadline_s``: the round deadline resolved in seconds (``flq.server_app.round_deadline_s``)."""
        return cls(
            rank_max=cfg.lora_rank,
            clients_per_round=cfg.clients_per_round,
            min_available_nodes=max(1, cfg.clients_per_round),
            deadline_s=deadline_s,
            policy=cfg.policy,
            clock=cfg.clock,
            update_codec=cfg.update_codec,
            broadcast_codec=cfg.broadcast_codec,
            error_feedback=cfg.error_feedback,
            aggregation=cfg.aggregation,
            aggregation_weight=cfg.aggregation_weight,
            fairness_q=cfg.fairness_q,
            batch_size=cfg.batch_size,
            client_eval_every=cfg.client_eval_every,
            seed=cfg.seed,
            server_optimizer=ServerOptimizerSpec(
                cfg.server_optimizer, cfg.server_lr, cfg.server_beta1, cfg.server_beta2, cfg.server_tau
            ),
            scaffold=cfg.scaffold,
        )

    def describe(self) -> str:
        """One line for the log: what travels, and how rounds treat stragglers."""
        feedback = "+error-feedback" if self.error_feedback and self.update_codec != "fp32" else ""
        opt = self.server_optimizer
        return (
            f"rank_max={self.rank_max} policy={self.policy} deadline={_seconds(self.deadline_s)} "
            f"server-optimizer={opt.name} lr={opt.lr:g}{' +scaffold' if self.scaffold else ''} "
            f"codecs: update={self.update_codec}{feedback} broadcast={self.broadcast_codec}"
        )


def _seconds(value: float | None) -> str:
    return "none" if value is None else f"{value:.4g}s"
