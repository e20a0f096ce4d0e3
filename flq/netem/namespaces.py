"""Two network namespaces joined through this process, which plays the link between them.

``ip netns`` makes the namespaces, a TUN device in each carries their traffic to a forwarder
thread here, and the forwarder applies ``flq.netem.link`` to every packet, one ``LinkQueue`` per
direction. It stands in for ``tc netem`` and ``tc tbf``/``fq_codel``, which kernels without
those qdiscs (this machine's among them) cannot offer. Needs root; everything it made is
removed on exit.

    with EmulatedLink(up=LinkDirection(delay_ms=50, rate_mbps=5), down=LinkDirection(delay_ms=50)) as link:
        subprocess.run([*link.prefix("a"), "ping", "-c", "1", link.address("b")])
"""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess

from .forwarder import Forwarder
from .link import LinkDirection, LinkQueue

_TUNSETIFF, _IFF_TUN, _IFF_NO_PI = 0x400454CA, 0x0001, 0x1000
ADDRESSES = {"a": "10.201.0.1", "b": "10.201.0.2"}


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
    return fd


class EmulatedLink:
    """Side ``a`` (e.g. the SuperNodes) and side ``b`` (the SuperLink): ``up`` carries a -> b, ``down`` b -> a."""

    def __init__(self, up: LinkDirection, down: LinkDirection, seed: int = 7) -> None:
        tag = os.getpid() % 100000
        self.ns = {"a": f"flqnet-a{tag}", "b": f"flqnet-b{tag}"}
        self._tun = {"a": f"flqta{tag}", "b": f"flqtb{tag}"}
        self.up, self.down = LinkQueue(up, seed), LinkQueue(down, seed + 1)
        self._fds: dict[str, int] = {}
        self._forwarder = Forwarder()

    def __enter__(self) -> EmulatedLink:
        try:
            for ns in self.ns.values():
                _sh("ip", "netns", "add", ns)
            for side, other in (("a", "b"), ("b", "a")):
                self._fds[side] = _open_tun(self._tun[side])
                ns, dev = self.ns[side], self._tun[side]
                _sh("ip", "link", "set", dev, "netns", ns)
                _sh("ip", "-n", ns, "addr", "add", ADDRESSES[side], "peer", ADDRESSES[other], "dev", dev)
                _sh("ip", "-n", ns, "link", "set", dev, "up")
                _sh("ip", "-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        a, b = self._fds["a"], self._fds["b"]
        self._forwarder.carry(a, b, self.up)
        self._forwarder.carry(b, a, self.down)
        self._forwarder.start()
        return self

    def prefix(self, side: str) -> list[str]:
        """The command prefix that runs a program on ``side`` ("a" or "b")."""
        return ["ip", "netns", "exec", self.ns[side]]

    @staticmethod
    def address(side: str) -> str:
        return ADDRESSES[side]

    def counts(self) -> str:
        return f"up: {self.up.counts()}; down: {self.down.counts()}"

    def __exit__(self, *exc) -> None:
        self._forwarder.stop()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
