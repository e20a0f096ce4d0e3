"""ServerApp: learn which node is which (transport, mode), then for every size and repetition
send each node, one at a time, an adapter of that size and wait for its same-size reply.

One node at a time, so the transports never share the CPU or the link; the node order
rotates every repetition so no transport always goes first. Timing is taken on the nodes
(benchmarks/transport_throughput.py), not here: this side includes Flower's polling.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


def _ask(grid: Grid, node_id: int, content: RecordDict, kind: str, timeout: float) -> Message | None:
    message = Message(content=content, dst_node_id=node_id, message_type=kind)
    replies = list(grid.send_and_receive([message], timeout=timeout))
    return replies[0] if replies and not replies[0].has_error() else None


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    out = {"status": "running", "rounds": []}
    result_file = str(cfg["result-file"])

    def save() -> None:
        Path(f"{result_file}.tmp").write_text(json.dumps(out, indent=1))
        os.replace(f"{result_file}.tmp", result_file)

    deadline = time.monotonic() + 300
    while len(list(grid.get_node_ids())) < int(cfg["min-nodes"]) and time.monotonic() < deadline:
        time.sleep(1)
    labels = {}
    for node_id in grid.get_node_ids():
        reply = _ask(grid, node_id, RecordDict({"config": ConfigRecord({"hello": 1})}), MessageType.QUERY, 120)
        if reply is not None:
            labels[node_id] = str(reply.content["node"]["label"])
    out["nodes"] = {str(k): v for k, v in labels.items()}
    order = sorted(labels, key=labels.get)
    rng = np.random.default_rng(0)
    for size in [int(s) for s in str(cfg["sizes-bytes"]).split(",")]:
        for rep in range(int(cfg["reps"])):
            for node_id in order[rep % len(order) :] + order[: rep % len(order)]:
                adapter = rng.standard_normal(size // 4).astype(np.float32)
                content = RecordDict(
                    {
                        "arrays": ArrayRecord({"adapter": Array(adapter)}),
                        "config": ConfigRecord({"size": size, "rep": rep}),
                    }
                )
                started = time.monotonic()
                reply = _ask(grid, node_id, content, MessageType.TRAIN, float(cfg["round-timeout"]))
                ok = reply is not None and reply.content["arrays"]["adapter"].numpy().nbytes == adapter.nbytes
                out["rounds"].append(
                    {
                        "node": str(node_id),
                        "label": labels[node_id],
                        "size": size,
                        "rep": rep,
                        "ok": ok,
                        "server_seconds": time.monotonic() - started,
                        "at": time.time(),  # wall clock at the round's end (quic_hostile_load.py)
                    }
                )
                save()
    out["status"] = "ok"
    save()
