"""Cost estimates read the model's shape from its safetensors header, whatever its block naming."""

import pytest

from flq.task.cost import estimate_step_seconds, is_block_linear, model_shape
from flq.task.model_cache import resolve_model


@pytest.mark.parametrize(
    "name, shape, linear",
    [
        ("model.layers.3.self_attn.q_proj.weight", (576, 576), True),  # Llama / SmolLM2
        ("encoder.layer.3.attention.self.query.weight", (384, 384), True),  # BERT / MiniLM
        ("h.3.attn.c_attn.weight", (768, 2304), True),  # GPT-2
        ("encoder.layer.3.attention.output.LayerNorm.weight", (384,), False),  # norms: 1-D, any case
        ("model.layers.3.input_layernorm.weight", (576,), False),
        ("encoder.layer.3.attention.self.query.bias", (384,), False),
        ("embeddings.word_embeddings.weight", (30522, 384), False),  # outside the blocks
        ("model.embed_tokens.weight", (49152, 576), False),
        ("encoder.layer.3.conv.weight", (64, 32, 3, 3), False),  # a convolution is not a linear layer
        ("classifier.weight", (5, 384), False),
    ],
)
def test_block_linear_weights_by_name_and_shape(name, shape, linear):
    assert is_block_linear(name, shape) is linear


def test_minilm_has_the_linear_parameters_of_its_six_blocks():
    # Each block: query, key, value, attention output (384 x 384) and the 384 <-> 1536 feed-forward pair.
    shape = model_shape(resolve_model("minilm-l6"))
    assert shape.linear_params == 6 * (4 * 384 * 384 + 2 * 384 * 1536)
    assert (shape.hidden, shape.layers) == (384, 6)
    assert estimate_step_seconds(shape, 16, 8, 64) > 0  # the schedulers' step-time prior is not zero
