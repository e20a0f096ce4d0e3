"""A hub namespace and one spoke namespace per link, each spoke joined to the hub through this process.

``namespaces.EmulatedLink`` joins two namespaces; a tiered deployment needs one link per tier
to one SuperLink. Here the SuperLink runs in the ``hub`` namespace; spoke ``i`` (a tier's
SuperNodes) reaches it at ``hub_address(i)`` over a point-to-point TUN pair whose packets pass
through one forwarder thread, which applies ``flq.netem.link`` per direction (``up``: spoke ->
hub, ``down``: hub -> spoke). Spokes do not reach each other. Needs root; everything made is
removed on exit.

    with StarNetwork([(up, down), (up2, down2)]) as net:
        subprocess.Popen([*net.hub_prefix(), "flq-superlink", "--host", "0.0.0.0", ...])
        subprocess.Popen([*net.spoke_prefix(0), "flq-supernode", "--superlink", f"{net.hub_address(0)}:9093", ...])
"""

from __future__ import annotations

import os
import subprocess

from .forwarder import Forwarder
from .link import LinkDirection, LinkQueue
from .namespaces import _open_tun, _sh

SUBNET = "10.203"  # spoke i: 10.203.i.1 (spoke side) <-> 10.203.i.2 (hub side); only inside our namespaces
MAX_SPOKES = 250


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "per-tier network emulation needs root (network namespaces and TUN devices)"
    if not os.path.exists("/dev/net/tun"):
        return "per-tier network emulation needs /dev/net/tun"
    from shutil import which

    if which("ip") is None:
        return "per-tier network emulation needs iproute2's `ip`"
    return None


class StarNetwork:
    def __init__(self, links: list[tuple[LinkDirection, LinkDirection]], seed: int = 11) -> None:
        if not 1 <= len(links) <= MAX_SPOKES:
            raise ValueError(f"a star has 1 to {MAX_SPOKES} spokes, got {len(links)}")
        tag = os.getpid() % 100000
        self.hub_ns = f"flqstar{tag}-hub"
        self.spoke_ns = [f"flqstar{tag}-{i}" for i in range(len(links))]
        # Interface names have at most 15 characters.
        self._spoke_dev = [f"flqs{tag}s{i}" for i in range(len(links))]
        self._hub_dev = [f"flqs{tag}h{i}" for i in range(len(links))]
        self.up = [LinkQueue(up, seed + 2 * i) for i, (up, _) in enumerate(links)]
        self.down = [LinkQueue(down, seed + 2 * i + 1) for i, (_, down) in enumerate(links)]
        self._fds: list[int] = []
        self._forwarder = Forwarder("netem-star")

    @staticmethod
    def spoke_address(i: int) -> str:
        return f"{SUBNET}.{i}.1"

    @staticmethod
    def hub_address(i: int) -> str:
        """Where spoke ``i`` reaches the hub (the SuperLink, listening on 0.0.0.0)."""
        return f"{SUBNET}.{i}.2"

    def hub_addresses(self) -> list[str]:
        return [self.hub_address(i) for i in range(len(self.spoke_ns))]

    def __enter__(self) -> StarNetwork:
        made: list[str] = []
        try:
            for ns in (self.hub_ns, *self.spoke_ns):
                _sh("ip", "netns", "add", ns)
                made.append(ns)
                _sh("ip", "-n", ns, "link", "set", "lo", "up")
            for i, ns in enumerate(self.spoke_ns):
                ends = (
                    (ns, self._spoke_dev[i], self.spoke_address(i), self.hub_address(i)),
                    (self.hub_ns, self._hub_dev[i], self.hub_address(i), self.spoke_address(i)),
                )
                fds = []
                for where, dev, local, peer in ends:
                    fds.append(_open_tun(dev))
                    self._fds.append(fds[-1])
                    _sh("ip", "link", "set", dev, "netns", where)
                    _sh("ip", "-n", where, "addr", "add", local, "peer", peer, "dev", dev)
                    _sh("ip", "-n", where, "link", "set", dev, "up")
                spoke_fd, hub_fd = fds
                self._forwarder.carry(spoke_fd, hub_fd, self.up[i])
                self._forwarder.carry(hub_fd, spoke_fd, self.down[i])
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self._forwarder.start()
        return self

    def hub_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.hub_ns]

    def spoke_prefix(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.spoke_ns[i]]

    def counts(self) -> list[str]:
        return [f"up: {u.counts()}; down: {d.counts()}" for u, d in zip(self.up, self.down, strict=True)]

    def __exit__(self, *exc) -> None:
        self._forwarder.stop()
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()
        for ns in (self.hub_ns, *self.spoke_ns):
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
