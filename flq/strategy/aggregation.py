"""Aggregation of LoRA adapters trained at different ranks: three rules, one streaming API.

Inputs are *full* client adapters (``dict[str, np.ndarray]``, float32, keyed as in
:mod:`flq.adapter`), each at the client's own rank r_i <= r_max, weighted by the client's
example count. A client replies with a delta from the adapter it received; rebuild its full
adapter with :func:`client_adapter_from_delta` first (the SVD rule needs full factors,
since ``(B + dB)(A + dA)`` is not ``BA + dB dA``).

Usage (the server never holds more than one client adapter at a time)::

    aggregator = make_aggregator("rank-wise", previous_global, r_max)
    for state, num_examples in replies:          # validated replies only
        aggregator.add(state, num_examples)
    new_global = aggregator.result()             # every LoRA pair at r_max, float32

or ``aggregate(rule, states, weights, previous_global, r_max)`` for a list. Dense tensors
(task heads) are plain weighted FedAvg under every rule. Sums are kept in float64; the
output is float32 with the keys, key order and shapes of ``previous_global``. With no
client added, ``result()`` is a float32 copy of ``previous_global``.

Cost is linear in clients and memory independent of their number: "zero-pad" and
"rank-wise" keep per-module factor sums (r_max x in, out x r_max) and, for rank-wise, one
weight sum per rank component; "svd" keeps one out x in sum per module and does one SVD per
module in ``result()``.

What "equal to FedAvg" means when every client has the same rank r:

* "zero-pad" and "rank-wise": the first r components of the result are exactly the
  weighted average of the clients' A and B, factor by factor (FedAvg of the factors, which
  is what Flower's FedAvg does to adapter tensors). Components r..r_max-1 are zero for
  zero-pad and the previous global's for rank-wise; at r = r_max the two rules are
  identical. The product of averaged factors is *not* the average of the products
  (mean(B) mean(A) != mean(BA)): that gap is inherent to averaging factors.
* "svd": the product of the result's factors equals the weighted average of the clients'
  products ``sum_i w_i B_i A_i / sum_i w_i`` whenever that average has rank <= r_max
  (always, e.g., when sum_i r_i <= r_max); otherwise it is its best rank-r_max
  approximation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from math import isfinite
from typing import ClassVar

import numpy as np

from flq.adapter import (
    AdapterState,
    adapter_rank,
    add,
    dense_keys,
    lora_pairs,
    truncate_to_rank,
)
from flq.strategy.validation import structural_problem

_ACCUMULATOR_DTYPE = np.float64
_OUTPUT_DTYPE = np.float32


class Aggregator(ABC):
    """Streaming weighted aggregation of client adapters into a new global adapter at r_max.

    Feed validated client adapters with :meth:`add`; :meth:`result` may be called at any
    time (and again after more adds). ``previous_global`` is never modified.
    """

    rule: ClassVar[str]

    def __init__(self, previous_global: Mapping[str, np.ndarray], r_max: int) -> None:
        _check_previous_global(previous_global, r_max)
        self.r_max = r_max
        self.num_clients = 0
        self.total_weight = 0.0
        self._previous = previous_global
        self._pairs = lora_pairs(previous_global.keys())
        self._dense_sums = {
            key: np.zeros(previous_global[key].shape, _ACCUMULATOR_DTYPE) for key in dense_keys(previous_global.keys())
        }

    def add(self, client_state: Mapping[str, np.ndarray], weight: float) -> None:
        """Fold one client's full adapter (its own rank) in with ``weight`` (its example count).

        Raises ``ValueError`` for a non-positive/non-finite weight or a state that does not
        fit the global adapter (run :func:`flq.strategy.validation.validate_update` first
        to reject such replies gracefully).
        """
        weight = _checked_weight(weight)
        problem = structural_problem(client_state, self._previous, self.r_max)
        if problem is not None:
            raise ValueError(f"cannot aggregate client adapter: {problem}")
        rank = adapter_rank(client_state)
        for key, total in self._dense_sums.items():
            total += weight * client_state[key]
        self._add_lora(client_state, rank, weight)
        self.num_clients += 1
        self.total_weight += weight

    def result(self) -> AdapterState:
        """The aggregated adapter: every LoRA pair at r_max, dense tensors averaged, float32."""
        if self.num_clients == 0:
            return {k: np.array(v, dtype=_OUTPUT_DTYPE) for k, v in self._previous.items()}
        out: AdapterState = {}
        for key, total in self._dense_sums.items():
            out[key] = (total / self.total_weight).astype(_OUTPUT_DTYPE)
        for prefix, (a_key, b_key) in self._pairs.items():
            a, b = self._pair_result(prefix)
            out[a_key] = np.ascontiguousarray(a, dtype=_OUTPUT_DTYPE)
            out[b_key] = np.ascontiguousarray(b, dtype=_OUTPUT_DTYPE)
        return {key: out[key] for key in self._previous}

    @abstractmethod
    def _add_lora(self, client_state: Mapping[str, np.ndarray], rank: int, weight: float) -> None:
        """Accumulate one validated client's LoRA pairs (A is (rank, in), B is (out, rank))."""

    @abstractmethod
    def _pair_result(self, prefix: str) -> tuple[np.ndarray, np.ndarray]:
        """The aggregated (A, B) of one module, at r_max."""


