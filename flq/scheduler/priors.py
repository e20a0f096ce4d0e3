"""What a scheduler may assume about a client before it has reported anything.

Tier profiles are duck-typed: any object with the attributes of ``flq.sim.tiers.TierProfile``
(``compute_factor``, ``memory_limit_mb``, ``uplink_mbps``, ``downlink_mbps``, ``rtt_ms``,
``loss``, ``max_rank``) works, so this module does not import the simulator. A client whose
tier is unknown is assumed to be the mapping's ``reference`` tier if it has one, else the
reference machine on a good network (``REFERENCE_TIER``).

The run gives two more priors at construction:

* ``step_time_prior``: seconds per local step on the reference machine, by backbone bits
  (``{4: 3.2, 8: 2.6, 16: 2.2}``); a client's step takes that times its tier's compute factor.
* ``bytes_per_rank``: adapter bytes on the wire per rank unit, each way; a rank-r exchange
  moves about ``r * bytes_per_rank`` down and up.

The memory model (for choosing backbone bits) is deliberately simple and documented in
``MemoryModel``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Without a measured step time, one second per step: the first reports replace it.
DEFAULT_STEP_S = 1.0
# Request and reply each cost at least a round trip; handshakes are learned from reports.
ROUND_TRIPS_PER_EXCHANGE = 2.0


@dataclass(frozen=True)
class ReferenceTier:
    """Stand-in profile for a client of unknown tier: the reference machine, a good network."""

    name: str = "reference"
    compute_factor: float = 1.0
    memory_limit_mb: float | None = None
    uplink_mbps: float = 100.0
    downlink_mbps: float = 100.0
    rtt_ms: float = 20.0
    loss: float = 0.0
    max_rank: int | None = None


REFERENCE_TIER = ReferenceTier()


@dataclass(frozen=True)
class MemoryModel:
    """Peak training memory of a client, in MB, as a function of backbone bits and LoRA rank.

    ``peak_mb(bits, rank) = backbone_mb_16bit * bits / 16 + activation_mb + adapter_mb_per_rank * rank``

    ``backbone_mb_16bit`` is the frozen backbone's weights at 16 bits (4-bit is a quarter of
    it; quantisation constants are folded into ``activation_mb``), ``activation_mb`` the
    activations and framework overhead at the run's batch size, ``adapter_mb_per_rank`` the
    LoRA parameters, gradients and AdamW moments per rank unit (4 fp32 copies).
    """

    backbone_mb_16bit: float
    activation_mb: float = 0.0
    adapter_mb_per_rank: float = 0.0

    def peak_mb(self, bits, rank):
        """Works on scalars and numpy arrays alike."""
        return self.backbone_mb_16bit * bits / 16.0 + self.activation_mb + self.adapter_mb_per_rank * rank


def tier_profile(tiers: Mapping[str, Any] | None, name: str | None) -> Any:
    """The profile of tier ``name``; for an unknown tier, the mapping's ``reference`` tier if
    it has one, else ``REFERENCE_TIER``."""
    if tiers is None:
        return REFERENCE_TIER
    fallback = tiers.get(REFERENCE_TIER.name, REFERENCE_TIER)
    return fallback if name is None else tiers.get(name, fallback)


def own_batch_size(tier: Any, run_batch_size: int) -> int:
    """Examples per step a client of ``tier`` trains at on its own: the tier's ``batch_size``
    hint, else the run's. ``tier``: a TierProfile or any object like it (or None)."""
    return int(getattr(tier, "batch_size", None) or run_batch_size)


def reference_step_s(step_time_prior: Mapping[int, float] | None, bits: int) -> float:
    """Seconds per local step on the reference machine at ``bits`` (nearest bits if absent)."""
    if not step_time_prior:
        return DEFAULT_STEP_S
    if bits in step_time_prior:
        return float(step_time_prior[bits])
    nearest = min(step_time_prior, key=lambda b: (abs(int(b) - bits), int(b)))
    return float(step_time_prior[nearest])


def transfer_s_per_rank(profile: Any, bytes_per_rank: float | None) -> float:
    """Seconds per rank unit for one download plus one upload over the tier's links."""
    if not bytes_per_rank:
        return 0.0
    megabits = bytes_per_rank * 8 / 1e6
    seconds = megabits / profile.downlink_mbps + megabits / profile.uplink_mbps
    loss = float(getattr(profile, "loss", 0.0) or 0.0)
    return seconds / max(1.0 - loss, 0.05)  # lost packets are sent again


def latency_s(profile: Any) -> float:
    """The fixed part of a client's transfer time: round trips, whatever the rank."""
    return ROUND_TRIPS_PER_EXCHANGE * float(profile.rtt_ms) / 1000.0


def tier_rank_ceiling(profile: Any, rank_max: int) -> int:
    """The highest rank the tier may train (its ``max_rank``), never above the run's r_max."""
    max_rank = getattr(profile, "max_rank", None)
    return rank_max if not max_rank else max(1, min(int(max_rank), rank_max))


def memory_limit_mb(profile: Any, reported_mb: float | None) -> float | None:
    """What the client reported about its memory wins over its tier's preset."""
    if reported_mb:
        return float(reported_mb)
    preset = getattr(profile, "memory_limit_mb", None)
    return float(preset) if preset else None


def by_tier(tiers: Sequence[str | None], value_of: Callable[[str | None], float]) -> np.ndarray:
    """``value_of(tier)`` for every client, computed once per distinct tier."""
    cache: dict[str | None, float] = {}

    def lookup(tier: str | None) -> float:
        if tier not in cache:
            cache[tier] = value_of(tier)
        return cache[tier]

    values = list(map(lookup, tiers))
    return np.asarray(values, dtype=np.int64 if all(isinstance(v, int) for v in cache.values()) else np.float64)
