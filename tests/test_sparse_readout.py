"""The portable L2MemoryReadout is sparse: after the affinity only the top-k entries of each query exist.

Shapes are those ONNX Runtime actually produces: every intermediate value of the exported graph is made
a graph output and the graph is run on concrete inputs.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import onnx
import onnxruntime as ort
import torch

from vosrt.export import onnx_ops
from vosrt.training.ops.l2_readout import l2_memory_readout
from sdk_packages import tiny_package


class Readout(torch.nn.Module):
    def __init__(self, top_k, scale):
        super().__init__()
        self.top_k, self.scale = top_k, scale

    def forward(self, mem_key, query_key, mem_value):
        return torch.ops.vosrt.l2_memory_readout(mem_key, query_key, mem_value, self.top_k, self.scale)


def _export(module, args):
    program = torch.export.export(module.eval(), args)
    model = torch.onnx.export(program, (), dynamo=True, opset_version=onnx_ops.OPSET,
                              custom_translation_table=onnx_ops.translation_table("portable")).model_proto
    model.ir_version = onnx_ops.IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def _intermediate_shapes(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """Shape of every node output when ONNX Runtime runs ``model`` on ``feeds`` (no graph optimisation)."""
    model = onnx.shape_inference.infer_shapes(model)
    typed = {v.name: v for v in list(model.graph.value_info) + list(model.graph.output)}
    names = [o for node in model.graph.node for o in node.output if o]
    del model.graph.output[:]
    for name in names:
        elem = typed[name].type.tensor_type.elem_type if name in typed else onnx.TensorProto.FLOAT
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return dict(zip(names, (np.shape(v) for v in session.run(names, feeds))))


def _inputs(batch, memory, queries, key_dim=16, value_dim=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, key_dim, memory, generator=g), torch.randn(batch, key_dim, queries, generator=g),
            torch.randn(batch, value_dim, memory, generator=g))


def test_portable_readout_has_no_memory_by_query_tensor_besides_the_affinity():
    memory, queries, top_k = 600, 150, 20
    args = _inputs(1, memory, queries)
    model = _export(Readout(top_k, 0.25), args)
    shapes = _intermediate_shapes(model, {i.name: a.numpy() for i, a in zip(model.graph.input, args)})
    large = {name: shape for name, shape in shapes.items() if math.prod(shape) >= memory * queries}
    assert list(large.values()) == [(1, memory, queries)], large
    # The values are read only for the kept entries: [V, B, M, k] (or smaller), never [V, N·M].
    assert max(math.prod(s) for n, s in shapes.items() if n not in large) <= 12 * queries * top_k


def test_portable_readout_matches_reference_with_batch_of_two_and_ties():
    mem_key, query_key, mem_value = _inputs(2, 97, 31, seed=3)
    mem_key[:, :, 40:60] = mem_key[:, :, 20:21]  # 21 identical keys: ties across the top-k boundary
    model = _export(Readout(8, 0.3), (mem_key, query_key, mem_value))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {i.name: a.numpy() for i, a in zip(model.graph.input, (mem_key, query_key, mem_value))})
    expected = l2_memory_readout(mem_key, query_key, mem_value, top_k=8, scale=0.3, backend="torch").numpy()
    # Tied keys have tied scores, so whichever of them the top-k keeps, the weights agree; the values of
    # tied entries differ, so compare where no tie reaches the k-th place.
    affinity = (2 * torch.bmm(mem_key.transpose(1, 2), query_key) - mem_key.pow(2).sum(1, keepdim=True).transpose(1, 2))
    kth = torch.topk(affinity, 9, dim=1).values  # [B, 9, M]
    clear = ((kth[:, 7] - kth[:, 8]).abs() > 1e-3).numpy()  # [B, M]: the 8th and 9th scores differ
    assert clear.sum() > 10
    np.testing.assert_allclose(actual.transpose(0, 2, 1)[clear], expected.transpose(0, 2, 1)[clear], rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("scale", [0.0, -2.0])
def test_portable_readout_reads_a_scale_at_or_below_zero_as_the_default(scale):
    # As the plugin form's kernels do (a scale <= 0 means 1/sqrt(Ck)); the graph used it as given.
    args = _inputs(1, 120, 17, key_dim=9, seed=5)
    model = _export(Readout(6, scale), args)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {i.name: a.numpy() for i, a in zip(model.graph.input, args)})
    expected = l2_memory_readout(*args, top_k=6, scale=1 / 3, backend="torch").numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("which", ["tiny", "shipped"])
def test_stcn_segment_graph_reads_memory_without_a_memory_by_query_tensor(which):
    from vosrt.sdk.cli_demo import demo_package

    # The tiny test package's 32×32 frames give 2×2 keys; the shipped stcn-lite's 128×224 give 8×14.
    package, (h, w) = (tiny_package("stcn"), (2, 2)) if which == "tiny" else (demo_package("stcn"), (8, 14))
    model = onnx.load(str(package / "segment.portable.onnx"))
    memory_frames = 6
    objects = 2
    inputs = {i.name: [d.dim_value or None for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    rng = np.random.default_rng(0)
    n = memory_frames * h * w
    feeds = {}
    for name, dims in inputs.items():
        if name == "mem_key":
            feeds[name] = rng.standard_normal((1, dims[1], n), dtype=np.float32)
        elif name == "mem_value":
            feeds[name] = rng.standard_normal((objects, dims[1], n), dtype=np.float32)
        elif name == "top_k":
            feeds[name] = np.array([3], np.int64)
        else:
            feeds[name] = rng.standard_normal(dims, dtype=np.float32)
    shapes = _intermediate_shapes(model, feeds)
    m = h * w
    affinity_like = [s for s in shapes.values() if len(s) == 3 and s[1:] in ((n, m), (m, n))]
    assert affinity_like == [(1, n, m)], affinity_like