class _FactorSumAggregator(Aggregator):
    """Shared state of the two factor-averaging rules: weighted sums of A rows and B columns.

    Component k of a client at rank r_i contributes only if k < r_i (zero padding adds
    nothing to a sum), and ``component_weight[k]`` counts the weight of those clients.
    """

    def __init__(self, previous_global: Mapping[str, np.ndarray], r_max: int) -> None:
        super().__init__(previous_global, r_max)
        self._a_sums: dict[str, np.ndarray] = {}
        self._b_sums: dict[str, np.ndarray] = {}
        for prefix, (a_key, b_key) in self._pairs.items():
            self._a_sums[prefix] = np.zeros(previous_global[a_key].shape, _ACCUMULATOR_DTYPE)
            self._b_sums[prefix] = np.zeros(previous_global[b_key].shape, _ACCUMULATOR_DTYPE)
        self.component_weight = np.zeros(r_max, _ACCUMULATOR_DTYPE)

    def _add_lora(self, client_state: Mapping[str, np.ndarray], rank: int, weight: float) -> None:
        for prefix, (a_key, b_key) in self._pairs.items():
            self._a_sums[prefix][:rank] += weight * client_state[a_key]
            self._b_sums[prefix][:, :rank] += weight * client_state[b_key]
        self.component_weight[:rank] += weight


class ZeroPadAggregator(_FactorSumAggregator):
    """Zero-padding (FAH-QLoRA / HetLoRA): pad every client to r_max with zeros, average A and B.

    Each client's A and B are padded with zero components up to r_max, then A and B are
    weighted-averaged separately over all clients. Assumes a missing component means "this
    client wants zero there". It loses information whenever ranks differ: component k is
    scaled down by the share of weight held by clients of rank > k (a rank-64 client's
    components 8..63 are diluted by every rank-8 client), and a component that no client
    trained this round becomes exactly zero in both A and B, which also stops it from
    training again later (a LoRA component with A = B = 0 has zero gradient). Like any
    factor average, the product of the averaged factors is not the average of the products.
    """

    rule = "zero-pad"

    def _pair_result(self, prefix: str) -> tuple[np.ndarray, np.ndarray]:
        return self._a_sums[prefix] / self.total_weight, self._b_sums[prefix] / self.total_weight


class RankWiseAggregator(_FactorSumAggregator):
    """Rank-wise averaging: each component averaged only over the clients that trained it.

    Component k (row k of A, column k of B) is the weighted average over the clients of
    rank > k, with weights renormalised over those clients; a component no client trained
    this round keeps the previous global value. Assumes components are aligned across
    clients (component k means the same thing for everyone, which holds because clients
    receive the global adapter truncated to their rank and train from it). It avoids
    zero-padding's dilution, but high components rest on fewer clients (a single rank-64
    client decides components 32..63 alone, so they follow its data), and, like any factor
    average, the product of the averaged factors is not the average of the products.
    """

    rule = "rank-wise"

    def _pair_result(self, prefix: str) -> tuple[np.ndarray, np.ndarray]:
        a_key, b_key = self._pairs[prefix]
        trained = self.component_weight > 0
        # Untrained components divide by 1 and are then replaced by the previous values.
        divisor = np.where(trained, self.component_weight, 1.0)
        a = np.where(trained[:, None], self._a_sums[prefix] / divisor[:, None], self._previous[a_key])
        b = np.where(trained[None, :], self._b_sums[prefix] / divisor[None, :], self._previous[b_key])
        return a, b


