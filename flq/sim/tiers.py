"""Tier profiles: the compute, memory and network a simulated client stands for.

Profiles live in a TOML file (``tiers.toml`` beside this module; docs/clock.md explains the
numbers). ``load_tiers`` reads it, optionally overlaid by a user's file; ``assign_tiers``
turns the run config's mix (e.g. ``groups:gpu-24g,gpu-32g,cpu-edge``) into one tier name per
partition, since Flower's simulation only tells a node its partition id.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..scheduler.spread import Spread, SpreadError, parse_spread

PACKAGED_TIERS = Path(__file__).with_name("tiers.toml")
REFERENCE_TIER = "reference"


class TierError(ValueError):
    """A tier file or a tier mix is malformed, or names an unknown tier."""


@dataclass(frozen=True)
class TierProfile:
    name: str
    compute_factor: float  # x slower than the reference machine's measured compute (GPUs < 1)
    uplink_mbps: float
    downlink_mbps: float
    rtt_ms: float
    loss: float = 0.0  # packet loss fraction in [0, 1)
    memory_limit_mb: float | None = None
    threads: int | None = None  # CPU tiers only
    max_rank: int | None = None  # hint: rank ceiling (None: the run's)
    batch_size: int | None = None  # hint: None = the run's batch size
    mixed_precision: bool = False  # hint: autocast to bf16/fp16
    # Seconds each round costs a deployed client outside training and transfer: the node picking
    # up the message, the ClientApp process starting, model and data loading (`flq calibrate`).
    startup_s: float = 0.0
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_REQUIRED = ("compute_factor", "uplink_mbps", "downlink_mbps", "rtt_ms")
_KEYS = tuple(f.name for f in fields(TierProfile) if f.name != "name")


def load_tiers(path: str | Path | None = None) -> dict[str, TierProfile]:
    """The packaged tiers, with those of ``path`` (if given) replacing or adding by name."""
    tiers = _read_tier_file(PACKAGED_TIERS)
    if path is not None:
        tiers.update(_read_tier_file(Path(path)))
    return tiers


def _read_tier_file(path: Path) -> dict[str, TierProfile]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise TierError(f"tier file {path} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise TierError(f"{path}: not valid TOML ({exc})") from None
    unknown_sections = set(data) - {"tiers"}
    if unknown_sections:
        raise TierError(f"{path}: unknown top-level keys {sorted(unknown_sections)}; tiers go under [tiers.NAME]")
    tables = data.get("tiers", {})
    if not isinstance(tables, dict) or not tables:
        raise TierError(f"{path}: no [tiers.NAME] tables")
    return {name: tier_from_dict(name, table, where=str(path)) for name, table in tables.items()}


def tier_from_dict(name: str, values: Mapping[str, Any], where: str = "tier") -> TierProfile:
    """Build and check one profile; every problem of the table is listed in one error."""
    prefix = f"{where}: tier {name!r}"
    if not isinstance(values, Mapping):
        raise TierError(f"{prefix}: expected a table of keys, got {values!r}")
    errors = [f"unknown key {k!r} (known: {', '.join(_KEYS)})" for k in values if k not in _KEYS]
    errors += [f"missing required key {k!r}" for k in _REQUIRED if k not in values]
    if errors:
        raise TierError(f"{prefix}: " + "; ".join(errors))
    errors = [e for key, value in values.items() if (e := _check_value(key, value))]
    if errors:
        raise TierError(f"{prefix}: " + "; ".join(errors))
    return TierProfile(name=name, **values)


def _check_value(key: str, value: Any) -> str | None:
    """Why ``value`` is not acceptable for ``key``, or None."""
    if key == "description":
        return None if isinstance(value, str) else f"description must be text, got {value!r}"
    if key == "mixed_precision":
        return None if isinstance(value, bool) else f"mixed_precision must be true or false, got {value!r}"
    if key in ("threads", "max_rank", "batch_size"):
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        return None if ok else f"{key} must be an integer >= 1, got {value!r}"
    if not _is_number(value):
        return f"{key} must be a number, got {value!r}"
    if key == "loss":
        return None if 0.0 <= value < 1.0 else f"loss must be in [0, 1), got {value!r}"
    if key in ("rtt_ms", "startup_s"):
        return None if value >= 0 else f"{key} must be >= 0, got {value!r}"
    return None if value > 0 else f"{key} must be > 0, got {value!r}"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def assign_tiers(spec: str, num_partitions: int, known: Iterable[str] | None = None) -> list[str]:
    """One tier name per partition id, from the run config's mix.

    ``spec`` follows flq/scheduler/spread.py: a single tier name for everyone,
    ``groups:a,b,c`` (contiguous equal groups; ``thirds:a,b,c`` is the same with exactly three),
    ``cycle:a,b`` (partition i gets item i mod n) or ``list:a,b,...`` (one per partition).
    ``known`` is the set of valid names (default: the packaged tiers).
    """
    if num_partitions < 1:
        raise TierError(f"num_partitions must be >= 1, got {num_partitions}")
    spread = _parse_mix(spec)
    known_names = set(load_tiers()) if known is None else set(known)
    unknown = sorted(set(spread.items) - known_names)
    if unknown:
        raise TierError(f"tier mix {spec!r}: unknown tier(s) {unknown}; known: {sorted(known_names)}")
    try:
        return [spread.value_for(pid, num_partitions) for pid in range(num_partitions)]
    except SpreadError as exc:
        raise TierError(f"tier mix {spec!r}: {exc}") from None


def _parse_mix(spec: str) -> Spread:
    kind, sep, body = spec.strip().partition(":")
    spread_spec = spec
    if sep and kind.strip() == "thirds":
        if len(body.split(",")) != 3:
            raise TierError(f"tier mix {spec!r}: thirds needs exactly three tiers")
        spread_spec = "groups:" + body
    try:
        spread = parse_spread(spread_spec)
    except SpreadError as exc:
        raise TierError(f"tier mix {spec!r}: {exc}") from None
    if spread.kind == "tier":
        raise TierError(f"tier mix {spec!r}: a tier cannot be chosen by tier; use groups, cycle, list or a name")
    return spread
