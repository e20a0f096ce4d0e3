"""Per-client values from one run-config string: how a federation's mix is written down.

Flower's simulation only tells a node its ``partition-id`` (and ``num-partitions``), so a mix
of ranks, bits or tiers is a function of the partition id, written as:

* ``8``                       every client the same value
* ``cycle:2,4,8,16``          partition i gets item i mod 4
* ``groups:4,8,16``           contiguous equal groups (thirds here: the FAH-QLoRA setup)
* ``list:16,16,8,4``          one item per partition, exactly num-partitions items
* ``tier:gpu-24g=16,cpu-edge=4,*=8``  by the client's tier (``*`` for any other tier)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

KINDS = ("cycle", "groups", "list", "tier")


class SpreadError(ValueError):
    """A per-client value spec is malformed or does not fit the federation."""


@dataclass(frozen=True)
class Spread:
    kind: str  # same | cycle | groups | list | tier
    items: tuple[str, ...]
    by_tier: tuple[tuple[str, str], ...] = ()

    def value_for(self, partition_id: int | None, num_partitions: int | None, tier: str | None = None) -> str:
        """This client's value; partition-based kinds need both partition fields."""
        if self.kind == "same":
            return self.items[0]
        if self.kind == "tier":
            table = dict(self.by_tier)
            if tier in table:
                return table[tier]
            if "*" in table:
                return table["*"]
            raise SpreadError(f"no value for tier {tier!r} in {self} (add '*=VALUE' for a default)")
        if partition_id is None or num_partitions is None:
            raise SpreadError(f"{self.kind}: spec needs the client's partition-id and num-partitions")
        if not 0 <= partition_id < num_partitions:
            raise SpreadError(f"partition-id {partition_id} outside [0, {num_partitions})")
        if self.kind == "cycle":
            return self.items[partition_id % len(self.items)]
        if self.kind == "groups":
            return self.items[partition_id * len(self.items) // num_partitions]
        if len(self.items) != num_partitions:
            raise SpreadError(f"list: has {len(self.items)} items for {num_partitions} partitions")
        return self.items[partition_id]

    def values(self) -> tuple[str, ...]:
        return tuple(v for _, v in self.by_tier) if self.kind == "tier" else self.items

    def __str__(self) -> str:
        if self.kind == "same":
            return self.items[0]
        if self.kind == "tier":
            return "tier:" + ",".join(f"{k}={v}" for k, v in self.by_tier)
        return f"{self.kind}:" + ",".join(self.items)


def parse_spread(spec: str) -> Spread:
    spec = spec.strip()
    if not spec:
        raise SpreadError("empty spec")
    kind, sep, body = spec.partition(":")
    if not sep:
        return Spread("same", (spec,))
    kind = kind.strip()
    if kind not in KINDS:
        raise SpreadError(f"unknown spec kind {kind!r} in {spec!r} (use {', '.join(KINDS)}, or a single value)")
    items = tuple(i.strip() for i in body.split(","))
    if not items or any(not i for i in items):
        raise SpreadError(f"{spec!r}: empty item")
    if kind != "tier":
        return Spread(kind, items)
    pairs = []
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name.strip() or not value.strip():
            raise SpreadError(f"{spec!r}: tier items are NAME=VALUE, got {item!r}")
        pairs.append((name.strip(), value.strip()))
    return Spread("tier", (), tuple(pairs))


def parse_int_spread(
    spec: str, what: str, allowed: tuple[int, ...] | None = None, low: int | None = None, high: int | None = None
) -> Spread:
    """``parse_spread`` plus a check that every value is an integer in range."""

    def problem(number: int) -> str | None:
        if allowed is not None and number not in allowed:
            return f"{number} not in {allowed}"
        if (low is not None and number < low) or (high is not None and number > high):
            return f"{number} outside [{low}, {high}]"
        return None

    return _parse_checked(spec, what, int, "an integer", problem)


def parse_factor_spread(spec: str, what: str) -> Spread:
    """``parse_spread`` plus a check that every value is a finite number > 0 (a multiplier)."""
    return _parse_checked(
        spec,
        what,
        float,
        "a number",
        lambda x: None if math.isfinite(x) and x > 0 else f"{x} must be a finite number > 0",
    )


def _parse_checked(
    spec: str, what: str, convert: Callable[[str], Any], noun: str, problem: Callable[[Any], str | None]
) -> Spread:
    """``parse_spread``, each value converted and checked: an error names ``what`` and the value."""
    spread = parse_spread(spec)
    for value in spread.values():
        try:
            number = convert(value)
        except ValueError:
            raise SpreadError(f"{what}: {value!r} is not {noun}") from None
        if why := problem(number):
            raise SpreadError(f"{what}: {why}")
    return spread
