"""Load the VMZ model-zoo ir-CSN weights (Caffe2 ``.pkl``) into the 3DC-Seg encoder.

The VMZ Caffe2 checkpoints (ir-CSN-152 / ir-CSN-50, Kinetics-finetuned) are Python pickles of
``{"blobs": {name: numpy array}}``. Blob names, with ``i`` counting bottlenecks over the whole network
(ir-CSN-152 stages start at 0, 3, 11, 47; ir-CSN-50 at 0, 3, 7, 13):

| blob | our parameter |
| --- | --- |
| ``conv1_w`` | ``stem.conv1.weight`` |
| ``conv1_spatbn_relu_{s,b,rm,riv}`` | ``stem.bn1.{weight,bias,running_mean,running_var}`` |
| ``comp_{i}_conv_1_w``, ``comp_{i}_spatbn_1_*`` | ``layerS.j.conv1``, ``bn1`` (1×1×1 reduce) |
| ``comp_{i}_conv_3_w``, ``comp_{i}_spatbn_3_*`` | ``layerS.j.conv2``, ``bn2`` (depthwise 3×3×3; VMZ numbers it 3) |
| ``comp_{i}_conv_4_w``, ``comp_{i}_spatbn_4_*`` | ``layerS.j.conv3``, ``bn3`` (1×1×1 expand) |
| ``shortcut_projection_{i}_w``, ``shortcut_projection_{i}_spatbn_*`` | ``layerS.0.downsample.0``, ``.1`` |
| ``last_out_L400_{w,b}`` | the Kinetics classifier: not part of the encoder, ignored |

As in the public D²Conv3D converter, ``_riv`` is copied into ``running_var`` unchanged and batch norms use
ε = 1e-3 (``FrozenBatchNorm3d`` default). Checkpoints that the public converter already turned into a
PyTorch ``.pth`` (``conv1.weight``, ``bn1.*``, ``layerS.j.*``, ``fc.*``) are accepted too.
"""
from __future__ import annotations

import importlib
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vosrt.sdk.errors import UserError
from vosrt.training.models.csn import FrozenBatchNorm3d, IrCSN

_BN_SUFFIXES = {"weight": "_s", "bias": "_b", "running_mean": "_rm", "running_var": "_riv"}

# The only globals a weights pickle needs: numpy array reconstruction (numpy 1.x and 2.x module names).
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("collections", "OrderedDict"),
}


class _WeightsUnpickler(pickle.Unpickler):
    # A .pkl from the internet may name any callable; allow only what arrays are rebuilt from.
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a weights file")
        if module.startswith("numpy.core"):
            try:  # numpy 2 renamed numpy.core to numpy._core
                return getattr(importlib.import_module(module.replace("numpy.core", "numpy._core")), name)
            except ImportError:
                pass
        return super().find_class(module, name)


