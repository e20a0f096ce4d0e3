"""TLS session tickets for QUIC resumption and 0-RTT: a safe codec and two stores.

The client keeps its latest ticket in a file so that a restarted SuperNode resumes with
0-RTT; the file is JSON with explicit, bounded fields (never pickle: the ticket came off
the network) and is private to its owner (it holds a resumption secret).

The server keeps the tickets it issued in memory and hands each one out once
(`pop`): a ticket is single-use, so a replayed 0-RTT ClientHello cannot resume a second
time (RFC 8446 section 8.1).
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

from aioquic.tls import CipherSuite, SessionTicket

FORMAT_VERSION = 1
MAX_TICKET_FILE = 64 * 1024
_MAX_BLOB = 16 * 1024
_MAX_EXTENSIONS = 16


def ticket_to_bytes(ticket: SessionTicket) -> bytes:
    doc = {
        "version": FORMAT_VERSION,
        "age_add": ticket.age_add,
        "cipher_suite": int(ticket.cipher_suite),
        "not_valid_after": ticket.not_valid_after.timestamp(),
        "not_valid_before": ticket.not_valid_before.timestamp(),
        "resumption_secret": ticket.resumption_secret.hex(),
        "server_name": ticket.server_name,
        "ticket": ticket.ticket.hex(),
        "max_early_data_size": ticket.max_early_data_size,
        "other_extensions": [[int(t), bytes(d).hex()] for t, d in ticket.other_extensions],
    }
    return json.dumps(doc, separators=(",", ":")).encode("ascii")


def _hex(value: object, what: str) -> bytes:
    if not isinstance(value, str) or len(value) > 2 * _MAX_BLOB:
        raise ValueError(f"ticket field {what} is not a bounded hex string")
    return bytes.fromhex(value)


def _int(value: object, what: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"ticket field {what} out of range")
    return value


def _time(value: object, what: str) -> datetime.datetime:
    if not isinstance(value, (int, float)) or not 0 <= value < 2**40:
        raise ValueError(f"ticket field {what} is not a timestamp")
    return datetime.datetime.fromtimestamp(value, datetime.UTC)  # aioquic compares aware UTC times


def ticket_from_bytes(raw: bytes) -> SessionTicket:
    """Parse a stored ticket; raises ValueError on anything unexpected."""
    if len(raw) > MAX_TICKET_FILE:
        raise ValueError("ticket file too large")
    doc = json.loads(raw.decode("ascii"))
    if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
        raise ValueError("unknown ticket format")
    extensions = doc.get("other_extensions")
    if not isinstance(extensions, list) or len(extensions) > _MAX_EXTENSIONS:
        raise ValueError("ticket extensions malformed")
    early = doc.get("max_early_data_size")
    server_name = doc.get("server_name")
    if not isinstance(server_name, str) or len(server_name) > 255:
        raise ValueError("ticket server name malformed")
    return SessionTicket(
        age_add=_int(doc.get("age_add"), "age_add", 0, 2**32 - 1),
        cipher_suite=CipherSuite(_int(doc.get("cipher_suite"), "cipher_suite", 0, 0xFFFF)),
        not_valid_after=_time(doc.get("not_valid_after"), "not_valid_after"),
        not_valid_before=_time(doc.get("not_valid_before"), "not_valid_before"),
        resumption_secret=_hex(doc.get("resumption_secret"), "resumption_secret"),
        server_name=server_name,
        ticket=_hex(doc.get("ticket"), "ticket"),
        max_early_data_size=None if early is None else _int(early, "max_early_data_size", 0, 2**32 - 1),
        other_extensions=[
            (_int(item[0], "extension type", 0, 0xFFFF), _hex(item[1], "extension data"))
            for item in extensions
            if isinstance(item, list) and len(item) == 2
        ],
    )


class TicketFile:
    """The client's latest ticket, in one file (written atomically, mode 0600)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def load(self) -> SessionTicket | None:
        try:
            with open(self.path, "rb") as fh:
                raw = fh.read(MAX_TICKET_FILE + 1)
            ticket = ticket_from_bytes(raw)
        except (OSError, ValueError, UnicodeDecodeError):
            return None  # no ticket, or a damaged one: a full handshake is the fallback
        return ticket if ticket.is_valid else None

    def save(self, ticket: SessionTicket) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".ticket-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(ticket_to_bytes(ticket))
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class ServerTicketStore:
    """Tickets this server issued, bounded (oldest dropped first), each usable once."""

    def __init__(self, max_tickets: int = 10_000) -> None:
        self._tickets: OrderedDict[bytes, SessionTicket] = OrderedDict()
        self._max = max_tickets
        self._lock = threading.Lock()

    def add(self, ticket: SessionTicket) -> None:
        with self._lock:
            self._tickets[ticket.ticket] = ticket
            while len(self._tickets) > self._max:
                self._tickets.popitem(last=False)

    def pop(self, label: bytes) -> SessionTicket | None:
        with self._lock:
            ticket = self._tickets.pop(label, None)
        return ticket if ticket is not None and ticket.is_valid else None

    def __len__(self) -> int:
        return len(self._tickets)
