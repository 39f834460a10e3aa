"""ONNX translations of vosrt's two custom operators, in the two forms of ARCHITECTURE.md.

The graph modules (``vosrt.training.graphs``) call ``torch.ops.vosrt.d2conv3d`` and
``torch.ops.vosrt.l2_memory_readout`` while exporting; the dynamo exporter hands each of those calls to a
function here (``torch.onnx.export(..., custom_translation_table=translation_table(form))``):

- plugin form: one node per call, ``D2Conv3D`` / ``L2MemoryReadout`` in domain ``trt.plugins`` with the
  contract's attributes and input order, for TensorRT with the vosrt plugin library;
- portable form: the same computation in standard ONNX (opset 20), for any ONNX Runtime.

The functions are traced by the exporter: Python control flow runs on the static attributes (kernel
shape, strides) while tensors become graph values. Both forms also replace the exporter's GroupNorm
translation with a more accurate one (see :func:`group_norm_two_pass`), so they stay identical outside
the two operators.
"""
from __future__ import annotations

import onnx
import onnxscript
import torch
from onnxscript import opset20 as op

from vosrt.training import graphs  # registers torch.ops.vosrt.*

PLUGIN_DOMAIN = "trt.plugins"
PLUGIN_VERSION = "1"
OPSET = 20
IR_VERSION = 10

_T = [("T", ["tensor(float)", "tensor(float16)"], "features")]


def _schema(name: str, inputs: list[tuple[str, bool]], attributes: list[tuple[str, int]]) -> onnx.defs.OpSchema:
    # The exporter builds nodes from an OpSchema; the plugin ops have none in onnx's registry.
    Param = onnx.defs.OpSchema.FormalParameter
    Option = onnx.defs.OpSchema.FormalParameterOption
    params = [Param(n, "T", param_option=Option.Optional if optional else Option.Single) for n, optional in inputs]
    attrs = [onnx.defs.OpSchema.Attribute(n, t, required=False) for n, t in attributes]
    return onnx.defs.OpSchema(name, PLUGIN_DOMAIN, 1, inputs=params, outputs=[Param("Y", "T")],
                              type_constraints=_T, attributes=attrs)


_A = onnx.defs.OpSchema.AttrType
_PLUGIN_ATTRS = [("plugin_version", _A.STRING), ("plugin_namespace", _A.STRING)]
_D2CONV3D_ATTRS = [("kernel_shape", _A.INTS), ("strides", _A.INTS), ("pads", _A.INTS), ("dilations", _A.INTS),
                   ("group", _A.INT), *_PLUGIN_ATTRS]
L2_READOUT_SCHEMA = _schema(
    "L2MemoryReadout", [("mem_key", False), ("query_key", False), ("mem_value", False)],
    [("top_k", _A.INT), ("scale", _A.FLOAT), *_PLUGIN_ATTRS])

_plugins = onnxscript.values.Opset(PLUGIN_DOMAIN, 1)


def _d2conv3d_op(modulation: bool, bias: bool):
    """The ``D2Conv3D`` op whose schema lists exactly the inputs given (X, D, [M], Wt, [B]): the exporter fills a
    schema's inputs in order, so with the full one X, D, Wt filled M with Wt and left Wt missing ("Required parameter
    'Wt' is not provided": a layer with neither modulation nor bias could not be exported in the plugin form)."""
    names = ["X", "D", *(["M"] if modulation else []), "Wt", *(["B"] if bias else [])]
    schema = _schema("D2Conv3D", [(name, False) for name in names], _D2CONV3D_ATTRS)
    return onnxscript.values.Op(_plugins, "D2Conv3D", schema)
_L2_READOUT_OP = onnxscript.values.Op(_plugins, "L2MemoryReadout", L2_READOUT_SCHEMA)


def _ints(values) -> list[int]:
    return [int(v) for v in values]


# ---------------------------------------------------------------------------------------------------
# plugin form