class SvdAggregator(Aggregator):
    """SVD redistribution (FlexLoRA style): average the products B_i A_i, refactor by SVD.

    Accumulates ``sum_i w_i B_i A_i`` per module (out x in, float64), divides by the total
    weight and factorises it by truncated SVD ``U S Vt`` into ``B = U sqrt(S)`` (out, r_max)
    and ``A = sqrt(S) Vt`` (r_max, in), components ordered by decreasing singular value
    (signs fixed so the largest-magnitude entry of each column of U is positive), so that
    truncating to any client rank r keeps the best rank-r approximation of the average
    update. Assumes the product is what matters (one LoRA scaling for every rank) and that
    products of different clients can be averaged. It loses information when the average
    product has rank above r_max (the tail of the spectrum is dropped), it does not preserve
    the factors themselves (the clients' next starting point is a rotated basis), and a
    component whose singular value is zero comes out as A = B = 0, which no longer trains.
    Costs one out x in float32 product per client and one SVD per module per round.
    """

    rule = "svd"

    def __init__(self, previous_global: Mapping[str, np.ndarray], r_max: int, buffer_rank: int = 128) -> None:
        """``buffer_rank``: components buffered before one GEMM updates the product sums."""
        super().__init__(previous_global, r_max)
        # Clients are buffered side by side ([w_1 B_1 | w_2 B_2 | ...] and [A_1; A_2; ...])
        # so one matrix product with an inner size of buffer_rank replaces many rank-r
        # products, each of which would otherwise read and write the whole out x in sum.
        self._capacity = max(buffer_rank, r_max)
        self._filled = 0
        self._product_sums: dict[str, np.ndarray] = {}
        self._a_buffers: dict[str, np.ndarray] = {}
        self._b_buffers: dict[str, np.ndarray] = {}
        for prefix, (a_key, b_key) in self._pairs.items():
            out_features = previous_global[b_key].shape[0]
            in_features = previous_global[a_key].shape[1]
            self._product_sums[prefix] = np.zeros((out_features, in_features), _ACCUMULATOR_DTYPE)
            self._a_buffers[prefix] = np.empty((self._capacity, in_features), np.float32)
            self._b_buffers[prefix] = np.empty((out_features, self._capacity), np.float32)

    def result(self) -> AdapterState:
        self._flush()
        return super().result()

    def _add_lora(self, client_state: Mapping[str, np.ndarray], rank: int, weight: float) -> None:
        if self._filled + rank > self._capacity:
            self._flush()
        start, stop = self._filled, self._filled + rank
        for prefix, (a_key, b_key) in self._pairs.items():
            self._a_buffers[prefix][start:stop] = client_state[a_key]
            np.multiply(client_state[b_key], weight, out=self._b_buffers[prefix][:, start:stop])
        self._filled = stop

    def _flush(self) -> None:
        if self._filled == 0:
            return
        for prefix, total in self._product_sums.items():
            total += self._b_buffers[prefix][:, : self._filled] @ self._a_buffers[prefix][: self._filled]
        self._filled = 0

    def _pair_result(self, prefix: str) -> tuple[np.ndarray, np.ndarray]:
        average = self._product_sums[prefix] / self.total_weight
        return split_by_svd(average, self.r_max)


_AGGREGATORS: dict[str, type[Aggregator]] = {
    cls.rule: cls for cls in (ZeroPadAggregator, RankWiseAggregator, SvdAggregator)
}
AGGREGATION_RULES: tuple[str, ...] = tuple(_AGGREGATORS)

# How much each accepted client counts in the average (``aggregation-weight``):
# "examples": its example count (FedAvg). With unequal local steps FedAvg drifts toward the
# clients that took more steps: it optimises a surrogate objective that weights client i by
# n_i * steps_i, not n_i (Wang et al., 2020, "Tackling the objective inconsistency problem").
# "examples-per-step": n_i / steps_i, FedNova's normalised averaging with the harmonic mean
# of the steps as the effective step count: every client pulls in proportion to its data,
# however much of the round it could spend training. Equal steps give FedAvg's weights. A
# client the scheduler gave a smaller batch (one step of its own would be late) counts as at
# its own batch: a smaller batch estimates the same gradient, only noisier (``batch_scale``).
AGGREGATION_WEIGHTS: tuple[str, ...] = ("examples", "examples-per-step")


def client_weight(mode: str, num_examples: int, steps: int, batch_scale: float = 1.0) -> float:
    """One accepted client's weight in the average under ``mode`` (see AGGREGATION_WEIGHTS).

    ``batch_scale``: the client's own batch over the smaller one it was given this round
    (1: none given); only per-step weights use it.
    """
    if mode == "examples":
        return float(num_examples)
    if mode == "examples-per-step":
        # A reply that trained no step carries a zero delta: it counts as one step.
        return float(num_examples) / max(int(steps), 1) * batch_scale
    raise ValueError(f"unknown aggregation weight {mode!r}; choose one of {', '.join(AGGREGATION_WEIGHTS)}")


