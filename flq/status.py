"""What became of a sampled client in one round: the one spelling every layer uses.

A ``StrEnum``, so a status read back from ``rounds.jsonl`` (a plain string) compares equal
to its member, and one written there is the plain string.
"""

from __future__ import annotations

from enum import StrEnum


class ClientStatus(StrEnum):
    OK = "ok"  # accepted and on time
    LATE = "late"  # missed the deadline (dropped under drop/budget)
    REJECTED = "rejected"  # its reply failed decoding or validation
    FAILED = "failed"  # it raised, or sent nothing before the timeout
    OOM = "oom"  # its memory cannot hold the assignment
