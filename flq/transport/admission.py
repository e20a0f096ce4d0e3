"""Who may open a QUIC connection to the Fleet server: address validation and caps (sans-I/O).

aioquic's server creates a connection (TLS context, loss recovery: 50-70 kB that live until
the idle timeout) for any 1,200-byte datagram that looks like an Initial, before it knows
anything about the sender. Here, before any state is kept:

- the Initial must decrypt: its keys derive from the packet's own connection ID (RFC 9001
  section 5.2), so junk creates nothing and costs one AEAD check;
- half-open connections (handshake not complete) are capped, and expire after the handshake
  timeout; from `retry_threshold` of them on (`retry="auto"`), or always, a new sender must
  first echo a Retry token (RFC 9000 section 8.1), which proves it owns its address, before
  the server keeps any state for it;
- connections per source address (an IPv4 address or an IPv6 /64, what one host usually
  gets) are capped; only connections whose address is proven (by a Retry token or a completed
  handshake) count, so spoofing a node's address cannot use up that node's share;
- connections in all are capped.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass
from enum import Enum

from aioquic.quic.crypto import (
    INITIAL_CIPHER_SUITE,
    INITIAL_SALT_VERSION_1,
    INITIAL_SALT_VERSION_2,
    CryptoContext,
)
from aioquic.quic.packet import QuicHeader, QuicProtocolVersion
from aioquic.tls import cipher_suite_hash, hkdf_expand_label, hkdf_extract

RETRY_MODES = ("auto", "always", "never")


class Verdict(Enum):
    ACCEPT = "accept"
    RETRY = "retry"  # answer with a Retry packet, keep nothing
    DROP = "drop"  # keep nothing, answer nothing


@dataclass(frozen=True)
class AdmissionLimits:
    max_half_open: int = 128  # a SuperLink restart makes every node reconnect at once; 128 handshakes
    max_per_address: int = 32  # nodes behind one NAT share an address
    max_connections: int = 1024  # in all; each costs ~100 kB before it holds any data
    retry: str = "auto"
    handshake_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.retry not in RETRY_MODES:
            raise ValueError(f"retry must be one of {RETRY_MODES}")
        if min(self.max_half_open, self.max_per_address, self.max_connections) < 1:
            raise ValueError("connection caps must be >= 1")

    @property
    def retry_threshold(self) -> int:
        """Half-open connections from which `auto` asks new senders to prove their address."""
        return max(1, self.max_half_open // 4)


@dataclass
class _Entry:
    host: str
    proven: bool
    since: float


class Admission:
    """Counts connections by state and address; `verdict` says what to do with a new Initial.

    Keys are whatever the caller uses for a connection (the asyncio layer: its protocol).
    """

    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self._entries: dict[object, _Entry] = {}
        self._half_open: dict[object, None] = {}  # insertion order = age, oldest first
        self._proven_per_host: Counter[str] = Counter()

    @property
    def half_open(self) -> int:
        return len(self._half_open)

    @property
    def connections(self) -> int:
        return len(self._entries)

    def connections_from(self, host: str) -> int:
        return self._proven_per_host[address_key(host)]

    def verdict(self, host: str, *, proven: bool) -> tuple[Verdict, str]:
        """What to do with an Initial for a new connection; the string names the reason."""
        limits = self.limits
        host = address_key(host)
        if len(self._entries) >= limits.max_connections:
            return Verdict.DROP, "connection cap"
        if len(self._half_open) >= limits.max_half_open:
            return Verdict.DROP, "half-open cap"
        if self._proven_per_host[host] >= limits.max_per_address:
            return Verdict.DROP, "per-address cap"
        if not proven and (
            limits.retry == "always" or (limits.retry == "auto" and len(self._half_open) >= limits.retry_threshold)
        ):
            return Verdict.RETRY, "address validation"
        return Verdict.ACCEPT, ""

    def opened(self, key: object, host: str, *, proven: bool, now: float) -> None:
        host = address_key(host)
        self._entries[key] = _Entry(host, proven, now)
        self._half_open[key] = None
        if proven:
            self._proven_per_host[host] += 1

    def established(self, key: object) -> bool:
        """The handshake completed; False if that puts its address over the cap (close it)."""
        entry = self._entries.get(key)
        if entry is None:
            return True
        self._half_open.pop(key, None)
        if not entry.proven:
            entry.proven = True
            self._proven_per_host[entry.host] += 1
            return self._proven_per_host[entry.host] <= self.limits.max_per_address
        return True

    def closed(self, key: object) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self._half_open.pop(key, None)
        if entry.proven:
            self._proven_per_host[entry.host] -= 1
            if self._proven_per_host[entry.host] <= 0:
                del self._proven_per_host[entry.host]

    def expired(self, now: float) -> list[object]:
        """Half-open connections older than the handshake timeout, oldest first."""
        out = []
        for key in self._half_open:
            if now - self._entries[key].since < self.limits.handshake_timeout:
                break
            out.append(key)
        return out


def address_key(host: str) -> str:
    """What per-address caps count: an IPv4 address, or the /64 an IPv6 address belongs to."""
    if ":" not in host:
        return host
    try:
        return str(ipaddress.IPv6Network((host.split("%")[0], 64), strict=False))
    except ValueError:
        return host


def initial_decrypts(data: bytes, header: QuicHeader, encrypted_offset: int) -> bool:
    """Whether the first packet of `data`, an Initial, decrypts with the keys its header implies."""
    if header.version is None or header.packet_length > len(data):
        return False
    # Only the client's direction is derived (RFC 9001 5.2): half of what aioquic sets up.
    algorithm = cipher_suite_hash(INITIAL_CIPHER_SUITE)
    salt = INITIAL_SALT_VERSION_2 if header.version == QuicProtocolVersion.VERSION_2 else INITIAL_SALT_VERSION_1
    secret = hkdf_expand_label(
        algorithm, hkdf_extract(algorithm, salt, header.destination_cid), b"client in", b"", algorithm.digest_size
    )
    context = CryptoContext()
    try:
        context.setup(cipher_suite=INITIAL_CIPHER_SUITE, secret=secret, version=header.version)
        context.decrypt_packet(data[: header.packet_length], encrypted_offset, 0)
    except Exception:  # any failure (bad tag, bad header protection, short packet) means junk
        return False
    return True