# ``fairness-q`` = q > 0 multiplies each weight by the client's loss before training (the
# global model's loss on its first batch) to the power q: q-FFL's reweighting (Li et al., 2020,
# "Fair resource allocation in federated learning"), so the clients the global model serves
# worst pull hardest. q-FedAvg also sizes the server step from a Lipschitz estimate; here the
# weights are normalised like any others and the step is the server optimizer's. Beyond
# FAIRNESS_Q_MAX a loss twice another's weighs a million times more: one client is the average.
FAIRNESS_Q_MAX = 20.0
# A reported loss is clamped into this range: 0 would weigh a client out of the average, and a
# huge one (a client's report is its own word) would overflow the weight at a large q.
_FAIRNESS_LOSS_RANGE = (1e-6, 1e3)


def fairness_factor(q: float, loss_before: float | None) -> float:
    """The factor ``fairness-q`` puts on a client's weight: ``loss_before ** q`` (1 when q is 0).

    A reply with no loss (it trained no step, so its delta is zero) keeps its plain weight.
    """
    if q == 0 or loss_before is None or not isfinite(loss_before):
        return 1.0
    low, high = _FAIRNESS_LOSS_RANGE
    return min(max(float(loss_before), low), high) ** q


def make_aggregator(rule: str, previous_global: Mapping[str, np.ndarray], r_max: int) -> Aggregator:
    """A fresh streaming aggregator for ``rule`` ("zero-pad", "rank-wise" or "svd").

    ``previous_global`` is the current global adapter (every LoRA pair at r_max): it fixes
    the keys and shapes of the result and, for "rank-wise", supplies untrained components.
    """
    try:
        aggregator_class = _AGGREGATORS[rule]
    except KeyError:
        raise ValueError(f"unknown aggregation rule {rule!r}; choose one of {', '.join(AGGREGATION_RULES)}") from None
    return aggregator_class(previous_global, r_max)


def aggregate(
    rule: str,
    client_states: Iterable[Mapping[str, np.ndarray]],
    weights: Iterable[float],
    previous_global: Mapping[str, np.ndarray],
    r_max: int,
) -> AdapterState:
    """Aggregate client adapters (any iterable, consumed one at a time) with ``rule``."""
    aggregator = make_aggregator(rule, previous_global, r_max)
    for state, weight in zip(client_states, weights, strict=True):
        aggregator.add(state, weight)
    return aggregator.result()


def client_adapter_from_delta(
    previous_global: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]
) -> AdapterState:
    """A client's full adapter: the global truncated to the delta's rank, plus the delta."""
    rank = adapter_rank(delta)
    return {
        key: np.asarray(value, dtype=_OUTPUT_DTYPE)
        for key, value in add(truncate_to_rank(previous_global, rank), delta).items()
    }


def split_by_svd(matrix: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Factor ``matrix`` (out x in) as B (out, rank) @ A (rank, in), best rank-``rank`` fit.

    ``B = U sqrt(S)``, ``A = sqrt(S) Vt`` over the top ``rank`` singular triplets, in
    decreasing order; zero components pad the result when ``rank > min(out, in)``.
    """
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    kept = min(rank, s.size)
    u, s, vt = _positive_leading_signs(u[:, :kept], s[:kept], vt[:kept])
    root = np.sqrt(s)
    b = np.zeros((matrix.shape[0], rank), matrix.dtype)
    a = np.zeros((rank, matrix.shape[1]), matrix.dtype)
    b[:, :kept] = u * root
    a[:kept] = root[:, None] * vt
    return a, b


def _positive_leading_signs(u: np.ndarray, s: np.ndarray, vt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flip (u_k, v_k) pairs so each u_k's largest-magnitude entry is positive.

    An SVD is unique only up to these sign pairs; fixing them makes the factors a function
    of the matrix (reproducible across runs and LAPACK builds, for distinct singular values).
    """
    leading = u[np.argmax(np.abs(u), axis=0), np.arange(u.shape[1])]
    signs = np.where(leading < 0, -1.0, 1.0)
    return u * signs, s, vt * signs[:, None]


def _checked_weight(weight: float) -> float:
    value = float(weight)
    if not isfinite(value) or value <= 0:
        raise ValueError(f"client weight must be a positive finite number, got {weight!r}")
    return value


def _check_previous_global(previous_global: Mapping[str, np.ndarray], r_max: int) -> None:
    if isinstance(r_max, bool) or not isinstance(r_max, int) or r_max < 1:
        raise ValueError(f"r_max must be a positive integer, got {r_max!r}")
    rank = adapter_rank(previous_global)
    if lora_pairs(previous_global.keys()) and rank != r_max:
        raise ValueError(f"previous global adapter is at rank {rank}, expected r_max={r_max}")
