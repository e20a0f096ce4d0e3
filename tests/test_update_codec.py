"""Quantization schemes, whole-adapter encoding, sizes, and error feedback."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flq.codec.array_codec import CodecError, DecodeLimits, Scheme, read_header, unpack_tensor
from flq.codec.update_codec import (
    DEFAULT_BLOCK_SIZE,
    SCHEMES,
    ErrorFeedback,
    bytes_per_element,
    compensate,
    decode_adapter,
    decode_tensor,
    dequantize,
    encode_adapter,
    encode_tensor,
    encode_with_feedback,
    encoded_nbytes,
    quantize,
)

# Relative slack over the ideal scale/2 bound: x * (1/scale) and q * scale each round once.
ROUNDING_SLACK = 1e-4


def block_scale_per_element(data: bytes) -> np.ndarray:
    """The stored scale of each element's block, read back from the encoding."""
    parts = unpack_tensor(data)
    return np.repeat(parts.scales, parts.block_size)[: parts.numel].reshape(parts.shape)


def assert_within_half_step(x: np.ndarray, data: bytes) -> None:
    decoded = decode_tensor(data)
    scale = block_scale_per_element(data)
    bound = scale * (0.5 + ROUNDING_SLACK)
    assert np.all(np.abs(decoded - x) <= bound), float(np.max(np.abs(decoded - x) - bound))


def smollm2_like_adapter(rank: int, seed: int = 0, fresh: bool = False) -> dict[str, np.ndarray]:
    """Two SmolLM2-135M layers' LoRA tensors on q, k, v, o (hidden 576, k/v out 192)."""
    rng = np.random.default_rng(seed)
    out = {}
    for layer in range(2):
        for proj, out_features in (("q", 576), ("k", 192), ("v", 192), ("o", 576)):
            prefix = f"model.layers.{layer}.self_attn.{proj}_proj"
            out[f"{prefix}.lora_A.weight"] = rng.normal(0, 0.02, size=(rank, 576)).astype(np.float32)
            b = np.zeros((out_features, rank)) if fresh else rng.normal(0, 1e-3, size=(out_features, rank))
            out[f"{prefix}.lora_B.weight"] = b.astype(np.float32)
    return out


# --------------------------------------------------------------------------- round trips per scheme


@pytest.fixture(scope="module")
def dense() -> np.ndarray:
    return np.random.default_rng(0).normal(0, 0.01, size=(192, 64)).astype(np.float32)


def test_fp32_is_exact(dense):
    assert np.array_equal(decode_tensor(encode_tensor(dense, "fp32")), dense)


def test_fp16_matches_numpy_half(dense):
    decoded = decode_tensor(encode_tensor(dense, "fp16"))
    assert np.array_equal(decoded, dense.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_int_schemes_stay_within_half_a_step(dense, scheme):
    data = encode_tensor(dense, scheme)
    assert read_header(data).block_size == DEFAULT_BLOCK_SIZE[Scheme[scheme.upper()]]
    assert_within_half_step(dense, data)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_scales_are_block_absmax_over_qmax(dense, scheme):
    parts = quantize(dense, scheme, block_size=64)
    qmax = 127 if scheme == "int8" else 7
    expected = np.abs(dense.reshape(-1, 64)).max(axis=1) / qmax
    assert np.allclose(parts.scales, expected, rtol=1e-6)


def test_int8_levels_use_the_full_range(dense):
    levels = np.frombuffer(quantize(dense, "int8").payload, np.int8)
    assert levels.max() == 127 or levels.min() == -127


def test_int4_levels_are_packed_two_per_byte():
    x = np.array([1.0, -1.0, 0.0, 7.0, -7.0], np.float32)  # absmax 7 -> scale 1
    parts = quantize(x, "int4", block_size=8)
    assert parts.scales.tolist() == [1.0]
    # q + 8 per nibble, element 2i low: (9, 7) (8, 15) (1, pad 8)
    assert bytes(parts.payload) == bytes([9 | 7 << 4, 8 | 15 << 4, 1 | 8 << 4])
    assert decode_tensor(encode_tensor(x, "int4", block_size=8)).tolist() == x.tolist()


def test_decode_returns_fresh_writeable_float32(dense):
    for scheme in SCHEMES:
        data = encode_tensor(dense, scheme)
        out = decode_tensor(data)
        assert out.dtype == np.float32 and out.flags.writeable and out.flags.c_contiguous
        out[...] = 0  # must not touch the encoded bytes
        assert not np.all(decode_tensor(data) == 0)


def test_zero_and_constant_tensors_round_trip_exactly():
    for scheme in ("int8", "int4"):
        assert np.array_equal(decode_tensor(encode_tensor(np.zeros((3, 5), np.float32), scheme)), np.zeros((3, 5)))
        const = np.full((4, 6), -0.75, np.float32)
        assert np.array_equal(decode_tensor(encode_tensor(const, scheme)), const)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("shape", [(), (0,), (1,), (3, 0)])
def test_scalar_and_empty_tensors_keep_their_shape(scheme, shape):
    x = np.full(shape, 1.5, np.float32)
    decoded = decode_tensor(encode_tensor(x, scheme))
    assert decoded.shape == shape and np.array_equal(decoded, x)


def test_float64_input_is_encoded_as_float32():
    x = np.linspace(-1, 1, 11)
    assert np.array_equal(decode_tensor(encode_tensor(x, "fp32")), x.astype(np.float32))


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_input_is_refused(scheme, bad):
    with pytest.raises(ValueError, match="NaN"):
        encode_tensor(np.array([0.0, bad], np.float32), scheme)


def test_fp16_overflow_is_refused_not_sent_as_inf():
    with pytest.raises(ValueError, match="65504"):
        encode_tensor(np.array([1e5], np.float32), "fp16")


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="floating"):
        encode_tensor(np.arange(4), "int8")
    with pytest.raises(ValueError, match="block_size"):
        encode_tensor(np.ones(4, np.float32), "int8", block_size=0)
    with pytest.raises(ValueError, match="unknown update codec scheme"):
        encode_tensor(np.ones(4, np.float32), "int2")


