"""Export of 3DC-Seg with D²Conv3D: portable parity at 8×240×432 and the plugin form's D2Conv3D nodes.

The model's D²Conv3D layers start with D = 1 (deform_params at zero); the fixtures give them random
parameter predictors so that the exported graphs really sample off the regular grid. The graph checks use
the tests' tiny 3dc-seg package (tests/sdk_packages.py: one bottleneck per stage, the full decoder); the
parity test exports 3dc-seg-lite at 8×240×432.
"""
from __future__ import annotations

import collections
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from vosrt.export import onnx_ops
from vosrt.export.package import export_package, resolve_model
from vosrt.sdk.errors import UserError
from vosrt.training import graphs
from vosrt.training.models import build_model, load_checkpoint, save_checkpoint

from sdk_packages import d2conv_layers, tiny_checkpoint, tiny_package

L, H, W = 8, 256, 448  # multiples of 32, as 3dc-seg packages are


@pytest.fixture(scope="module")
def c3d():
    """(model, checkpoint, package folder) of the tests' tiny 3dc-seg, dilations away from 1, both forms."""
    package = tiny_package("3dc-seg", ("plugin", "portable"))
    checkpoint = tiny_checkpoint("3dc-seg")
    return load_checkpoint(checkpoint)[0].eval(), checkpoint, package


@pytest.fixture(scope="module")
def c3d_480p(tmp_path_factory):
    """(model, checkpoint, package folder) of a 3dc-seg-lite with dilations away from 1, exported at 8×256×448."""
    folder = tmp_path_factory.mktemp("c3d")
    torch.manual_seed(0)
    model = build_model("3dc-seg-lite").eval()
    for layer in d2conv_layers(model):
        torch.nn.init.normal_(layer.deform_params.weight, std=0.02)
    checkpoint = folder / "c3d.pt"
    save_checkpoint(checkpoint, model)
    package = export_package("3dc-seg-lite", checkpoint, folder / "pkg", H, W)
    return model, checkpoint, package


def _manifest(package):
    return json.loads((package / "manifest.json").read_text())


@pytest.mark.slow
def test_3dc_seg_lite_clip_portable_matches_pytorch_at_8x256x448(c3d_480p):
    model, _, package = c3d_480p
    spec = graphs.graphs_for(model)["segment_clip"]
    (clip,) = spec.example(H, W, generator=torch.Generator().manual_seed(4))
    assert clip.shape == (1, 3, L, H, W)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(package / "segment_clip.portable.onnx"), options,
                                   providers=["CPUExecutionProvider"])
    (prob,) = session.run(["prob"], {"clip": clip.numpy()})
    stretch = []  # max |D − 1| of every D²Conv3D layer during the PyTorch run
    hooks = [layer.deform_params.register_forward_hook(
        lambda module, args, out: stretch.append(float(torch.nn.functional.elu(out[:, :3]).abs().max())))
        for layer in d2conv_layers(model)]
    try:
        with torch.no_grad():
            expected = spec.module(clip).numpy()
    finally:
        for hook in hooks:
            hook.remove()
    assert min(stretch) > 0.05  # every D²Conv3D layer samples off the regular grid
    assert prob.shape == (1, 1, L, H, W)
    assert np.abs(prob - expected).max() <= 1e-4


def _producer(model, name):
    return next((n for n in model.graph.node if name in n.output), None)


def test_plugin_form_holds_one_d2conv3d_node_per_layer_with_its_geometry_and_weights(c3d):
    model, _, package = c3d
    onnx_model = onnx.load(str(package / "segment_clip.plugin.onnx"))
    nodes = [n for n in onnx_model.graph.node if n.domain == onnx_ops.PLUGIN_DOMAIN]
    layers = d2conv_layers(model)
    assert len(layers) > 0 and [n.op_type for n in nodes] == ["D2Conv3D"] * len(layers)
    initializers = {i.name: onnx.numpy_helper.to_array(i) for i in onnx_model.graph.initializer}
    unmatched = list(layers)
    for node in nodes:
        # Inputs X, D, M, Wt, B: the weights identify the layer, D = 1 + elu(·) ends in Add, M in Sigmoid.
        assert len(node.input) == 5
        weight, bias = initializers[node.input[3]], initializers[node.input[4]]
        layer = next(l for l in unmatched if np.array_equal(l.deform_conv.weight.detach().numpy(), weight))
        unmatched.remove(layer)
        assert np.array_equal(layer.deform_conv.bias.detach().numpy(), bias)
        assert _producer(onnx_model, node.input[1]).op_type == "Add"
        assert _producer(onnx_model, node.input[2]).op_type == "Sigmoid"
        conv = layer.deform_conv
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs == {"kernel_shape": list(conv.kernel_size), "strides": list(conv.stride),
                         "pads": list(conv.padding), "dilations": list(conv.dilation), "group": conv.groups,
                         "plugin_version": b"1", "plugin_namespace": b""}
    assert not unmatched


def test_plugin_and_portable_clip_graphs_are_the_same_outside_d2conv3d(c3d):
    _, _, package = c3d

    def outside(model):
        keep = []
        for n in model.graph.node:
            meta = {p.key: p.value for p in n.metadata_props}
            if n.domain != onnx_ops.PLUGIN_DOMAIN and "vosrt.d2conv3d" not in meta.get(
                    "pkg.torch.onnx.class_hierarchy", ""):
                keep.append(n.op_type)
        return collections.Counter(keep)

    plugin = onnx.load(str(package / "segment_clip.plugin.onnx"))
    portable = onnx.load(str(package / "segment_clip.portable.onnx"))
    assert outside(plugin) == outside(portable)
    assert "GridSample" in {n.op_type for n in portable.graph.node}
    for model in (plugin, portable):
        onnx.checker.check_model(model, full_check=True)
        assert model.ir_version == 10


def test_3dc_seg_manifest_records_clip_streaming_and_normalisation(c3d):
    model, checkpoint, package = c3d
    manifest = _manifest(package)
    assert (manifest["family"], manifest["variant"]) == ("3dc-seg", "3dc-seg-lite")
    assert manifest["streaming"] == {"clip_length": 8, "overlap": 3}
    assert manifest["graphs"] == {"segment_clip": {"plugin": "segment_clip.plugin.onnx",
                                                   "portable": "segment_clip.portable.onnx"}}
    assert manifest["input"]["mean"] == pytest.approx(list(model.input_mean))
    assert manifest["input"]["layout"] == manifest["layout"] == "NCTHW"   # the clip input [1, 3, L, H, W]
    assert manifest["source"]["checkpoint"] == str(checkpoint.resolve())


def test_3dc_seg_checkpoint_for_an_stcn_export_is_an_error(c3d, tmp_path):
    _, checkpoint, _ = c3d
    with pytest.raises(UserError, match="'3dc-seg' model"):
        export_package("stcn", checkpoint, tmp_path / "out", 64, 96)
    with pytest.raises(UserError, match="'3dc-seg' model"):
        resolve_model("stcn-lite", checkpoint)