def d2conv3d_plugin(x, dilation, modulation, weight, bias, stride, padding, dilation_base, groups):
    """``vosrt::d2conv3d`` -> one ``trt.plugins::D2Conv3D`` node with inputs X, D, [M], Wt, [B].

    Absent optional inputs are left out rather than given as empty names (TensorRT's ONNX parser would
    pass a null tensor in their place; plugins/trt/README.md), so the node has 3, 4 or 5 inputs.
    """
    inputs = [v for v in (x, dilation, modulation, weight, bias) if v is not None]
    return _d2conv3d_op(modulation is not None, bias is not None)(*inputs,
                        kernel_shape=_ints(weight.shape[2:]), strides=_ints(stride), pads=_ints(padding),
                        dilations=_ints(dilation_base), group=int(groups),
                        plugin_version=PLUGIN_VERSION, plugin_namespace="")


def l2_memory_readout_plugin(mem_key, query_key, mem_value, top_k, scale, top_k_input=None):
    """``vosrt::l2_memory_readout`` -> one ``trt.plugins::L2MemoryReadout`` node; top_k is an attribute."""
    return _L2_READOUT_OP(mem_key, query_key, mem_value, top_k=int(top_k), scale=float(scale),
                          plugin_version=PLUGIN_VERSION, plugin_namespace="")


# ---------------------------------------------------------------------------------------------------
# portable form


def _axis_positions(size_out, stride: int, pad: int, kernel: list[int], dil: int, scale, axis: int):
    """Sample positions along ``axis`` (0 = t, 1 = y, 2 = x) for every kernel point: [N, K, To, Ho, Wo].

    ``scale`` is D − 1 of this axis, [N, 1, To, Ho, Wo]; ``size_out`` the output length of this axis;
    positions are in voxel-index units (the contract's q).
    """
    base = op.Cast(op.Range(op.Constant(value_int=0), size_out, op.Constant(value_int=1)), to=onnx.TensorProto.FLOAT)
    base = op.Sub(op.Mul(base, op.Constant(value_float=float(stride))), op.Constant(value_float=float(pad)))
    shape = [1, 1, 1, 1, 1]
    shape[2 + axis] = -1
    base = op.Reshape(base, op.Constant(value_ints=shape))  # [1, 1, To|1, Ho|1, Wo|1]
    # Per kernel point k = (i, j, l): offset i·dil and stretch (i − kt//2)·dil along this axis.
    index = [(i, j, l)[axis] for i in range(kernel[0]) for j in range(kernel[1]) for l in range(kernel[2])]
    centre = kernel[axis] // 2
    offset = op.Constant(value_floats=[float(i * dil) for i in index])
    stretch = op.Constant(value_floats=[float((i - centre) * dil) for i in index])
    k_shape = op.Constant(value_ints=[1, -1, 1, 1, 1])
    offset, stretch = op.Reshape(offset, k_shape), op.Reshape(stretch, k_shape)  # [1, K, 1, 1, 1]
    return op.Add(op.Add(base, offset), op.Mul(stretch, scale))