def test_int4_nonzero_padding_nibble_is_rejected():
    data = bytearray(encode_tensor(np.ones(3, np.float32), "int4", lz4=False))
    data[-1] |= 0xF0  # the high nibble of the last byte pads the odd third element
    with pytest.raises(CodecError, match="padding nibble"):
        decode_tensor(bytes(data))


# --------------------------------------------------------------------------- property tests

magnitudes = st.sampled_from([0.0, 1e-40, 1e-30, 1e-6, 1.0, 1e6, 1e30])


@st.composite
def float_tensors(draw):
    shape = draw(
        st.one_of(
            hnp.array_shapes(min_dims=1, max_dims=1, max_side=300),
            hnp.array_shapes(min_dims=2, max_dims=2, max_side=40),
        )
    )
    scale = draw(magnitudes)
    kind = draw(st.sampled_from(["normal", "constant_rows", "sparse", "elements"]))
    if kind == "elements":
        finite = st.floats(-(2.0**100), 2.0**100, allow_nan=False, width=32)
        return draw(hnp.arrays(np.float32, shape, elements=finite))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.normal(size=shape)
    if kind == "constant_rows":
        x = np.repeat(x.reshape(shape[0], -1)[:, :1], int(np.prod(shape[1:])), axis=1).reshape(shape)
    elif kind == "sparse":
        x = np.where(rng.random(shape) < 0.9, 0.0, x)
    return (x * scale).astype(np.float32)


@settings(max_examples=120, deadline=None)
@given(x=float_tensors(), scheme=st.sampled_from(["int8", "int4"]), block=st.integers(1, 300))
def test_property_int_round_trip_error_bound(x, scheme, block):
    data = encode_tensor(x, scheme, block_size=block)
    decoded = decode_tensor(data)
    assert decoded.shape == x.shape and decoded.dtype == np.float32
    assert_within_half_step(x, data)


@settings(max_examples=60, deadline=None)
@given(x=float_tensors(), scheme=st.sampled_from(SCHEMES))
def test_property_every_scheme_round_trips_shape_and_zeros(x, scheme):
    if scheme == "fp16":
        x = np.clip(x, -6e4, 6e4)
    decoded = decode_tensor(encode_tensor(x, scheme))
    assert decoded.shape == x.shape and decoded.dtype == np.float32
    assert np.all(decoded[x == 0] == 0)
    if scheme == "fp32":
        assert np.array_equal(decoded, x)


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(("scheme", "min_ratio"), [("fp16", 1.99), ("int8", 3.9), ("int4", 7.0)])
def test_adapter_compression_ratio_against_fp32(scheme, min_ratio):
    adapter = smollm2_like_adapter(rank=8)
    fp32 = encoded_nbytes(encode_adapter(adapter, "fp32"))
    assert encoded_nbytes(encode_adapter(adapter, scheme)) < fp32 / min_ratio


def test_int8_on_a_realistic_2d_tensor_is_3_9x_smaller():
    x = np.random.default_rng(5).normal(0, 0.02, size=(8, 576)).astype(np.float32)  # a LoRA A at r=8
    assert len(encode_tensor(x, "int8")) < len(encode_tensor(x, "fp32")) / 3.9


def test_dense_quantized_payloads_skip_lz4_and_zero_b_uses_it():
    adapter = smollm2_like_adapter(rank=8, fresh=True)
    for scheme in SCHEMES:
        encoded = encode_adapter(adapter, scheme)
        for key, data in encoded.items():
            assert read_header(data).compressed == key.endswith("lora_B.weight"), (scheme, key)
        without = encode_adapter(adapter, scheme, lz4=False)
        assert encoded_nbytes(encoded) < encoded_nbytes(without)


# --------------------------------------------------------------------------- whole adapters


