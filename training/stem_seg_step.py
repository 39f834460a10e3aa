"""The STEm-Seg training step and its losses (Athar et al., ECCV 2020, Sec. 3.3).

For every instance n of a clip, with pixels P_n over all its frames (at the network's 1/4 resolution):

* its centre c_n is the mean embedding over P_n and its bandwidth b_n the mean over P_n of
  ``exp(log variance) · 10`` (free dimensions use their fixed 1 / std²);
* every pixel of the clip gets the probability ``p_n(x) = exp(−½ Σ_d b_nd (e_d(x) − c_nd)²)`` of
  belonging to n, and the **Lovász hinge** on the logits ``2 p_n − 1`` against n's mask pulls the
  instance together and pushes the rest away (averaged over the clip's instances);
* **variance smoothness**: the squared deviation of each pixel's log variance from the instance's mean
  log variance, averaged over P_n and the clip's instances (so one bandwidth describes the instance),
  weighted 10;
* **seediness**: regressed (squared error) to the detached p_n(x) on P_n (mean over P_n) and to 0 on the
  background pixels (mean over all of them, ignored ones counting as zero error), summed and divided by
  (the clip's instances + 1).

These are ``EmbeddingLoss.forward`` of the public code (stemseg/modeling/losses/embedding_loss.py) on
one clip. The public training runs one clip per forward pass (``MAX_SAMPLES_PER_GPU: 1``, batch 2 by
gradient accumulation or DistributedDataParallel, stemseg/training/main.py), so a batch's loss is the
mean of its clips' losses (a clip without instances adds 0); so it is here.

With a category head: cross-entropy of the class logits against the pixels' categories (background 0)
and binary cross-entropy of the foreground logit, averaged over the pixels that are not ignored, per
clip, then over the batch (``compute_fg_loss`` of stemseg/modeling/model_builder.py). The public
cross-entropy multiplies an already averaged loss by its ignore mask, so in effect it ignores nothing:
here it is the plain mean too.

Deviation: the public code shrinks the masks to 1/4 by bilinear interpolation cast to bytes (a pixel is
inside only where all four source pixels are); here nearest-neighbour sampling is used.

``StemSegTrainStep.forward(images, masks, categories=None)`` returns (loss, logs, preview) like the
other families' steps (:mod:`vosrt.training.steps`), so the generic loop can drive it; the recipe that
wires it into ``vosrt train`` is ``vosrt.training.recipes.stem_seg``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vosrt.training.losses import lovasz_hinge

WEIGHTS = {"lovasz": 1.0, "smoothness": 10.0, "seediness": 1.0, "semseg": 1.0, "foreground": 1.0}


def embedding_losses(embeddings: torch.Tensor, log_variances: torch.Tensor, seediness: torch.Tensor,
                     masks: torch.Tensor, free_bandwidths: torch.Tensor | None = None,
                     ignore: torch.Tensor | None = None) -> dict:
    """The three embedding losses of one batch (module docstring), unweighted.

    embeddings ``[B, E, T, h, w]``, log_variances ``[B, E−f, T, h, w]``, seediness ``[B, 1, T, h, w]``,
    masks ``[B, I, T, h, w]`` 0/1 (empty slots allowed), free_bandwidths ``[1, f]`` or None, ignore
    ``[B, T, h, w]`` bool (background pixels not to score) or None.
    Returns ``{"lovasz", "smoothness", "seediness", "instances"}``.
    """
    zero = embeddings.sum() * 0 + log_variances.sum() * 0 + seediness.sum() * 0   # keeps the graph
    lovasz, smoothness, seed_loss, instances = zero, zero, zero, 0
    for b in range(embeddings.shape[0]):
        emb = embeddings[b].flatten(1).t()                   # [P, E]
        logvar = log_variances[b].flatten(1).t()            # [P, E−f]
        seeds = seediness[b, 0].flatten()                   # [P]
        sample_masks = masks[b].flatten(1) > 0.5            # [I, P]
        present = [n for n in range(sample_masks.shape[0]) if sample_masks[n].any()]
        if not present:
            continue
        background = ~sample_masks.any(0)
        seed_terms = []
        if background.any():
            # ignored background pixels count with zero error but stay in the mean, as the public code
            bg_error = seeds[background] ** 2
            if ignore is not None:
                bg_error = torch.where(ignore[b].flatten()[background], torch.zeros_like(bg_error), bg_error)
            seed_terms.append(bg_error.mean())
        sample_smoothness = sample_lovasz = zero
        for n in present:
            inside = sample_masks[n]
            centre = emb[inside].mean(0)                                     # [E]
            bandwidth = (torch.exp(logvar[inside]) * 10.0).mean(0)           # [E−f]
            if free_bandwidths is not None:
                bandwidth = torch.cat([bandwidth, free_bandwidths.reshape(-1).to(bandwidth)])
            prob = torch.exp(-0.5 * ((emb - centre) ** 2 * bandwidth).sum(1))   # [P]
            sample_lovasz = sample_lovasz + lovasz_hinge((2 * prob - 1)[None], inside[None].to(prob))
            sample_smoothness = sample_smoothness + ((logvar[inside] - logvar[inside].mean(0)) ** 2).mean()
            seed_terms.append(F.mse_loss(seeds[inside], prob[inside].detach()))
        instances += len(present)
        lovasz = lovasz + sample_lovasz / len(present)
        smoothness = smoothness + sample_smoothness / len(present)
        seed_loss = seed_loss + sum(seed_terms) / (len(present) + 1)
    if instances == 0:
        return {"lovasz": zero, "smoothness": zero, "seediness": zero, "instances": 0}
    batch = embeddings.shape[0]
    return {"lovasz": lovasz / batch, "smoothness": smoothness / batch, "seediness": seed_loss / batch,
            "instances": instances}


def downsample_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Instance masks ``[B, I, T, H, W]`` → ``[B, I, T, h, w]`` (nearest), the network's output grid."""
    batch, count, frames = masks.shape[:3]
    small = F.interpolate(masks.flatten(0, 2)[:, None].float(), size=size, mode="nearest")
    return small.view(batch, count, frames, *size)


