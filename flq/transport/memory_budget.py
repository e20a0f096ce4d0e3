"""One memory budget for the whole QUIC server, and the per-connection accounts drawn from it.

Everything a peer can make the server hold is charged here before it is held (or, for bytes
that have already arrived, as they are kept): QUIC receive credit (reassembly buffers and their
gaps), partly received frames, LZ4 output (at its declared size, before inflating) and request
bodies until the app is done with them. When the budget is spent the server refuses new work
instead of growing. No I/O, no clock: a plain counter shared by every connection of one server.

A `reserve` of the budget is kept for small requests (a stream holding at most SMALL_REQUEST
bytes, a heartbeat or a pull): out-of-order data and large bodies cannot spend it, so a peer
that fills the rest does not stop small requests. One connection draws at most
RESERVE_PER_CONNECTION of it, so spending the reserve takes many connections too.
"""

from __future__ import annotations

SMALL_REQUEST = 64 << 10  # a stream holding at most this much may draw on the reserve
RESERVE_PER_CONNECTION = 4 * SMALL_REQUEST  # of the reserve, per connection
RESERVE_FRACTION = 8  # the server keeps 1/8 of its budget for small requests


class MemoryBudget:
    """Bytes held across all connections of one server, against `limit`."""

    def __init__(self, limit: int, reserve: int = 0) -> None:
        if limit <= 0:
            raise ValueError("the memory budget must be positive")
        if not 0 <= reserve < limit:
            raise ValueError("the reserve must be smaller than the memory budget")
        self.limit = limit
        self.reserve = reserve  # kept for small requests (`try_charge_reserve`)
        self.used = 0  # all bytes held, reserve included
        self.reserved = 0  # the part of `used` drawn from the reserve
        self.peak = 0
        self.refusals = 0  # charges refused because the budget was spent
        self.released = 0  # bytes given back since the start (the server trims the heap after much)

    @property
    def available(self) -> int:
        return max(0, self.limit - self.used)

    def try_charge(self, n: int) -> bool:
        """Charge `n` outside the reserve, if it fits."""
        if self.used - self.reserved + n > self.limit - self.reserve:
            self.refusals += 1
            return False
        self.charge(n)
        return True

    def try_charge_reserve(self, n: int) -> bool:
        """Charge `n` to the reserve kept for small requests, if it fits."""
        if self.reserved + n > self.reserve or self.used + n > self.limit:
            self.refusals += 1
            return False
        self.reserved += n
        self.charge(n)
        return True

    def release_reserve(self, n: int) -> None:
        self.reserved -= n
        assert self.reserved >= 0, "released more of the reserve than was charged"
        self.release(n)

    def charge(self, n: int) -> None:
        """Charge memory that is already held (it can take `used` past `limit`, never silently)."""
        self.used += n
        self.peak = max(self.peak, self.used)

    def release(self, n: int) -> None:
        self.used -= n
        self.released += n
        assert self.used >= 0, "released more than was charged"


class Account:
    """What one connection holds: under its own `cap` and under the shared budget.

    `try_charge` answers why it refused: "connection" (this connection's cap) or "server"
    (the shared budget), so the stream that crossed the line gets the right error. A `small`
    charge (for a stream that holds at most SMALL_REQUEST bytes) may draw on the budget's
    reserve, up to RESERVE_PER_CONNECTION for this connection.
    """

    __slots__ = ("budget", "cap", "held", "reserved")

    def __init__(self, budget: MemoryBudget, cap: int) -> None:
        self.budget = budget
        self.cap = cap
        self.held = 0
        self.reserved = 0  # the part of `held` drawn from the budget's reserve

    def try_charge(self, n: int, small: bool = False) -> str | None:
        if self.held + n > self.cap:
            return "connection"
        if self.budget.try_charge(n):
            self.held += n
            return None
        if small and self.reserved + n <= RESERVE_PER_CONNECTION and self.budget.try_charge_reserve(n):
            self.held += n
            self.reserved += n
            return None
        return "server"

    def release(self, n: int) -> None:
        n = min(n, self.held)
        self.held -= n
        from_reserve = min(n, self.reserved)  # the reserve first: it is the scarcer
        self.reserved -= from_reserve
        self.budget.release_reserve(from_reserve)
        self.budget.release(n - from_reserve)

    def close(self) -> None:
        """Give everything back (the connection is gone)."""
        self.release(self.held)