def read_caffe2_blobs(path: str | Path) -> dict[str, np.ndarray]:
    """The ``blobs`` dict of a Caffe2 ``.pkl`` (Python 2 pickles are read with latin-1 strings)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Caffe2 weights not found: {path}")
    try:
        with path.open("rb") as f:
            payload = _WeightsUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise UserError(f"{path} is not a Caffe2 weights pickle of numpy arrays: {err}") from None
    blobs = payload.get("blobs", payload) if isinstance(payload, dict) else None
    if not isinstance(blobs, dict) or not all(isinstance(v, np.ndarray) for v in blobs.values()):
        raise UserError(f"{path}: expected a pickle of {{'blobs': {{name: array}}}} (VMZ model zoo format)")
    return blobs


def blob_names(depths) -> dict[str, str]:
    """Map from our IrCSN parameter/buffer names to VMZ blob names for an encoder with ``depths``."""
    names = {"stem.conv1.weight": "conv1_w"}
    names.update({f"stem.bn1.{k}": f"conv1_spatbn_relu{s}" for k, s in _BN_SUFFIXES.items()})
    block = 0
    for stage, depth in enumerate(depths, start=1):
        for j in range(depth):
            prefix = f"layer{stage}.{j}"
            for ours, theirs in ((1, 1), (2, 3), (3, 4)):
                names[f"{prefix}.conv{ours}.weight"] = f"comp_{block}_conv_{theirs}_w"
                names.update({f"{prefix}.bn{ours}.{k}": f"comp_{block}_spatbn_{theirs}{s}"
                              for k, s in _BN_SUFFIXES.items()})
            if j == 0:
                names[f"{prefix}.downsample.0.weight"] = f"shortcut_projection_{block}_w"
                names.update({f"{prefix}.downsample.1.{k}": f"shortcut_projection_{block}_spatbn{s}"
                              for k, s in _BN_SUFFIXES.items()})
            block += 1
    return names


def _encoder_of(model: nn.Module) -> IrCSN:
    encoder = model if isinstance(model, IrCSN) else getattr(model, "encoder", None)
    if not isinstance(encoder, IrCSN):
        raise UserError(f"expected an IrCSN encoder or a 3DC-Seg model, got {type(model).__name__}")
    return encoder


def encoder_state_from_blobs(encoder: IrCSN, blobs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """State dict for ``encoder`` from Caffe2 blobs; UserError naming the first missing or misshaped blob."""
    n_blocks = sum(1 for k in blobs if k.startswith("comp_") and k.endswith("_conv_1_w"))
    if n_blocks != sum(encoder.depths):
        raise UserError(f"the weights hold {n_blocks} bottlenecks but the encoder has {sum(encoder.depths)} "
                        f"(depths {list(encoder.depths)}); ir-CSN-152 has 50, ir-CSN-50 has 16")
    expected = encoder.state_dict()
    names = blob_names(encoder.depths)
    missing = [blob for blob in names.values() if blob not in blobs]
    if missing:
        raise UserError(f"Caffe2 weights lack {len(missing)} blob(s) the encoder needs, e.g. {', '.join(missing[:5])}")
    state = {}
    for ours, blob in names.items():
        tensor = torch.from_numpy(np.ascontiguousarray(blobs[blob], dtype=np.float32))
        if tuple(tensor.shape) != tuple(expected[ours].shape):
            raise UserError(f"blob {blob} has shape {tuple(tensor.shape)}, but {ours} needs "
                            f"{tuple(expected[ours].shape)}: weights for another width?")
        state[ours] = tensor
    return state


def _encoder_state_from_pth(state_dict: dict) -> dict:
    # Output of the public converter: a torchvision-style ResNet with conv1/bn1 at the top and an fc head.
    renamed = {}
    for key, value in state_dict.items():
        if key.startswith(("fc.", "module.fc.")) or key.endswith("num_batches_tracked"):
            continue
        key = key.removeprefix("module.")
        if key.startswith(("conv1.", "bn1.")):
            key = "stem." + key
        renamed[key] = value
    return renamed


def load_backbone_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Load ir-CSN Kinetics weights (VMZ ``.pkl`` or the public converter's ``.pth``) into ``model``'s encoder.

    ``model`` is a 3DC-Seg network or an IrCSN. Returns the names of blobs that were not used (the
    classifier, solver state), so callers can log them. Raises UserError when the file does not fit.
    """
    encoder = _encoder_of(model)
    path = Path(path)
    if path.suffix == ".pkl":
        blobs = read_caffe2_blobs(path)
        state = encoder_state_from_blobs(encoder, blobs)
        unused = sorted(set(blobs) - set(blob_names(encoder.depths).values()))
    else:
        from vosrt.training.models import load_payload

        try:  # one line, never torch's advice to load with weights_only=False (which runs the file's code)
            raw = load_payload(path)
        except UserError as err:
            raise UserError(f"{err}; expected ir-CSN backbone weights (a Caffe2 .pkl, or a state_dict of tensors)") from None
        for wrapper in ("state_dict", "model"):   # the public loaders unwrap both (D²Conv3D utils/util.py)
            if isinstance(raw, dict) and isinstance(raw.get(wrapper), dict):
                raw = raw[wrapper]
        if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
            raise UserError(f"{path}: expected ir-CSN backbone weights (a Caffe2 .pkl, or a state_dict of tensors), "
                            f"got a {type(raw).__name__}{' of other values' if isinstance(raw, dict) else ''}")
        state = _encoder_state_from_pth(raw)
        unused = []
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError:
        from vosrt.training.models import state_dict_mismatch

        # a few names of each kind: torch's message lists every key, hundreds of lines for another network
        raise UserError(f"{path}: backbone weights do not fit the encoder (ir-CSN depths {list(encoder.depths)}): "
                        f"{state_dict_mismatch(encoder.state_dict(), state)}") from None
    for module in encoder.modules():  # the Caffe2 models were trained with this epsilon
        if isinstance(module, FrozenBatchNorm3d):
            module.eps = 1e-3
    return unused
