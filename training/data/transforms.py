"""Geometric and photometric augmentations on numpy images and label maps (OpenCV, no torchvision).

Every function takes the ``numpy.random.Generator`` to draw from, so a sample is a pure function of its
seed: a resumed or distributed run sees exactly the samples an uninterrupted one would.
Images are ``[H, W, 3]`` uint8 RGB; label maps ``[H, W]`` uint8 ids, always warped with nearest
neighbour so that ids stay exact; areas uncovered by a warp are filled with the mean colour / id 0.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from vosrt.sdk.preprocess import IMAGENET_MEAN

FILL = tuple(int(round(255 * c)) for c in IMAGENET_MEAN)


def affine_matrix(rng: np.random.Generator, height: int, width: int, degrees: float = 0.0,
                  scale: tuple[float, float] = (1.0, 1.0), shear: float = 0.0,
                  translate: float = 0.0) -> np.ndarray:
    """A random 2×3 affine about the image centre: rotation in ±``degrees``, isotropic scale in
    ``scale``, shear in ±``shear`` degrees along x, translation up to ``translate`` × size."""
    angle = math.radians(rng.uniform(-degrees, degrees))
    factor = rng.uniform(*scale)
    shear_x = math.radians(rng.uniform(-shear, shear))
    tx = rng.uniform(-translate, translate) * width
    ty = rng.uniform(-translate, translate) * height
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    shearing = np.array([[1.0, math.tan(shear_x)], [0.0, 1.0]])
    linear = factor * rotation @ shearing
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    offset = centre + np.array([tx, ty]) - linear @ centre
    return np.concatenate([linear, offset[:, None]], axis=1)


def warp_affine(image: np.ndarray, labels: np.ndarray | None, matrix: np.ndarray,
                size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Apply a 2×3 ``matrix`` (source → destination pixels); ``size`` = (height, width) of the output."""
    height, width = size if size is not None else image.shape[:2]
    image = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_CUBIC,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=FILL)
    if labels is not None:
        labels = cv2.warpAffine(labels, matrix, (width, height), flags=cv2.INTER_NEAREST,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return image, labels


def resized_crop_matrix(rng: np.random.Generator, height: int, width: int, out_size: tuple[int, int],
                        scale: tuple[float, float] = (0.36, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = False) -> np.ndarray:
    """2×3 matrix of a random resized crop: a box of ``scale`` × the image area and aspect ratio in
    ``ratio`` (relative to the output's), resized to ``out_size`` = (height, width); mirrored when
    ``flip``. Falls back to the whole image when no box fits."""
    out_h, out_w = out_size
    area = height * width
    box = None
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]))) * out_w / out_h
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            box = (int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w)
            break
    if box is None:
        box = (0, 0, height, width)
    top, left, h, w = box
    sx, sy = out_w / w, out_h / h
    matrix = np.array([[sx, 0.0, -left * sx], [0.0, sy, -top * sy]])
    if flip:
        matrix = np.array([[-1.0, 0.0, out_w - 1], [0.0, 1.0, 0.0]]) @ np.vstack([matrix, [0, 0, 1]])
    return matrix


def colour_jitter(rng: np.random.Generator, image: np.ndarray, brightness: float = 0.0,
                  contrast: float = 0.0, saturation: float = 0.0, hue: float = 0.0) -> np.ndarray:
    """Random brightness / contrast / saturation factors in [1 − x, 1 + x] and a hue shift in ±``hue``
    (fraction of the colour circle), applied in a random order as torchvision's ColorJitter does."""
    out = image.astype(np.float32)
    steps = rng.permutation(4)
    for step in steps:
        if step == 0 and brightness > 0:
            out = out * rng.uniform(1 - brightness, 1 + brightness)
        elif step == 1 and contrast > 0:
            grey = _grey(out).mean()
            out = (out - grey) * rng.uniform(1 - contrast, 1 + contrast) + grey
        elif step == 2 and saturation > 0:
            grey = _grey(out)[..., None]
            out = (out - grey) * rng.uniform(1 - saturation, 1 + saturation) + grey
        elif step == 3 and hue > 0:
            hsv = cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV_FULL)
            hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(round(rng.uniform(-hue, hue) * 256))) % 256
            out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL).astype(np.float32)
        out = np.clip(out, 0, 255)
    return out.astype(np.uint8)


def random_grayscale(rng: np.random.Generator, image: np.ndarray, probability: float) -> np.ndarray:
    """With ``probability``, the luma of ``image`` repeated on three channels."""
    if rng.random() >= probability:
        return image
    grey = np.clip(_grey(image.astype(np.float32)), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def smooth_deformation(rng: np.random.Generator, image: np.ndarray, labels: np.ndarray | None,
                       strength: float = 0.02, grid: int = 5) -> tuple[np.ndarray, np.ndarray | None]:
    """A smooth non-rigid warp: random displacements (std ``strength`` × image size) at a
    ``grid`` × ``grid`` lattice of control points, interpolated bicubically over the image — a
    thin-plate-like deformation as STCN's static-image pre-training uses."""
    height, width = image.shape[:2]
    scale = strength * max(height, width)
    dx = rng.normal(0, scale, (grid, grid)).astype(np.float32)
    dy = rng.normal(0, scale, (grid, grid)).astype(np.float32)
    dx = cv2.resize(dx, (width, height), interpolation=cv2.INTER_CUBIC)
    dy = cv2.resize(dy, (width, height), interpolation=cv2.INTER_CUBIC)
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    map_x, map_y = xs + dx, ys + dy
    image = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    if labels is not None:
        labels = cv2.remap(labels, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT)
    return image, labels


def resize_short_side_and_crop(rng: np.random.Generator, image: np.ndarray, labels: np.ndarray | None,
                               size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """Scale so the output ``size`` = (height, width) fits inside, then crop it at a random place."""
    height, width = image.shape[:2]
    out_h, out_w = size
    factor = max(out_h / height, out_w / width)
    top = rng.uniform(0, height * factor - out_h)
    left = rng.uniform(0, width * factor - out_w)
    matrix = np.array([[factor, 0.0, -left], [0.0, factor, -top]])
    return warp_affine(image, labels, matrix, size)


def _grey(image: np.ndarray) -> np.ndarray:
    return image[..., 0] * 0.299 + image[..., 1] * 0.587 + image[..., 2] * 0.114
