"""STCN's main-training sampler: three ordered frames of a video, at most two objects.

Following the STCN paper and its training code (facts, re-implemented here):

- frames: three annotated frames in temporal order, each gap at most ``max_skip`` frames, the order
  reversed with probability 0.5 (STCN's dataset/vos_dataset.py draws each gap as
  ``randint(max_skip + 1) + 1``, so up to ``max_skip + 1``, then clamps the indices near the video's end;
  here gaps are uniform in [1, ``max_skip``]); ``max_skip`` follows a curriculum over training
  (:func:`max_skip_at`: 5, then 10, 15, 20, 25 from 10/20/30/40 % of the iterations, back to 5 for
  the last 10 %);
- objects: one target drawn from those visible on the first sampled frame, plus a second one when
  there is another; the sampler retries (new frames, new transforms) when the crop shows none;
- id 255 is void, as the DAVIS evaluation reads it (:data:`vosrt.sdk.metrics.VOID`): never an object,
  its pixels are background; except in a video whose only id it is (DAVIS 2016's 0/255 masks), where it
  is the object;
- augmentation shared by the three frames: horizontal flip, random resized crop (area 36-100 %) to
  ``size``, colour jitter (0.1, 0.03, 0.03), grey-scale 5 %; per frame: random affine (±15°, shear
  ±10°) and a slight colour jitter (0.01).

For YouTube-VOS, where only some frames are annotated, gaps are counted in annotated frames and
``max_skip`` is divided by their spacing (every 5th frame ⇒ ``max_skip // 5``), as STCN does
(:func:`annotation_spacing`: read from the frame numbers, so also where ``JPEGImages`` holds only the
annotated frames, as YouTube-VOS's ``train`` download and STCN's ``train_480p`` do).
"""
from __future__ import annotations

import numpy as np
import torch

from vosrt.sdk.errors import UserError
from vosrt.sdk.metrics import VOID, foreground_truth
from vosrt.training.data import transforms as T
from vosrt.training.data.folders import VideoFolder, annotated_videos
from vosrt.training.data.sampling import SeededDataset, pack_objects

# (fraction of the iterations from which it applies, max_skip), STCN's main-training schedule
SKIP_CURRICULUM = ((0.0, 5), (0.1, 10), (0.2, 15), (0.3, 20), (0.4, 25), (0.9, 5))


def max_skip_at(progress: float, curriculum=SKIP_CURRICULUM) -> int:
    """The frame-gap limit at ``progress`` ∈ [0, 1] of training under ``curriculum``."""
    skip = curriculum[0][1]
    for start, value in curriculum:
        if progress >= start:
            skip = value
    return int(skip)


def sample_frame_indices(rng: np.random.Generator, count: int, max_gap: int, num_frames: int = 3) -> list[int]:
    """``num_frames`` indices into ``count`` frames, increasing, each gap in [1, max_gap] (shrunk when
    the video is too short; equal indices only when it has fewer frames than asked)."""
    if count < 1:
        raise UserError("cannot sample frames from a video without annotated frames")
    max_gap = max(1, int(max_gap))
    gaps = rng.integers(1, max_gap + 1, num_frames - 1)
    span = int(gaps.sum())
    if span > count - 1:
        # too short for these gaps: spread the frames evenly over what there is
        gaps = np.floor(gaps * (count - 1) / max(span, 1)).astype(int)
        span = int(gaps.sum())
    start = int(rng.integers(0, count - span))
    return [start + int(g) for g in np.concatenate([[0], np.cumsum(gaps)])]


def annotation_spacing(annotated: list[str], frames: list[str]) -> int:
    """Frames from one annotated frame to the next (``max_skip`` is divided by it): the median step of the
    annotated frames' numbers where every stem is a number (YouTube-VOS: 5, whether ``JPEGImages`` holds every
    frame, as ``train_all_frames``, or only the annotated ones, as the ``train`` download: 00000, 00005, ...),
    else the ratio of the frame and annotation counts."""
    if len(annotated) < 2:
        return 1
    if all(stem.isdigit() for stem in annotated):
        return max(1, int(round(float(np.median(np.diff([int(stem) for stem in annotated]))))))
    return max(1, round((len(frames) - 1) / (len(annotated) - 1)))


