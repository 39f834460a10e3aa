"""Soft aggregation (STM, kept by STCN): merge independent per-object probabilities into one
distribution over {background, objects} at every pixel."""
from __future__ import annotations

import math

import torch

# Keeps log(p / (1 − p)) finite.
EPSILON = 1e-7
# logit(1 − EPSILON): clamping p to [EPSILON, 1 − EPSILON] clamps its logit to ±LOGIT_BOUND.
LOGIT_BOUND = math.log((1 - EPSILON) / EPSILON)


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


def soft_aggregate_logits(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`soft_aggregate` of ``sigmoid(logits)`` (``[O, 1, H, W]``), computed from the logits: the same
    formula, without its rounding. Clamping p = sigmoid(x) to [ε, 1 − ε] and taking log(p / (1 − p)) is
    clamping x to ±LOGIT_BOUND, and the background's log Π(1 − p_i) is −Σ softplus(x_i). Through p, a
    confident object's logit is decided by the last bits of its sigmoid (1 − p near 1e-7, one float32 step
    apart: the logit moves by up to log 2), so two confident objects at one pixel split it 1:1 in one runtime
    and 2:1 in another; from the logits, every runtime computes the same split."""
    log_background = -torch.nn.functional.softplus(logits).sum(dim=0, keepdim=True)   # log Π(1 − p_i)
    # log(b / (1 − b)) with 1 − b = −expm1(log b); b = 1 (log b = 0) gives +inf, clamped below like the rest
    background = log_background - torch.log(-torch.expm1(log_background))
    stacked = torch.cat([background, logits], dim=0).clamp(-LOGIT_BOUND, LOGIT_BOUND)   # [O+1, 1, H, W]
    return torch.softmax(stacked, dim=0), stacked
