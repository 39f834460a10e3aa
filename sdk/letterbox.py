"""Frames in, results out: validation, colour order, and letterboxing to the package resolution.

Graphs take float32 RGB in [0, 1], ``[1, 3, H, W]`` at the package's fixed resolution (the exported
graphs have static image sizes). A frame of any other size is resized keeping its aspect ratio so that
it fits ``H × W``, centred, and padded with ``fill`` (black unless the session asks for another colour:
STCN and STEm-Seg pad with the model's mean colour, which the graph's normalisation turns into 0, as their
public code pads the normalised image with zeros; 3DC-Seg and D²Conv3D pad the [0, 255] image with 0, black);
results are cropped back out of the padding and resized to the frame's own size (label maps nearest-neighbour,
probabilities bilinearly).

Every resize aligns pixel centres, as the frame's area resize and the bilinear probabilities do: label
maps use OpenCV's ``INTER_NEAREST_EXACT``, not ``INTER_NEAREST``, whose samples are taken at the top-left
corner of each source block and so shift a mask by up to half a package pixel down-right of its image
(about 4 pixels of a 1080p frame letterboxed to 224 wide) and by half a frame pixel on the way back.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from vosrt.sdk.errors import FrameError, UserError

COLORS = ("bgr", "rgb")


def check_color(color: str) -> str:
    """Normalise a colour-order argument (``"bgr"`` for OpenCV frames, ``"rgb"`` for PIL/imageio)."""
    value = str(color).lower()
    if value not in COLORS:
        raise UserError(f"color: expected 'bgr' (OpenCV frames) or 'rgb', got {color!r}")
    return value


def check_image(image, name: str = "image") -> np.ndarray:
    """Validate a frame: ``[H, W, 3]`` uint8 (0..255) or float32/float64 with finite values in 0..1.
    Returns it unchanged; anything else raises :class:`~vosrt.sdk.errors.FrameError` (a
    UserError) saying what to pass instead."""
    if not isinstance(image, np.ndarray):
        raise FrameError(f"{name}: expected a numpy array [H, W, 3], got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        hint = " (grey-scale? convert with cv2.cvtColor(img, cv2.COLOR_GRAY2BGR))" if image.ndim == 2 or (
            image.ndim == 3 and image.shape[2] == 1) else (
            " (BGRA/RGBA? drop the alpha channel)" if image.ndim == 3 and image.shape[2] == 4 else "")
        raise FrameError(f"{name}: expected shape [H, W, 3], got {list(image.shape)}{hint}")
    if image.dtype not in (np.uint8, np.float32, np.float64):
        hint = {np.dtype(np.uint16): " (a 16-bit image? convert with (frame >> 8).astype(np.uint8), or "
                                     "frame.astype(np.float32) / 65535)",
                np.dtype(np.float16): " (convert with frame.astype(np.float32))"}.get(image.dtype, "")
        if not hint and image.dtype.kind in "iub":   # other integers (int32/int64 from arithmetic), bool
            hint = " (pixel values 0..255? convert with np.clip(frame, 0, 255).astype(np.uint8))"
        raise FrameError(f"{name}: expected dtype uint8 (0..255) or float32 (0..1), got {image.dtype}{hint}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise FrameError(f"{name}: frame of {image.shape[0]}x{image.shape[1]} pixels is too small")
    if image.dtype != np.uint8:
        # A NaN or Inf reaching a memory frame would blank every later frame; a 0..255 float frame
        # (frame.astype(np.float32)) would be read as saturated white. Both are refused here.
        finite = np.isfinite(image)
        if not finite.all():
            bad = int(image.size - np.count_nonzero(finite))
            raise FrameError(f"{name}: {bad} value(s) of the {image.dtype} frame are NaN or infinite; "
                            "give finite values in 0..1 (or the uint8 frame as decoded)")
        low, high = image.min(), image.max()
        if low < 0.0 or high > 1.0:
            if 2.0 < high <= 255.0 and low >= 0.0:
                hint = (" (0..255 values? pass the uint8 frame as decoded, or divide by 255: "
                        "frame.astype(np.float32) / 255)")
            elif high <= 1.01 and low >= -0.01:   # 0..1 values that rounding took just outside: dividing would blacken
                hint = " (0..1 values rounded just outside? clip them: np.clip(frame, 0, 1))"
            else:
                hint = ""
            # each bound as its own dtype's shortest exact form: 1.0000001 was printed "1", inside the range
            raise FrameError(f"{name}: float frames must hold values in 0..1, got {low!s}..{high!s}{hint}")
    return image


def check_label_map(mask, frame_shape: tuple[int, int], name: str = "mask") -> np.ndarray:
    """Validate a label map for a frame of ``frame_shape`` (H, W): integer ids 0..255, returned as uint8.

    Float arrays are accepted only when every value is a whole number (e.g. a PNG read as float);
    a probability map is refused with a hint to threshold it.
    """
    if not isinstance(mask, np.ndarray):
        raise UserError(f"{name}: expected a numpy array [H, W] of object ids, got {type(mask).__name__}")
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    if mask.ndim != 2:
        raise UserError(f"{name}: expected a [H, W] label map of object ids, got shape {list(mask.shape)} "
                        "(a colour mask? save it as a palette PNG and read it with vosrt.sdk.masks.read_label_png)")
    if tuple(mask.shape) != tuple(frame_shape):
        raise UserError(f"{name}: size {mask.shape[0]}x{mask.shape[1]} (height x width, the array's shape) differs "
                        f"from the frame's {frame_shape[0]}x{frame_shape[1]}; give the mask at the frame's size")
    if mask.dtype == np.bool_:
        return mask.astype(np.uint8)
    if np.issubdtype(mask.dtype, np.floating):
        if not np.all(np.isfinite(mask)) or np.any(mask != np.round(mask)):
            raise UserError(f"{name}: labels must be integer object ids, got non-integer values in a {mask.dtype} "
                            "array (a probability map? threshold it, e.g. (prob > 0.5).astype(np.uint8))")
    elif not np.issubdtype(mask.dtype, np.integer):
        raise UserError(f"{name}: labels must be integer object ids, got dtype {mask.dtype}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise UserError(f"{name}: object ids must be in 0..255 (0 = background), got {mask.min()}..{mask.max()}")
    return mask.astype(np.uint8)


@dataclass(frozen=True)
class Letterbox:
    """The mapping between a frame of ``src`` size and the package's ``dst`` size (both (H, W)); ``fill`` is the
    RGB colour in [0, 1] of the padding around the resized frame (see the module docstring)."""

    src: tuple[int, int]
    dst: tuple[int, int]
    fill: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def inner(self) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the resized frame inside the padded ``dst`` image."""
        (sh, sw), (dh, dw) = self.src, self.dst
        scale = min(dh / sh, dw / sw)
        h = min(dh, max(1, round(sh * scale)))
        w = min(dw, max(1, round(sw * scale)))
        return (dh - h) // 2, (dw - w) // 2, h, w

    @property
    def identity(self) -> bool:
        return self.src == self.dst

    def image(self, image: np.ndarray, color: str = "bgr") -> np.ndarray:
        """A validated frame -> graph input ``[1, 3, H, W]`` float32 RGB in [0, 1]."""
        # One pass from uint8 to scaled float32 (the same rounding as astype, then a multiply); the resize runs
        # in the frame's own channel order (INTER_AREA treats channels alike) and the channels are swapped as the
        # small result is written into the planes: no reversed-stride copy of the full float frame (5 ms at 480p)
        if image.dtype == np.uint8:
            pixels = np.multiply(image, np.float32(1 / 255), dtype=np.float32)
        else:
            pixels = image.astype(np.float32, copy=False)
        out = np.empty((1, 3, *self.dst), np.float32)
        order = (2, 1, 0) if color == "bgr" else (0, 1, 2)
        if self.identity:
            for c in range(3):
                out[0, c] = pixels[:, :, order[c]]
            return out
        top, left, h, w = self.inner
        small = cv2.resize(np.ascontiguousarray(pixels), (w, h), interpolation=cv2.INTER_AREA)
        fill = np.asarray(self.fill, np.float32)
        for c in range(3):
            plane = out[0, c]
            plane[:top] = fill[c]
            plane[top + h:] = fill[c]
            plane[top:top + h, :left] = fill[c]
            plane[top:top + h, left + w:] = fill[c]
            plane[top:top + h, left:left + w] = small[:, :, order[c]]
        return out

    def labels(self, labels: np.ndarray) -> np.ndarray:
        """A frame-size label map -> package size (nearest neighbour; padding is background).

        No id is lost: an object too small to be sampled (under one package pixel) keeps the package pixel
        that most of its pixels fall in, or, where that pixel is another object's only one, the next of its pixels
        that is not, else the nearest such pixel. Dropped, it would be tracked from an empty mask and never found,
        while the frame it was given on showed it."""
        if self.identity:
            return labels
        top, left, h, w = self.inner
        small = cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
        if h < labels.shape[0] or w < labels.shape[1]:
            ids, counts = np.unique(small, return_counts=True)
            held = dict(zip(ids.tolist(), counts.tolist()))          # package pixels of each id
            lost = np.setdiff1d(np.unique(labels), ids)
            for obj in lost[lost != 0].tolist():
                ys, xs = np.nonzero(labels == obj)
                cells = np.bincount((ys * h // labels.shape[0]) * w + xs * w // labels.shape[1])
                cell = _free_cell(small, held, np.argsort(-cells, kind="stable")[:np.count_nonzero(cells)])
                owner = int(small.flat[cell])
                held[owner] -= 1
                small.flat[cell] = obj
                held[obj] = 1
        canvas = np.zeros(self.dst, np.uint8)
        canvas[top:top + h, left:left + w] = small
        return canvas

    def labels_back(self, labels: np.ndarray) -> np.ndarray:
        """A package-size label map ``[H, W]`` -> the frame's size (nearest neighbour)."""
        if self.identity:
            return labels
        top, left, h, w = self.inner
        return cv2.resize(np.ascontiguousarray(labels[top:top + h, left:left + w]), (self.src[1], self.src[0]),
                          interpolation=cv2.INTER_NEAREST_EXACT)

    def probabilities_back(self, prob: np.ndarray) -> np.ndarray:
        """Package-size maps ``[K, H, W]`` float32 -> ``[K, h_frame, w_frame]`` (bilinear)."""
        if self.identity:
            return prob
        top, left, h, w = self.inner
        return np.stack([cv2.resize(np.ascontiguousarray(p[top:top + h, left:left + w]),
                                    (self.src[1], self.src[0]), interpolation=cv2.INTER_LINEAR)
                         for p in prob]) if len(prob) else np.zeros((0, *self.src), np.float32)


def _free_cell(small: np.ndarray, held: dict, cells: np.ndarray) -> int:
    """The first of ``cells`` (flat indices of ``small``, best first) that is background or one of several pixels of
    its object, so that taking it loses no id; where every one is another object's only pixel, the nearest pixel that
    is such (Chebyshev distance to the first cell, the first in row order among equals). ``held``: the pixels of each
    id in ``small``."""
    shared = [i for i, count in held.items() if count > 1]
    free = (small == 0) | np.isin(small, shared)
    for cell in cells.tolist():
        if free.flat[cell]:
            return cell
    ys, xs = np.nonzero(free)
    if not len(ys):
        return int(cells[0])   # more ids than package pixels: one is lost whatever is done
    y0, x0 = divmod(int(cells[0]), small.shape[1])
    nearest = int(np.argmin(np.maximum(np.abs(ys - y0), np.abs(xs - x0))))
    return int(ys[nearest]) * small.shape[1] + int(xs[nearest])
