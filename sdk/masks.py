"""DAVIS-style palette PNGs: label maps (uint8 object ids) written and read with ids kept exact."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vosrt.sdk.errors import UserError


def davis_palette() -> np.ndarray:
    """The 256-entry DAVIS / PASCAL VOC colour palette, ``[256, 3]`` uint8 (id 0 black, 1 red, 2 green…)."""
    palette = np.zeros((256, 3), np.uint8)
    for label in range(256):
        r = g = b = 0
        c = label
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette[label] = (r, g, b)
    return palette


def write_label_png(path: str | Path, labels: np.ndarray) -> None:
    """Write a ``[H, W]`` uint8 label map as a palette PNG (pixel value = object id)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise UserError(f"label map for {path}: expected a [H, W] array, got shape {labels.shape}")
    if labels.dtype != np.uint8:
        if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() > 255:
            raise UserError(f"label map for {path}: expected integer ids in 0..255, got dtype {labels.dtype}")
        labels = labels.astype(np.uint8)
    image = Image.fromarray(labels, mode="P")
    image.putpalette(davis_palette().reshape(-1).tolist())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(str(path))


def read_label_png(path: str | Path) -> np.ndarray:
    """Read a label map. A palette PNG gives its indices (the object ids) exactly; a grey-scale PNG its
    values; an RGB PNG is rejected, because colours cannot be turned back into ids unambiguously."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"mask file not found: {path}")
    with Image.open(path) as image:
        if image.mode == "P" or image.mode == "L":
            return np.array(image, dtype=np.uint8)
        if image.mode in ("1", "I", "I;16", "I;16B", "I;16L"):
            ids = np.array(image)
            if ids.size and (ids.min() < 0 or ids.max() > 255):
                # uint8 would wrap them (258 -> 2) and silently merge objects.
                raise UserError(f"mask {path}: object ids must be in 0..255, got {int(ids.min())}..{int(ids.max())} "
                                f"(a {image.mode} PNG); renumber the objects to 1..255")
            return ids.astype(np.uint8)
        raise UserError(
            f"mask {path}: expected a palette (P) or grey-scale (L) PNG of object ids, got mode {image.mode}; "
            "save masks as DAVIS-style palette PNGs")
