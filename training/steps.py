"""One training step of each family as an ``nn.Module`` (so DistributedDataParallel can wrap it).

STCN (the published training pass, three frames, at most two objects per sample)::

    keys of frames 0, 1, 2           ← encode_key (once per frame, shared by the objects)
    values of frame 0                ← value encoder (frame 0, ground-truth masks)
    frame 1 logits                   ← segment(readout of memory [0])
    values of frame 1                ← value encoder (frame 1, its predicted, soft-aggregated masks)
    frame 2 logits                   ← segment(readout of memory [0, 1])
    loss = Σ_{frames 1, 2} bootstrapped cross-entropy over {background, object 1[, object 2]}

The memory read in training uses every memory entry (top_k = 0), as STCN trains; top-k is an
inference-time choice. The second object's probabilities are zeroed where a sample has none.

3DC-Seg: the clip ``[B, 3, L, H, W]`` through the network, Lovász hinge on the foreground logits
(optionally plus ``bce_weight`` × binary cross-entropy).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vosrt.sdk.preprocess import IMAGENET_MEAN, IMAGENET_STD
from vosrt.training.losses import bootstrapped_cross_entropy, lovasz_hinge
from vosrt.training.ops.aggregate import soft_aggregate
from vosrt.training.ops.l2_readout import l2_memory_readout


def _normalise(images: torch.Tensor, model: nn.Module, channel_dim: int) -> torch.Tensor:
    shape = [1] * images.dim()
    shape[channel_dim] = 3
    mean = images.new_tensor(getattr(model, "input_mean", IMAGENET_MEAN)).view(shape)
    std = images.new_tensor(getattr(model, "input_std", IMAGENET_STD)).view(shape)
    return (images - mean) / std


class STCNTrainStep(nn.Module):
    """Runs the three-frame STCN pass and its loss. ``forward`` returns (loss, logs, predictions)."""

    def __init__(self, model: nn.Module, start_warm: int = 20000, end_warm: int = 70000, top_p: float = 0.15):
        super().__init__()
        self.model = model
        self.start_warm, self.end_warm, self.top_p = start_warm, end_warm, top_p

    def _encode_values(self, frame, f16, masks):
        # frame [B, 3, H, W], f16 [B, C, h, w], masks [B, O, H, W] -> values [B, O, Cv, h, w]
        batch, objects = masks.shape[:2]
        others = masks.sum(dim=1, keepdim=True) - masks  # [B, O, H, W]: the other objects of the same sample
        values = self.model.value_encoder(frame.repeat_interleave(objects, 0), f16.repeat_interleave(objects, 0),
                                          masks.flatten(0, 1).unsqueeze(1), others.flatten(0, 1).unsqueeze(1))
        return values.view(batch, objects, *values.shape[1:])

    def _segment(self, query, mem_keys, mem_values, f16_thin, f8, f4, selector):
        # query [B, Ck, h, w]; mem_keys [B, t, Ck, h, w]; mem_values [B, t, O, Cv, h, w]
        batch, frames, key_dim, h, w = mem_keys.shape
        objects, value_dim = mem_values.shape[2:4]
        mem_key = mem_keys.permute(0, 2, 1, 3, 4).reshape(batch, key_dim, frames * h * w)  # [B, Ck, N]
        mem_value = mem_values.permute(0, 2, 3, 1, 4, 5).reshape(batch, objects * value_dim, frames * h * w)
        readout = l2_memory_readout(mem_key, query.flatten(2), mem_value, top_k=0)  # [B, O·Cv, h·w]
        readout = readout.view(batch * objects, value_dim, h, w)
        logits = self.model.segment(readout, f16_thin.repeat_interleave(objects, 0),
                                    f8.repeat_interleave(objects, 0), f4.repeat_interleave(objects, 0))
        prob = torch.sigmoid(logits.view(batch, objects, *logits.shape[2:]).float())  # [B, O, H, W]
        prob = prob * selector[:, :, None, None]
        merged_prob, merged_logits = soft_aggregate(prob.transpose(0, 1))  # [O+1, B, H, W]
        return merged_prob.transpose(0, 1), merged_logits.transpose(0, 1)  # [B, O+1, H, W]

    def forward(self, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, selector: torch.Tensor,
                step: int):
        """images ``[B, 3, 3, H, W]`` in [0, 1], masks ``[B, 3, 2, H, W]``, labels ``[B, 3, H, W]``,
        selector ``[B, 2]``; ``step`` drives the bootstrapping warm-up."""
        batch, frames = images.shape[:2]
        normalised = _normalise(images.flatten(0, 1), self.model, 1)  # [B·3, 3, H, W]
        key, f16_thin, f16, f8, f4 = (t.view(batch, frames, *t.shape[1:]) for t in self.model.encode_key(normalised))
        frames_in = normalised.view(batch, frames, *normalised.shape[1:])
        values = [self._encode_values(frames_in[:, 0], f16[:, 0], masks[:, 0])]
        losses, fractions, predictions = [], [], []
        for target in range(1, frames):
            prob, logits = self._segment(key[:, target], key[:, :target], torch.stack(values, 1),
                                         f16_thin[:, target], f8[:, target], f4[:, target], selector)
            loss = 0.0
            for b in range(batch):
                # a sample without a second object is scored on {background, object 1} only, as STCN
                channels = 3 if selector[b, 1] > 0.5 else 2
                sample_loss, fraction = bootstrapped_cross_entropy(
                    logits[b:b + 1, :channels], labels[b:b + 1, target], step, self.start_warm, self.end_warm,
                    self.top_p)
                loss = loss + sample_loss / batch
            losses.append(loss)
            fractions.append(fraction)
            predictions.append(prob.detach())
            if target + 1 < frames:
                values.append(self._encode_values(frames_in[:, target], f16[:, target], prob[:, 1:]))
        total = sum(losses)
        predicted = torch.stack(predictions, 1).argmax(dim=2)  # [B, T-1, H, W]
        truth = labels[:, 1:]
        inter = ((predicted == 1) & (truth == 1)).sum().item()
        union = ((predicted == 1) | (truth == 1)).sum().item()
        logs = {"loss": float(total.detach()), "iou": (inter + 1) / (union + 1), "bootstrap_p": fractions[-1]}
        for i, loss in enumerate(losses, start=1):
            logs[f"loss_{i}"] = float(loss.detach())
        return total, logs, predicted


class ClipTrainStep(nn.Module):
    """Runs 3DC-Seg on a clip and its loss. ``forward`` returns (loss, logs, foreground predictions)."""

    def __init__(self, model: nn.Module, bce_weight: float = 0.0):
        super().__init__()
        self.model = model
        self.bce_weight = float(bce_weight)

    def forward(self, images: torch.Tensor, foreground: torch.Tensor, step: int = 0):
        """images ``[B, 3, L, H, W]`` in [0, 1], foreground ``[B, 1, L, H, W]`` 0/1."""
        logits = self.model(_normalise(images, self.model, 1)).float()  # [B, 1, L, H, W]
        loss = lovasz_hinge(logits, foreground)
        logs = {"lovasz": float(loss.detach())}
        if self.bce_weight > 0:
            bce = F.binary_cross_entropy_with_logits(logits, foreground)
            loss = loss + self.bce_weight * bce
            logs["bce"] = float(bce.detach())
        predicted = (logits.detach() > 0)
        truth = foreground > 0.5
        logs["loss"] = float(loss.detach())
        logs["iou"] = ((predicted & truth).sum().item() + 1) / ((predicted | truth).sum().item() + 1)
        return loss, logs, predicted[:, 0].long()
