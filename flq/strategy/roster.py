"""The nodes a run knows (what each told about itself) and the seeded sample of each round.

Pure Python: replies arrive here as plain mappings (a MetricRecord and a ConfigRecord are
mappings), so the roster knows the message contract's keys (``flq.wire``) but not Flower.

Paired design: the sample of a round depends only on the run's ``seed``, the round (one draw
per round from one generator that nothing else uses) and the partition ids of the available
nodes, never on node ids (Flower draws new ones every run) nor on the scheduler or policy. So two
runs of a seed that differ only in how they schedule train the same partitions in every round
they both run; their partitions are the same too (``flq.task.partition``: a function of the
data keys and the seed). tests/test_paired_design.py checks both.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .. import wire
from ..scheduler.base import ClientInfo


@dataclass
class NodeProfile:
    """What a node told the server about itself (query round or replies)."""

    node_id: int
    partition_id: int | None = None
    tier: str | None = None
    num_train: int | None = None
    memory_limit_mb: float | None = None
    num_partitions: int | None = None
    simulated: bool | None = None

    def info(self) -> ClientInfo:
        return ClientInfo(
            self.node_id, self.tier, self.partition_id, self.memory_limit_mb, self.num_train, self.num_partitions
        )


class Roster:
    """Node profiles, the nodes left out of the run, and the sampling generator (seeded)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self._profiles: dict[int, NodeProfile] = {}
        self._excluded: set[int] = set()

    def profile(self, node: int) -> NodeProfile:
        return self._profiles.setdefault(node, NodeProfile(node))

    def profiles(self) -> list[NodeProfile]:
        return list(self._profiles.values())

    def add(self, profile: NodeProfile) -> None:
        self._profiles[profile.node_id] = profile

    def note(self, node: int, metrics: Mapping, info: Mapping) -> NodeProfile:
        """Update ``node``'s profile with what a reply says about it."""
        profile = self.profile(node)
        if wire.PARTITION_ID in metrics:
            profile.partition_id = int(metrics[wire.PARTITION_ID])
        if wire.SIMULATED in metrics:
            profile.simulated = bool(metrics[wire.SIMULATED])
        if wire.NUM_PARTITIONS in metrics:
            profile.num_partitions = int(metrics[wire.NUM_PARTITIONS])
        if wire.NUM_TRAIN in metrics:
            profile.num_train = int(metrics[wire.NUM_TRAIN])
        if metrics.get(wire.MEMORY_LIMIT_MB):
            profile.memory_limit_mb = float(metrics[wire.MEMORY_LIMIT_MB])
        if info.get(wire.TIER):
            profile.tier = str(info[wire.TIER])
        return profile

    def exclude(self, nodes: Iterable[int]) -> None:
        """Nodes that could not describe themselves take no part in the run."""
        self._excluded = set(nodes)

    def available(self, connected: Iterable[int]) -> list[int]:
        return [n for n in connected if n not in self._excluded]

    def num_taking_part(self) -> int:
        """How many nodes the run knows and has not left out (the federation's N)."""
        return sum(1 for n in self._profiles if n not in self._excluded)

    def all_simulated(self, nodes: Iterable[int]) -> bool:
        flags = [self.profile(n).simulated for n in nodes]
        return bool(flags) and all(flags)

    def sample(self, connected: Iterable[int], k: int) -> list[int]:
        """A seeded sample of ``k`` available nodes (all if ``k`` is 0), in partition-id order."""
        available = self.available(connected)
        for n in available:
            self.profile(n)

        def by_partition(n: int) -> tuple:
            pid = self._profiles[n].partition_id
            return (pid is None, pid, n)

        ordered = sorted(available, key=by_partition)
        chosen = self.rng.sample(ordered, min(k or len(ordered), len(ordered)))
        return sorted(chosen, key=ordered.index)

    def rng_state(self) -> list:
        """The sampling generator's state as JSON data (for checkpoints)."""
        version, internal, gauss = self.rng.getstate()
        return [version, list(internal), gauss]

    def restore_rng(self, state: list) -> None:
        version, internal, gauss = state
        self.rng.setstate((version, tuple(internal), gauss))