def test_adapter_round_trip_keeps_keys_shapes_and_bounds():
    adapter = smollm2_like_adapter(rank=4)
    encoded = encode_adapter(adapter, "int8")
    decoded = decode_adapter(encoded)
    assert decoded.keys() == adapter.keys()
    for key in adapter:
        assert_within_half_step(adapter[key], encoded[key])


def test_adapter_limits_on_count_and_total_size():
    encoded = encode_adapter(smollm2_like_adapter(rank=4), "int8")
    with pytest.raises(CodecError, match="16 tensors"):
        decode_adapter(encoded, DecodeLimits(max_tensors=15))
    total = sum(read_header(d).numel for d in encoded.values())
    with pytest.raises(CodecError, match=f"{total} elements in all"):
        decode_adapter(encoded, DecodeLimits(max_total_elements=total - 1))


# --------------------------------------------------------------------------- error feedback


def test_feedback_residual_is_exactly_what_was_not_sent():
    update = smollm2_like_adapter(rank=4, seed=1)
    residuals = {k: v * 0.1 for k, v in smollm2_like_adapter(rank=4, seed=2).items()}
    encoded, fresh = encode_with_feedback(update, residuals, "int4")
    for key in update:
        sent = decode_tensor(encoded[key])
        assert np.array_equal(sent + fresh[key], update[key] + residuals[key])


def run_rounds(true_updates, scheme, use_feedback):
    """Largest |sum(sent) - sum(true)| seen after each round, and the largest one-step bound."""
    feedback = ErrorFeedback()
    true_sum = np.zeros_like(true_updates[0])
    sent_sum = np.zeros_like(true_updates[0])
    gaps, step_bounds = [], []
    for g in true_updates:
        if use_feedback:
            data = feedback.encode({"w": g}, scheme)["w"]
        else:
            data = encode_tensor(g, scheme)
        true_sum += g
        sent_sum += decode_tensor(data)
        gaps.append(float(np.max(np.abs(sent_sum - true_sum))))
        step_bounds.append(float(np.max(block_scale_per_element(data))) * (0.5 + ROUNDING_SLACK))
    return np.array(gaps), max(step_bounds)


def test_error_feedback_keeps_the_running_sum_within_one_step():
    rng = np.random.default_rng(7)
    base = rng.normal(0, 1e-3, size=(64, 96)).astype(np.float32)  # a persistent update direction
    updates = [(base + rng.normal(0, 1e-4, size=base.shape)).astype(np.float32) for _ in range(100)]

    with_ef, bound = run_rounds(updates, "int4", use_feedback=True)
    without_ef, _ = run_rounds(updates, "int4", use_feedback=False)

    float_noise = 1e-5 * float(np.max(np.abs(np.sum(updates, axis=0))))
    assert with_ef.max() <= bound + float_noise
    assert without_ef[-1] > 10 * with_ef.max()  # rounding bias piles up without feedback
    assert without_ef[-1] > 5 * without_ef[9]


def test_error_feedback_state_round_trips_and_carries_absent_keys():
    feedback = ErrorFeedback()
    update = smollm2_like_adapter(rank=4, seed=3)
    feedback.encode(update, "int8")
    stored = feedback.to_arrays()
    assert stored.keys() == update.keys() and all(v.dtype == np.float32 for v in stored.values())
    assert any(np.any(v != 0) for v in stored.values())

    restored = ErrorFeedback(stored)
    one_key = next(iter(update))
    a = restored.encode({one_key: update[one_key]}, "int8")
    b = ErrorFeedback(stored).encode({one_key: update[one_key]}, "int8")
    assert a == b  # same state, same bytes
    others = {k: v for k, v in restored.to_arrays().items() if k != one_key}
    assert all(np.array_equal(others[k], stored[k]) for k in others)


def test_error_feedback_refuses_a_residual_of_another_rank():
    with pytest.raises(ValueError, match="truncate/pad"):
        compensate({"x.lora_A.weight": np.ones((4, 8), np.float32)}, {"x.lora_A.weight": np.ones((8, 8), np.float32)})


def test_fp32_feedback_leaves_no_residual():
    update = smollm2_like_adapter(rank=2, seed=4)
    _, residuals = encode_with_feedback(update, {}, "fp32")
    assert all(not np.any(r) for r in residuals.values())


def test_dequantize_of_quantize_matches_decode(dense):
    for scheme in SCHEMES:
        assert np.array_equal(dequantize(quantize(dense, scheme)), decode_tensor(encode_tensor(dense, scheme)))


@pytest.mark.parametrize("scheme", ["fp32", "fp16", "int8", "int4"])
def test_bytes_per_element_is_what_an_encoded_tensor_carries(scheme):
    # The scheduler's wire-size prior reads this figure: it must be the codec's own, scales included.
    numel = 512 * 128 * 4
    x = np.random.default_rng(0).normal(size=numel).astype(np.float32)
    encoded = encode_adapter({"x": x}, scheme, lz4=False)
    header = len(encode_adapter({"x": x[:0]}, scheme, lz4=False)["x"])
    assert (encoded_nbytes(encoded) - header) / numel == pytest.approx(bytes_per_element(scheme), abs=1e-4)
