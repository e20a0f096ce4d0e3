"""Reply validation: one test per rejection reason, and valid replies pass."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flq.strategy.validation import validate_update

Q_A, Q_B = "layers.0.q_proj.lora_A.weight", "layers.0.q_proj.lora_B.weight"
K_A, K_B = "layers.0.k_proj.lora_A.weight", "layers.0.k_proj.lora_B.weight"
HEAD = "score.weight"
R_MAX = 4


def adapter(rank: int) -> dict[str, np.ndarray]:
    """q: 6 -> 6 features, k: 6 -> 3 features, head (2, 6); every value finite float32."""
    rng = np.random.default_rng(rank)
    shapes = {Q_A: (rank, 6), Q_B: (6, rank), K_A: (rank, 6), K_B: (3, rank), HEAD: (2, 6)}
    return {key: rng.standard_normal(shape).astype(np.float32) for key, shape in shapes.items()}


TEMPLATE = adapter(R_MAX)


def reply(rank: int = 2, **replaced) -> dict[str, object]:
    state: dict[str, object] = adapter(rank)
    state.update(replaced)
    return state


@pytest.mark.parametrize("rank", range(1, R_MAX + 1))
def test_valid_reply_at_any_rank_up_to_r_max_passes(rank):
    assert validate_update(reply(rank), TEMPLATE, R_MAX) is None


def test_valid_reply_with_its_assigned_rank_and_example_count_passes():
    assert validate_update(reply(3), TEMPLATE, R_MAX, expected_rank=3, num_examples=np.int64(12)) is None


def test_not_a_mapping():
    assert "not a mapping" in validate_update([1, 2], TEMPLATE, R_MAX)


def test_missing_key():
    state = reply()
    del state[K_B]
    assert validate_update(state, TEMPLATE, R_MAX) == f"missing keys: {K_B!r}"


def test_extra_key():
    state = reply(**{"layers.0.v_proj.lora_A.weight": np.zeros((2, 6), np.float32)})
    assert "unexpected keys: 'layers.0.v_proj.lora_A.weight'" == validate_update(state, TEMPLATE, R_MAX)


def test_many_missing_keys_are_summarised():
    reason = validate_update({}, TEMPLATE, R_MAX)
    assert reason.startswith("missing keys:") and "(and 2 more)" in reason


def test_value_that_is_not_an_array():
    reason = validate_update(reply(**{HEAD: [[0.0] * 6] * 2}), TEMPLATE, R_MAX)
    assert reason == f"{HEAD!r} is a list, not a numpy array"


@pytest.mark.parametrize("dtype", [np.float16, np.float64, np.int32, object])
def test_dtype_other_than_float32(dtype):
    state = reply()
    state[Q_A] = state[Q_A].astype(dtype)
    reason = validate_update(state, TEMPLATE, R_MAX)
    assert Q_A in reason and "float32" in reason


def test_dense_shape_mismatch():
    reason = validate_update(reply(**{HEAD: np.zeros((3, 6), np.float32)}), TEMPLATE, R_MAX)
    assert reason == f"dense tensor {HEAD!r} has shape (3, 6), expected (2, 6)"


@pytest.mark.parametrize("shape", [(12,), (2, 6, 1)])
def test_lora_factor_that_is_not_2d(shape):
    reason = validate_update(reply(**{Q_A: np.zeros(shape, np.float32)}), TEMPLATE, R_MAX)
    assert "must be 2-D" in reason and "layers.0.q_proj" in reason


def test_pair_whose_factors_disagree_on_the_rank():
    reason = validate_update(reply(**{Q_B: np.zeros((6, 3), np.float32)}), TEMPLATE, R_MAX)
    assert "A has 2 rows, B has 3 columns" in reason


def test_zero_rank():
    reason = validate_update(reply(0), TEMPLATE, R_MAX)
    assert reason.endswith("has rank 0")


def test_rank_above_r_max():
    reason = validate_update(reply(R_MAX + 1), TEMPLATE, R_MAX)
    assert f"has rank {R_MAX + 1}, above r_max={R_MAX}" in reason


def test_pairs_at_different_ranks():
    state = reply(2)
    high = adapter(3)
    state[K_A], state[K_B] = high[K_A], high[K_B]
    assert validate_update(state, TEMPLATE, R_MAX) == (
        "LoRA pairs disagree on the rank: 2 ('layers.0.q_proj'), 3 ('layers.0.k_proj')"
    )


def test_rank_other_than_the_assigned_one():
    reason = validate_update(reply(2), TEMPLATE, R_MAX, expected_rank=3)
    assert reason == "reply is at rank 2, but the client was assigned 3"


def test_wrong_in_features():
    reason = validate_update(reply(**{K_A: np.zeros((2, 5), np.float32)}), TEMPLATE, R_MAX)
    assert reason == "LoRA A of 'layers.0.k_proj' has in_features 5, expected 6"


def test_wrong_out_features():
    reason = validate_update(reply(**{K_B: np.zeros((6, 2), np.float32)}), TEMPLATE, R_MAX)
    assert reason == "LoRA B of 'layers.0.k_proj' has out_features 6, expected 3"


@pytest.mark.parametrize("key", [Q_A, K_B, HEAD])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_value(key, bad):
    state = reply()
    state[key] = state[key].copy()
    state[key].flat[-1] = bad
    reason = validate_update(state, TEMPLATE, R_MAX)
    assert reason.startswith(f"{key!r} holds 1 non-finite value(s)")


def test_huge_but_finite_values_are_not_mistaken_for_inf():
    # Their sum overflows float32, which must not count as a non-finite value.
    state = reply(**{HEAD: np.full((2, 6), 3e38, np.float32)})
    assert validate_update(state, TEMPLATE, R_MAX) is None


@pytest.mark.parametrize("num_examples", [0, -3, 2.5, True, "10"])
def test_example_count_that_is_not_a_positive_integer(num_examples):
    reason = validate_update(reply(), TEMPLATE, R_MAX, num_examples=num_examples)
    assert reason.startswith("num_examples must be a positive integer")


@settings(max_examples=40, deadline=None)
@given(
    rank=st.integers(1, R_MAX),
    key=st.sampled_from([Q_A, Q_B, K_A, K_B, HEAD]),
    position=st.integers(0, 10_000),
    bad=st.sampled_from([np.nan, np.inf, -np.inf]),
)
def test_one_non_finite_value_anywhere_is_found(rank, key, position, bad):
    state = reply(rank)
    assert validate_update(state, TEMPLATE, R_MAX) is None
    state[key] = state[key].copy()
    state[key].flat[position % state[key].size] = bad
    assert validate_update(state, TEMPLATE, R_MAX).startswith(f"{key!r} holds 1 non-finite")
