"""One memory budget for the whole QUIC server, and the per-connection accounts drawn from it.

Everything a peer can make the server hold is charged here before it is held (or, for bytes
that have already arrived, as they are kept): QUIC receive credit (reassembly buffers and their
gaps), partly received frames, LZ4 output (at its declared size, before inflating) and request
bodies until the app is done with them. When the budget is spent the server refuses new work
instead of growing. No I/O, no clock: a plain counter shared by every connection of one server.
"""

from __future__ import annotations


class MemoryBudget:
    """Bytes held across all connections of one server, against `limit`."""

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("the memory budget must be positive")
        self.limit = limit
        self.used = 0
        self.peak = 0
        self.refusals = 0  # charges refused because the budget was spent

    @property
    def available(self) -> int:
        return max(0, self.limit - self.used)

    def try_charge(self, n: int) -> bool:
        if self.used + n > self.limit:
            self.refusals += 1
            return False
        self.charge(n)
        return True

    def charge(self, n: int) -> None:
        """Charge memory that is already held (it can take `used` past `limit`, never silently)."""
        self.used += n
        self.peak = max(self.peak, self.used)

    def release(self, n: int) -> None:
        self.used -= n
        assert self.used >= 0, "released more than was charged"


class Account:
    """What one connection holds: under its own `cap` and under the shared budget.

    `try_charge` answers why it refused: "connection" (this connection's cap) or "server"
    (the shared budget), so the stream that crossed the line gets the right error.
    """

    __slots__ = ("budget", "cap", "held")

    def __init__(self, budget: MemoryBudget, cap: int) -> None:
        self.budget = budget
        self.cap = cap
        self.held = 0

    def try_charge(self, n: int) -> str | None:
        if self.held + n > self.cap:
            return "connection"
        if not self.budget.try_charge(n):
            return "server"
        self.held += n
        return None

    def release(self, n: int) -> None:
        n = min(n, self.held)
        self.held -= n
        self.budget.release(n)

    def close(self) -> None:
        """Give everything back (the connection is gone)."""
        self.release(self.held)
