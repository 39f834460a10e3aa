"""3DC-Seg's clip sampler: L frames of a video with their foreground masks (DAVIS 2016 style).

Unsupervised VOS has no object ids: every annotated object is foreground. Id 255 is void beside other ids
(DAVIS 2017's unannotated regions: background, as the evaluation reads them), except in a video whose only
id it is (DAVIS 2016's 0/255 masks), where it is the object (both public codes make every nonzero pixel
foreground, 255 included). Following 3DC-Seg / D²Conv3D
training (facts, re-implemented here): a clip of ``clip_length`` (8) frames is drawn in temporal order
from a window of at most ``max_window`` (12) consecutive frames (3DC-Seg's datasets/davis/Davis.py with
bmvc_final.yaml's MAX_TEMPORAL_GAP 12). Videos shorter than the clip repeat frames. The window lies anywhere in
the video, so a video's first and last frames are drawn about 12 times less often than its middle ones; the public
codes make one sample per frame (longer videos weigh more; D²Conv3D a window of 8 centred on it, frames drawn with
repeats), fixed when the dataset is built, where this draws ``repeat`` clips per video anew every epoch.

Augmentation (this module's own, not published): one resize-and-crop (scale 1-1.25 over covering
``size``) and horizontal flip for all frames of the clip, and one colour jitter (0.1, 0.05, 0.05). The
public 3DC-Seg code only resizes the short edge to 480 and crops 480×854 (utils/Resize.py; the flip in
datasets/utils/Util.py is commented out), the public D²Conv3D code resizes DAVIS to a fixed 480×854 (its
``apply_augmentations`` does nothing).
"""
from __future__ import annotations

import numpy as np
import torch

from vosrt.sdk.metrics import VOID
from vosrt.training.data import transforms as T
from vosrt.training.data.folders import VideoFolder, annotated_videos
from vosrt.training.data.sampling import SeededDataset, images_to_tensor
from vosrt.training.data.vos import OnlyVoidVideos


def sample_clip_indices(rng: np.random.Generator, count: int, clip_length: int, max_window: int) -> list[int]:
    """``clip_length`` sorted indices into ``count`` frames, spread inside a window of ``max_window``."""
    window = min(count, max(clip_length, max_window))
    start = int(rng.integers(0, count - window + 1))
    if window >= clip_length:
        picked = np.sort(rng.choice(window, clip_length, replace=False))
    else:
        picked = np.sort(rng.integers(0, window, clip_length))
    return [start + int(i) for i in picked]


def clip_warp(rng: np.random.Generator, height: int, width: int, size) -> np.ndarray:
    """One resize-crop (scale 1..1.25 over covering ``size``) and random horizontal flip for all frames of
    a clip of ``height × width`` frames, as a 2×3 affine matrix (for ``transforms.warp_affine``)."""
    factor = max(size[0] / height, size[1] / width) * rng.uniform(1.0, 1.25)
    top = rng.uniform(0, height * factor - size[0])
    left = rng.uniform(0, width * factor - size[1])
    matrix = np.array([[factor, 0.0, -left], [0.0, factor, -top]])
    if rng.random() < 0.5:
        matrix = np.array([[-1.0, 0.0, size[1] - 1], [0.0, 1.0, 0.0]]) @ np.vstack([matrix, [0, 0, 1]])
    return matrix


class AnnotatedClips(SeededDataset):
    """Clips of the annotated frames of DAVIS / YouTube-VOS layout folders: ``repeat`` samples per video
    and epoch, each ``clip_length`` frames drawn by :func:`sample_clip_indices`. Subclasses turn the
    drawn frames (:meth:`draw`) into a sample."""

    def __init__(self, folders: VideoFolder | list[VideoFolder], size: tuple[int, int], clip_length: int,
                 max_window: int, repeat: int, seed: int):
        self.folders, self.items = annotated_videos(folders)
        self.size = tuple(size)
        self.clip_length = int(clip_length)
        self.max_window = int(max_window)
        self.repeat = int(repeat)
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.items) * self.repeat

    def draw(self, index: int):
        """(folder, video, rng, chosen frame stems, their RGB frames) of sample ``index``."""
        folder, video = self.items[index % len(self.items)]
        rng = self.rng(index)
        stems = folder.annotated_names(video)
        chosen = [stems[i] for i in sample_clip_indices(rng, len(stems), self.clip_length, self.max_window)]
        return folder, video, rng, chosen, [folder.read_frame(video, s) for s in chosen]


class ForegroundClipDataset(AnnotatedClips):
    """Clips for 3DC-Seg from DAVIS 2016/2017 or YouTube-VOS folders (only annotated frames are used).

    Samples: ``images`` ``[3, L, H, W]`` float in [0, 1] (the network's clip layout), ``foreground``
    ``[1, L, H, W]`` float 0/1, ``video`` name.
    """

    def __init__(self, folders: VideoFolder | list[VideoFolder], size: tuple[int, int] = (480, 854),
                 clip_length: int = 8, max_window: int = 12, repeat: int = 1, seed: int = 0):
        super().__init__(folders, size, clip_length, max_window, repeat, seed)
        self.only_void_videos = OnlyVoidVideos(self.items)

    def __getitem__(self, index: int) -> dict:
        folder, video, rng, chosen, frames = self.draw(index)
        labels = [folder.read_labels(video, s, f.shape) for s, f in zip(chosen, frames)]
        # 255 beside objects is void (the evaluation scores it as background; trained as foreground, the
        # network learnt to segment DAVIS 2017's unannotated regions); in a 0/255 video it is the object
        void = -1 if self.only_void_videos(index % len(self.items), labels) else VOID
        masks = [((lab > 0) & (lab != void)).astype(np.uint8) for lab in labels]
        matrix = clip_warp(rng, *frames[0].shape[:2], self.size)
        jitter_seed = int(rng.integers(2**31))
        out_frames, out_masks = [], []
        for frame, mask in zip(frames, masks):
            frame, mask = T.warp_affine(frame, mask, matrix, self.size)
            frame = T.colour_jitter(np.random.default_rng(jitter_seed), frame, 0.1, 0.05, 0.05)
            out_frames.append(frame)
            out_masks.append(mask)
        images = images_to_tensor(out_frames).permute(1, 0, 2, 3).contiguous()  # [3, L, H, W]
        foreground = torch.from_numpy(np.stack(out_masks).astype(np.float32))[None]  # [1, L, H, W]
        return {"images": images, "foreground": foreground, "video": video}
