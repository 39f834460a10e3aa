"""Test helper: the published STCN parameter listing (tests/data/stcn_state_dict.tsv, a copy of
shared/reference/stcn_state_dict.tsv) and random state_dicts with exactly those keys and shapes."""
from pathlib import Path

import torch

REFERENCE_TSV = Path(__file__).parent / "data" / "stcn_state_dict.tsv"


def published_shapes() -> dict:
    """name -> shape of every tensor in a published STCN checkpoint (the reference listing)."""
    shapes = {}
    for line in REFERENCE_TSV.read_text().splitlines():
        name, shape = line.split("\t")
        shapes[name] = tuple(int(d) for d in shape.strip("[]").split(",") if d.strip())
    return shapes


def random_published_state_dict(seed: int = 0) -> dict:
    """A state_dict with exactly the published keys and shapes and random values."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in published_shapes().items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(7, dtype=torch.long)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[name] = torch.randn(shape, generator=generator) * 0.05
    return state
