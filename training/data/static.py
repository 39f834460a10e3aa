"""STCN's static-image pre-training sampler: a three-frame pseudo video made from one image and mask.

Following the STCN paper and its training code (facts, re-implemented here), each sample is one
object of one image, deformed three times:

- shared by the three frames: random scale 0.8-1.5, horizontal flip, colour jitter (0.1, 0.05, 0.05,
  hue 0.05), grey-scale 5 %;
- per frame: random affine (±20°, scale 0.9-1.1, shear ±10°), resize to cover ``size`` and a random
  crop, colour jitter (0.1, 0.05, 0.05), and with probability 1/3 a smooth thin-plate-like
  deformation (displacements of 2 % of the size).

Sources: a folder of image/mask pairs (``NAME.jpg`` + ``NAME.png``, also in folders below it, as FSS-1000's classes
in STCN's ``static`` folder), or the annotated frames of DAVIS / YouTube-VOS folders (:class:`VideoFolder`). A mask with
several ids yields one object per sample (single-object pre-training, as STCN); 0/255 masks give the
foreground; beside other ids, 255 is void (never the object, as the DAVIS evaluation reads it). A
grey-scale (or RGB) mask of an image/mask pair that holds values of 128 or more and others between (the soft edges
of the saliency masks STCN pre-trains on: DUTS, ECSSD, HRSOD, BIG) is a foreground map: foreground where it is at
least 128, as STCN's static_dataset.py reads it (``> 0.5`` of 255), not one object per grey level.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from vosrt.sdk.errors import UserError
from vosrt.sdk.masks import read_label_png
from vosrt.sdk.metrics import VOID
from vosrt.sdk.video import frame_files, load_image
from vosrt.training.data import transforms as T
from vosrt.training.data.folders import VideoFolder, check_mask_size
from vosrt.training.data.sampling import SeededDataset, pack_objects


def find_image_mask_pairs(root: str | Path) -> list[tuple[Path, Path]]:
    """``(image.jpg, image.png)`` pairs in ``root`` and every folder below it (hidden ones left out): STCN's
    ``static`` folder holds FSS-1000 two levels down (``fss/<class>/N.jpg``), which a search of the direct
    sub-folders left out without a word."""
    root = Path(root)
    pairs = []
    folders = []
    for folder, subfolders, _ in os.walk(root, followlinks=True):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        folders.append(Path(folder))
    for image in sorted(image for folder in folders for image in frame_files(folder, (".jpg",))):
        mask = image.with_suffix(".png")
        if mask.is_file():
            pairs.append((image, mask))
    return pairs


def read_pair_mask(path: Path) -> np.ndarray:
    """The mask of an image/mask pair as ids: a palette PNG's indices, a grey-scale one's values, except a
    grey-scale soft foreground map (values of 128 and more with others between, a saliency dataset's
    anti-aliased edges, its core 255 or not), which becomes 0/255 at 128 (module docstring). An RGB(A) mask is
    read as STCN reads every static mask: as grey-scale (``convert('L')``). It was refused at its image's first
    draw, in a run that had gone on for hours, and a soft map without 255 gave one object per grey level."""
    with Image.open(path) as image:
        mode = image.mode
        colour = mode in ("RGB", "RGBA", "LA") and image.convert("L")
    if colour:
        labels = np.asarray(colour, np.uint8)
    else:
        labels = read_label_png(path)
    if labels.dtype == np.uint8 and mode != "P":
        values = set(np.unique(labels).tolist()) - {0}
        if len(values) > 1 and max(values) >= 128:
            labels = np.where(labels >= 128, VOID, 0).astype(np.uint8)
    return labels


class StaticSequenceDataset(SeededDataset):
    """Pseudo-video triplets from static images for STCN stage-0 pre-training.

    ``sources``: a folder of image/mask pairs, a :class:`VideoFolder`, or a list of either; ``repeat``: how
    many samples each image gives per epoch; ``weights``: ``{folder name: w}``, each pair under a folder of that name
    (below a source folder) taken w times (STCN: BIG and HRSOD 5 times).
    """

    def __init__(self, sources, size: tuple[int, int] = (384, 384), num_frames: int = 3,
                 max_objects: int = 2, repeat: int = 1, seed: int = 0, weights: dict | None = None):
        weights = dict(weights or {})
        if not isinstance(sources, (list, tuple)):
            sources = [sources]
        self.items = []  # (loader of (image, labels), name)
        for source in sources:
            if isinstance(source, VideoFolder):
                self.items += [((source, video, stem), f"{video}/{stem}") for video in source.videos
                               for stem in source.annotated_names(video)]
            else:
                # each folder on its own: one that was mistyped or is empty was skipped beside the others
                pairs = find_image_mask_pairs(source)
                if not pairs:
                    found = "not found" if not Path(source).is_dir() else "holds no image/mask pairs"
                    # the official saliency downloads keep them apart (DUTS-TR-Image/ and DUTS-TR-Mask/, ECSSD's images/
                    # and ground_truth_mask/): said, with what pairs them
                    raise UserError(f"{source}: {found}; expected NAME.jpg images with NAME.png masks side by side (in "
                                    f"the folder or folders below it: STCN's static folder, as its download script "
                                    f"leaves it; a download that keeps images and masks in folders of their own, such "
                                    f"as DUTS-TR-Image/ and DUTS-TR-Mask/, needs each mask moved beside its image), "
                                    f"or a DAVIS / YouTube-VOS folder (JPEGImages/)")
                for image, mask in pairs:
                    weight = max([weights.get(part, 1) for part in image.relative_to(source).parts[:-1]], default=1)
                    self.items += [((image, mask), image.stem)] * int(weight)
        self.size = tuple(size)
        self.num_frames = int(num_frames)
        self.max_objects = int(max_objects)
        self.repeat = int(repeat)
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.items) * self.repeat

    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        source, _ = self.items[index % len(self.items)]
        if len(source) == 3:
            folder, video, stem = source
            frame = folder.read_frame(video, stem)
            return frame, folder.read_labels(video, stem, frame.shape)
        image_path, mask_path = source
        image = load_image(image_path)
        labels = read_pair_mask(mask_path)
        check_mask_size(labels, image.shape, mask_path, image_path)
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), labels

    def __getitem__(self, index: int) -> dict:
        image, labels = self._read(index)
        name = self.items[index % len(self.items)][1]
        ids = [int(v) for v in np.unique(labels) if v != 0]
        if len(ids) > 1 and VOID in ids:
            ids.remove(VOID)  # void beside objects (DAVIS); a 0/255 mask's 255 is its object
        for attempt in range(5):
            rng = self.rng(index, attempt)
            if not ids:
                break
            target = int(rng.choice(ids))
            mask = (labels == target).astype(np.uint8)
            images, masks = self._augment(rng, image, mask)
            if masks[0].any():
                return pack_objects(images, masks, [1], self.max_objects, name)
        rng = self.rng(index, 99)
        images, masks = self._augment(rng, image, np.zeros(labels.shape, np.uint8))
        return pack_objects(images, masks, [], self.max_objects, name)

    def _augment(self, rng, image, mask):
        height, width = image.shape[:2]
        flip = rng.random() < 0.5
        shared = T.affine_matrix(rng, height, width, scale=(0.8, 1.5))
        if flip:
            shared = np.array([[-1.0, 0.0, width - 1], [0.0, 1.0, 0.0]]) @ np.vstack([shared, [0, 0, 1]])
        base_image, base_mask = T.warp_affine(image, mask, shared)
        jitter_seed = int(rng.integers(2**31))
        grey = rng.random() < 0.05
        base_image = T.colour_jitter(np.random.default_rng(jitter_seed), base_image, 0.1, 0.05, 0.05, 0.05)
        if grey:
            base_image = T.random_grayscale(rng, base_image, 1.0)
        images, masks = [], []
        for _ in range(self.num_frames):
            matrix = T.affine_matrix(rng, height, width, degrees=20, scale=(0.9, 1.1), shear=10)
            frame, frame_mask = T.warp_affine(base_image, base_mask, matrix)
            frame, frame_mask = T.resize_short_side_and_crop(rng, frame, frame_mask, self.size)
            frame = T.colour_jitter(rng, frame, 0.1, 0.05, 0.05)
            if rng.random() < 1 / 3:
                frame, frame_mask = T.smooth_deformation(rng, frame, frame_mask, strength=0.02)
            images.append(frame)
            masks.append(frame_mask)
        return images, masks
