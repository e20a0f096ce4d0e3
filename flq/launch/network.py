"""A tier's network as an emulated link: the tier profile's numbers, one direction at a time.

RTT is split evenly between the directions; the tier's loss applies to each direction's packets;
uplink and downlink rates cap their direction, behind a drop-tail queue of ``queue_ms``; jitter
(from the experiment file: tier profiles have none) reorders packets as real jitter does.
"""

from __future__ import annotations

from ..netem.link import LinkDirection
from .experiment import NodeGroup


def group_links(group: NodeGroup, queue_ms: float) -> tuple[LinkDirection, LinkDirection]:
    """(up, down): SuperNode -> SuperLink, SuperLink -> SuperNode."""
    tier = group.tier
    one_way = tier.rtt_ms / 2.0

    def direction(rate_mbps: float) -> LinkDirection:
        return LinkDirection(
            delay_ms=one_way, jitter_ms=group.jitter_ms, loss=tier.loss, rate_mbps=rate_mbps, queue_ms=queue_ms
        )

    return direction(tier.uplink_mbps), direction(tier.downlink_mbps)


def describe(up: LinkDirection, down: LinkDirection) -> str:
    jitter = f" +-{up.jitter_ms:g} ms" if up.jitter_ms else ""
    return (
        f"RTT {up.delay_ms + down.delay_ms:g} ms{jitter}, loss {up.loss:.1%}, "
        f"up {up.rate_mbps:g} Mb/s, down {down.rate_mbps:g} Mb/s"
    )
