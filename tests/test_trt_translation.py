"""The TensorRT plugins' attribute/shape translation (plugins/trt/src/vosrt_trt_translate.cpp), without TensorRT.

The translation is compiled here with the host C++ compiler and called through ctypes; its output shapes
are checked against what the PyTorch reference operators actually return for a grid of sizes.
"""
from __future__ import annotations

import ctypes
import itertools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "plugins" / "trt" / "src" / "vosrt_trt_translate.cpp"
KERNELS_INCLUDE = ROOT / "plugins" / "kernels" / "include"

SUCCESS, INVALID, NOT_SUPPORTED = 0, 1, 2


class D2Attrs(ctypes.Structure):
    _fields_ = [("kernel_shape", ctypes.c_int * 3), ("strides", ctypes.c_int * 3), ("pads", ctypes.c_int * 3),
                ("dilations", ctypes.c_int * 3), ("group", ctypes.c_int)]


class D2Roles(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in ("x", "dilation", "modulation", "weight", "bias")]


class D2Params(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in
                ("batch", "in_channels", "in_t", "in_h", "in_w", "out_channels", "groups")] + [
        ("kernel", ctypes.c_int * 3), ("stride", ctypes.c_int * 3), ("pad", ctypes.c_int * 3),
        ("dilation", ctypes.c_int * 3), ("has_modulation", ctypes.c_int), ("has_bias", ctypes.c_int)]


class L2Attrs(ctypes.Structure):
    _fields_ = [("top_k", ctypes.c_int), ("scale", ctypes.c_float)]