def d2conv3d_portable(x, dilation, modulation, weight, bias, stride, padding, dilation_base, groups):
    """``vosrt::d2conv3d`` in standard ONNX: one 5-D GridSample for all kernel points, then a 1×1×1 Conv.

    The K·To sample volumes are stacked along the depth of the grid, so GridSample gathers
    [N, C, K·To, Ho, Wo]; modulation scales it; the kernel-point axis folds into the channels
    ([N, C·K, To, Ho, Wo], channel c·K + k) where a grouped 1×1×1 Conv with Wt reshaped to
    [Cout, C/groups·K, 1, 1, 1] does the weighted sum. GridSample with zero padding and
    align_corners=0 is exactly the contract's trilinear rule (outside corners contribute 0).

    NaN policy: GridSample takes a NaN sample position for one outside the volume (0); the contract
    makes it NaN, so Y[n, :, o] of a location with one is set NaN after the Conv (an Add of 0 or NaN over
    the output, which is K·C/Cout times smaller than the samples). NaN in X reaches every output that
    reads its voxel with a weight above rounding, as in the reference. Where a sample sits exactly on an
    integer position next to the voxel (weight 0, which the reference still reads), GridSample's
    coordinate normalisation moves it by a rounding error, to one side or the other: such an output may
    be NaN in one form and finite in the other (tests/test_graphs.py measures how few).
    """
    kernel = _ints(weight.shape[2:])
    k_total = kernel[0] * kernel[1] * kernel[2]
    x_shape = op.Shape(x)  # [5]: N, C, T, H, W
    d_shape = op.Shape(dilation)  # [5]: N, 3, To, Ho, Wo
    scale = op.Sub(dilation, op.Constant(value_float=1.0))  # [N, 3, To, Ho, Wo]
    coords, nan_positions = [], []
    for axis in range(3):
        d_axis = op.Slice(scale, op.Constant(value_ints=[axis]), op.Constant(value_ints=[axis + 1]),
                          op.Constant(value_ints=[1]))  # [N, 1, To, Ho, Wo]
        size_out = op.Squeeze(op.Slice(d_shape, op.Constant(value_ints=[2 + axis]),
                                       op.Constant(value_ints=[3 + axis])))
        q = _axis_positions(size_out, int(stride[axis]), int(padding[axis]), kernel,
                            int(dilation_base[axis]), d_axis, axis)  # [N, K, To, Ho, Wo]
        nan_positions.append(op.IsNaN(q))
        # align_corners=0 maps voxel index q to (2q + 1) / size − 1.
        size_in = op.Cast(op.Slice(x_shape, op.Constant(value_ints=[2 + axis]), op.Constant(value_ints=[3 + axis])),
                          to=onnx.TensorProto.FLOAT)
        g = op.Sub(op.Div(op.Add(op.Mul(q, op.Constant(value_float=2.0)), op.Constant(value_float=1.0)), size_in),
                   op.Constant(value_float=1.0))
        coords.append(op.Unsqueeze(g, op.Constant(value_ints=[-1])))
    # GridSample's last axis is ordered (x, y, t).
    grid = op.Concat(coords[2], coords[1], coords[0], axis=-1)  # [N, K, To, Ho, Wo, 3]
    n, to, ho, wo = (op.Slice(d_shape, op.Constant(value_ints=[i]), op.Constant(value_ints=[i + 1]))
                     for i in (0, 2, 3, 4))
    k_const = op.Constant(value_ints=[k_total])
    grid = op.Reshape(grid, op.Concat(n, op.Mul(k_const, to), ho, wo, op.Constant(value_ints=[3]), axis=0))
    sampled = op.GridSample(x, grid, mode="linear", padding_mode="zeros", align_corners=0)  # [N, C, K·To, Ho, Wo]
    c = op.Slice(x_shape, op.Constant(value_ints=[1]), op.Constant(value_ints=[2]))
    sampled = op.Reshape(sampled, op.Concat(n, c, k_const, to, ho, wo, axis=0))  # [N, C, K, To, Ho, Wo]
    if modulation is not None:
        sampled = op.Mul(sampled, op.Unsqueeze(modulation, op.Constant(value_ints=[1])))
    sampled = op.Reshape(sampled, op.Concat(n, op.Mul(c, k_const), to, ho, wo, axis=0))  # [N, C·K, To, Ho, Wo]
    cout = int(weight.shape[0])
    w_flat = op.Reshape(weight, op.Constant(value_ints=[cout, -1, 1, 1, 1]))  # [Cout, C/groups·K, 1, 1, 1]
    y = op.Conv(sampled, w_flat, bias, group=int(groups)) if bias is not None else \
        op.Conv(sampled, w_flat, group=int(groups))
    # 0, or NaN where a kernel point's sample position is NaN on any axis: [N, 1, To, Ho, Wo]
    nan_position = op.Or(op.Or(nan_positions[0], nan_positions[1]), nan_positions[2])  # [N, K, To, Ho, Wo]
    poison = op.Where(nan_position, op.CastLike(op.Constant(value_float=float("nan")), y),
                      op.CastLike(op.Constant(value_float=0.0), y))
    return op.Add(y, op.ReduceSum(poison, op.Constant(value_ints=[1]), keepdims=1))


