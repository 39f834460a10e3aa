"""Pre-processing shared by every layer: ImageNet normalisation constants and the pad-to-multiple rule.

The torch versions in ``vosrt.training`` call :func:`pad_amounts` so that the padding rule exists once.
"""
from __future__ import annotations

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def pad_amounts(height: int, width: int, multiple: int = 16) -> tuple[int, int, int, int]:
    """Padding (left, right, top, bottom) that brings ``height × width`` to a multiple of ``multiple``.

    Left/top get floor(diff / 2), right/bottom the rest, as STCN pads.
    """
    new_h = -(-height // multiple) * multiple
    new_w = -(-width // multiple) * multiple
    dh, dw = new_h - height, new_w - width
    return dw // 2, dw - dw // 2, dh // 2, dh - dh // 2


def normalize(image: np.ndarray) -> np.ndarray:
    """RGB float image in [0, 1], channels first ``[..., 3, H, W]`` -> ImageNet-normalised float32."""
    mean = np.asarray(IMAGENET_MEAN, np.float32).reshape(3, 1, 1)
    std = np.asarray(IMAGENET_STD, np.float32).reshape(3, 1, 1)
    return ((image.astype(np.float32) - mean) / std).astype(np.float32)
