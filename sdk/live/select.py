"""From a box (or a click) drawn on a frame to an object mask.

    mask = grabcut_box(frame, (x, y, w, h))     # [H, W] bool, the object inside the box
    vosrt live PKG --source 0 --box-segmenter mypackage.sam:box_to_mask   # use your own

A *box segmenter* is any function ``(frame [H, W, 3] uint8 BGR, box (x, y, w, h) in pixels) -> [H, W]
bool mask``. The default runs OpenCV's GrabCut initialised with the box (outside is background),
which needs no model and suits an object that stands out from its surroundings; a user with a
promptable segmenter (SAM and the like) passes theirs with ``--box-segmenter module:function`` or
``LivePipeline(box_segmenter=...)``. A click becomes a box centred on it (:func:`box_around`).
"""
from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from collections.abc import Callable

import cv2
import numpy as np

from vosrt.sdk.errors import UserError

BoxSegmenter = Callable[[np.ndarray, tuple], np.ndarray]


def clip_box(box, frame_shape) -> tuple[int, int, int, int]:
    """``box`` (x, y, w, h), rounded and clipped to a frame of ``frame_shape`` (H, W, ...); UserError
    when nothing of it is inside the frame."""
    height, width = frame_shape[:2]
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        raise UserError(f"box: expected four numbers x, y, w, h, got {box!r}") from None
    if not all(math.isfinite(v) for v in (x, y, w, h, x + w, y + h)):
        raise UserError(f"box: expected four finite numbers x, y, w, h, got {box!r}")
    x0, y0 = max(0, int(round(x))), max(0, int(round(y)))
    x1, y1 = min(width, int(round(x + w))), min(height, int(round(y + h)))
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise UserError(f"box {box!r}: less than 2×2 pixels of it lie inside the {width}×{height} frame")
    return x0, y0, x1 - x0, y1 - y0


def box_around(x: float, y: float, frame_shape, fraction: float = 0.2) -> tuple[int, int, int, int]:
    """A square box centred on a click, its side ``fraction`` of the frame's shorter side."""
    side = max(8.0, fraction * min(frame_shape[:2]))
    return clip_box((x - side / 2, y - side / 2, side, side), frame_shape)


def grabcut_box(frame: np.ndarray, box, iterations: int = 5, work_size: int = 320) -> np.ndarray:
    """The object inside ``box`` (x, y, w, h) on ``frame`` (BGR uint8) by GrabCut; ``[H, W]`` bool.

    GrabCut runs on the box and a margin around it (half the box's longer side) for the background
    colours, shrunk so that its longer side is at most ``work_size`` pixels: the cost stays the same
    on a 4K camera as on a thumbnail. Falls back to the whole box when GrabCut finds no foreground (a
    box around a flat region)."""
    x, y, w, h = clip_box(box, frame.shape)
    height, width = frame.shape[:2]
    margin = max(w, h) // 2 + 4
    x0, y0 = max(0, x - margin), max(0, y - margin)
    x1, y1 = min(width, x + w + margin), min(height, y + h + margin)
    scale = min(1.0, work_size / max(x1 - x0, y1 - y0))
    crop = np.ascontiguousarray(frame[y0:y1, x0:x1, :3], dtype=np.uint8)
    if scale < 1.0:
        crop = cv2.resize(crop, (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))),
                          interpolation=cv2.INTER_AREA)
    rect = (int((x - x0) * scale), int((y - y0) * scale), max(1, int(w * scale)), max(1, int(h * scale)))
    mask = np.zeros(crop.shape[:2], np.uint8)
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(crop, mask, rect, background, foreground, iterations, cv2.GC_INIT_WITH_RECT)
        inside = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8)
    except cv2.error:   # a box covering the whole frame leaves GrabCut no background sample
        inside = np.zeros(crop.shape[:2], np.uint8)
    if scale < 1.0:
        inside = cv2.resize(inside, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST_EXACT)
    found = np.zeros(frame.shape[:2], bool)
    found[y0:y1, x0:x1] = inside.astype(bool)
    found[:y, :] = found[y + h:, :] = False      # nothing outside the box (resizing may spill a pixel)
    found[:, :x] = found[:, x + w:] = False
    if not found.any():
        found[y:y + h, x:x + w] = True
    return found


def load_segmenter(spec: str) -> BoxSegmenter:
    """The function named by ``module:function`` (``--box-segmenter``); the module is found on the
    Python path or in the current folder (a ``vosrt`` console script's path does not hold it)."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise UserError(f"--box-segmenter: expected module:function, got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())   # after the installed modules: a file here shadows none of them
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise UserError(f"--box-segmenter {spec}: cannot load it ({err})") from None
    if not callable(function):
        raise UserError(f"--box-segmenter {spec}: {name} is not a function")
    return function


def masks_from_boxes(frame: np.ndarray, boxes: list[tuple[int, tuple]],
                     segmenter: BoxSegmenter = grabcut_box) -> np.ndarray:
    """One label map from ``[(object id, box), ...]`` on ``frame``: each box's mask from ``segmenter``,
    later boxes drawn over earlier ones where they overlap. ``[H, W]`` uint8."""
    labels = np.zeros(frame.shape[:2], np.uint8)
    for object_id, box in boxes:
        found = np.asarray(segmenter(frame, box))
        if found.shape != frame.shape[:2]:
            raise UserError(f"box segmenter returned a mask of shape {found.shape}; expected {frame.shape[:2]}")
        labels[found.astype(bool)] = object_id
    return labels


def parse_box(text: str) -> tuple[int, int, int, int]:
    """``X,Y,W,H`` -> four whole numbers, W and H positive. An ``argparse`` type (the samples' ``--box``):
    bad text raises ``argparse.ArgumentTypeError``, reported as that flag's error before anything opens."""
    try:
        box = tuple(int(v) for v in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4 or box[2] <= 0 or box[3] <= 0:
        raise argparse.ArgumentTypeError(f"expected four whole numbers X,Y,W,H with W, H > 0, got {text!r}")
    return box


def parse_box_select(text: str) -> tuple[tuple[int, int, int, int], int | None]:
    """``box:X,Y,W,H[:ID]`` (``--select``) -> ((x, y, w, h), id or None)."""
    kind, _, rest = text.partition(":")
    if kind != "box" or not rest:
        raise UserError(f"--select {text}: expected box:X,Y,W,H or box:X,Y,W,H:ID")
    numbers, _, object_id = rest.partition(":")
    try:
        box = parse_box(numbers)
    except argparse.ArgumentTypeError as err:
        raise UserError(f"--select {text}: {err}") from None
    try:
        ident = int(object_id) if object_id else None
    except ValueError:
        raise UserError(f"--select {text}: the ID must be a whole number") from None
    if ident is not None and not 1 <= ident <= 255:
        raise UserError(f"--select {text}: object ids are 1..255, got {ident}")
    return box, ident
