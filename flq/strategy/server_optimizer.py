"""Server optimizers over the aggregated adapter update (Reddi et al., "Adaptive Federated
Optimization", ICLR 2021): FedAvg, FedAvgM, FedAdam, FedYogi. Pure numpy.

The aggregation rule turns the round's client adapters into ``aggregated``; the pseudo-gradient
is ``delta = aggregated - previous`` and the new global is ``previous + step(delta)``:

* ``fedavg``:  step = lr * delta (lr 1: the aggregation rule's result itself);
* ``fedavgm``: m = beta1 * m + delta;                       step = lr * m;
* ``fedadam``: m = beta1 * m + (1 - beta1) * delta;
               v = beta2 * v + (1 - beta2) * delta**2;     step = lr * m_hat / (sqrt(v_hat) + tau);
* ``fedyogi``: as fedadam, but v = v - (1 - beta2) * delta**2 * sign(v - delta**2).

``m_hat = m / (1 - beta1**n)`` and ``v_hat = v / (1 - beta2**n)`` are Adam's bias corrections,
``n`` being how many updates that element has received (``tau`` is the epsilon).

**Rank components no client trained this round** (every accepted client's rank was below
them): their pseudo-gradient is not zero, it is unknown. Treating it as zero would decay their
moments, so that momentum keeps moving a component nobody trained and Adam's next real step on
it is inflated by a shrunken ``v``. So those components take the aggregation rule's value
unchanged (the previous global's under ``rank-wise``), their moments and update counts are
frozen, and they resume where they stopped when a client of high enough rank trains them
again. The per-element update count keeps the bias correction exact for components first
trained late. Dense tensors (a task head) are trained by every accepted client.

State (moments and counts, float64, at r_max) is a dict of arrays: checkpointed with the global
adapter every round and restored on resume, so a resumed run's next update is bit-exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..adapter import AdapterState, lora_pairs

SERVER_OPTIMIZERS = ("fedavg", "fedavgm", "fedadam", "fedyogi")


@dataclass(frozen=True)
class ServerOptimizerSpec:
    name: str = "fedavg"
    lr: float = 1.0
    beta1: float = 0.9  # fedavgm's momentum; fedadam/fedyogi's first-moment decay
    beta2: float = 0.99  # fedadam/fedyogi's second-moment decay
    tau: float = 1e-3  # fedadam/fedyogi's epsilon: bounds the step where v is small

    def __post_init__(self) -> None:
        if self.name not in SERVER_OPTIMIZERS:
            raise ValueError(f"unknown server optimizer {self.name!r}; choose one of {SERVER_OPTIMIZERS}")


class ServerArrays:
    """Named float64 arrays the server keeps between rounds and checkpoints (zero until first used)."""

    def __init__(self) -> None:
        self.state: dict[str, np.ndarray] = {}

    def _array(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self.state:
            self.state[name] = np.zeros(shape, np.float64)
        return self.state[name]

    def state_dict(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.state.items()}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.state = {k: np.asarray(v, np.float64).copy() for k, v in state.items()}


class ServerOptimizer(ServerArrays):
    """Applies one server optimizer step per round; holds the moments ("m/<key>", "v/<key>",
    "n/<key>") between rounds."""

    def __init__(self, spec: ServerOptimizerSpec) -> None:
        super().__init__()
        self.spec = spec

    def step(self, previous: AdapterState, aggregated: AdapterState, trained_rank: int) -> AdapterState:
        """The new global from the round's ``aggregated`` adapter.

        ``trained_rank``: components below it were trained by at least one accepted client this
        round (the highest accepted rank); above it, ``aggregated`` is kept and the state frozen.
        """
        s = self.spec
        if s.name == "fedavg" and s.lr == 1.0:
            return aggregated  # exactly the aggregation rule's result, at no cost
        masks = trained_masks(previous, trained_rank)
        new: AdapterState = {}
        for key, x in previous.items():
            mask = masks[key]
            delta = aggregated[key].astype(np.float64) - x
            step = self._step(key, delta, mask)
            updated = x + np.where(mask, step, 0.0)
            new[key] = np.where(mask, updated, aggregated[key]).astype(np.float32)
        return new

    def _step(self, key: str, delta: np.ndarray, mask: np.ndarray) -> np.ndarray:
        s = self.spec
        if s.name == "fedavg":
            return s.lr * delta
        m = self._moment("m", key, delta.shape)
        if s.name == "fedavgm":
            m[...] = np.where(mask, s.beta1 * m + delta, m)
            return s.lr * m
        v = self._moment("v", key, delta.shape)
        n = self._moment("n", key, delta.shape)
        n[...] = np.where(mask, n + 1, n)
        m[...] = np.where(mask, s.beta1 * m + (1 - s.beta1) * delta, m)
        squared = delta * delta
        if s.name == "fedadam":
            v_new = s.beta2 * v + (1 - s.beta2) * squared
        else:  # fedyogi
            v_new = v - (1 - s.beta2) * squared * np.sign(v - squared)
        v[...] = np.where(mask, v_new, v)
        counts = np.maximum(n, 1.0)  # untrained elements are masked out of the step anyway
        m_hat = m / (1 - s.beta1**counts)
        v_hat = v / (1 - s.beta2**counts)
        return s.lr * m_hat / (np.sqrt(v_hat) + s.tau)

    def _moment(self, kind: str, key: str, shape: tuple[int, ...]) -> np.ndarray:
        return self._array(f"{kind}/{key}", shape)


def trained_masks(state: AdapterState, trained_rank: int) -> dict[str, np.ndarray]:
    """Per tensor, a boolean array broadcastable to it: True where this round trained it."""
    masks = {key: np.ones((1,) * value.ndim, bool) for key, value in state.items()}
    for a_key, b_key in lora_pairs(state).values():
        rank = state[a_key].shape[0]
        trained = np.arange(rank) < trained_rank
        masks[a_key] = trained[:, None]  # A is (r, in)
        masks[b_key] = trained[None, :]  # B is (out, r)
    return masks
