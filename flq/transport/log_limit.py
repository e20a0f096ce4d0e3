"""A logger that writes at most a few lines per interval, however many events call it.

A hostile peer decides how often the server refuses something (10,000 refused streams were
10,000 warning lines); the operator still needs to see that it happens and how much. A token
bucket lets `burst` lines through at once and `rate` per second after; the rest are counted
and reported in one "suppressed" line when a token is next available (`flush`, called by
the server's periodic sweep, writes it even if nothing else is logged).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RateLimitedLog:
    def __init__(
        self,
        logger: logging.Logger,
        *,
        rate: float = 1.0,
        burst: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self.suppressed = 0  # lines not written since the last summary
        self.suppressed_total = 0

    def log(self, level: int, msg: str, *args) -> None:
        if self._take():
            self._summary(level)
            self._logger.log(level, msg, *args)
        else:
            self.suppressed += 1
            self.suppressed_total += 1

    def warning(self, msg: str, *args) -> None:
        self.log(logging.WARNING, msg, *args)

    def info(self, msg: str, *args) -> None:
        self.log(logging.INFO, msg, *args)

    def flush(self) -> None:
        """Report what was suppressed, if a line may be written now."""
        if self.suppressed and self._take():
            self._summary(logging.WARNING)

    def _summary(self, level: int) -> None:
        if self.suppressed:
            self._logger.log(level, "... %d similar QUIC log lines suppressed (rate limit)", self.suppressed)
            self.suppressed = 0

    def _take(self) -> bool:
        now = self._clock()
        self._tokens = min(float(self._burst), self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
