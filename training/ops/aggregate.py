"""Soft aggregation (STM, kept by STCN): merge independent per-object probabilities into one
distribution over {background, objects} at every pixel."""
from __future__ import annotations

import torch

# Keeps log(p / (1 − p)) finite.
EPSILON = 1e-7


def soft_aggregate(prob: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """prob ``[O, 1, H, W]`` (sigmoid of each object's logits) -> (probabilities, logits), both
    ``[O+1, 1, H, W]`` with the background first.

    background = Π_i (1 − p_i); each of the O+1 maps is clamped to [1e-7, 1 − 1e-7] and turned into
    the logit log(p / (1 − p)); probabilities = softmax of the logits over the O+1 maps.
    """
    background = torch.prod(1 - prob, dim=0, keepdim=True)  # [1, 1, H, W]
    stacked = torch.cat([background, prob], dim=0).clamp(EPSILON, 1 - EPSILON)  # [O+1, 1, H, W]
    logits = torch.log(stacked / (1 - stacked))
    return torch.softmax(logits, dim=0), logits