def l2_memory_readout_portable(mem_key, query_key, mem_value, top_k, scale, top_k_input=None):
    """``vosrt::l2_memory_readout`` in standard ONNX, sparse: MatMul affinity, TopK, Softmax, Gather, weighted sum.

    Only the k kept entries of each query are touched after the top-k: their values are gathered into
    ``[V, B, M, k]`` and summed with the softmax weights, so apart from the affinity itself no ``N × M``
    tensor exists (a dense scatter of the weights and a ``[V, N] × [N, M]`` product would cost about
    1500 times the arithmetic at STCN's 480p memory). k = min(top_k, N) is computed in the graph
    (top_k ≤ 0 means all N), from ``top_k_input`` when the graph exposes it as an input, so ONNX Runtime
    sessions can change it without re-exporting.
    """
    # S[b, n, m] = (2·mk·qk − ‖mk‖²)·scale as one MatMul of augmented keys, so the affinity is the only
    # N × M tensor: [2·scale·mk, −scale·‖mk‖²] (Ck + 1 rows) against [qk, 1]. The ‖q‖² term changes
    # neither the top-k nor the softmax.
    mk_sq = op.ReduceSum(op.Mul(mem_key, mem_key), op.Constant(value_ints=[1]), keepdims=1)  # [B, 1, N]
    if float(scale) > 0:
        twice, negated = op.Constant(value_float=2.0 * float(scale)), op.Constant(value_float=-float(scale))
    else:  # the operator's policy: a scale <= 0 means 1/sqrt(Ck), as in the plugin form's kernels
        ck = op.Cast(op.Shape(mem_key, start=1, end=2), to=onnx.TensorProto.FLOAT)  # [1]
        default = op.Reciprocal(op.Sqrt(ck))
        twice, negated = op.Mul(default, op.Constant(value_float=2.0)), op.Neg(default)
    mk_aug = op.Concat(op.Mul(mem_key, twice), op.Mul(mk_sq, negated), axis=1)  # [B, Ck+1, N]
    ones = op.Expand(op.Constant(value_float=1.0), op.Concat(op.Shape(query_key, start=0, end=1),
                                                             op.Constant(value_ints=[1]),
                                                             op.Shape(query_key, start=2, end=3), axis=0))
    qk_aug = op.Concat(query_key, ones, axis=1)  # [B, Ck+1, M]
    affinity = op.MatMul(op.Transpose(mk_aug, perm=[0, 2, 1]), qk_aug)  # [B, N, M]
    key_shape = op.Shape(mem_key)
    b = op.Slice(key_shape, op.Constant(value_ints=[0]), op.Constant(value_ints=[1]))  # [1] int64
    n = op.Slice(key_shape, op.Constant(value_ints=[2]), op.Constant(value_ints=[3]))  # [1] int64
    k = op.Constant(value_ints=[int(top_k)]) if top_k_input is None else op.Cast(top_k_input, to=onnx.TensorProto.INT64)
    k = op.Where(op.Greater(k, op.Constant(value_ints=[0])), op.Min(k, n), n)  # [1]
    values, indices = op.TopK(affinity, k, axis=1, largest=1, sorted=0)  # [B, k, M]
    # Query-major with the k entries innermost, so the weighted sum reduces contiguous memory.
    weights = op.Transpose(op.Softmax(values, axis=1), perm=[0, 2, 1])  # max subtracted inside; [B, M, k]
    indices = op.Transpose(indices, perm=[0, 2, 1])  # [B, M, k]
    # One Gather over the batch-flattened memory: entry n of batch b sits at b·N + n of [V, B·N].
    offsets = op.Mul(op.Range(op.Constant(value_int=0), op.Squeeze(b), op.Constant(value_int=1)), op.Squeeze(n))
    flat_index = op.Add(indices, op.Reshape(offsets, op.Constant(value_ints=[-1, 1, 1])))  # [B, M, k]
    v = op.Slice(op.Shape(mem_value), op.Constant(value_ints=[1]), op.Constant(value_ints=[2]))  # [1]
    flat_value = op.Reshape(op.Transpose(mem_value, perm=[1, 0, 2]), op.Concat(v, op.Constant(value_ints=[-1]), axis=0))
    gathered = op.Gather(flat_value, flat_index, axis=1)  # [V, B, M, k]
    readout = op.ReduceSum(op.Mul(gathered, weights), op.Constant(value_ints=[3]), keepdims=0)  # [V, B, M]
    return op.Transpose(readout, perm=[1, 0, 2])  # [B, V, M]


