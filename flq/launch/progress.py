"""Progress lines: rounds as the ServerApp records them, and a clock since the launch began."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


class RoundWatcher:
    """New complete lines of a run's ``rounds.jsonl`` since the last ``poll`` (the file may not exist yet)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.offset = 0

    def poll(self) -> list[dict]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
        except FileNotFoundError:
            return []
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line being written waits for the next poll
        self.offset += len(complete)
        out = []
        for line in complete.splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out


def format_round(r: dict) -> str:
    score = r.get("score")
    score_text = f"{r.get('score_name', 'score')} {score:.4f}" if isinstance(score, int | float) else "no score"
    round_s = r.get("round_s")
    time_text = f", {round_s:.1f} s on the {r.get('clock', '?')} clock" if isinstance(round_s, int | float) else ""
    clients = f"{r.get('num_accepted')}/{r.get('num_sampled')} clients"
    return f"round {r.get('server_round')}: {score_text}, {clients}{time_text}"


class Progress:
    """Timestamped lines on stdout (seconds since the launch began), flushed at once."""

    def __init__(self, stream=None) -> None:
        self.start = time.monotonic()
        self.stream = stream or sys.stdout

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.start:7.1f}s] {text}", file=self.stream, flush=True)
