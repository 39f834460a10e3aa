"""STCN triplets from clips generated on the fly (:mod:`vosrt.sdk.synthetic`), never the same clip twice.

A fixed folder of generated videos is small enough for a network to memorise which texture is the
object in each video, and then it no longer needs to match against its memory. Drawing a new clip for
every sample removes that shortcut: sample ``i`` of epoch ``e`` uses the clip
``generate_sequence(sequence_seed(seed, e * samples_per_epoch + i), ...)``, so the clips a run saw are
known exactly (held-out evaluation uses another dataset seed). Frame choice, object choice and
augmentation are those of :class:`~vosrt.training.data.vos.VOSTripletDataset`.
"""
from __future__ import annotations

from vosrt.sdk.synthetic import generate_sequence, sequence_seed
from vosrt.training.data.sampling import SeededDataset
from vosrt.training.data.vos import sample_frame_indices, triplet_sample


class GeneratedTripletDataset(SeededDataset):
    """``samples_per_epoch`` triplets per epoch, each from a fresh ``num_frames``-frame clip of
    ``clip_size`` = (height, width), cropped to ``size``."""

    def __init__(self, size: tuple[int, int] = (384, 384), clip_size: tuple[int, int] = (240, 432),
                 num_frames: int = 12, max_skip: int = 5, samples_per_epoch: int = 1000, max_objects: int = 2,
                 seed: int = 0):
        self.size = tuple(size)
        self.clip_size = tuple(clip_size)
        self.num_frames = int(num_frames)
        self.max_skip = int(max_skip)
        self.samples_per_epoch = int(samples_per_epoch)
        self.max_objects = int(max_objects)
        self.seed = int(seed)

    def set_max_skip(self, max_skip: int) -> None:
        """Change the frame-gap limit (the curriculum calls this between epochs)."""
        self.max_skip = int(max_skip)

    def clip_seed(self, index: int) -> int:
        """Seed of the clip behind sample ``index`` of the current epoch."""
        return sequence_seed(self.seed, self.epoch * self.samples_per_epoch + int(index))

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, index: int) -> dict:
        rng = self.rng(index)
        clip = generate_sequence(self.clip_seed(index), num_frames=self.num_frames, height=self.clip_size[0],
                                 width=self.clip_size[1])
        name = f"generated-{self.clip_seed(index)}"
        for attempt in range(5):
            chosen = sample_frame_indices(rng, len(clip), self.max_skip, 3)
            if rng.random() < 0.5:
                chosen = chosen[::-1]
            sample = triplet_sample(rng, [clip.frames[i] for i in chosen], [clip.labels[i] for i in chosen],
                                    self.size, self.max_objects, name, allow_empty=attempt == 4)
            if sample is not None:
                return sample
        raise AssertionError("unreachable: the last attempt accepts an empty sample")
