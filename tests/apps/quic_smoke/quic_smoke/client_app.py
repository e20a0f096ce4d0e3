"""ClientApp: add noise to the global array and report who it is (tier, partition)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    node, run = context.node_config, context.run_config
    tier = str(node.get("tier", "unknown"))
    pid = int(node.get("partition-id", 0))
    rnd = int(msg.content["config"]["server-round"])
    if run["marker-dir"]:
        Path(str(run["marker-dir"]), f"started-r{rnd}-p{pid}").touch()
    if tier == run["slow-tier"] and rnd == int(run["slow-round"]):
        time.sleep(float(run["slow-seconds"]))
    w = msg.content["arrays"]["w"].numpy()
    rng = np.random.default_rng(1000 * rnd + pid)
    update = (w + 1.0 + 0.01 * rng.standard_normal(w.shape)).astype(np.float32)
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(update)}),
            "metrics": MetricRecord({"num-examples": 10 + pid, "loss": float(np.abs(update).mean())}),
            "node": ConfigRecord({"tier": tier, "partition-id": pid, "round": rnd}),
        }
    )
    return Message(content=content, reply_to=msg)