class VOSTripletDataset(SeededDataset):
    """STCN main training on DAVIS 2017 / YouTube-VOS folders (several may be concatenated).

    ``size`` = (height, width) of the crops (multiples of 16), ``max_skip`` the initial gap limit
    (change with :meth:`set_max_skip`), ``repeat`` how many samples each video gives per epoch, ``weights``
    (one per folder) how many times more of each folder's videos (STCN's ``[davis] * 5 + [youtube]``).
    """

    def __init__(self, folders: VideoFolder | list[VideoFolder], size: tuple[int, int] = (384, 384),
                 max_skip: int = 5, num_frames: int = 3, max_objects: int = 2, repeat: int = 1, seed: int = 0,
                 weights: list[int] | None = None):
        self.folders, self.items = annotated_videos(folders)
        weight = dict(zip(map(id, self.folders), weights or [1] * len(self.folders)))
        # the item of each sample of an epoch (before ``repeat``): a video of a folder of weight w, w times
        self.order = [i for i, (folder, _) in enumerate(self.items) for _ in range(int(weight[id(folder)]))]
        self.size = tuple(size)
        self.max_skip = int(max_skip)
        self.num_frames = int(num_frames)
        self.max_objects = int(max_objects)
        self.repeat = int(repeat)
        self.seed = int(seed)
        self.only_void_videos = OnlyVoidVideos(self.items)

    @property
    def only_void(self) -> dict[int, bool]:
        """``{item: whether its video's only id is 255}`` of the videos decided so far (:class:`OnlyVoidVideos`)."""
        return self.only_void_videos.decided()

    def set_max_skip(self, max_skip: int) -> None:
        """Change the frame-gap limit (the curriculum calls this between epochs)."""
        self.max_skip = int(max_skip)

    def __len__(self) -> int:
        return len(self.order) * self.repeat

    def __getitem__(self, index: int) -> dict:
        item = self.order[index % len(self.order)]
        folder, video = self.items[item]
        stems = folder.annotated_names(video)
        max_gap = max(1, self.max_skip // annotation_spacing(stems, folder.frame_names(video)))
        for attempt in range(5):
            rng = self.rng(index, attempt)
            chosen = [stems[i] for i in sample_frame_indices(rng, len(stems), max_gap, self.num_frames)]
            if rng.random() < 0.5:
                chosen = chosen[::-1]
            frames = [folder.read_frame(video, s) for s in chosen]
            labels = [folder.read_labels(video, s, f.shape) for s, f in zip(chosen, frames)]
            void = None if self.only_void_videos(item, labels) else VOID
            sample = triplet_sample(rng, frames, labels, self.size, self.max_objects, video, allow_empty=attempt == 4,
                                    void=void)
            if sample is not None:
                return sample
        raise AssertionError("unreachable: the last attempt accepts an empty sample")

class OnlyVoidVideos:
    """Whether 255 is the only id of each video of ``items`` (``[(folder, video), ...]``): DAVIS 2016's 0/255
    masks, where 255 is the object (elsewhere it is void). Decided lazily, once per video and training run:
    calling it with a video's item and masks just read answers no when they have another id, else reads the
    video's masks up to the first that has another id (all of them in a 0/255 video). What it found is kept
    in shared memory: train.py starts new DataLoader workers every epoch, and what a worker found would
    otherwise end with it (every 0/255 video's masks read again, every epoch)."""

    def __init__(self, items: list[tuple[VideoFolder, str]]):
        self.items = items
        # per item: 1 where 255 is the video's only id, 0 where not, -1 not yet known
        self.state = torch.full((len(items),), -1, dtype=torch.int8).share_memory_()

    def __call__(self, item: int, labels: list[np.ndarray]) -> bool:
        known = int(self.state[item])
        if known < 0:
            if any(set(np.unique(mask).tolist()) - {0, VOID} for mask in labels):
                known = 0
            else:
                known = int(_only_void(*self.items[item]))
            self.state[item] = known
        return bool(known)

    def decided(self) -> dict[int, bool]:
        """``{item: whether its video's only id is 255}`` of the videos decided so far (in this process and in
        the DataLoader workers of every epoch)."""
        return {item: bool(value) for item, value in enumerate(self.state.tolist()) if value >= 0}


def _only_void(folder: VideoFolder, video: str) -> bool:
    """Whether 255 is the only id of ``video``'s annotations (:func:`vosrt.sdk.metrics.foreground_truth`, fed
    lazily: read up to the first annotation with another id)."""
    return foreground_truth(folder.read_labels(video, stem) for stem in folder.annotated_names(video))


def triplet_sample(rng: np.random.Generator, images: list[np.ndarray], labels: list[np.ndarray],
                   size: tuple[int, int], max_objects: int, name: str, allow_empty: bool = False,
                   void: int | None = None) -> dict | None:
    """Augment ordered frames and pick the objects (see the module docstring); None when no object is
    visible on the first frame after augmentation, unless ``allow_empty`` (then an all-background sample,
    as STCN returns). ``void``: an id that is never an object (its pixels are background)."""
    images, labels = _augment(rng, images, labels, size)
    present = [int(v) for v in np.unique(labels[0]) if v != 0 and v != void]
    if not present:
        return pack_objects(images, labels, [], max_objects, name) if allow_empty else None
    target = int(rng.choice(present))
    others = [v for v in present if v != target]
    objects = [target] + ([int(rng.choice(others))] if others and max_objects > 1 else [])
    return pack_objects(images, labels, objects, max_objects, name)


def _augment(rng, images, labels, size):
    height, width = images[0].shape[:2]
    crop = T.resized_crop_matrix(rng, height, width, size, scale=(0.36, 1.0), flip=rng.random() < 0.5)
    jitter = dict(brightness=0.1, contrast=0.03, saturation=0.03)
    shared_seed = int(rng.integers(2**31))
    grey = rng.random() < 0.05
    out_images, out_labels = [], []
    for image, label in zip(images, labels):
        image, label = T.warp_affine(image, label, crop, size)
        # the same jitter for every frame: redraw it from the same seed
        image = T.colour_jitter(np.random.default_rng(shared_seed), image, **jitter)
        if grey:
            image = T.random_grayscale(rng, image, 1.0)
        matrix = T.affine_matrix(rng, *size, degrees=15, shear=10)
        image, label = T.warp_affine(image, label, matrix)
        image = T.colour_jitter(rng, image, brightness=0.01, contrast=0.01, saturation=0.01)
        out_images.append(image)
        out_labels.append(label)
    return out_images, out_labels
