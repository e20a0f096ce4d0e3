"""One direction of an emulated link, as pure decisions: is a packet dropped, and when is it delivered.

What a real access link does to packets, in the order it does it:

* **loss**: random (independent per packet) or bursty (Gilbert-Elliott: a good and a bad state;
  every packet in the bad state is lost), decided as the packet enters the link;
* **a bottleneck**: ``rate_mbps`` serialises packets one after another, and the packets waiting
  for it form a queue bounded by ``queue_ms`` (its size in time at the rate, as routers' buffers
  are sized). ``aqm="droptail"`` drops an arrival that finds the queue full; ``aqm="codel"``
  (RFC 8289) drops at the head of the queue once packets have waited more than ``codel_target_ms``
  for a whole ``codel_interval_ms``, at a rate growing with the square root of the drops;
* **propagation delay** of ``delay_ms``, plus **jitter**: each packet independently gets
  uniform(-jitter_ms, +jitter_ms) more (never less than zero), so packets sent closer together
  than the jitter arrive out of order, as on radio links and through ``tc netem delay X Y``.

The queue is FIFO and its service time per packet is known (size / rate), so each packet's wait
and departure are known when it arrives: ``admit`` decides everything at once. A packet CoDel drops
at the head never uses the link's time, so the next one is served in its place.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

AQMS = ("droptail", "codel")


@dataclass(frozen=True)
class LinkDirection:
    """What one direction of a link does to packets (see the module docstring)."""

    delay_ms: float = 0.0  # one-way propagation delay
    jitter_ms: float = 0.0  # +- per packet, uniform and independent: reorders packets
    loss: float = 0.0  # mean share of packets lost
    loss_burst: float = 1.0  # mean packets per loss burst (1: independent losses; >1: Gilbert-Elliott)
    rate_mbps: float | None = None  # bottleneck rate (None: no cap, no queue)
    queue_ms: float = 100.0  # the bottleneck's buffer, in ms of sending at the rate
    aqm: str = "droptail"
    codel_target_ms: float = 5.0
    codel_interval_ms: float = 100.0

    def __post_init__(self) -> None:
        problems = []
        if self.delay_ms < 0 or self.jitter_ms < 0:
            problems.append("delay_ms and jitter_ms must be >= 0")
        if not 0.0 <= self.loss < 1.0:
            problems.append(f"loss must be in [0, 1), got {self.loss}")
        if self.loss_burst < 1.0:
            problems.append(f"loss_burst is the mean packets per burst, >= 1, got {self.loss_burst}")
        if self.rate_mbps is not None and not self.rate_mbps > 0:
            problems.append(f"rate_mbps must be > 0 (None: no cap), got {self.rate_mbps}")
        if not self.queue_ms > 0:
            problems.append(f"queue_ms must be > 0, got {self.queue_ms}")
        if self.aqm not in AQMS:
            problems.append(f"aqm must be one of {', '.join(AQMS)}, got {self.aqm!r}")
        if problems:
            raise ValueError("; ".join(problems))


class GilbertElliott:
    """Bursty loss: a two-state Markov chain, every packet lost in the bad state (Gilbert's model).

    From the good state the chain enters the bad one with probability p, and leaves it with
    probability r = 1 / mean burst, so the stationary loss is p / (p + r) = ``loss``.
    """

    def __init__(self, loss: float, mean_burst: float, rng: random.Random) -> None:
        self.rng = rng
        self.leave_bad = 1.0 / mean_burst
        self.enter_bad = loss * self.leave_bad / (1.0 - loss) if loss > 0 else 0.0
        self.bad = False

    def lost(self) -> bool:
        if self.bad:
            self.bad = self.rng.random() >= self.leave_bad
        else:
            self.bad = self.rng.random() < self.enter_bad
        return self.bad


class CoDel:
    """RFC 8289's drop decision, made for each packet at the time it reaches the queue's head."""

    def __init__(self, target_s: float, interval_s: float) -> None:
        self.target, self.interval = target_s, interval_s
        self.first_above: float | None = None  # when the sojourn may first have stayed above target long enough
        self.dropping = False
        self.drop_next = 0.0
        self.count = 0
        self.last_count = 0

    def drops(self, head_s: float, sojourn_s: float, queue_empty_after: bool) -> bool:
        """Whether the packet at the head at ``head_s``, which waited ``sojourn_s``, is dropped."""
        ok_to_drop = False
        if sojourn_s < self.target or queue_empty_after:
            self.first_above = None
        elif self.first_above is None:
            self.first_above = head_s + self.interval
        elif head_s >= self.first_above:
            ok_to_drop = True
        if self.dropping:
            if not ok_to_drop:
                self.dropping = False
                return False
            if head_s >= self.drop_next:
                self.count += 1
                self.drop_next = self._control_law(self.drop_next)
                return True
            return False
        if ok_to_drop:
            self.dropping = True
            # Start from the last drop rate if the last dropping state ended recently.
            recent = head_s - self.drop_next < 16 * self.interval
            self.count = self.count - self.last_count if recent and self.count - self.last_count > 1 else 1
            self.last_count = self.count
            self.drop_next = self._control_law(head_s)
            return True
        return False

    def _control_law(self, t: float) -> float:
        return t + self.interval / math.sqrt(self.count)


class LinkQueue:
    """One direction of a link: ``admit`` says when a packet arriving now is delivered (None: lost)."""

    def __init__(self, direction: LinkDirection, seed: int = 0) -> None:
        self.d = direction
        self.rng = random.Random(seed)
        bursty = direction.loss_burst > 1
        self.burst = GilbertElliott(direction.loss, direction.loss_burst, self.rng) if bursty else None
        rate = direction.rate_mbps
        self.bytes_per_s = rate * 1e6 / 8 if rate else None
        self.queue_s = direction.queue_ms / 1000.0
        self.codel = (
            CoDel(direction.codel_target_ms / 1000.0, direction.codel_interval_ms / 1000.0)
            if direction.aqm == "codel"
            else None
        )
        self.busy_until = 0.0  # when the bottleneck finishes sending what it has accepted
        self.delivered = self.lost = self.tail_dropped = self.aqm_dropped = 0

    def admit(self, now: float, size: int) -> float | None:
        if self._lost():
            self.lost += 1
            return None
        departure = now
        if self.bytes_per_s is not None:
            start = max(now, self.busy_until)
            wait = start - now
            if wait > self.queue_s:  # drop-tail: the buffer holds queue_s of sending at the rate
                self.tail_dropped += 1
                return None
            service = size / self.bytes_per_s
            if self.codel is not None and self.codel.drops(start, wait, queue_empty_after=wait <= 0.0):
                self.aqm_dropped += 1
                return None  # dropped at the head: the link's time goes to the next packet
            departure = start + service
            self.busy_until = departure
        delay = self.d.delay_ms / 1000.0
        if self.d.jitter_ms:
            delay = max(0.0, delay + self.rng.uniform(-self.d.jitter_ms, self.d.jitter_ms) / 1000.0)
        self.delivered += 1
        return departure + delay

    def _lost(self) -> bool:
        if self.burst is not None:
            return self.burst.lost()
        return self.d.loss > 0 and self.rng.random() < self.d.loss

    def counts(self) -> str:
        parts = [f"{self.delivered} delivered", f"{self.lost} lost"]
        if self.bytes_per_s is not None:
            parts.append(f"{self.tail_dropped} tail-dropped")
        if self.codel is not None:
            parts.append(f"{self.aqm_dropped} CoDel-dropped")
        return ", ".join(parts)
