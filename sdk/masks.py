"""Label maps as PNG files, with ids kept exact however large they grow.

- ids 0..255: a DAVIS-style palette PNG (pixel value = object id; viewers show the DAVIS colours);
- ids up to 65,535: a 16-bit grey-scale PNG (pixel value = id);
- larger ids (track ids on an endless stream): an RGB PNG with id = R + 256·G + 65536·B (the COCO
  panoptic encoding, up to 2^24 − 1), marked by a ``vosrt-ids: rgb24`` text chunk so that it is never
  confused with a colour image.

:func:`read_label_png` reads all three back (uint8 when every id fits, else uint16 / uint32).
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from vosrt.sdk.errors import UserError

RGB24_KEY, RGB24_VALUE = "vosrt-ids", "rgb24"   # text chunk marking an RGB-encoded label map
MAX_ID = (1 << 24) - 1


def davis_palette() -> np.ndarray:
    """The 256-entry DAVIS / PASCAL VOC colour palette, ``[256, 3]`` uint8 (id 0 black, 1 red, 2 green…); a copy
    of the one built at import (building it took 0.4 ms, twice a frame in ``vosrt run``)."""
    return _PALETTE.copy()


def _build_palette() -> np.ndarray:
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
    palette.setflags(write=False)
    return palette


_PALETTE = _build_palette()
_PALETTE_LIST = _PALETTE.reshape(-1).tolist()   # as PIL's putpalette takes it


def label_colours(labels: np.ndarray) -> np.ndarray:
    """RGB colours ``[..., 3]`` uint8 of label ids: the DAVIS palette for ids 0..255, and for larger ids a
    deterministic colour spread around the hue circle (so a track keeps its colour for the stream)."""
    labels = np.asarray(labels)
    palette = _PALETTE
    if labels.size == 0 or int(labels.max(initial=0)) <= 255:
        return palette[labels.astype(np.intp)]
    ids = labels.astype(np.int64)
    hue = ((ids * 0.6180339887498949) % 1.0).astype(np.float32)  # golden-ratio steps: neighbours differ
    hsv = np.stack([hue * 179, np.full_like(hue, 200), np.full_like(hue, 230)], -1).astype(np.uint8)
    import cv2
    wide = cv2.cvtColor(hsv.reshape(-1, 1, 3), cv2.COLOR_HSV2RGB).reshape(*ids.shape, 3)
    return np.where((ids <= 255)[..., None], palette[np.minimum(ids, 255)], wide)


# zlib's run-length strategy (Z_RLE) for label PNGs: a label map is long runs of one id, and at 480p a palette PNG
# took 0.8 ms instead of 5.5 ms with zlib's default strategy, and was smaller (2.6 kB, not 3.3 kB)
PNG_STRATEGY = zlib.Z_RLE


def write_label_png(path: str | Path, labels: np.ndarray) -> None:
    """Write a ``[H, W]`` label map losslessly (see the module docstring for the format by id range). A boolean
    mask is one object, id 1, as a session takes it."""
    labels = np.asarray(labels)
    if labels.dtype == np.bool_:
        labels = labels.astype(np.uint8)
    if labels.ndim != 2 or labels.size == 0:
        raise UserError(f"label map for {path}: expected a non-empty [H, W] array, got shape {labels.shape}")
    if Path(path).suffix.lower() != ".png":
        raise UserError(f"label map for {path}: the file must be a .png (ids are kept exactly only in a lossless "
                        f"format); name it {Path(path).with_suffix('.png').name}")
    if labels.dtype != np.uint8 and (not np.issubdtype(labels.dtype, np.integer) or
                                     (labels.size and (labels.min() < 0 or labels.max() > MAX_ID))):
        raise UserError(f"label map for {path}: expected integer ids in 0..{MAX_ID}, got dtype {labels.dtype}"
                        + (f" with values {labels.min()}..{labels.max()}" if labels.size else ""))
    top = int(labels.max(initial=0))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if top <= 255:
        image = Image.fromarray(labels.astype(np.uint8), mode="P")
        image.putpalette(_PALETTE_LIST)
        image.save(str(path), compress_type=PNG_STRATEGY)
    elif top <= 65535:
        Image.fromarray(labels.astype(np.uint16)).save(str(path), compress_type=PNG_STRATEGY)  # mode I;16
    else:
        ids = labels.astype(np.uint32)
        rgb = np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], -1).astype(np.uint8)
        info = PngImagePlugin.PngInfo()
        info.add_text(RGB24_KEY, RGB24_VALUE)
        Image.fromarray(rgb, mode="RGB").save(str(path), pnginfo=info, compress_type=PNG_STRATEGY)


def _narrow(ids: np.ndarray) -> np.ndarray:
    top = int(ids.max(initial=0))
    return ids.astype(np.uint8 if top <= 255 else np.uint16 if top <= 65535 else np.uint32)


def read_label_png(path: str | Path, flag: str | None = None) -> np.ndarray:
    """Read a label map. A palette PNG gives its indices (the object ids) exactly; a grey-scale PNG
    (8 or 16 bit) its values; an RGB PNG written by :func:`write_label_png` its encoded ids. Other RGB
    PNGs are rejected, because colours cannot be turned back into ids unambiguously, and so are JPEGs, whose
    compression changes ids. The dtype is uint8
    when every id fits, else uint16 or uint32. ``flag``: the command-line option that named ``path``
    (``--mask``), which the errors then name."""
    path = Path(path)
    what = f"{flag} {path}" if flag else f"mask {path}"
    if not path.is_file():
        raise UserError(f"{what}: no such file" if flag else f"mask file not found: {path}")
    try:
        return _read_label_image(path, what)
    except UserError:
        raise
    except Image.DecompressionBombError as err:   # a traceback before; PIL refuses what would take gigabytes
        raise UserError(f"{what}: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:   # PIL: not an image, truncated, corrupt chunks
        raise UserError(f"{what}: cannot read it as a PNG ({err}); is the file complete?") from None


def _read_label_image(path: Path, what: str) -> np.ndarray:
    with Image.open(path) as image:
        image.load()
        if image.format in ("JPEG", "MPO"):
            # A JPEG's compression moves values: a 0/1 mask comes back with 2s, 3s, 254s... as extra objects.
            raise UserError(f"{what}: a JPEG cannot hold a label map (its lossy compression changes the ids "
                            "along every edge); give the mask as a PNG (a palette or grey-scale one)")
        if image.mode == "P" or image.mode == "L":
            return np.array(image, dtype=np.uint8)
        if image.mode in ("1", "I", "I;16", "I;16B"):
            values = np.array(image).astype(np.int64)
            if values.min(initial=0) < 0:
                raise UserError(f"{what}: negative values in a label map")
            return _narrow(values)
        if image.mode == "RGB" and image.info.get(RGB24_KEY) == RGB24_VALUE:
            rgb = np.array(image).astype(np.uint32)
            return _narrow(rgb[..., 0] | (rgb[..., 1] << 8) | (rgb[..., 2] << 16))
        raise UserError(
            f"{what}: expected a palette (P) or grey-scale (L) PNG of object ids, got mode {image.mode}; "
            "save masks as DAVIS-style palette PNGs")
