"""Random-init MobileViT image classifiers that pass signal, saved as ordinary HF folders.

Offline there are no pretrained vision weights, so FLQ's offline image classifier
(``mobilevit-tiny-random``) and the tests' one are MobileViTs with random weights. As
transformers initialises them, every convolution *and every BatchNorm weight* is drawn from
N(0, 0.02) and the running statistics are 0 and 1: activations vanish within a few blocks and
a frozen backbone gives the head nothing to learn from (measured: chance accuracy on digits).
So, as torchvision does, BatchNorm weights start at 1 and biases at 0, and the running
statistics are measured once on seeded uniform-noise images (the range the image processor
produces). The network stays random: what a run learns is LoRA and the head on random
features. Seeded, so every process and machine builds the same backbone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class MobileViTShape:
    image_size: int = 32  # the processor resizes every image to this square
    hidden_sizes: tuple[int, ...] = (32, 48, 64)  # transformer widths of the three MobileViT blocks
    neck_hidden_sizes: tuple[int, ...] = (8, 16, 24, 32, 40, 48, 384)  # conv widths; the last feeds the head
    num_attention_heads: int = 2
    expand_ratio: float = 2.0
    mlp_ratio: float = 2.0


CALIBRATION_IMAGES = 256


def save_random_mobilevit(
    path: Path, shape: MobileViTShape = MobileViTShape(), num_labels: int = 10, seed: int = 0
) -> Path:
    """Build a seeded random MobileViT classifier and its image processor config at ``path``."""
    import torch
    from transformers import MobileViTConfig, MobileViTForImageClassification, MobileViTImageProcessorPil

    config = MobileViTConfig(
        image_size=shape.image_size,
        hidden_sizes=list(shape.hidden_sizes),
        neck_hidden_sizes=list(shape.neck_hidden_sizes),
        num_attention_heads=shape.num_attention_heads,
        expand_ratio=shape.expand_ratio,
        mlp_ratio=shape.mlp_ratio,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        classifier_dropout_prob=0.0,
    )
    torch.manual_seed(seed)
    model = MobileViTForImageClassification(config)
    calibrate_batchnorm(model, shape.image_size, seed)
    model.save_pretrained(path)
    size = shape.image_size
    processor = MobileViTImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    processor.save_pretrained(path)
    return Path(path)


def calibrate_batchnorm(model, image_size: int, seed: int) -> None:
    """BatchNorm weight 1, bias 0, running statistics from one pass over seeded noise images."""
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        torch.nn.init.ones_(norm.weight)
        torch.nn.init.zeros_(norm.bias)
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the calibration pass
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(CALIBRATION_IMAGES, 3, image_size, image_size, generator=generator)
    model.train()
    with torch.no_grad():
        model(pixel_values=images)
    for norm in norms:
        norm.momentum = 0.1  # PyTorch's default again
    model.eval()