class StemSegTrainStep(nn.Module):
    """Runs STEm-Seg on a clip and its losses. ``forward`` returns (loss, logs, preview instance labels)."""

    def __init__(self, model: nn.Module, weights: dict | None = None):
        super().__init__()
        self.model = model
        self.weights = {**WEIGHTS, **(weights or {})}

    def forward(self, images: torch.Tensor, masks: torch.Tensor, categories: torch.Tensor | None = None,
                ignore: torch.Tensor | None = None, step: int = 0):
        """images ``[B, 3, L, H, W]`` in [0, 1]; masks ``[B, I, L, H, W]`` 0/1 per instance slot;
        categories ``[B, I]`` (category per slot, needed with a category head); ignore ``[B, L, H, W]``
        bool (background not to score)."""
        mean = images.new_tensor(self.model.input_mean).view(1, 3, 1, 1, 1)
        std = images.new_tensor(self.model.input_std).view(1, 3, 1, 1, 1)
        out = self.model((images - mean) / std)
        embeddings = out["embeddings"].float()
        small = downsample_masks(masks, embeddings.shape[-2:])
        free = self.model.embedding_loss_criterion.free_dim_bandwidths
        small_ignore = None
        if ignore is not None:
            small_ignore = downsample_masks(ignore[:, None].float(), embeddings.shape[-2:])[:, 0] > 0.5
        parts = embedding_losses(embeddings, out["log_variances"].float(), out["seediness"].float(), small, free,
                                 small_ignore)
        w = self.weights
        loss = w["lovasz"] * parts["lovasz"] + w["smoothness"] * parts["smoothness"] + w["seediness"] * parts["seediness"]
        logs = {k: float(v.detach()) for k, v in parts.items() if k != "instances"}
        if "class_logits" in out:
            if categories is None:
                raise ValueError("the model has a category head: pass categories [B, I]")
            target = (small * categories.to(small)[:, :, None, None, None]).amax(1).long()   # [B, L, h, w]
            semseg = F.cross_entropy(out["class_logits"].float(), target)
            fg_error = F.binary_cross_entropy_with_logits(out["foreground_logits"][:, 0].float(),
                                                          (small.amax(1) > 0.5).float(), reduction="none")
            if small_ignore is None:
                foreground = fg_error.mean()
            else:   # per clip over its pixels not ignored, then over the batch
                kept = (~small_ignore).to(fg_error)
                foreground = ((fg_error * kept).flatten(1).sum(1) / kept.flatten(1).sum(1).clamp(min=1)).mean()
            loss = loss + w["semseg"] * semseg + w["foreground"] * foreground
            logs.update(semseg=float(semseg.detach()), foreground=float(foreground.detach()))
        logs["loss"] = float(loss.detach())
        logs["instances"] = parts["instances"]
        with torch.no_grad():
            preview = (small * torch.arange(1, small.shape[1] + 1, device=small.device).view(1, -1, 1, 1, 1)).amax(1)
            preview = torch.where(out["seediness"][:, 0] > 0.5, preview, torch.zeros_like(preview)).long()
        return loss, logs, preview
