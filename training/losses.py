"""Training losses of the two families.

- STCN: bootstrapped cross-entropy. Plain cross-entropy for the first ``start_warm`` iterations, then
  the mean over only the hardest fraction ``p`` of the pixels, ``p`` falling linearly from 1 to
  ``top_p`` (0.15) until ``end_warm`` (published: 20k and 70k iterations).
- 3DC-Seg: the Lovász hinge (Berman et al. 2018), a convex surrogate of the Jaccard index computed per
  clip on the foreground logits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def bootstrap_fraction(step: int, start_warm: int = 20000, end_warm: int = 70000, top_p: float = 0.15) -> float:
    """Fraction of pixels the bootstrapped cross-entropy keeps at ``step``."""
    if step < start_warm:
        return 1.0
    if step >= end_warm:
        return top_p
    return top_p + (1 - top_p) * (end_warm - step) / max(end_warm - start_warm, 1)


def bootstrapped_cross_entropy(logits: torch.Tensor, target: torch.Tensor, step: int, start_warm: int = 20000,
                               end_warm: int = 70000, top_p: float = 0.15) -> tuple[torch.Tensor, float]:
    """logits ``[B, C, H, W]``, target ``[B, H, W]`` class ids -> (loss, fraction of pixels kept)."""
    fraction = bootstrap_fraction(step, start_warm, end_warm, top_p)
    if fraction >= 1.0:
        return F.cross_entropy(logits, target), 1.0
    per_pixel = F.cross_entropy(logits, target, reduction="none").flatten()
    kept = max(1, int(per_pixel.numel() * fraction))
    hardest, _ = torch.topk(per_pixel, kept, sorted=False)
    return hardest.mean(), fraction


def _lovasz_gradient(sorted_truth: torch.Tensor) -> torch.Tensor:
    # Jaccard loss of the prefixes of the error-sorted pixels; its discrete derivative weights the errors.
    positives = sorted_truth.sum()
    intersection = positives - sorted_truth.cumsum(0)
    union = positives + (1 - sorted_truth).cumsum(0)
    jaccard = 1 - intersection / union
    if jaccard.numel() > 1:
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return jaccard


def lovasz_hinge(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Lovász hinge, averaged over the batch: logits ``[B, ...]`` (any trailing shape, e.g. a clip
    ``[1, T, H, W]``), truth of the same shape with 0/1 foreground."""
    losses = []
    for sample_logits, sample_truth in zip(logits.flatten(1), truth.flatten(1).to(logits.dtype)):
        signs = 2 * sample_truth - 1
        errors = 1 - sample_logits * signs
        errors_sorted, order = torch.sort(errors, descending=True)
        gradient = _lovasz_gradient(sample_truth[order])
        losses.append(torch.dot(F.relu(errors_sorted), gradient))
    return torch.stack(losses).mean()
