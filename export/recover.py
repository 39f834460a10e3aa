"""A checkpoint recovered from a package's portable ONNX graphs (when the training checkpoint is lost).

Export traces the model in eval mode, so every BatchNorm is folded into the convolution before it:
the graph holds ``w' = w·γ/σ`` and ``b' = (b − μ)·γ/σ + β`` under the convolution's names (``b'`` as
``CONV.bias``, or ``CONV.weight_bias`` for a convolution without bias). The recovered checkpoint puts
``w'``/``b'`` back into the convolution and makes the BatchNorm the identity (γ = 1, β = 0 or ``b'``,
μ = 0, σ² = 1 − ε). It computes the same function as the lost checkpoint in eval mode (check it with
``vosrt check``), and it is what exports, the torch backend and ``vosrt bench --compare torch`` need;
it is no starting point for fine-tuning (the BatchNorm statistics are gone).

    python -m vosrt.export.recover sdk/models/stcn-lite sdk/models/stcn-lite/checkpoint.pth
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from vosrt.sdk.errors import UserError, first_few
from vosrt.sdk.package import load_package
from vosrt.training.models import build_model, save_checkpoint

PREFIX = "model."  # export wraps the model; its parameters are named model.<state_dict key>


def onnx_weights(package) -> dict[str, np.ndarray]:
    """Every initializer of the package's portable graphs named after a model parameter, by state_dict
    key (without the ``model.`` prefix)."""
    weights = {}
    for graph in package.graphs:
        model = onnx.load(str(package.graph_path(graph, "portable")))
        for tensor in model.graph.initializer:
            if tensor.name.startswith(PREFIX):
                weights[tensor.name[len(PREFIX):]] = numpy_helper.to_array(tensor)
    return weights


def _conv_before(parent: torch.nn.Module, bn_name: str) -> str | None:
    # The convolution a BatchNorm normalises is the one registered just before it in the same parent
    # (ResNet's conv1/bn1, conv2/bn2, downsample.0/downsample.1).
    previous = None
    for name, child in parent.named_children():
        if name == bn_name:
            return previous
        previous = name if isinstance(child, torch.nn.Conv2d) else None
    return None


def recover_model(package_dir) -> tuple[torch.nn.Module, dict]:
    """(model, config) of the package's network with the weights of its portable graphs (module doc)."""
    package = load_package(package_dir)
    if "portable" not in package.forms:
        raise UserError(f"{package.path}: recovering weights needs the portable form of every graph")
    config = dict(package.manifest.get("config") or {})
    if "model" not in config:
        raise UserError(f"{package.path}: the manifest's 'config' does not name the model")
    model = build_model(config["model"], **{k: v for k, v in config.items() if k != "model"}).eval()
    weights = onnx_weights(package)
    state = model.state_dict()
    recovered = {}
    modules = dict(model.named_modules())
    for name, module in modules.items():
        if not isinstance(module, torch.nn.BatchNorm2d):
            continue
        parent_name, _, bn_name = name.rpartition(".")
        conv_name = _conv_before(modules[parent_name], bn_name)
        if conv_name is None:
            raise UserError(f"cannot tell which convolution BatchNorm '{name}' follows")
        conv = f"{parent_name}.{conv_name}" if parent_name else conv_name
        folded_bias = weights.get(f"{conv}.weight_bias", weights.get(f"{conv}.bias"))
        if folded_bias is None or f"{conv}.weight" not in weights:
            raise UserError(f"{package.path}: no folded weights of '{conv}' (BatchNorm '{name}') in the graphs")
        channels = module.num_features
        recovered[f"{conv}.weight"] = weights[f"{conv}.weight"]
        if f"{conv}.bias" in state:
            recovered[f"{conv}.bias"] = folded_bias
            recovered[f"{name}.bias"] = np.zeros(channels, np.float32)
        else:
            recovered[f"{name}.bias"] = folded_bias
        recovered[f"{name}.weight"] = np.ones(channels, np.float32)
        recovered[f"{name}.running_mean"] = np.zeros(channels, np.float32)
        recovered[f"{name}.running_var"] = np.full(channels, 1.0 - module.eps, np.float32)
    for key in state:
        if key not in recovered and key in weights:
            recovered[key] = weights[key]
    missing = [k for k in state if k not in recovered and not k.endswith("num_batches_tracked")]
    if missing:
        raise UserError(f"{package.path}: the graphs hold no weights for {first_few(missing)}")
    for key, value in recovered.items():
        if tuple(value.shape) != tuple(state[key].shape):
            raise UserError(f"{package.path}: weight '{key}' has shape {list(value.shape)} in the graphs, "
                            f"the model expects {list(state[key].shape)}")
        state[key] = torch.from_numpy(np.array(value, dtype=np.float32, copy=True)).to(state[key].dtype)
    model.load_state_dict(state, strict=True)
    return model, dict(model.config)


def recover_checkpoint(package_dir, out: str | Path) -> Path:
    """Write the recovered checkpoint of ``package_dir`` to ``out`` (a vosrt checkpoint); returns it."""
    model, config = recover_model(package_dir)
    save_checkpoint(out, model, config, recovered_from=str(Path(package_dir).name))
    return Path(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vosrt.export.recover", description=__doc__.split("\n")[0])
    parser.add_argument("package", help="model package folder with the portable form")
    parser.add_argument("out", help="checkpoint file to write")
    args = parser.parse_args(argv)
    try:
        path = recover_checkpoint(args.package, args.out)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"checkpoint written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
