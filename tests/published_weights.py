"""Synthetic stand-ins for published checkpoints: the names and shapes listed in a TSV under tests/data/ (read
off the public code; ``#`` lines are comments), filled with seeded random values that load like real weights."""
from __future__ import annotations

from pathlib import Path

import torch


def published_shapes(path: Path) -> dict:
    """``{name: shape}`` of a TSV of ``name<TAB>[d0, d1, ...]`` lines."""
    shapes = {}
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            continue
        name, shape = line.split("\t")
        shapes[name] = tuple(int(d) for d in shape.strip("[]").split(",") if d.strip())
    return shapes


def random_state_dict(shapes: dict, seed: int = 0) -> dict:
    """Small random tensors of ``shapes``; running variances positive, batch-norm counters and STEm-Seg's
    free-dimension bandwidths (std 0.3) as the published files hold them."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in shapes.items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(1000)
            continue
        value = torch.randn(shape, generator=generator) * 0.05
        if name.endswith("free_dim_bandwidths"):
            value = torch.full(shape, 1 / 0.3 ** 2)
        state[name] = value.abs() + 0.5 if name.endswith("running_var") else value
    return state
