"""The graph modules and the two custom operators' ONNX translations, on small inputs.

Each translation is exported through the real dynamo exporter and run in ONNX Runtime against the
PyTorch reference operators (vosrt.training.ops), which are the source of truth.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from vosrt.export import onnx_ops
from vosrt.training import graphs
from vosrt.training.ops.aggregate import soft_aggregate
from vosrt.training.ops.d2conv3d import d2conv3d
from vosrt.training.ops.l2_readout import l2_memory_readout

from operator_inputs import infinite_key_readout_inputs, nan_readout_inputs, same_nans_and_close


class TinyD2Conv(torch.nn.Module):
    """One D²Conv3D layer as the networks use it: a Conv3d predicts D = 1 + elu(·) and M = sigmoid(·)."""

    def __init__(self, channels=6, out_channels=8, kernel=(3, 3, 3), stride=(1, 1, 1), padding=(1, 1, 1),
                 dilation=(1, 1, 1), groups=1, bias=True, modulation=True):
        super().__init__()
        points = kernel[0] * kernel[1] * kernel[2]
        self.geometry = (list(stride), list(padding), list(dilation), groups)
        self.modulation = modulation
        self.deform_params = torch.nn.Conv3d(channels, 3 + points, kernel, stride=stride, padding=padding,
                                             dilation=dilation)
        torch.nn.init.normal_(self.deform_params.weight, std=0.3)  # dilations well away from 1
        self.weight = torch.nn.Parameter(torch.randn(out_channels, channels // groups, *kernel) * 0.2)
        self.bias = torch.nn.Parameter(torch.randn(out_channels)) if bias else None

    def forward(self, x):
        params = self.deform_params(x)
        dilation = 1 + F.elu(params[:, :3])  # [N, 3, To, Ho, Wo]
        modulation = torch.sigmoid(params[:, 3:]) if self.modulation else None  # [N, K, To, Ho, Wo]
        stride, padding, dil, groups = self.geometry
        return torch.ops.vosrt.d2conv3d(x, dilation, modulation, self.weight, self.bias, stride, padding, dil, groups)


def _export(module, args, form):
    program = torch.export.export(module.eval(), args)
    model = torch.onnx.export(program, (), dynamo=True, opset_version=onnx_ops.OPSET,
                              custom_translation_table=onnx_ops.translation_table(form)).model_proto
    model.ir_version = onnx_ops.IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def _run(model, *arrays):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, dict(zip(names, arrays)))


D2_CASES = {
    "3x3x3": {},
    "strided-grouped-nobias": {"stride": (1, 2, 2), "groups": 2, "bias": False},
    "1x3x3-dilated-no-modulation": {"kernel": (1, 3, 3), "padding": (0, 2, 2), "dilation": (1, 2, 2),
                                    "modulation": False},
    # neither optional input: the plugin form failed to export ("Required parameter 'Wt' is not provided")
    "3x3x3-no-modulation-nobias": {"modulation": False, "bias": False},
}


@pytest.fixture(scope="module", params=list(D2_CASES))
def d2_case(request):
    """(options, module, x, expected output, {form: ONNX model}) of one D²Conv3D layer, traced once."""
    kw = D2_CASES[request.param]
    torch.manual_seed(0)
    module = TinyD2Conv(**kw).eval()
    x = torch.randn(1, 6, 5, 9, 11)
    with torch.no_grad():
        expected = module(x).numpy()
    program = torch.export.export(module, (x,))
    models = {}
    for form in ("plugin", "portable"):
        model = torch.onnx.export(program, (), dynamo=True, opset_version=onnx_ops.OPSET,
                                  custom_translation_table=onnx_ops.translation_table(form)).model_proto
        model.ir_version = onnx_ops.IR_VERSION
        models[form] = model
    return kw, module, x, expected, models


def test_d2conv3d_translations_pass_the_full_onnx_check(d2_case):
    for model in d2_case[4].values():
        onnx.checker.check_model(model, full_check=True)


def test_d2conv3d_portable_translation_matches_reference(d2_case):
    _, _, x, expected, models = d2_case
    model = models["portable"]
    assert not any(n.domain for n in model.graph.node)  # standard ONNX only
    (actual,) = _run(model, x.numpy())
    assert np.abs(actual - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())


def test_d2conv3d_plugin_translation_is_one_node_with_present_inputs_in_contract_order(d2_case):
    kw, module, _, _, models = d2_case
    model = models["plugin"]
    nodes = [n for n in model.graph.node if n.domain == onnx_ops.PLUGIN_DOMAIN]
    assert [n.op_type for n in nodes] == ["D2Conv3D"]
    node = nodes[0]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"kernel_shape": list(kw.get("kernel", (3, 3, 3))), "strides": list(kw.get("stride", (1, 1, 1))),
                     "pads": list(kw.get("padding", (1, 1, 1))), "dilations": list(kw.get("dilation", (1, 1, 1))),
                     "group": kw.get("groups", 1), "plugin_version": b"1", "plugin_namespace": b""}
    initializers = {i.name: tuple(i.dims) for i in model.graph.initializer}
    expected_inputs = 3 + kw.get("modulation", True) + kw.get("bias", True)
    assert len(node.input) == expected_inputs and "" not in node.input
    assert node.input[0] == model.graph.input[0].name  # X
    weight_at = 3 if kw.get("modulation", True) else 2
    assert initializers[node.input[weight_at]] == tuple(module.weight.shape)  # Wt
    if kw.get("bias", True):
        assert initializers[node.input[-1]] == tuple(module.bias.shape)  # B
    assert any(o.domain == onnx_ops.PLUGIN_DOMAIN and o.version == 1 for o in model.opset_import)


def test_d2conv3d_plugin_translation_runs_on_the_cpu_operators_as_the_reference(d2_case, tmp_path):
    # the plugin form of every case through ONNX Runtime with vosrt's CPU operators, as `vosrt run` runs it
    from vosrt.sdk import cpu_ops, native_callbacks
    from vosrt.sdk.backends.onnxruntime import session_options

    try:
        ops = cpu_ops.load_cpu_ops()
    except cpu_ops.CpuOpsUnavailable as err:
        pytest.skip(f"the CPU operators cannot be built here: {err}")
    _, _, x, expected, models = d2_case
    path = tmp_path / "layer.plugin.onnx"
    onnx.save(models["plugin"], str(path))
    options = session_options(1)
    options.register_custom_ops_library(cpu_ops.register_onnxruntime_ops(ops))
    session = ort.InferenceSession(cpu_ops.plugin_model_for_cpu(path), options, providers=["CPUExecutionProvider"])
    try:
        (actual,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    finally:
        native_callbacks.release()
    assert np.abs(actual - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())


class RawD2Conv(torch.nn.Module):
    """D²Conv3D with D and M as graph inputs (3×3×3, padding 1, two groups, bias), to feed them NaN."""

    def __init__(self, channels=8, out_channels=6):
        super().__init__()
        g = torch.Generator().manual_seed(22)
        self.weight = torch.nn.Parameter(torch.randn(out_channels, channels // 2, 3, 3, 3, generator=g) / 10)
        self.bias = torch.nn.Parameter(torch.randn(out_channels, generator=g))

    def forward(self, x, dilation, modulation):
        return torch.ops.vosrt.d2conv3d(x, dilation, modulation, self.weight, self.bias, [1, 1, 1], [1, 1, 1],
                                        [1, 1, 1], 2)


@pytest.fixture(scope="module")
def raw_d2conv():
    """(module, portable ONNX Runtime session, x, dilation, modulation) with D spread around 1."""
    g = torch.Generator().manual_seed(23)
    x = torch.randn(2, 8, 4, 9, 11, generator=g)
    dilation = 1 + (torch.rand(2, 3, 4, 9, 11, generator=g) * 3 - 1.5)
    modulation = torch.rand(2, 27, 4, 9, 11, generator=g)
    module = RawD2Conv().eval()
    model = _export(module, (x, dilation, modulation), "portable")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return module, session, x, dilation, modulation


def _raw_d2conv_outputs(module, session, x, dilation, modulation):
    """(reference in float64, portable graph on ONNX Runtime) of RawD2Conv."""
    expected = d2conv3d(x.double(), dilation.double(), modulation.double(), module.weight.double(),
                        module.bias.double(), stride=(1, 1, 1), padding=(1, 1, 1), dilation_base=(1, 1, 1),
                        groups=2).detach().numpy()
    (actual,) = session.run(None, {"x": x.numpy(), "dilation": dilation.numpy(), "modulation": modulation.numpy()})
    return expected, actual


@pytest.mark.parametrize("tensor, index, value", [
    ("dilation", (0, 1, 1, 2, 3), float("nan")), ("dilation", (1, 0, 0, 0, 0), float("nan")),
    ("dilation", (0, 2, 3, 8, 10), float("inf")), ("modulation", (1, 13, 2, 4, 1), float("nan"))],
    ids=["D", "D-corner", "D-inf", "M"])
def test_d2conv3d_portable_translation_makes_a_nan_sample_position_nan(raw_d2conv, tensor, index, value):
    # a NaN sample position (D NaN, or D infinite: the centre point's 0·inf) is NaN in the contract; the
    # portable graph's GridSample took it for a position outside the volume and gave finite outputs
    module, session, *arrays = raw_d2conv
    inputs = dict(zip(("x", "dilation", "modulation"), (a.clone() for a in arrays)))
    inputs[tensor][index] = value
    expected, actual = _raw_d2conv_outputs(module, session, *inputs.values())
    assert np.isnan(expected).sum() == expected.shape[1]  # every channel of that one location
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    finite = ~np.isnan(expected)
    assert np.abs(actual[finite] - expected[finite]).max() <= 1e-5 * max(1.0, np.abs(expected).max())


def test_d2conv3d_portable_translation_never_hides_a_nan_voxel_that_carries_weight(raw_d2conv):
    # the contract's NaN in X reaches every output whose samples have its voxel among their in-volume
    # corners, even with weight 0 (a sample on an integer position); GridSample's coordinate normalisation
    # moves such a position by a rounding error, so the portable form may differ from the reference there
    # (weight 0 or ~1e-7), and only there: wherever the voxel's weight is not negligible the output is NaN
    module, session, x, dilation, modulation = raw_d2conv
    rng = np.random.default_rng(4)
    voxels = [(1, 0, 0, 0, 0), (0, 7, 3, 8, 10)] + [tuple(int(rng.integers(n)) for n in x.shape) for _ in range(14)]
    differ = reached = 0
    for voxel in voxels:
        nan_x = x.clone()
        nan_x[voxel] = float("nan")
        expected, actual = _raw_d2conv_outputs(module, session, nan_x, dilation, modulation)
        # each output's weight on the voxel: the layer on a one-hot X, unit weights and modulation, no bias
        probe = torch.zeros_like(x, dtype=torch.float64)
        probe[voxel] = 1.0
        reach = d2conv3d(probe, dilation.double(), torch.ones_like(modulation, dtype=torch.float64),
                         torch.ones_like(module.weight, dtype=torch.float64), None, stride=(1, 1, 1),
                         padding=(1, 1, 1), dilation_base=(1, 1, 1), groups=2).numpy()
        assert np.isnan(actual[reach > 1e-6]).all() and np.isnan(expected[reach > 1e-6]).all(), voxel
        group = slice(0, 3) if voxel[1] < 4 else slice(3, 6)  # output channels of the voxel's group
        outside = np.ones(actual.shape, bool)
        outside[voxel[0], group] = False
        assert not np.isnan(actual[outside]).any(), voxel
        differ += int((np.isnan(actual) != np.isnan(expected)).sum())
        reached += int(np.isnan(expected).sum())
    assert differ <= reached // 20  # a few weight-0 outputs (36 of 1,827 when written)


class Readout(torch.nn.Module):
    def __init__(self, top_k, scale):
        super().__init__()
        self.top_k, self.scale = top_k, scale

    def forward(self, mem_key, query_key, mem_value, top_k=None):
        return torch.ops.vosrt.l2_memory_readout(mem_key, query_key, mem_value, self.top_k, self.scale, top_k)


def _readout_inputs(memory, queries=30, key_dim=16, value_dim=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, key_dim, memory, generator=g), torch.randn(1, key_dim, queries, generator=g),
            torch.randn(1, value_dim, memory, generator=g))


READOUT_SCALE = 1 / math.sqrt(16)


@pytest.fixture(scope="module")
def portable_readout():
    """The readout's portable form, 30 queries of 16 key and 12 value channels, any memory length, top_k
    an input."""
    memory = torch.export.Dim("memory", min=1, max=4096)
    program = torch.export.export(Readout(20, READOUT_SCALE).eval(), _readout_inputs(200) + (torch.tensor([20]),),
                                  dynamic_shapes=({2: memory}, None, {2: memory}, None))
    model = torch.onnx.export(program, (), dynamo=True, opset_version=onnx_ops.OPSET,
                              custom_translation_table=onnx_ops.translation_table("portable")).model_proto
    model.ir_version = onnx_ops.IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def test_readout_portable_translation_matches_reference_for_any_memory_length_and_top_k(portable_readout):
    model, scale = portable_readout, READOUT_SCALE
    # k = min(top_k, N), and top_k = 0 means all N.
    for memory_size, top_k in ((200, 20), (7, 20), (150, 0), (90, 5), (1, 3)):
        mk, qk, mv = _readout_inputs(memory_size, seed=memory_size)
        expected = l2_memory_readout(mk, qk, mv, top_k=top_k, scale=scale, backend="torch").numpy()
        (actual,) = _run(model, mk.numpy(), qk.numpy(), mv.numpy(), np.array([top_k], np.int64))
        assert np.abs(actual - expected).max() < 1e-5, (memory_size, top_k)


@pytest.mark.parametrize("top_k", [20, 0])
@pytest.mark.parametrize("where", ["mem_key", "query_key", "mem_value", "infinite-keys"])
def test_readout_portable_translation_propagates_nan_as_the_reference(portable_readout, where, top_k):
    # NaN policy (plugins/kernels/README.md), the same as the kernels' and the CPU operators': a NaN score
    # ranks first, a NaN value of a selected entry reaches its queries, all-−∞ scores give NaN
    mem_key, query_key, mem_value = infinite_key_readout_inputs() if where == "infinite-keys" else \
        nan_readout_inputs(where)
    for b in range(mem_key.shape[0]):  # the graph takes one batch element
        arrays = [t[b:b + 1] for t in (mem_key, query_key, mem_value)]
        expected = l2_memory_readout(*(t.double() for t in arrays), top_k=top_k, scale=READOUT_SCALE,
                                     backend="torch").numpy()
        (actual,) = _run(portable_readout, *(t.numpy() for t in arrays), np.array([top_k], np.int64))
        if np.isnan(expected).any():
            same_nans_and_close(actual, expected, 1e-5)
        else:
            assert not np.isnan(actual).any() and np.abs(actual - expected).max() < 1e-5


def test_readout_plugin_translation_is_one_node_with_attributes():
    model = _export(Readout(13, 0.3), _readout_inputs(40), "plugin")
    nodes = [n for n in model.graph.node if n.domain == onnx_ops.PLUGIN_DOMAIN]
    assert [n.op_type for n in nodes] == ["L2MemoryReadout"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attrs["top_k"] == 13 and attrs["scale"] == pytest.approx(0.3)
    assert attrs["plugin_version"] == b"1" and attrs["plugin_namespace"] == b""
    assert list(nodes[0].input) == [i.name for i in model.graph.input]  # mem_key, query_key, mem_value


def test_custom_ops_compute_the_reference_operators():
    mk, qk, mv = _readout_inputs(64)
    expected = l2_memory_readout(mk, qk, mv, top_k=7, scale=0.2, backend="torch")
    assert torch.equal(torch.ops.vosrt.l2_memory_readout(mk, qk, mv, 7, 0.2), expected)
    assert torch.equal(torch.ops.vosrt.l2_memory_readout(mk, qk, mv, 20, 0.2, torch.tensor([7])), expected)
    torch.manual_seed(1)
    x, d, m = torch.randn(1, 4, 3, 5, 6), 1 + torch.rand(1, 3, 3, 5, 6), torch.rand(1, 27, 3, 5, 6)
    w, b = torch.randn(5, 4, 3, 3, 3), torch.randn(5)
    assert torch.equal(torch.ops.vosrt.d2conv3d(x, d, m, w, b, [1, 1, 1], [1, 1, 1], [1, 1, 1], 1),
                       d2conv3d(x, d, m, w, b, 1, 1, 1, 1, backend="torch"))


def test_custom_ops_block_routes_model_modules_and_restores_them():
    import sys
    import types

    from vosrt.training.ops import d2conv3d as d2_module

    fake = types.ModuleType("vosrt.training.models._probe")
    fake.d2conv3d = d2_module.d2conv3d
    sys.modules[fake.__name__] = fake
    try:
        assert not graphs.exporting()
        reference = d2_module.d2conv3d
        torch.manual_seed(2)
        x, d, m = torch.randn(1, 2, 3, 4, 5), 1 + torch.rand(1, 3, 3, 4, 5), torch.rand(1, 27, 3, 4, 5)
        w = torch.randn(3, 2, 3, 3, 3)
        with graphs.custom_ops():
            assert graphs.exporting()
            assert d2_module.d2conv3d is not reference and fake.d2conv3d is not reference
            # The layers' call (module attribute, looked up at call time) reaches the reference through the op.
            routed = d2_module.d2conv3d(x, d, m, w, None, 1, 1, 1, 1)
        assert torch.equal(routed, reference(x, d, m, w, None, 1, 1, 1, 1, backend="torch"))
        assert not graphs.exporting()
        assert d2_module.d2conv3d is reference and fake.d2conv3d is reference
    finally:
        del sys.modules[fake.__name__]


@pytest.fixture(scope="module")
def lite_stcn():
    from vosrt.training.models import build_model

    torch.manual_seed(0)
    return build_model("stcn-lite").eval()


def test_segment_graph_is_readout_decoder_sigmoid_soft_aggregation_argmax(lite_stcn):
    spec = graphs.graphs_for(lite_stcn)["segment"]
    inputs = spec.example(64, 96, objects=3, memory_frames=2, generator=torch.Generator().manual_seed(0))
    mem_key, mem_value, query_key, f16_thin, f8, f4 = inputs
    with torch.no_grad():
        prob, labels = spec.module(*inputs)
        readout = l2_memory_readout(mem_key, query_key.flatten(2), mem_value.reshape(1, -1, mem_value.shape[2]),
                                    top_k=20)  # [1, O·Cv, M]
        logits = lite_stcn.segment(readout.reshape(3, -1, 4, 6), f16_thin, f8, f4)
        expected, _ = soft_aggregate(torch.sigmoid(logits))
    assert prob.shape == (4, 1, 64, 96) and labels.shape == (1, 64, 96) and labels.dtype == torch.uint8
    assert torch.allclose(prob, expected, atol=1e-6)
    assert torch.equal(labels, expected.argmax(dim=0).to(torch.uint8))


def test_graphs_normalise_images_inside(lite_stcn):
    spec = graphs.graphs_for(lite_stcn)["encode_key"]
    image = torch.rand(1, 3, 64, 96)
    mean = torch.tensor(lite_stcn.input_mean).view(1, 3, 1, 1)
    std = torch.tensor(lite_stcn.input_std).view(1, 3, 1, 1)
    with torch.no_grad():
        got = spec.module(image)
        expected = lite_stcn.encode_key((image - mean) / std)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert spec.output_names == ["key", "f16_thin", "f16", "f8", "f4"]


def test_group_norm_translation_stays_at_float32_rounding_over_large_groups():
    # One group of 1.6M values, as in 3DC-Seg's refinement modules at 1/4 scale.
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(1, 32).eval()
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(1, 32, 8, 60, 108) * 3 + 1
    with torch.no_grad():
        exact = norm.double()(x.double()).numpy()
    norm.float()
    for form in ("plugin", "portable"):
        (actual,) = _run(_export(norm, (x,), form), x.numpy())
        assert np.abs(actual - exact).max() < 1e-5, form
