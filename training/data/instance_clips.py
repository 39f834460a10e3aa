"""STEm-Seg's clip samplers: L frames with one mask per object instance.

Samples: ``images`` ``[3, L, H, W]`` float in [0, 1], ``masks`` ``[max_instances, L, H, W]`` float 0/1
(one slot per instance, unused slots zero), ``categories`` ``[max_instances]`` int64 (0 for an unused
slot; 1 for every instance of these class-agnostic sources), ``video`` name.

- :class:`GeneratedInstanceClips`: clips generated on the fly (:mod:`vosrt.sdk.synthetic`), a fresh clip
  per sample, 1..max_instances labelled objects plus unlabelled distractors (background to the model).
- :class:`FolderInstanceClips`: DAVIS-layout folders whose annotations hold instance ids (DAVIS
  2017/2019 unsupervised, or generated datasets): a clip drawn as for 3DC-Seg
  (:func:`~vosrt.training.data.clips.sample_clip_indices`), one resize-crop-flip for all its frames, and
  up to ``max_instances`` of the objects visible in it (chosen at random when there are more).
"""
from __future__ import annotations

import numpy as np
import torch

from vosrt.sdk.synthetic import generate_sequence, sequence_seed
from vosrt.training.data import transforms as T
from vosrt.training.data.clips import sample_clip_indices
from vosrt.training.data.folders import VideoFolder, annotated_videos
from vosrt.training.data.sampling import SeededDataset, images_to_tensor


def _pack(frames: list[np.ndarray], labels: list[np.ndarray], objects: list[int], max_instances: int,
          name: str) -> dict:
    stacked = np.stack(labels)                                              # [L, H, W]
    masks = np.zeros((max_instances, *stacked.shape), np.float32)
    categories = np.zeros(max_instances, np.int64)
    for slot, obj in enumerate(objects[:max_instances]):
        masks[slot] = stacked == obj
        categories[slot] = 1
    images = images_to_tensor(frames).transpose(0, 1).contiguous()          # [3, L, H, W]
    return {"images": images, "masks": torch.from_numpy(masks), "categories": torch.from_numpy(categories),
            "video": name}


class GeneratedInstanceClips(SeededDataset):
    """``samples_per_epoch`` fresh generated clips per epoch of ``clip_length`` frames at ``size``."""

    def __init__(self, clip_length: int = 8, size: tuple[int, int] = (96, 128), max_instances: int = 3,
                 samples_per_epoch: int = 1000, seed: int = 0):
        self.clip_length = int(clip_length)
        self.size = tuple(size)
        self.max_instances = int(max_instances)
        self.samples_per_epoch = int(samples_per_epoch)
        self.seed = int(seed)

    def clip_seed(self, index: int) -> int:
        """Seed of the clip behind sample ``index`` of the current epoch."""
        return sequence_seed(self.seed, self.epoch * self.samples_per_epoch + int(index))

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, index: int) -> dict:
        count = int(self.rng(index).integers(1, self.max_instances + 1))
        clip = generate_sequence(self.clip_seed(index), num_frames=self.clip_length, height=self.size[0],
                                 width=self.size[1], num_objects=count)
        return _pack(clip.frames, clip.labels, clip.object_ids, self.max_instances,
                     f"generated-{self.clip_seed(index)}")


class FolderInstanceClips(SeededDataset):
    """Instance clips from DAVIS-layout folders (module docstring); only annotated frames are used."""

    def __init__(self, folders: VideoFolder | list[VideoFolder], size: tuple[int, int] = (480, 854),
                 clip_length: int = 8, max_window: int = 16, max_instances: int = 10, repeat: int = 1, seed: int = 0):
        self.folders, self.items = annotated_videos(folders)
        self.size = tuple(size)
        self.clip_length = int(clip_length)
        self.max_window = int(max_window)
        self.max_instances = int(max_instances)
        self.repeat = int(repeat)
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.items) * self.repeat

    def __getitem__(self, index: int) -> dict:
        folder, video = self.items[index % len(self.items)]
        rng = self.rng(index)
        stems = folder.annotated_names(video)
        chosen = [stems[i] for i in sample_clip_indices(rng, len(stems), self.clip_length, self.max_window)]
        frames = [folder.read_frame(video, s) for s in chosen]
        labels = [folder.read_labels(video, s).astype(np.uint8) for s in chosen]
        height, width = frames[0].shape[:2]
        factor = max(self.size[0] / height, self.size[1] / width) * rng.uniform(1.0, 1.25)
        top = rng.uniform(0, height * factor - self.size[0])
        left = rng.uniform(0, width * factor - self.size[1])
        matrix = np.array([[factor, 0.0, -left], [0.0, factor, -top]])
        if rng.random() < 0.5:
            matrix = np.array([[-1.0, 0.0, self.size[1] - 1], [0.0, 1.0, 0.0]]) @ np.vstack([matrix, [0, 0, 1]])
        warped = [T.warp_affine(f, lab, matrix, self.size) for f, lab in zip(frames, labels)]
        out_frames = [f for f, _ in warped]
        out_labels = [lab for _, lab in warped]
        visible = sorted({int(i) for lab in out_labels for i in np.unique(lab) if i not in (0, 255)})
        if len(visible) > self.max_instances:
            visible = sorted(rng.choice(visible, self.max_instances, replace=False).tolist())
        return _pack(out_frames, out_labels, visible, self.max_instances, video)