# ---------------------------------------------------------------------------------------------------
# standard operators whose default translation is not accurate enough


def _mean_axis_by_axis(x, first_axis: int, rank: int):
    # One ReduceMean per axis (last first): each sums at most one axis' length of values, where a
    # single ReduceMean over millions of values accumulates visible float32 error in ONNX Runtime.
    for axis in range(rank - 1, first_axis - 1, -1):
        x = op.ReduceMean(x, op.Constant(value_ints=[axis]), keepdims=1)
    return x


def group_norm_two_pass(input, num_groups, weight=None, bias=None, eps=1e-5, cudnn_enabled=True):
    """``aten.group_norm`` as the mean, then the variance of the centred values, reduced axis by axis.

    The exporter's default maps GroupNorm onto InstanceNormalization, which ONNX Runtime's CPU kernel
    evaluates with an error of ~3e-4 over the millions of values one group of 3DC-Seg's refinement
    features holds (GroupNorm(1) on [1, 64, 8, 60, 108]); this form stays at float32 rounding.
    """
    rank = len(input.shape)
    groups = int(num_groups)
    # [N, G, C/G, *spatial]: channels of a group and every spatial axis kept apart for the reductions.
    grouped_shape = op.Concat(op.Constant(value_ints=[0, groups, -1]), op.Shape(input, start=2), axis=0)
    grouped = op.Reshape(input, grouped_shape)
    centred = op.Sub(grouped, _mean_axis_by_axis(grouped, 2, rank + 1))
    variance = _mean_axis_by_axis(op.Mul(centred, centred), 2, rank + 1)  # [N, G, 1, ...]
    normalised = op.Div(centred, op.Sqrt(op.Add(variance, op.Constant(value_float=float(eps)))))
    out = op.Reshape(normalised, op.Shape(input))  # [N, C, *spatial]
    per_channel = op.Constant(value_ints=[-1] + [1] * (rank - 2))  # broadcast [C] over [N, C, ...]
    if weight is not None:
        out = op.Mul(out, op.Reshape(weight, per_channel))
    if bias is not None:
        out = op.Add(out, op.Reshape(bias, per_channel))
    return out


def translation_table(form: str) -> dict:
    """``custom_translation_table`` for ``torch.onnx.export`` producing the ``plugin`` or ``portable`` form."""
    common = {torch.ops.aten.group_norm.default: group_norm_two_pass}
    if form == "plugin":
        return {**common, graphs.D2CONV3D_OP: d2conv3d_plugin, graphs.L2_READOUT_OP: l2_memory_readout_plugin}
    if form == "portable":
        return {**common, graphs.D2CONV3D_OP: d2conv3d_portable, graphs.L2_READOUT_OP: l2_memory_readout_portable}
    raise ValueError(f"unknown ONNX form {form!r}: expected 'plugin' or 'portable'")
