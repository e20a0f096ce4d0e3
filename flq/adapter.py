"""Adapter tensors as plain numpy: the one representation every FLQ layer shares.

An adapter is a ``dict[str, np.ndarray]`` (float32) keyed as peft's
``get_peft_model_state_dict`` keys it (adapter name removed):

* LoRA pairs: ``<module>.lora_A.weight`` of shape (r, in_features) and
  ``<module>.lora_B.weight`` of shape (out_features, r); the update is
  ``delta_W = scaling * B @ A`` with the same ``scaling`` for every client rank.
* Every other key is a *dense* tensor (a task head): fixed shape, averaged plainly.

Rank components are ordered: truncating to rank r keeps rows ``A[:r]`` and columns
``B[:, :r]``. This module is pure numpy: no torch, no Flower.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

AdapterState = dict[str, np.ndarray]

LORA_A_SUFFIX = ".lora_A.weight"
LORA_B_SUFFIX = ".lora_B.weight"


def lora_pairs(keys: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Map each LoRA module prefix to its (A key, B key); raise if a pair is incomplete."""
    keys = list(keys)
    key_set = set(keys)
    pairs: dict[str, tuple[str, str]] = {}
    for key in keys:
        if key.endswith(LORA_A_SUFFIX):
            prefix = key[: -len(LORA_A_SUFFIX)]
            b_key = prefix + LORA_B_SUFFIX
            if b_key not in key_set:
                raise ValueError(f"LoRA A tensor {key!r} has no matching B tensor {b_key!r}")
            pairs[prefix] = (key, b_key)
        elif key.endswith(LORA_B_SUFFIX):
            a_key = key[: -len(LORA_B_SUFFIX)] + LORA_A_SUFFIX
            if a_key not in key_set:
                raise ValueError(f"LoRA B tensor {key!r} has no matching A tensor {a_key!r}")
    return pairs


def is_lora_key(key: str) -> bool:
    return key.endswith(LORA_A_SUFFIX) or key.endswith(LORA_B_SUFFIX)


def dense_keys(keys: Iterable[str]) -> list[str]:
    """Keys that are not LoRA factors (task heads and other fully trained tensors)."""
    return [k for k in keys if not is_lora_key(k)]


def adapter_rank(state: Mapping[str, np.ndarray]) -> int:
    """The rank shared by every LoRA pair in ``state``; raise if pairs disagree."""
    ranks = {state[a].shape[0] for a, _ in lora_pairs(state).values()}
    ranks |= {state[b].shape[1] for _, b in lora_pairs(state).values()}
    if not ranks:
        return 0
    if len(ranks) != 1:
        raise ValueError(f"adapter mixes LoRA ranks {sorted(ranks)}")
    return ranks.pop()


def truncate_to_rank(state: Mapping[str, np.ndarray], rank: int) -> AdapterState:
    """Keep the first ``rank`` components of every LoRA pair; dense tensors unchanged."""
    if rank < 0:
        raise ValueError(f"rank must be >= 0, got {rank}")
    out: AdapterState = {}
    for key, value in state.items():
        if key.endswith(LORA_A_SUFFIX):
            out[key] = np.ascontiguousarray(value[:rank, :])
        elif key.endswith(LORA_B_SUFFIX):
            out[key] = np.ascontiguousarray(value[:, :rank])
        else:
            out[key] = value
    return out


def pad_to_rank(state: Mapping[str, np.ndarray], rank: int) -> AdapterState:
    """Zero-pad every LoRA pair up to ``rank`` components (no-op where already there)."""
    out: AdapterState = {}
    for key, value in state.items():
        if key.endswith(LORA_A_SUFFIX) and value.shape[0] < rank:
            pad = np.zeros((rank - value.shape[0], value.shape[1]), dtype=value.dtype)
            out[key] = np.concatenate([value, pad], axis=0)
        elif key.endswith(LORA_B_SUFFIX) and value.shape[1] < rank:
            pad = np.zeros((value.shape[0], rank - value.shape[1]), dtype=value.dtype)
            out[key] = np.concatenate([value, pad], axis=1)
        else:
            out[key] = value
    return out


def num_parameters(state: Mapping[str, np.ndarray]) -> int:
    return int(sum(v.size for v in state.values()))


def nbytes(state: Mapping[str, np.ndarray]) -> int:
    """Raw in-memory size of the tensors (what an uncompressed float32 wire format carries)."""
    return int(sum(v.nbytes for v in state.values()))


def subtract(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> AdapterState:
    """``a - b`` key by key (shapes must match)."""
    return {k: a[k] - b[k] for k in a}


def add(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> AdapterState:
    """``a + b`` key by key (shapes must match)."""
    return {k: a[k] + b[k] for k in a}
