"""Tiny random-weight model packages for the SDK tests, exported once per test process.

Each package is a real ``vosrt.export.export_package`` output (portable ONNX form) of a narrowed
``-lite`` model saved as a checkpoint first, so the torch backend can reproduce it. Sizes are chosen so
that thousands of frames stream in seconds on a 2-core CPU.
"""
from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

_ROOT: Path | None = None
_CACHE: dict[str, Path] = {}

# name -> (model, config overrides, height, width, streaming overrides)
SPECS = {
    "stcn": ("stcn-lite", {"value_widths": (16, 32, 64), "value_dim": 64, "f16_thin_dim": 64,
                           "decoder_dims": (64, 32, 32)}, 32, 32, {"mem_every": 5, "top_k": 20, "memory_capacity": 8}),
    "3dc-seg": ("3dc-seg-lite", {}, 32, 32, {"clip_length": 8, "overlap": 3}),
}


def tiny_package(kind: str) -> Path:
    """Path of the tiny ``kind`` (``"stcn"`` or ``"3dc-seg"``) package, exporting it on first use."""
    global _ROOT
    if kind in _CACHE:
        return _CACHE[kind]
    import torch

    from vosrt.export.package import export_package
    from vosrt.training.models import build_model, save_checkpoint

    if _ROOT is None:
        _ROOT = Path(tempfile.mkdtemp(prefix="vosrt-sdk-tests-"))
        atexit.register(shutil.rmtree, _ROOT, True)
    name, overrides, height, width, streaming = SPECS[kind]
    torch.manual_seed(0)
    model = build_model(name, **overrides)
    checkpoint = _ROOT / f"{kind}.pth"
    save_checkpoint(checkpoint, model)
    out = export_package(name, checkpoint, _ROOT / kind, height, width, forms=["portable"], streaming=streaming)
    _CACHE[kind] = Path(out)
    return _CACHE[kind]
