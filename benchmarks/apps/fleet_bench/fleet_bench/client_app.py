"""ClientApp: say which node this is; answer an adapter with a fresh one of the same size."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.query()
def hello(msg: Message, context: Context) -> Message:
    label = str(context.node_config.get("label", "unknown"))
    return Message(content=RecordDict({"node": ConfigRecord({"label": label})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    n = msg.content["arrays"]["adapter"].numpy().size
    update = np.random.default_rng(n).standard_normal(n).astype(np.float32)  # incompressible, like real updates
    return Message(content=RecordDict({"arrays": ArrayRecord({"adapter": Array(update)})}), reply_to=msg)
