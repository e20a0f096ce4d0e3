"""SCAFFOLD control variates for LoRA adapters of different ranks (Karimireddy et al., ICML 2020,
option II). Pure numpy: the server's control variate and both sides' update rules.

The server keeps a control variate ``c`` with the global adapter's keys and shapes at r_max;
client i keeps its own ``c_i`` (in Flower's ``context.state``). Each round:

1. the server sends ``c`` truncated to the client's rank beside the adapter ``x``;
2. every local step moves each trainable tensor by ``- lr * (c - c_i)`` besides its optimizer
   step (``flq.task.train.train_steps``' ``control_correction``);
3. after K steps at learning rate lr the client holds ``y_i`` and sets
   ``c_i+ = c_i - c + (x - y_i) / (K * lr)`` (``client_control_update``), keeps it, and replies
   with ``delta_c_i = c_i+ - c_i`` beside its update;
4. the server sets ``c <- c + (|S| / N) * mean_{i in S} delta_c_i``, i.e. ``c + sum / N``, over
   the accepted clients S of the N nodes of the federation (``ScaffoldControl.apply``). Started
   at zero, this keeps ``c = (1 / N) * sum_i c_i`` over all N clients.

**FLQ's local optimizer is AdamW, not SGD.** ``(x - y_i) / (K * lr)`` is then the mean AdamW step
direction (plus weight decay) over the K steps, not a mean gradient: Adam's per-element steps
are normalised, of order 1, whatever the gradients' scale. So the correction is applied where
those units agree: to the parameters after each optimizer step, ``w -= lr * (c - c_i)``, as
SCAFFOLD-with-Adam implementations for LoRA commonly do (e.g. OpenFedLLM's trainer callback).
Under plain SGD this is exactly the paper's ``gradient + c - c_i``; under AdamW it makes
``c_i+`` the client's mean uncorrected AdamW direction (the correction's own ``K * lr * (c - c_i)``
cancels in the formula), so ``c - c_i`` estimates how the federation's mean direction differs
from this client's. Adding ``c - c_i`` to the *gradient* instead would feed Adam a term of order
1 beside gradients that are often orders of magnitude smaller, and Adam would follow the
correction rather than the data. Neither form carries SCAFFOLD's convergence proof (which is
for SGD); whether it pays on LoRA factors is what ``benchmarks/noniid_benchmark.py`` measures.

**Heterogeneous ranks.** A client at rank r receives ``c[:r]`` (A rows, B columns), trains and
reports rank-r components only; its ``delta_c_i`` is zero-padded to r_max before the sum.
Components above a client's rank are kept in its ``c_i`` untouched (``merge_client_control``):
truncating them would forget a contribution that ``c`` still holds, and the client's next delta
would count it twice. Rank components no accepted client trained this round get no delta at
all, so their control stays as it was: nobody measured a new direction for them, and every
client's ``c_i`` there is unchanged, so ``c = mean_i c_i`` still holds. A component trained by
few clients is diluted by N like the others (a client that never trained it has ``c_i = 0``
there, SCAFFOLD's initial value), which is what keeps that invariant exact.

**Clients whose reply is rejected, late or failed** have their delta left out (the server does
not know it is sound, and a late client's update is dropped with it). Such a client has already
stored its ``c_i+``, so the invariant drifts by its ``delta_c_i / N`` until it is sampled again;
a fresher ``c_i`` is still a fair estimate of its own direction.

Cost: ``c`` travels down and ``delta_c_i`` up, both in float32, so a round moves about twice the
adapter's bytes each way with an fp32 codec (more, relatively, with a quantized one).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..adapter import LORA_A_SUFFIX, LORA_B_SUFFIX, AdapterState, adapter_rank, pad_to_rank, truncate_to_rank
from .server_optimizer import ServerArrays


class ScaffoldControl(ServerArrays):
    """The server's control variate ``c`` ("c/<key>", float64, at r_max); zero until the first update."""

    def __init__(self, rank_max: int) -> None:
        super().__init__()
        self.rank_max = rank_max

    def for_rank(self, template: Mapping[str, np.ndarray], rank: int) -> AdapterState:
        """``c`` truncated to ``rank``, in float32 (what a client at that rank is sent).

        ``template``: the global adapter at r_max (its keys and shapes; ``c`` starts at zero).
        """
        return truncate_to_rank({k: self._c(k, v.shape).astype(np.float32) for k, v in template.items()}, rank)

    def start_round(self, template: Mapping[str, np.ndarray]) -> ControlDeltaSum:
        """A running sum of this round's accepted clients' deltas (at r_max)."""
        return ControlDeltaSum(template, self.rank_max)

    def apply(self, deltas: ControlDeltaSum, num_nodes: int) -> None:
        """``c <- c + (|S| / N) * mean_S delta_c_i`` with S the accepted clients and N the nodes.

        ``num_nodes``: N, the nodes of the federation; never taken below |S|.
        """
        accepted = deltas.count
        if accepted == 0:
            return
        n = max(num_nodes, accepted)
        for key, total in deltas.sums.items():
            c = self._c(key, total.shape)
            c += (accepted / n) * (total / accepted)

    def _c(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        return self._array(f"c/{key}", shape)


class ControlDeltaSum:
    """The sum of one round's accepted control deltas, each zero-padded to r_max."""

    def __init__(self, template: Mapping[str, np.ndarray], rank_max: int) -> None:
        self.rank_max = rank_max
        self.sums = {k: np.zeros(v.shape, np.float64) for k, v in template.items()}
        self.count = 0

    def add(self, delta: Mapping[str, np.ndarray]) -> None:
        """Add one client's ``delta_c_i`` (its rank; validated like an update)."""
        for key, value in pad_to_rank(delta, self.rank_max).items():
            self.sums[key] += value
        self.count += 1


# -- the client's side ----------------------------------------------------------------------
def client_control_at_rank(stored: Mapping[str, np.ndarray], c: Mapping[str, np.ndarray], rank: int) -> AdapterState:
    """This client's ``c_i`` at ``rank``, with ``c``'s keys: what it kept (truncated, or
    zero-padded where it never trained), zero for a key it has none of (its first round)."""
    at_rank = pad_to_rank(truncate_to_rank(stored, rank), rank)
    return {k: at_rank[k].astype(np.float32) if k in at_rank else np.zeros_like(v) for k, v in c.items()}


def client_control_update(
    c_i: Mapping[str, np.ndarray],
    c: Mapping[str, np.ndarray],
    sent: Mapping[str, np.ndarray],
    trained: Mapping[str, np.ndarray],
    steps: int,
    learning_rate: float,
) -> AdapterState:
    """SCAFFOLD option II: ``c_i+ = c_i - c + (x - y_i) / (K * lr)`` (float32).

    ``sent``: x, the adapter the client started from; ``trained``: y_i, where K steps at
    learning rate ``learning_rate`` took it. No step taken: ``c_i`` unchanged.
    """
    if steps <= 0:
        return {k: np.asarray(v, np.float32) for k, v in c_i.items()}
    scale = 1.0 / (steps * learning_rate)
    return {
        k: (c_i[k].astype(np.float64) - c[k] + (sent[k].astype(np.float64) - trained[k]) * scale).astype(np.float32)
        for k in c_i
    }


def merge_client_control(stored: Mapping[str, np.ndarray], new: Mapping[str, np.ndarray]) -> AdapterState:
    """What the client keeps: ``new`` over the first components, ``stored`` above ``new``'s rank.

    A client now at a lower rank than before keeps the components it trained earlier (``c``
    still holds their share); at a higher rank ``new`` covers everything.
    """
    new_rank = adapter_rank(new)
    rank = max(new_rank, adapter_rank({k: v for k, v in stored.items() if k in new}) if stored else 0)
    out = pad_to_rank({k: np.array(stored[k]) if k in stored else np.array(v) for k, v in new.items()}, rank)
    for key, value in new.items():
        if key.endswith(LORA_A_SUFFIX):
            out[key][:new_rank, :] = value
        elif key.endswith(LORA_B_SUFFIX):
            out[key][:, :new_rank] = value
        else:
            out[key] = np.array(value)
    return {k: v.astype(np.float32) for k, v in out.items()}
