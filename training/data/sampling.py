"""Shared pieces of the training samplers: per-sample random generators and tensor packing."""
from __future__ import annotations

import numpy as np
import torch


class SeededDataset(torch.utils.data.Dataset):
    """A dataset whose sample ``i`` of epoch ``e`` is drawn from ``default_rng([seed, e, i])``.

    Samples therefore do not depend on worker processes, on the rank in distributed training, or on
    whether a run was interrupted and resumed: call :meth:`set_epoch` at the start of every epoch, as
    with ``DistributedSampler``.
    """

    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws the following samples use."""
        self.epoch = int(epoch)

    def rng(self, index: int, attempt: int = 0) -> np.random.Generator:
        """The generator of sample ``index`` (``attempt`` > 0 for redraws of a rejected sample)."""
        return np.random.default_rng([int(self.seed), int(self.epoch), int(index), int(attempt)])


def images_to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """``T × [H, W, 3]`` uint8 -> float32 ``[T, 3, H, W]`` in [0, 1]."""
    stacked = np.stack(images).astype(np.float32) / 255.0  # [T, H, W, 3]
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()


def pack_objects(images: list[np.ndarray], labels: list[np.ndarray], objects: list[int],
                 max_objects: int, name: str) -> dict:
    """The sample dict of the STCN samplers.

    images ``[T, 3, H, W]`` float in [0, 1]; masks ``[T, max_objects, H, W]`` (0/1 per chosen object, zeros
    for an unused slot); labels ``[T, H, W]`` int64 (0 background, k = the k-th chosen object);
    selector ``[max_objects]`` (1 where the slot holds an object); video name.
    """
    stacked = np.stack(labels)  # [T, H, W]
    masks = np.zeros((len(labels), max_objects) + stacked.shape[1:], np.float32)
    selector = np.zeros(max_objects, np.float32)
    class_labels = np.zeros(stacked.shape, np.int64)
    selector[0] = 1.0  # the first slot always counts, even when empty, as in STCN
    for slot, obj in enumerate(objects[:max_objects]):
        masks[:, slot] = stacked == obj
        class_labels[stacked == obj] = slot + 1
        selector[slot] = 1.0
    return {"images": images_to_tensor(images), "masks": torch.from_numpy(masks),
            "labels": torch.from_numpy(class_labels), "selector": torch.from_numpy(selector), "video": name}
