"""Reply validation: decide whether a client's decoded adapter may enter aggregation.

A reply is checked against the *template*, the global adapter the server holds at r_max:
same keys, LoRA pairs of one rank in ``[1, r_max]`` with the template's in/out features,
dense tensors of the template's shapes, float32 values, all finite. The first problem found
is returned as a human-readable reason (``None`` when the reply is fine); the strategy logs
it and counts the reply as rejected, and the round goes on. Pure numpy: no torch, no Flower.

dtype policy: only float32 is accepted. The update codec is the one place that turns wire
precisions (INT8, INT4, float16) back into float32, so any other dtype here means a codec
bug or a non-conforming client; accepting float16 would also let values that overflowed
float16's range (+-65504) slip through as ``inf`` from an older decoder.

Structure is checked first (cheap, per key); values are scanned once, last, for NaN/Inf.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from numbers import Integral

import numpy as np

from flq.adapter import dense_keys, lora_pairs

ACCEPTED_DTYPE = np.dtype(np.float32)
_MAX_KEYS_LISTED = 3


def validate_update(
    state: object,
    template: Mapping[str, np.ndarray],
    r_max: int,
    *,
    expected_rank: int | None = None,
    num_examples: object = None,
) -> str | None:
    """Return why ``state`` must be rejected, or ``None`` if it may be aggregated.

    ``template`` is the global adapter (its keys and in/out features are the reference).
    ``expected_rank``, when given, is the rank the server assigned this client: a reply at
    any other rank is rejected. ``num_examples``, when given, is the client's reported
    example count (its aggregation weight) and must be a positive integer.
    """
    if num_examples is not None:
        problem = examples_problem(num_examples)
        if problem is not None:
            return problem
    problem = structural_problem(state, template, r_max, expected_rank=expected_rank)
    if problem is not None:
        return problem
    return non_finite_problem(state)  # type: ignore[arg-type]  # structure checked above


def structural_problem(
    state: object,
    template: Mapping[str, np.ndarray],
    r_max: int,
    *,
    expected_rank: int | None = None,
) -> str | None:
    """Every check except the scan of values: keys, types, dtypes, shapes and ranks."""
    if not isinstance(state, Mapping):
        return f"reply is a {type(state).__name__}, not a mapping of tensor names to arrays"
    problem = _keys_problem(state.keys(), template.keys())
    if problem is not None:
        return problem
    problem = _array_types_problem(state)
    if problem is not None:
        return problem
    problem = _dense_shapes_problem(state, template)
    if problem is not None:
        return problem
    return _lora_shapes_problem(state, template, r_max, expected_rank)


def non_finite_problem(state: Mapping[str, np.ndarray]) -> str | None:
    """Name the first tensor holding NaN or Inf, or ``None`` if every value is finite."""
    for key, value in state.items():
        if not _has_non_finite(value):
            continue
        bad = int(np.count_nonzero(~np.isfinite(value)))
        return f"{key!r} holds {bad} non-finite value(s) (NaN or Inf) out of {value.size}"
    return None


def examples_problem(num_examples: object) -> str | None:
    """The example count weights the reply in FedAvg: it must be a positive integer."""
    if isinstance(num_examples, bool) or not isinstance(num_examples, Integral):
        return f"num_examples must be a positive integer, got {num_examples!r}"
    if num_examples <= 0:
        return f"num_examples must be a positive integer, got {int(num_examples)}"
    return None


def _has_non_finite(value: np.ndarray) -> bool:
    # A sum is NaN/Inf whenever any term is, so one vectorised reduction clears the common
    # case; only a non-finite sum (or a finite-value overflow) pays for the exact check.
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.add.reduce(value, axis=None)
    if np.isfinite(total):
        return False
    return not bool(np.isfinite(value).all())


def _keys_problem(keys: Iterable[str], template_keys: Iterable[str]) -> str | None:
    keys, template_keys = set(keys), set(template_keys)
    missing = template_keys - keys
    if missing:
        return f"missing keys: {_list_some(missing)}"
    extra = keys - template_keys
    if extra:
        return f"unexpected keys: {_list_some(extra)}"
    return None


def _array_types_problem(state: Mapping[str, object]) -> str | None:
    for key, value in state.items():
        if not isinstance(value, np.ndarray):
            return f"{key!r} is a {type(value).__name__}, not a numpy array"
        if value.dtype != ACCEPTED_DTYPE:
            return f"{key!r} has dtype {value.dtype}; replies must be float32 after decoding"
    return None


def _dense_shapes_problem(state: Mapping[str, np.ndarray], template: Mapping[str, np.ndarray]) -> str | None:
    for key in dense_keys(template.keys()):
        if state[key].shape != template[key].shape:
            return f"dense tensor {key!r} has shape {state[key].shape}, expected {template[key].shape}"
    return None


def _lora_shapes_problem(
    state: Mapping[str, np.ndarray],
    template: Mapping[str, np.ndarray],
    r_max: int,
    expected_rank: int | None,
) -> str | None:
    ranks: dict[int, str] = {}  # rank -> first module seen at that rank
    for prefix, (a_key, b_key) in lora_pairs(template.keys()).items():
        problem = _pair_problem(prefix, state[a_key], state[b_key], template[a_key], template[b_key], r_max)
        if problem is not None:
            return problem
        ranks.setdefault(state[a_key].shape[0], prefix)
    if len(ranks) > 1:
        seen = ", ".join(f"{rank} ({prefix!r})" for rank, prefix in sorted(ranks.items()))
        return f"LoRA pairs disagree on the rank: {seen}"
    if expected_rank is not None and ranks and next(iter(ranks)) != expected_rank:
        return f"reply is at rank {next(iter(ranks))}, but the client was assigned {expected_rank}"
    return None


def _pair_problem(
    prefix: str,
    a: np.ndarray,
    b: np.ndarray,
    template_a: np.ndarray,
    template_b: np.ndarray,
    r_max: int,
) -> str | None:
    """One LoRA pair: A is (r, in_features), B is (out_features, r), 1 <= r <= r_max."""
    if a.ndim != 2 or b.ndim != 2:
        return f"LoRA factors of {prefix!r} must be 2-D, got A {a.shape} and B {b.shape}"
    rank = a.shape[0]
    if b.shape[1] != rank:
        return f"LoRA pair {prefix!r} is inconsistent: A has {rank} rows, B has {b.shape[1]} columns"
    if rank == 0:
        return f"LoRA pair {prefix!r} has rank 0"
    if rank > r_max:
        return f"LoRA pair {prefix!r} has rank {rank}, above r_max={r_max}"
    if a.shape[1] != template_a.shape[1]:
        return f"LoRA A of {prefix!r} has in_features {a.shape[1]}, expected {template_a.shape[1]}"
    if b.shape[0] != template_b.shape[0]:
        return f"LoRA B of {prefix!r} has out_features {b.shape[0]}, expected {template_b.shape[0]}"
    return None


def _list_some(keys: set[str]) -> str:
    shown = sorted(keys)[:_MAX_KEYS_LISTED]
    more = len(keys) - len(shown)
    return ", ".join(repr(k) for k in shown) + (f" (and {more} more)" if more else "")
