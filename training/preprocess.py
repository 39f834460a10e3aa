"""Torch pre-processing: ImageNet normalisation and padding to a multiple of 16 (and back).

The padding rule itself (left/top get floor(diff / 2)) lives once, in ``vosrt.sdk.preprocess``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vosrt.sdk.preprocess import IMAGENET_MEAN, IMAGENET_STD, pad_amounts


def normalize(image: torch.Tensor) -> torch.Tensor:
    """RGB ``[B, 3, H, W]`` in [0, 1] -> ImageNet-normalised ``(image − mean) / std``."""
    mean = image.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = image.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (image - mean) / std


def pad_to_multiple(x: torch.Tensor, multiple: int = 16) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Zero-pad the last two dimensions of ``[..., H, W]`` up to multiples of ``multiple``.

    Returns the padded tensor and ``pads`` = (left, right, top, bottom) for :func:`unpad`.
    """
    pads = pad_amounts(x.shape[-2], x.shape[-1], multiple)
    if any(pads):
        x = F.pad(x, pads)  # F.pad's order for the last two dims is exactly (left, right, top, bottom)
    return x, pads


def unpad(x: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    """Undo :func:`pad_to_multiple`: crop ``pads`` = (left, right, top, bottom) off ``[..., H, W]``."""
    left, right, top, bottom = pads
    height, width = x.shape[-2], x.shape[-1]
    return x[..., top:height - bottom, left:width - right]
