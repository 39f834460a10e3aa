"""Export of STEm-Seg with D²Conv3D: both forms, one D2Conv3D node per replaced layer, parity with
PyTorch (≤ 1e-4 relative), the manifest's clip and clustering settings, and ``vosrt check``.

The model's D²Conv3D layers start with D = 1 (deform_params at zero); the fixture gives them random
parameter predictors so that the exported graphs really sample off the regular grid.
"""
from __future__ import annotations

import json
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from vosrt.cli import main
from vosrt.export import onnx_ops
from vosrt.export.package import check_package, export_package
from vosrt.training import graphs
from vosrt.training.models import build_model, save_checkpoint

from sdk_packages import d2conv_layers

OUTPUTS = ["embeddings", "bandwidths", "seediness", "foreground", "categories"]

# Each test exports STEm-Seg-lite in both forms (about 30 s on 2 cores): the slow tier, which CI runs too; the
# default tier exports and streams the tiny STEm-Seg package (tests/test_stem_seg_session.py).
pytestmark = pytest.mark.slow


def _exported(folder, height, width, **overrides):
    torch.manual_seed(0)
    model = build_model("stem-seg-lite", **overrides).eval()
    for layer in d2conv_layers(model):
        torch.nn.init.normal_(layer.deform_params.weight, std=0.05)
    checkpoint = folder / "stem.pt"
    save_checkpoint(checkpoint, model)
    package = export_package("stem-seg-lite", checkpoint, folder / "pkg", height, width)
    return model, checkpoint, package


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return _exported(tmp_path_factory.mktemp("stem80"), 80, 96)


def _portable_vs_torch(model, package, height, width, seed=3):
    spec = graphs.graphs_for(model)["embed_clip"]
    (clip,) = spec.example(height, width, generator=torch.Generator().manual_seed(seed))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(package / "embed_clip.portable.onnx"), options,
                                   providers=["CPUExecutionProvider"])
    got = session.run(OUTPUTS, {"clip": clip.numpy()})
    with torch.no_grad():
        expected = [t.numpy() for t in spec.module(clip)]
    return got, expected


def _relative(got, expected):
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def test_portable_form_matches_pytorch(small):
    model, _, package = small
    got, expected = _portable_vs_torch(model, package, 80, 96)
    assert [g.shape for g in got] == [(1, 4, 8, 20, 24), (1, 4, 8, 20, 24), (1, 1, 8, 20, 24),
                                      (1, 1, 8, 20, 24), (1, 2, 8, 20, 24)]
    for name, g, e in zip(OUTPUTS, got, expected):
        assert _relative(g, e) <= 1e-4, name


def test_plugin_form_has_one_d2conv3d_node_per_replaced_layer(small):
    model, _, package = small
    plugin = onnx.load(str(package / "embed_clip.plugin.onnx"))
    portable = onnx.load(str(package / "embed_clip.portable.onnx"))
    nodes = [n for n in plugin.graph.node if n.domain == onnx_ops.PLUGIN_DOMAIN]
    assert [n.op_type for n in nodes] == ["D2Conv3D"] * len(d2conv_layers(model)) == ["D2Conv3D"] * 10
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in plugin.graph.initializer}
    for layer in d2conv_layers(model):   # each layer's kernel is the weight input of exactly one node
        kernel = layer.deform_conv.weight.detach().numpy()
        assert sum(np.array_equal(weights.get(n.input[3]), kernel) for n in nodes) == 1
    assert not any(n.domain == onnx_ops.PLUGIN_DOMAIN for n in portable.graph.node)
    for form in (plugin, portable):
        onnx.checker.check_model(form, full_check=True)
        assert form.ir_version == 10
        assert max(o.version for o in form.opset_import if o.domain in ("", "ai.onnx")) >= 20


def test_manifest_records_clip_and_clustering_settings(small):
    model, checkpoint, package = small
    manifest = json.loads((package / "manifest.json").read_text())
    assert (manifest["family"], manifest["variant"]) == ("stem-seg", "stem-seg-lite")
    assert manifest["streaming"] == {"clip_length": 8, "overlap": 4, "min_seediness": 0.8,
                                     "foreground_threshold": 0.25, "max_instances": 20}
    assert manifest["layout"] == "NCTHW"
    assert manifest["io"]["embed_clip"]["outputs"] == OUTPUTS
    assert manifest["input"]["mean"] == pytest.approx(list(model.input_mean))


def test_check_package_and_vosrt_check_pass(small):
    _, _, package = small
    report = check_package(package)
    assert set(report["embed_clip"]) == set(OUTPUTS)
    assert all(r["max_rel"] <= 1e-4 for r in report["embed_clip"].values())
    assert main(["check", str(package)]) == 0


def test_portable_parity_with_a_category_head(tmp_path):
    model, _, package = _exported(tmp_path, 80, 112, num_classes=4, seediness_head=False)
    got, expected = _portable_vs_torch(model, package, 80, 112)
    assert got[4].shape == (1, 4, 8, 20, 28)
    for name, g, e in zip(OUTPUTS, got, expected):
        assert _relative(g, e) <= 1e-4, name