class L2Params(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in
                ("batch", "key_dim", "mem_size", "query_size", "value_dim", "top_k")] + [("scale", ctypes.c_float)]


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    compiler = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler to build the translation layer")
    build = tmp_path_factory.mktemp("translate")
    out = build / "libvosrt_trt_translate.so"
    # The translation never calls CUDA: the kernels' header then declares only the cudaStream_t name.
    cmd = [compiler, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared",
           "-DVOSRT_KERNELS_NO_CUDA_RUNTIME", f"-I{KERNELS_INCLUDE}", str(SOURCE), "-o", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    lib = ctypes.CDLL(str(out))
    lib.vosrtTrtLastError.restype = ctypes.c_char_p
    return lib


def _attrs(kernel, stride=(1, 1, 1), pad=(0, 0, 0), dilation=(1, 1, 1), group=1) -> D2Attrs:
    a = D2Attrs()
    a.kernel_shape[:], a.strides[:], a.pads[:], a.dilations[:] = kernel, stride, pad, dilation
    a.group = group
    return a


def _d2_params(lib, attrs, shapes):
    ranks = (ctypes.c_int * len(shapes))(*[len(s) for s in shapes])
    dims = (ctypes.c_int64 * (8 * len(shapes)))()
    for i, shape in enumerate(shapes):
        for d, v in enumerate(shape):
            dims[8 * i + d] = v
    params = D2Params()
    status = lib.vosrtTrtD2Conv3DParams(ctypes.byref(attrs), len(shapes), ranks, dims, ctypes.byref(params))
    return status, params


def _d2_output(lib, attrs, x_shape, w_shape):
    y = (ctypes.c_int64 * 5)()
    status = lib.vosrtTrtD2Conv3DOutputDims(ctypes.byref(attrs), (ctypes.c_int64 * 5)(*x_shape),
                                            (ctypes.c_int64 * 5)(*w_shape), y)
    return status, tuple(y)


D2_GRID = list(itertools.product(
    [(3, 3, 3), (1, 3, 3), (3, 1, 2)],           # kernel (t, h, w)
    [(1, 1, 1), (2, 2, 2), (1, 2, 1)],           # stride
    [(0, 0, 0), (1, 1, 1), (2, 1, 0)],           # pad
    [(1, 1, 1), (2, 1, 3)],                      # dilation
))


def test_d2conv3d_output_dims_match_the_pytorch_reference_for_a_grid_of_sizes(lib):
    torch = pytest.importorskip("torch")
    from vosrt.training.ops.d2conv3d import d2conv3d

    checked = 0
    for index, (kernel, stride, pad, dil) in enumerate(D2_GRID):
        # alternate volume sizes and groups across the grid to keep this test quick
        (t, h, w), groups = ((4, 7, 9), 1) if index % 2 else ((5, 6, 4), 2)
        sizes = [(s + 2 * p - d * (k - 1) - 1) // st + 1 for s, k, st, p, d in zip((t, h, w), kernel, stride, pad, dil)]
        if min(sizes) < 1:
            status, _ = _d2_output(lib, _attrs(kernel, stride, pad, dil, groups), (1, 4, t, h, w), (6, 4 // groups, *kernel))
            assert status == INVALID, lib.vosrtTrtLastError()
            continue
        x = torch.randn(1, 4, t, h, w)
        wt = torch.randn(6, 4 // groups, *kernel)
        dmap = torch.ones(1, 3, *sizes)
        mod = torch.rand(1, kernel[0] * kernel[1] * kernel[2], *sizes)
        y = d2conv3d(x, dmap, mod, wt, torch.zeros(6), stride=stride, padding=pad, dilation_base=dil, groups=groups)
        status, params = _d2_params(lib, _attrs(kernel, stride, pad, dil, groups),
                                    [x.shape, dmap.shape, mod.shape, wt.shape, (6,)])
        assert status == SUCCESS, lib.vosrtTrtLastError()
        status, y_dims = _d2_output(lib, _attrs(kernel, stride, pad, dil, groups), x.shape, wt.shape)
        assert status == SUCCESS
        assert y_dims == tuple(y.shape)
        assert (params.batch, params.in_channels, params.in_t, params.in_h, params.in_w) == tuple(x.shape)
        assert (params.out_channels, params.groups) == (6, groups)
        assert (tuple(params.kernel), tuple(params.stride), tuple(params.pad), tuple(params.dilation)) == \
            (kernel, stride, pad, dil)
        checked += 1
    assert checked > 20


def test_d2conv3d_roles_follow_input_count_and_rank_of_input_3(lib):
    roles = D2Roles()
    expected = {(3, 0): (0, 1, -1, 2, -1), (4, 5): (0, 1, 2, 3, -1), (4, 1): (0, 1, -1, 2, 3), (5, 1): (0, 1, 2, 3, 4)}
    for (count, rank3), want in expected.items():
        assert lib.vosrtTrtD2Conv3DRoles(count, rank3, ctypes.byref(roles)) == SUCCESS
        assert (roles.x, roles.dilation, roles.modulation, roles.weight, roles.bias) == want
    assert lib.vosrtTrtD2Conv3DRoles(2, 0, ctypes.byref(roles)) == INVALID
    assert lib.vosrtTrtD2Conv3DRoles(4, 3, ctypes.byref(roles)) == INVALID
    assert b"rank 5" in lib.vosrtTrtLastError()


def test_d2conv3d_params_flag_optional_modulation_and_bias(lib):
    attrs = _attrs((3, 3, 3), pad=(1, 1, 1))
    x, d, m, wt, b = (2, 4, 4, 6, 6), (2, 3, 4, 6, 6), (2, 27, 4, 6, 6), (8, 4, 3, 3, 3), (8,)
    for shapes, flags in [([x, d, wt], (0, 0)), ([x, d, m, wt], (1, 0)), ([x, d, wt, b], (0, 1)),
                          ([x, d, m, wt, b], (1, 1))]:
        status, params = _d2_params(lib, attrs, shapes)
        assert status == SUCCESS, lib.vosrtTrtLastError()
        assert (params.has_modulation, params.has_bias) == flags


@pytest.mark.parametrize("bad, message", [
    ({"d": (2, 3, 4, 6, 5)}, b"D must be"),
    ({"m": (2, 26, 4, 6, 6)}, b"M must be"),
    ({"wt": (8, 3, 3, 3, 3)}, b"C/group"),
    ({"wt": (8, 4, 3, 3, 1)}, b"kernel_shape"),
    ({"b": (7,)}, b"B must be"),
])
def test_d2conv3d_params_refuse_inconsistent_shapes_with_a_reason(lib, bad, message):
    shapes = {"x": (2, 4, 4, 6, 6), "d": (2, 3, 4, 6, 6), "m": (2, 27, 4, 6, 6), "wt": (8, 4, 3, 3, 3), "b": (8,)}
    shapes.update(bad)
    status, _ = _d2_params(lib, _attrs((3, 3, 3), pad=(1, 1, 1)), list(shapes.values()))
    assert status == INVALID
    assert message in lib.vosrtTrtLastError()


def test_d2conv3d_attributes_are_validated(lib):
    defaults = D2Attrs()
    lib.vosrtTrtD2Conv3DDefaultAttributes(ctypes.byref(defaults))
    assert (tuple(defaults.strides), tuple(defaults.pads), tuple(defaults.dilations), defaults.group) == \
        ((1, 1, 1), (0, 0, 0), (1, 1, 1), 1)
    assert lib.vosrtTrtD2Conv3DValidateAttributes(ctypes.byref(defaults)) == INVALID  # kernel_shape is required
    assert b"kernel_shape" in lib.vosrtTrtLastError()
    for bad in (_attrs((3, 3, 3), stride=(0, 1, 1)), _attrs((3, 3, 3), pad=(-1, 0, 0)),
                _attrs((3, 3, 3), dilation=(1, 0, 1)), _attrs((3, 3, 3), group=0)):
        assert lib.vosrtTrtD2Conv3DValidateAttributes(ctypes.byref(bad)) == INVALID
    assert lib.vosrtTrtD2Conv3DValidateAttributes(ctypes.byref(_attrs((3, 3, 3)))) == SUCCESS


def _l2(lib, top_k, scale, mk, qk, mv):
    attrs, params, out = L2Attrs(top_k, scale), L2Params(), (ctypes.c_int64 * 3)()
    arrays = [(ctypes.c_int64 * 3)(*s) for s in (mk, qk, mv)]
    out_status = lib.vosrtTrtL2ReadoutOutputDims(*arrays, out)
    status = lib.vosrtTrtL2ReadoutParams(ctypes.byref(attrs), *arrays, ctypes.byref(params))
    return status, params, out_status, tuple(out)


def test_l2_readout_output_dims_match_the_pytorch_reference_for_a_grid_of_sizes(lib):
    torch = pytest.importorskip("torch")
    l2 = pytest.importorskip("vosrt.training.ops.l2_readout")
    for batch, ck, n, m, v, top_k in itertools.product([1, 2], [8, 64], [5, 48], [6, 30], [3, 32], [0, 4, 20]):
        mk, qk, mv = torch.randn(batch, ck, n), torch.randn(batch, ck, m), torch.randn(batch, v, n)
        ref = l2.l2_memory_readout(mk, qk, mv, top_k=top_k)
        status, params, out_status, out = _l2(lib, top_k, 0.0, mk.shape, qk.shape, mv.shape)
        assert status == SUCCESS and out_status == SUCCESS, lib.vosrtTrtLastError()
        assert out == tuple(ref.shape)
        assert (params.batch, params.key_dim, params.mem_size, params.query_size, params.value_dim, params.top_k) == \
            (batch, ck, n, m, v, top_k)


def test_l2_readout_default_scale_resolves_to_inverse_sqrt_key_dim(lib):
    status, params, _, _ = _l2(lib, 20, 0.0, (1, 64, 100), (1, 64, 30), (1, 512, 100))
    assert status == SUCCESS
    assert params.scale == pytest.approx(1 / 8)
    status, params, _, _ = _l2(lib, 20, 0.5, (1, 64, 100), (1, 64, 30), (1, 512, 100))
    assert params.scale == pytest.approx(0.5)


def test_l2_readout_default_attributes_are_the_contracts(lib):
    attrs = L2Attrs()
    lib.vosrtTrtL2ReadoutDefaultAttributes(ctypes.byref(attrs))
    assert (attrs.top_k, attrs.scale) == (20, 0.0)


@pytest.mark.parametrize("top_k, shapes, status, message", [
    (-1, ((1, 64, 10), (1, 64, 5), (1, 8, 10)), INVALID, b"top_k must be >= 0"),
    (65, ((1, 64, 10), (1, 64, 5), (1, 8, 10)), NOT_SUPPORTED, b"exceeds"),
    (20, ((1, 64, 10), (1, 32, 5), (1, 8, 10)), INVALID, b"key dim differs"),
    (20, ((1, 64, 10), (1, 64, 5), (1, 8, 11)), INVALID, b"memory length differs"),
    (20, ((2, 64, 10), (1, 64, 5), (2, 8, 10)), INVALID, b"batch differs"),
    (20, ((1, 64, 0), (1, 64, 5), (1, 8, 0)), INVALID, b"memory is empty"),
])
def test_l2_readout_params_refuse_bad_input_with_a_reason(lib, top_k, shapes, status, message):
    got, _, _, _ = _l2(lib, top_k, 0.0, *shapes)
    assert got == status
    assert message in lib.vosrtTrtLastError()


def test_d2conv3d_workspace_follows_the_build_limit_but_never_drops_below_one_tile(lib):
    fn = lib.vosrtTrtD2Conv3DWorkspaceBytes
    fn.restype, fn.argtypes = ctypes.c_size_t, [ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int]
    mib = 1 << 20
    assert fn(64 * mib, 3 * mib, 0) == 64 * mib          # no limit: what the kernels prefer
    assert fn(64 * mib, 3 * mib, 16) == 16 * mib         # vosrt build --workspace 16
    assert fn(10 * mib, 3 * mib, 16) == 10 * mib         # under the limit already
    assert fn(64 * mib, 3 * mib, 1) == 3 * mib           # below one tile the kernels cannot run
    assert fn(64 * mib, 64 * mib, 4096) == 64 * mib      # 4 GiB limits do not overflow
