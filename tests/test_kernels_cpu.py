"""Tier 1 (no GPU): the CUDA kernels compile; the math they share with the CPU driver
(plugins/kernels/src/*_math.h) and the fp32 kernels' own code run on host threads (libvosrt_kernels_emu)
agree with the PyTorch reference operators."""
import ctypes

import numpy as np
import pytest
import torch

from vosrt.sdk import kernels
from vosrt.sdk.errors import UserError
from vosrt.sdk.kernels import KernelError, load_cpu_driver
from vosrt.training.ops.d2conv3d import d2conv3d
from vosrt.training.ops.l2_readout import l2_memory_readout

from kernel_build import build, cpu_driver_path, emulation_path, have_nvcc
from operator_inputs import (as_f64 as _f64, assert_close as _close, conv_inputs as _conv_inputs,
                             infinite_key_readout_inputs, nan_readout_inputs, same_nans_and_close, to_numpy as _np)

# kernel, stride, padding, base dilation, groups, modulation, bias, (C, Cout), (T, H, W)
CONV_CASES = [
    ((3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 1, True, True, (3, 4), (4, 5, 6)),
    ((3, 3, 3), (2, 1, 2), (1, 2, 0), (1, 2, 1), 2, True, False, (4, 6), (5, 7, 6)),
    ((1, 3, 3), (1, 2, 2), (0, 2, 2), (1, 2, 2), 1, False, True, (2, 3), (3, 9, 7)),
    ((2, 3, 1), (1, 1, 1), (1, 1, 0), (2, 1, 1), 3, True, True, (3, 3), (5, 4, 3)),
]


@pytest.fixture(scope="module")
def driver():
    return load_cpu_driver(cpu_driver_path())


@pytest.mark.slow
def test_kernel_library_compiles_for_one_architecture():
    if not have_nvcc():
        pytest.skip("nvcc is not installed")
    folder, log = build(with_kernels=True)
    assert (folder / "libvosrt_kernels.so").is_file()
    assert "warning" not in log.lower()


def _ptxas_usage(source: str, arch: str) -> dict[str, tuple[int, int, int]]:
    """{mangled kernel name: (registers, spill-store bytes, stack-frame bytes)} from ptxas -v on one .cu file
    for one sm_XX."""
    import re
    import subprocess

    from kernel_build import PLUGINS

    src = PLUGINS / "kernels" / "src"
    done = subprocess.run(["nvcc", "-std=c++17", f"-arch=sm_{arch}", "-O3", "-Xptxas", "-v",
                           f"-I{PLUGINS / 'kernels' / 'include'}", f"-I{src}", "-c", str(src / source), "-o",
                           "/dev/null"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    usage, current, spill, stack = {}, None, 0, 0
    for line in done.stderr.splitlines():
        if m := re.search(r"Compiling entry function '(\w+)'", line):
            current, spill, stack = m.group(1), 0, 0
        elif m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores", line):
            stack, spill = int(m.group(1)), int(m.group(2))
        elif (m := re.search(r"Used (\d+) registers", line)) and current:
            usage[current] = (int(m.group(1)), spill, stack)
    return usage


@pytest.mark.slow
def test_inference_kernels_do_not_spill_on_the_h100_and_h200_architecture():
    """ptxas for sm_90: no kernel a forward pass runs keeps registers or arrays in local memory (no spills, no
    stack frame), and the top-k select kernels with lists up to 32 (STCN's k = 20) fit two blocks of 256
    threads per SM, as the split of N assumes."""
    if not have_nvcc():
        pytest.skip("nvcc is not installed")
    usage = {**_ptxas_usage("l2_readout.cu", "90"), **_ptxas_usage("d2conv3d.cu", "90")}
    assert any("select_kernel" in name for name in usage) and any("gemm_f16_nn" in name for name in usage)
    # the backward's CUDA-core GEMM with a transposed A (gemm_f32_kernel<true, false>) spills about 100 bytes
    backward_gemm = "gemm_f32_kernelILb1ELb0E"
    spilling = {name: spill for name, (_, spill, _) in usage.items() if spill and backward_gemm not in name}
    assert spilling == {}
    # a run-time index into a small array (Smem::mem_key[slot] did this) puts it in local memory: a stack frame
    # with no spill bytes, one ptxas reports and the spill check above does not catch
    stacked = {name: stack for name, (_, _, stack) in usage.items() if stack and backward_gemm not in name}
    assert stacked == {}
    selects = {name: registers for name, (registers, _, _) in usage.items()
               if "select_kernel" in name and any(f"Li{k}E" in name for k in (8, 16, 20, 32))}
    assert len(selects) == 8 and max(selects.values()) <= 128, selects


def test_kernel_library_host_functions_report_shapes_and_bounded_workspaces():
    if not have_nvcc():
        pytest.skip("nvcc is not installed")
    folder, _ = build(with_kernels=True)
    try:
        lib = kernels.load_kernels(folder / "libvosrt_kernels.so")
    except OSError as err:  # the CUDA runtime library itself is missing
        pytest.skip(f"cannot load the kernel library: {err}")
    assert lib.vosrtKernelsVersion() == 1
    assert lib.vosrtL2ReadoutMaxTopK() == 64
    params = kernels.d2conv3d_params((1, 256, 8, 60, 108), (256, 256, 3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1),
                                     1, True, True)
    out = (ctypes.c_int * 3)()
    assert lib.vosrtD2Conv3DOutputShape(ctypes.byref(params), out) == 0 and tuple(out) == (8, 60, 108)
    full_im2col = 256 * 27 * 8 * 60 * 108 * 4
    assert 0 < lib.vosrtD2Conv3DWorkspaceSize(ctypes.byref(params), kernels.FLOAT32) <= 64 * 2**20 < full_im2col
    params.groups = 5
    assert lib.vosrtD2Conv3DValidate(ctypes.byref(params)) == 1  # channels not divisible by groups
    sizes = [lib.vosrtL2ReadoutWorkspaceSize(ctypes.byref(kernels.l2_readout_params((1, 64, n), 1620, 1536, 20, 0)),
                                             kernels.FLOAT16) for n in (1620, 16200, 81000)]
    assert sizes[0] > 0 and len(set(sizes)) == 1  # independent of the memory length N
    assert b"NOT_SUPPORTED" in lib.vosrtGetStatusString(2)
    # every status has its own string, and the Python side names each one too
    strings = [lib.vosrtGetStatusString(status) for status in range(6)]
    assert len(set(strings)) == 6 and b"HOST_RESOURCES" in strings[5] and b"unknown" in lib.vosrtGetStatusString(6)
    assert set(kernels._STATUS) == set(range(6))


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"k{c[0]}s{c[1]}p{c[2]}d{c[3]}g{c[4]}")
def test_cpu_driver_d2conv3d_forward_matches_reference(driver, case):
    x, dilation, modulation, weight, bias, attrs = _conv_inputs(case, seed=1)
    expected = d2conv3d(_f64(x), _f64(dilation), _f64(modulation), _f64(weight), _f64(bias), backend="torch", **attrs)
    actual = driver.d2conv3d_forward(_np(x), _np(dilation), _np(modulation), _np(weight), _np(bias),
                                     attrs["stride"], attrs["padding"], attrs["dilation_base"], attrs["groups"])
    _close(actual, expected.numpy())


def test_cpu_driver_d2conv3d_samples_far_outside_the_volume_give_the_bias(driver):
    x, dilation, modulation, weight, bias, attrs = _conv_inputs(CONV_CASES[0], seed=2)
    dilation = torch.full_like(dilation, 40.0)  # every kernel point but the centre lands outside
    centre_only = torch.zeros_like(weight)
    centre_only[:, :, 1, 1, 1] = weight[:, :, 1, 1, 1]
    expected = d2conv3d(_f64(x), _f64(dilation), _f64(modulation), _f64(weight), _f64(bias), backend="torch", **attrs)
    actual = driver.d2conv3d_forward(_np(x), _np(dilation), _np(modulation), _np(weight), _np(bias),
                                     attrs["stride"], attrs["padding"], attrs["dilation_base"], attrs["groups"])
    with_centre = driver.d2conv3d_forward(_np(x), _np(dilation), _np(modulation), _np(centre_only), _np(bias),
                                          attrs["stride"], attrs["padding"], attrs["dilation_base"], attrs["groups"])
    _close(actual, expected.numpy())
    _close(actual, with_centre)


def test_cpu_driver_d2conv3d_with_unit_dilation_is_conv3d(driver):
    x, dilation, _, weight, bias, attrs = _conv_inputs(CONV_CASES[1], seed=3)
    expected = torch.nn.functional.conv3d(x.double(), weight.double(), bias, attrs["stride"], attrs["padding"],
                                          attrs["dilation_base"], attrs["groups"])
    actual = driver.d2conv3d_forward(_np(x), np.ones(dilation.shape, np.float32), None, _np(weight), _np(bias),
                                     attrs["stride"], attrs["padding"], attrs["dilation_base"], attrs["groups"])
    _close(actual, expected.numpy())


@pytest.mark.parametrize("case", CONV_CASES[:2] + CONV_CASES[3:], ids=["modbias", "groups2", "groups3"])
def test_cpu_driver_d2conv3d_backward_matches_reference_autograd(driver, case):
    x, dilation, modulation, weight, bias, attrs = _conv_inputs(case, seed=4)
    inputs = {"x": _f64(x, True), "dilation": _f64(dilation, True), "modulation": _f64(modulation, True),
              "weight": _f64(weight, True), "bias": _f64(bias, True)}
    y = d2conv3d(inputs["x"], inputs["dilation"], inputs["modulation"], inputs["weight"], inputs["bias"],
                 backend="torch", **attrs)
    grad_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(5))
    y.backward(grad_y.double())
    grads = driver.d2conv3d_backward(_np(x), _np(dilation), _np(modulation), _np(weight), _np(grad_y),
                                     attrs["stride"], attrs["padding"], attrs["dilation_base"], attrs["groups"],
                                     has_bias=bias is not None)
    for name, tensor in inputs.items():
        if tensor is not None:
            _close(grads[name], tensor.grad.numpy())


@pytest.mark.parametrize("top_k", [1, 5, 20, 33, 64, 0, 150, 400], ids=lambda k: f"top{k}")
def test_cpu_driver_readout_matches_reference(driver, top_k):
    g = torch.Generator().manual_seed(top_k)
    mem_key, query_key = torch.randn(2, 16, 150, generator=g), torch.randn(2, 16, 37, generator=g)
    mem_value = torch.randn(2, 7, 150, generator=g)
    expected = l2_memory_readout(mem_key.double(), query_key.double(), mem_value.double(), top_k, backend="torch")
    actual = driver.l2_memory_readout(_np(mem_key), _np(query_key), _np(mem_value), top_k)
    _close(actual, expected.numpy())


def test_cpu_driver_readout_uses_the_given_scale(driver):
    g = torch.Generator().manual_seed(7)
    mem_key, query_key, mem_value = (torch.randn(1, 8, 90, generator=g), torch.randn(1, 8, 11, generator=g),
                                     torch.randn(1, 3, 90, generator=g))
    expected = l2_memory_readout(mem_key.double(), query_key.double(), mem_value.double(), 10, scale=0.05,
                                 backend="torch")
    _close(driver.l2_memory_readout(_np(mem_key), _np(query_key), _np(mem_value), 10, 0.05), expected.numpy())


def test_cpu_driver_rejects_top_k_above_the_on_chip_limit(driver):
    g = torch.Generator().manual_seed(8)
    with pytest.raises(KernelError, match="not supported"):
        driver.l2_memory_readout(_np(torch.randn(1, 8, 200, generator=g)), _np(torch.randn(1, 8, 4, generator=g)),
                                 _np(torch.randn(1, 2, 200, generator=g)), 65)


def test_loader_follows_the_environment_variable(monkeypatch, tmp_path):
    path = cpu_driver_path()
    monkeypatch.setenv(kernels.ENV_VAR, str(path.parent))
    assert kernels.find_library(kernels.CPU_DRIVER_LIBRARY) == path
    monkeypatch.setenv(kernels.ENV_VAR, str(tmp_path))
    monkeypatch.setattr(kernels, "_SDK_DIR", tmp_path)
    monkeypatch.setattr(kernels, "_REPO_PLUGINS", tmp_path)
    assert kernels.find_library(kernels.CPU_DRIVER_LIBRARY) is None


def test_loader_refuses_an_environment_variable_naming_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv(kernels.ENV_VAR, str(tmp_path / "typo" / "libvosrt_kernels.so"))
    with pytest.raises(UserError, match=r"VOSRT_KERNELS_LIB names .*typo.* does not exist"):
        kernels.load_kernels()


# ---- the kernels' own code (fp32) on host threads: libvosrt_kernels_emu.so, the C API on host pointers ----

@pytest.fixture(scope="module")
def emulation():
    return kernels.load_emulation(emulation_path())


def _ptr(a):
    return None if a is None else a.ctypes.data


def _emulated_conv(lib, tensors, attrs, grad_y=None):
    x, dilation, modulation, weight, bias = (None if t is None else t.numpy().copy() for t in tensors)
    params = kernels.d2conv3d_params(x.shape, weight.shape, attrs["stride"], attrs["padding"],
                                     attrs["dilation_base"], attrs["groups"], modulation is not None, bias is not None)
    if grad_y is None:
        dtype = kernels.FLOAT16 if x.dtype == np.float16 else kernels.FLOAT32
        nbytes = lib.vosrtD2Conv3DWorkspaceSize(ctypes.byref(params), dtype)
        workspace = np.zeros(nbytes, np.uint8)
        out = (ctypes.c_int * 3)()
        lib.vosrtD2Conv3DOutputShape(ctypes.byref(params), out)
        y = np.zeros((x.shape[0], weight.shape[0], *out), x.dtype)
        kernels.check_status(lib.vosrtD2Conv3DForward(ctypes.byref(params), dtype, _ptr(x), _ptr(dilation),
                                                      _ptr(modulation), _ptr(weight), _ptr(bias), _ptr(y),
                                                      _ptr(workspace), nbytes, None), "forward")
        return y
    nbytes = lib.vosrtD2Conv3DBackwardWorkspaceSize(ctypes.byref(params), kernels.FLOAT32)
    workspace = np.zeros(nbytes, np.uint8)
    # NaN-filled: the kernels must overwrite every gradient, not accumulate into it.
    grads = [None if a is None else np.full_like(a, np.nan) for a in (x, dilation, modulation, weight, bias)]
    grad_y = grad_y.numpy().copy()  # kept alive across the call
    kernels.check_status(lib.vosrtD2Conv3DBackward(ctypes.byref(params), kernels.FLOAT32, _ptr(x), _ptr(dilation),
                                                   _ptr(modulation), _ptr(weight), _ptr(grad_y),
                                                   *(_ptr(g) for g in grads), _ptr(workspace), nbytes, None),
                         "backward")
    return grads


# 4×9×11 outputs of 3·27 columns: the emulation's 32 KiB column budget makes that 4 tiles of 128 columns.
TILED_CASE = ((3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 1, True, True, (3, 4), (4, 9, 11))


@pytest.mark.parametrize("case", [TILED_CASE, CONV_CASES[1]], ids=["tiled", "stride-groups2"])
def test_emulated_kernel_d2conv3d_forward_matches_reference(emulation, case):
    x, dilation, modulation, weight, bias, attrs = _conv_inputs(case, seed=9)
    expected = d2conv3d(_f64(x), _f64(dilation), _f64(modulation), _f64(weight), _f64(bias), backend="torch", **attrs)
    _close(_emulated_conv(emulation, (x, dilation, modulation, weight, bias), attrs), expected.numpy())


@pytest.mark.parametrize("case", [TILED_CASE, CONV_CASES[3]], ids=["tiled", "groups3"])
def test_emulated_kernel_d2conv3d_backward_matches_reference(emulation, case):
    x, dilation, modulation, weight, bias, attrs = _conv_inputs(case, seed=10)
    leaves = [_f64(t, True) for t in (x, dilation, modulation, weight, bias)]
    y = d2conv3d(*leaves, backend="torch", **attrs)
    grad_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(11))
    y.backward(grad_y.double())
    grads = _emulated_conv(emulation, (x, dilation, modulation, weight, bias), attrs, grad_y)
    for leaf, grad in zip(leaves, grads):
        if leaf is not None:
            _close(grad, leaf.grad.numpy())


def _conv_call(lib, tensors, attrs, workspace_bytes=None):
    """(status, y, preferred workspace, minimum workspace) of one fp32 forward with `workspace_bytes`."""
    x, dilation, modulation, weight, bias = (None if t is None else t.numpy().copy() for t in tensors)
    params = kernels.d2conv3d_params(x.shape, weight.shape, attrs["stride"], attrs["padding"],
                                     attrs["dilation_base"], attrs["groups"], modulation is not None, bias is not None)
    preferred = lib.vosrtD2Conv3DWorkspaceSize(ctypes.byref(params), kernels.FLOAT32)
    least = lib.vosrtD2Conv3DMinWorkspaceSize(ctypes.byref(params), kernels.FLOAT32)
    nbytes = preferred if workspace_bytes is None else workspace_bytes
    workspace = np.zeros(max(nbytes, 1), np.uint8)
    out = (ctypes.c_int * 3)()
    lib.vosrtD2Conv3DOutputShape(ctypes.byref(params), out)
    y = np.full((x.shape[0], weight.shape[0], *out), np.nan, np.float32)
    status = lib.vosrtD2Conv3DForward(ctypes.byref(params), kernels.FLOAT32, _ptr(x), _ptr(dilation),
                                      _ptr(modulation), _ptr(weight), _ptr(bias), _ptr(y), _ptr(workspace),
                                      nbytes, None)
    return status, y, preferred, least


def test_emulated_kernel_d2conv3d_refuses_a_workspace_below_one_tile(emulation):
    x, dilation, modulation, weight, bias, attrs = _conv_inputs(TILED_CASE, seed=12)
    _, _, _, least = _conv_call(emulation, (x, dilation, modulation, weight, bias), attrs, 0)
    status, _, _, _ = _conv_call(emulation, (x, dilation, modulation, weight, bias), attrs, least - 1)
    assert status == 4  # VOSRT_ERROR_WORKSPACE


# 1×9 taps × 2×20×30 outputs, one output channel: a column costs 9 fp32 samples + 4 split-K partial sums
# (52 bytes), so the emulation's 32 KiB budget prefers 512-column tiles; one tile is 128.
NARROW_CASE = ((1, 3, 3), (1, 1, 1), (0, 1, 1), (1, 1, 1), 1, True, True, (1, 1), (2, 20, 30))


@pytest.mark.slow
def test_emulated_kernel_d2conv3d_follows_the_workspace_it_is_given(emulation):
    # A TensorRT engine built with a small --workspace hands the plugin less than the preferred tile: the
    # forward must then run narrower tiles (more of them), with the same result.
    tensors = _conv_inputs(NARROW_CASE, seed=14)
    attrs = tensors[-1]
    expected = d2conv3d(*(_f64(t) for t in tensors[:5]), backend="torch", **attrs).numpy()
    status, y_preferred, preferred, least = _conv_call(emulation, tensors[:5], attrs)
    assert status == 0 and least < preferred
    assert least == 128 * (1 * 9 * 4 + 4 * 1 * 4)  # one 128-column fp32 tile and its split-K scratch
    for nbytes in (least, least + 1000, (least + preferred) // 2):
        status, y, _, _ = _conv_call(emulation, tensors[:5], attrs, nbytes)
        assert status == 0
        _close(y, expected)
    _close(y_preferred, expected)


def test_emulated_kernels_ignore_a_stale_cuda_error_and_report_their_own_failed_launch(emulation):
    tensors = _conv_inputs(NARROW_CASE, seed=15)
    attrs = tensors[-1]
    expected = d2conv3d(*(_f64(t) for t in tensors[:5]), backend="torch", **attrs).numpy()
    emulation.vosrtEmuSetLastError(2)  # cudaErrorMemoryAllocation left behind by unrelated host code
    status, y, _, least = _conv_call(emulation, tensors[:5], attrs)
    assert status == 0
    _close(y, expected)
    for nth in (1, 2, 5):  # a failed im2col, GEMM or later-tile launch is reported, not ignored
        emulation.vosrtEmuFailLaunch(nth)
        status, _, _, _ = _conv_call(emulation, tensors[:5], attrs, least)
        assert status == 3, nth  # VOSRT_ERROR_CUDA
    emulation.vosrtEmuFailLaunch(0)
    mem_key, query_key, mem_value = (np.random.default_rng(0).standard_normal(s).astype(np.float32)
                                     for s in ((1, 16, 300), (1, 16, 20), (1, 4, 300)))
    params = kernels.l2_readout_params(mem_key.shape, 20, 4, 20, 0.0)
    nbytes = emulation.vosrtL2ReadoutWorkspaceSize(ctypes.byref(params), kernels.FLOAT32)
    workspace, out = np.zeros(nbytes, np.uint8), np.zeros((1, 4, 20), np.float32)
    call = lambda: emulation.vosrtL2ReadoutForward(ctypes.byref(params), kernels.FLOAT32, _ptr(mem_key),
                                                   _ptr(query_key), _ptr(mem_value), _ptr(out), _ptr(workspace),
                                                   nbytes, None)
    emulation.vosrtEmuSetLastError(2)
    assert call() == 0
    for nth in (1, 2, 3):  # select, merge, gather
        emulation.vosrtEmuFailLaunch(nth)
        assert call() == 3, nth
    emulation.vosrtEmuFailLaunch(0)


# B, Ck, N, M, V, top_k: N splits over several blocks, odd sizes, N < top_k, top_k = 0
EMULATED_READOUTS = [(2, 24, 1000, 37, 5, 20), (1, 20, 333, 70, 3, 1), (1, 16, 700, 9, 17, 64),
                     (2, 16, 12, 5, 4, 20), (1, 24, 200, 65, 33, 0)]


def _call_readout(lib, mem_key, query_key, mem_value, top_k):
    """(status, out) of vosrtL2ReadoutForward on numpy arrays of one dtype (NaN-filled out)."""
    code = kernels.FLOAT16 if mem_key.dtype == np.float16 else kernels.FLOAT32
    b, m, v = mem_key.shape[0], query_key.shape[2], mem_value.shape[1]
    params = kernels.l2_readout_params(mem_key.shape, m, v, top_k, 0.0)
    nbytes = lib.vosrtL2ReadoutWorkspaceSize(ctypes.byref(params), code)
    workspace = np.zeros(max(nbytes, 1), np.uint8)
    out = np.full((b, v, m), np.nan, mem_key.dtype)
    status = lib.vosrtL2ReadoutForward(ctypes.byref(params), code, _ptr(mem_key), _ptr(query_key), _ptr(mem_value),
                                       _ptr(out), _ptr(workspace), nbytes, None)
    return status, out


def _readout(lib, mem_key, query_key, mem_value, top_k, what="vosrtL2ReadoutForward"):
    status, out = _call_readout(lib, mem_key, query_key, mem_value, top_k)
    kernels.check_status(status, what)
    return out


def _reference_readout(mem_key, query_key, mem_value, top_k):
    arrays = (torch.from_numpy(np.asarray(a, np.float64)) for a in (mem_key, query_key, mem_value))
    return l2_memory_readout(*arrays, top_k, backend="torch").numpy()


def _emulated_readout(lib, case, dtype):
    b, ck, n, m, v, top_k = case
    g = torch.Generator().manual_seed(n + m)
    key_scale = 0.5 if dtype == torch.float16 else 1.0
    mem_key, query_key, mem_value = (torch.randn(b, ck, n, generator=g) * key_scale,
                                     torch.randn(b, ck, m, generator=g) * key_scale, torch.randn(b, v, n, generator=g))
    arrays = [t.to(dtype).numpy() for t in (mem_key, query_key, mem_value)]
    return _readout(lib, *arrays, top_k), _reference_readout(*arrays, top_k)


@pytest.mark.parametrize("case", EMULATED_READOUTS, ids=lambda c: f"n{c[2]}m{c[3]}v{c[4]}k{c[5]}")
def test_emulated_kernel_readout_matches_reference(emulation, case):
    _close(*_emulated_readout(emulation, case, torch.float32))


# fp16: the WMMA affinity tiles are emulated by their meaning (every lane computes the whole tile)
@pytest.mark.parametrize("case", [EMULATED_READOUTS[0], EMULATED_READOUTS[4]], ids=["top20", "all"])
def test_emulated_kernel_readout_fp16_matches_reference(emulation, case):
    _close(*_emulated_readout(emulation, case, torch.float16), rel=1e-2)


def test_emulated_kernel_d2conv3d_fp16_forward_matches_reference(emulation):
    # 3·6·8 outputs of 16·27 fp16 columns: two 128-column tiles; two groups of 10 output channels whose
    # weight rows (8·27 halves) move as 16-byte vectors, with a ragged last k-slice (216 = 6·32 + 24)
    case = ((3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 2, True, True, (16, 20), (3, 6, 8))
    x, dilation, modulation, weight, bias, attrs = _conv_inputs(case, seed=13, batch=1)
    tensors = [t.half() for t in (x, dilation, modulation, weight / 9, bias)]
    expected = d2conv3d(*(t.double() for t in tensors), backend="torch", **attrs)
    actual = _emulated_conv(emulation, tensors, attrs)
    assert actual.dtype == np.float16
    _close(actual, expected.numpy(), rel=1e-2)


# ---- the torch autograd Functions of vosrt.training.ops.cuda_kernels, driven through the emulation ----

@pytest.fixture
def emulated_torch_ops(emulation, monkeypatch):
    """cuda_kernels with the host emulation as its library: host tensors' pointers are what it addresses."""
    from vosrt.training.ops import cuda_kernels
    monkeypatch.setattr(cuda_kernels, "_library", lambda: emulation)
    return cuda_kernels


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_torch_d2conv3d_function_forward_and_backward_through_the_kernels(emulated_torch_ops, dtype):
    case = ((3, 3, 3), (1, 2, 1), (1, 1, 1), (1, 1, 2), 2, True, True, (4, 6), (3, 6, 7))
    x, dilation, modulation, weight, bias, attrs = _conv_inputs(case, seed=14, batch=1)
    tensors = [t.to(dtype) for t in (x, dilation, modulation, weight / 6, bias)]
    mine = [t.clone().requires_grad_() for t in tensors]
    ref = [t.double().requires_grad_() for t in tensors]
    y = emulated_torch_ops._d2conv3d(*mine, attrs["stride"], attrs["padding"], attrs["dilation_base"],
                                     attrs["groups"])
    expected = d2conv3d(*ref, backend="torch", **attrs)
    rel = 1e-4 if dtype == torch.float32 else 1e-2
    assert y.dtype == dtype
    _close(y.detach().float().numpy(), expected.detach().numpy(), rel)
    grad_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(15))
    y.backward(grad_y.to(dtype))
    expected.backward(grad_y.to(dtype).double())
    for a, e in zip(mine, ref):
        assert a.grad.dtype == dtype
        _close(a.grad.float().numpy(), e.grad.numpy(), rel)


def test_torch_readout_function_forward_and_backward_through_the_kernels(emulated_torch_ops):
    g = torch.Generator().manual_seed(16)
    tensors = [torch.randn(1, 16, 300, generator=g), torch.randn(1, 16, 21, generator=g),
               torch.randn(1, 6, 300, generator=g)]
    mine = [t.clone().requires_grad_() for t in tensors]
    ref = [t.double().requires_grad_() for t in tensors]
    out = emulated_torch_ops._l2_memory_readout(*mine, 20, 0.25)
    expected = l2_memory_readout(*ref, 20, 0.25, backend="torch")
    _close(out.detach().numpy(), expected.detach().numpy())
    grad = torch.randn(out.shape, generator=g)
    out.backward(grad)
    expected.backward(grad.double())
    for a, e in zip(mine, ref):
        _close(a.grad.numpy(), e.grad.numpy())


def test_torch_readout_fp16_backward_recomputes_the_top_k_the_forward_kernel_chose(emulated_torch_ops):
    # The tier-2 fp16 backward case: query 33's 20th and 21st scores are 4.9e-4 apart, closer than fp16
    # rounds ‖mk‖², so a backward recomputed in float16 took another top-20 (gradients off by 0.06).
    g = torch.Generator().manual_seed(14)
    tensors = [(torch.randn(1, 32, 500, generator=g) * 0.5).half(), (torch.randn(1, 32, 40, generator=g) * 0.5).half(),
               torch.randn(1, 6, 500, generator=g).half()]
    mine = [t.clone().requires_grad_() for t in tensors]
    ref = [t.double().requires_grad_() for t in tensors]
    grad = torch.randn(1, 6, 40, generator=torch.Generator().manual_seed(15))
    emulated_torch_ops._l2_memory_readout(*mine, 20, 32 ** -0.5).backward(grad.half())
    l2_memory_readout(*ref, 20, backend="torch").backward(grad.double())
    for a, e in zip(mine, ref):
        assert a.grad.dtype == torch.float16
        _close(a.grad.float().numpy(), e.grad.numpy(), rel=1e-2)


def test_torch_readout_above_the_top_k_limit_uses_the_reference(emulated_torch_ops):
    g = torch.Generator().manual_seed(17)
    tensors = [torch.randn(1, 8, 200, generator=g), torch.randn(1, 8, 5, generator=g), torch.randn(1, 3, 200, generator=g)]
    out = emulated_torch_ops._l2_memory_readout(*tensors, 100, 0.3)
    _close(out.numpy(), l2_memory_readout(*(t.double() for t in tensors), 100, 0.3, backend="torch").numpy())


# ---- NaN policy (plugins/kernels/README.md): NaN propagates, the same in the reference, the CPU driver
# and the kernels' own code; compared as NaN masks plus the finite values ----


@pytest.mark.parametrize("top_k", [20, 0])
@pytest.mark.parametrize("where", ["mem_key", "query_key", "mem_value"])
def test_readout_nan_policy_is_the_same_in_the_reference_the_cpu_driver_and_the_kernels(driver, emulation, where,
                                                                                       top_k):
    mem_key, query_key, mem_value = nan_readout_inputs(where)
    expected = l2_memory_readout(mem_key.double(), query_key.double(), mem_value.double(), top_k, backend="torch")
    expected = expected.numpy()
    if where == "mem_key":
        assert np.isnan(expected).all()            # every query's top-k holds the NaN entry
    if where == "query_key":
        assert np.isnan(expected[..., 9]).all() and not np.isnan(np.delete(expected, 9, axis=2)).any()
    same_nans_and_close(driver.l2_memory_readout(mem_key.numpy(), query_key.numpy(), mem_value.numpy(), top_k),
                        expected)
    same_nans_and_close(_readout(emulation, mem_key.numpy(), query_key.numpy(), mem_value.numpy(), top_k),
                        expected)


def test_readout_nan_value_of_a_selected_entry_whose_weight_underflows_still_gives_nan(driver, emulation):
    # Query 3 matches memory entry 7 exactly, ~200 above every other score (scale 1/4), so the softmax
    # weights of the rest of its top-20 underflow to 0. A NaN value of one of them must still make the output
    # NaN (0·NaN in the reference, as in ONNX's portable form); the gather skipped zero weights and read 0.
    g = torch.Generator().manual_seed(23)
    mem_key, query_key, mem_value = (torch.randn(1, 16, 300, generator=g), torch.randn(1, 16, 40, generator=g),
                                     torch.randn(1, 5, 300, generator=g))
    mem_key[0, :, 7] = query_key[0, :, 3] = 0.0
    mem_key[0, 0, 7] = query_key[0, 0, 3] = 30.0
    scores = 2 * torch.einsum("cn,c->n", mem_key[0].double(), query_key[0, :, 3].double()) - \
        mem_key[0].double().pow(2).sum(0)
    top = torch.topk(scores, 20).indices
    assert int(top[0]) == 7 and float(scores[7] - scores[top[5]]) * 0.25 > 150  # exp(-150) is 0 in fp32
    mem_value[0, 1, int(top[5])] = float("nan")
    expected = l2_memory_readout(mem_key.double(), query_key.double(), mem_value.double(), 20, backend="torch")
    expected = expected.numpy()
    assert np.isnan(expected[0, 1, 3])
    same_nans_and_close(driver.l2_memory_readout(mem_key.numpy(), query_key.numpy(), mem_value.numpy(), 20),
                        expected)
    same_nans_and_close(_readout(emulation, mem_key.numpy(), query_key.numpy(), mem_value.numpy(), 20), expected)


@pytest.mark.parametrize("top_k", [20, 0])
def test_readout_query_whose_scores_are_all_minus_infinity_is_nan_as_in_the_reference(driver, emulation, top_k):
    # A score of −∞ never enters the kernels' lists, so such a query's list was empty and its output read 0
    # where the reference (and ONNX's portable TopK) gives NaN: a fp16 key overflowing to inf was hidden. The
    # kernels are emulated in fp16, where an infinite key gives −∞ scores; in fp32 their 3xTF32 split turns
    # it into NaN scores (inf − inf), so every query reads NaN (plugins/kernels/README.md, NaN policy).
    mem_key, query_key, mem_value = infinite_key_readout_inputs()
    expected = _reference_readout(mem_key, query_key, mem_value, top_k)
    assert np.isnan(expected[0]).all() and not np.isnan(expected[1:]).any()
    same_nans_and_close(driver.l2_memory_readout(mem_key.numpy(), query_key.numpy(), mem_value.numpy(), top_k),
                        expected)
    halves = [t.half().numpy() for t in (mem_key, query_key, mem_value)]
    same_nans_and_close(_readout(emulation, *halves, top_k), _reference_readout(*halves, top_k), rel=1e-2)


# (tensor, index) of the NaN: D at one location, M of one kernel point, X inside and at a border voxel
D2_NANS = {"dilation": ("dilation", (0, 1, 1, 2, 3)), "modulation": ("modulation", (1, 13, 2, 4, 1)),
           "x-inside": ("x", (0, 1, 2, 4, 3)), "x-border": ("x", (1, 0, 0, 0, 0)),
           "dilation-inf": ("dilation", (1, 2, 3, 4, 5))}


@pytest.mark.parametrize("tensor, index", list(D2_NANS.values()), ids=list(D2_NANS))
def test_d2conv3d_nan_policy_is_the_same_in_the_reference_the_cpu_driver_and_the_kernels(driver, emulation,
                                                                                         tensor, index):
    x, dilation, modulation, weight, bias, attrs = _conv_inputs(CONV_CASES[0], seed=22)
    inputs = {"x": x, "dilation": dilation, "modulation": modulation}
    # an infinite D is a NaN position too: the centre kernel point's offset is 0·(D − 1)
    inputs[tensor][index] = float("inf") if index == D2_NANS["dilation-inf"][1] else float("nan")
    expected = d2conv3d(_f64(x), _f64(dilation), _f64(modulation), _f64(weight), _f64(bias), backend="torch",
                        **attrs).numpy()
    if tensor != "x":  # everything at that one location, nothing elsewhere
        n, *where = index[0], *index[2:]
        assert np.isnan(expected[n, :, where[0], where[1], where[2]]).all()
        assert np.isnan(expected).sum() == expected.shape[1]
    else:  # no more than the outputs whose samples can reach the voxel (3×3×3 kernel, D < 2.5)
        assert 0 < np.isnan(expected).sum() < expected.size // 4
    same_nans_and_close(driver.d2conv3d_forward(_np(x), _np(dilation), _np(modulation), _np(weight), _np(bias),
                                                attrs["stride"], attrs["padding"], attrs["dilation_base"],
                                                attrs["groups"]), expected)
    same_nans_and_close(_emulated_conv(emulation, (x, dilation, modulation, weight, bias), attrs), expected)


# ---- the fused readout's selection paths (register lists sized to k, shared per-query thresholds, 3xTF32
# affinity tiles) against the reference, through the kernels' own code ----


def _readout_case(kind, g):
    """(mem_key, query_key, mem_value, top_k) of one named case."""
    if kind == "ties":  # every entry four times: tie groups straddle the top-k boundary
        mk, mv = torch.randn(1, 16, 75, generator=g), torch.randn(1, 6, 75, generator=g)
        return mk.repeat_interleave(4, 2), torch.randn(1, 16, 33, generator=g), mv.repeat_interleave(4, 2), 20
    if kind == "one-list-holds-the-top":  # the best entries all fall to list 0 of every query (n % 4 == 0)
        mk = torch.randn(1, 16, 512, generator=g) * 0.1
        mk[:, :, ::4] += torch.randn(1, 16, 128, generator=g) * 2
        return mk, torch.randn(1, 16, 20, generator=g), torch.randn(1, 4, 512, generator=g), 20
    b, ck, n, m, v, k = {"odd-ck": (1, 13, 300, 50, 4, 20), "tiles-off": (2, 24, 1001, 130, 5, 20),
                         "k7": (1, 16, 600, 40, 3, 7), "k33": (1, 16, 600, 40, 3, 33),
                         "eight-objects": (1, 32, 400, 64, 8 * 3, 20), "production-ck": (1, 64, 900, 64, 2, 20)}[kind]
    return (torch.randn(b, ck, n, generator=g), torch.randn(b, ck, m, generator=g), torch.randn(b, v, n, generator=g), k)


READOUT_KINDS = ["ties", "one-list-holds-the-top", "odd-ck", "tiles-off", "k7", "k33", "eight-objects",
                 "production-ck"]


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("kind", READOUT_KINDS)
def test_emulated_readout_selection_matches_reference(emulation, kind, dtype):
    g = torch.Generator().manual_seed(READOUT_KINDS.index(kind))
    mem_key, query_key, mem_value, top_k = _readout_case(kind, g)
    torch_dtype = torch.float16 if dtype == "fp16" else torch.float32
    if dtype == "fp16":  # fp16 storage: the reference sees the same rounded inputs
        mem_key, query_key = mem_key * 0.5, query_key * 0.5
    arrays = [t.to(torch_dtype).numpy() for t in (mem_key, query_key, mem_value)]
    _close(_readout(emulation, *arrays, top_k, kind), _reference_readout(*arrays, top_k),
           rel=1e-2 if dtype == "fp16" else 1e-4)


# ---- mem_key tiles through shared memory: cp.async in the widest vector every row start allows, plain loads
# where none does, two stages where they fit in shared memory, one where they do not ----

def _aligned_copy(array, elements_off):
    """``array`` copied to an address that is 64-byte aligned plus ``elements_off`` elements."""
    size = array.itemsize
    raw = np.empty(array.size + 64, array.dtype)
    start = (-raw.ctypes.data % 64) // size + elements_off
    view = raw[start:start + array.size].reshape(array.shape)
    view[...] = array
    return view


def _copy_case(dtype, n, offset, seed=5):
    g = torch.Generator().manual_seed(seed + n)
    np_dtype = np.float16 if dtype == "fp16" else np.float32
    mem_key = (torch.randn(2, 16, n, generator=g) * 0.5).numpy().astype(np_dtype)
    query_key = (torch.randn(2, 16, 40, generator=g) * 0.5).numpy().astype(np_dtype)
    mem_value = torch.randn(2, 3, n, generator=g).numpy().astype(np_dtype)
    return _aligned_copy(mem_key, offset), query_key, mem_value


# dtype, N, element offset of mem_key -> bytes per cp.async (0: plain loads)
KEY_COPIES = [("fp32", 640, 0, 16), ("fp32", 642, 0, 8), ("fp32", 641, 0, 4), ("fp32", 640, 1, 4),
              ("fp16", 640, 0, 16), ("fp16", 644, 0, 8), ("fp16", 642, 0, 4), ("fp16", 641, 0, 0),
              ("fp16", 640, 1, 0)]


@pytest.mark.parametrize("top_k", [20, 0], ids=["select", "dense"])
@pytest.mark.parametrize("dtype, n, offset, copy_bytes", KEY_COPIES,
                         ids=[f"{d}-n{n}-off{o}" for d, n, o, _ in KEY_COPIES])
def test_emulated_readout_key_tiles_move_in_the_widest_aligned_copies(emulation, dtype, n, offset, copy_bytes,
                                                                      top_k):
    take = emulation.vosrtEmuTakeAsyncCopies
    take.restype, take.argtypes = ctypes.c_longlong, [ctypes.c_int]
    mem_key, query_key, mem_value = _copy_case(dtype, n, offset)
    for size in (4, 8, 16):
        take(size)
    out = _readout(emulation, mem_key, query_key, mem_value, top_k)
    copies = {size: take(size) for size in (4, 8, 16)}
    if copy_bytes == 0:
        assert copies == {4: 0, 8: 0, 16: 0}
    else:  # every key element of every block's walk over N, in vectors of that size and no other
        assert copies[copy_bytes] > 0 and sum(copies.values()) == copies[copy_bytes]
        assert copies[copy_bytes] * copy_bytes >= mem_key.nbytes
    _close(out, _reference_readout(mem_key, query_key, mem_value, top_k), rel=1e-2 if dtype == "fp16" else 1e-4)


def _readout_shared_bytes(itemsize, ck, dense, stages):
    """A select/dense block's shared memory (l2_readout.cu shared_bytes; tiles of 64, score rows of 68,
    then 32 value rows (dense) or the floors of 4 lists per query (select))."""
    ckp = -(-ck // 16) * 16
    return 4 * (64 * 68 + 64) + itemsize * ckp * (stages * 64 + 64) + (4 * 32 * 64 if dense else 4 * 4 * 64)


@pytest.mark.parametrize("top_k", [20, 0], ids=["select", "dense"])
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_emulated_readout_uses_one_key_stage_where_two_do_not_fit(emulation, dtype, top_k):
    mem_key, query_key, mem_value = _copy_case(dtype, 640, 0)
    one_stage = _readout_shared_bytes(mem_key.itemsize, 16, top_k == 0, 1)
    assert _readout_shared_bytes(mem_key.itemsize, 16, top_k == 0, 2) > one_stage
    try:
        emulation.vosrtEmuSetSharedLimit(one_stage)
        out = _readout(emulation, mem_key, query_key, mem_value, top_k)
        emulation.vosrtEmuSetSharedLimit(one_stage - 16)
        status, _ = _call_readout(emulation, mem_key, query_key, mem_value, top_k)
    finally:
        emulation.vosrtEmuSetSharedLimit(0)
    _close(out, _reference_readout(mem_key, query_key, mem_value, top_k), rel=1e-2 if dtype == "fp16" else 1e-4)
    assert status == 2  # VOSRT_ERROR_NOT_SUPPORTED: not even one stage fits


@pytest.mark.parametrize("top_k", [20, 0], ids=["select", "dense"])
def test_a_readout_in_a_new_context_sets_the_kernels_shared_memory_limit_again(emulation, top_k):
    # the limit set on a kernel was remembered per device, but it belongs to the context: after a cudaDeviceReset
    # (or in a context of the caller's own) every read of more than 48 KB of shared memory failed (Ck 64: 66 KB)
    g = torch.Generator().manual_seed(3)
    mem_key, query_key = (torch.randn(1, 64, size, generator=g).numpy() for size in (300, 40))
    mem_value = torch.randn(1, 8, 300, generator=g).numpy()
    expected = _reference_readout(mem_key, query_key, mem_value, top_k)
    _close(_readout(emulation, mem_key, query_key, mem_value, top_k), expected, rel=1e-4)
    emulation.vosrtEmuResetContext()
    _close(_readout(emulation, mem_key, query_key, mem_value, top_k), expected, rel=1e-4)
    _close(_readout(emulation, mem_key, query_key, mem_value, top_k), expected, rel=1e-4)


def test_readout_workspace_holds_lists_sized_to_the_real_k(emulation):
    # top_k 17..20 share STCN's 20-entry lists; 21 moves to the 32-entry bucket
    sizes = {k: emulation.vosrtL2ReadoutWorkspaceSize(ctypes.byref(kernels.l2_readout_params((1, 64, 5000), 100,
                                                                                             8, k, 0.0)),
                                                      kernels.FLOAT32) for k in (16, 17, 20, 21)}
    assert sizes[17] == sizes[20] and sizes[16] < sizes[20] < sizes[21]
    assert sizes[20] * 32 == sizes[21] * 20


def test_emulated_kernel_d2conv3d_fp16_with_both_gemm_tile_sizes_matches_reference(emulation):
    # NARROW_CASE in fp16: the first column tile (896 positions) gives the GEMM enough blocks for
    # 128×128 tiles, the ragged last one falls back to 64×64 tiles (the emulation has 4 "SMs").
    x, dilation, modulation, weight, bias, attrs = _conv_inputs(NARROW_CASE, seed=16)
    tensors = [t.half() for t in (x, dilation, modulation, weight, bias)]
    expected = d2conv3d(*(t.double() for t in tensors), backend="torch", **attrs)
    actual = _emulated_conv(emulation, tensors, attrs)
    _close(actual, expected.numpy(), rel=1e-2)


# C·K = 16·27 = 432 and one 4-channel, 60-position output tile: a single 64×64 GEMM tile for 4 "SMs", so
# the GEMM sums K in slices (fp32: 4 of 112, fp16: 3 of 160) and a reduction adds them, the bias and C.
SPLIT_K_CASE = ((3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 1, True, True, (16, 4), (2, 5, 6))


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_emulated_kernel_d2conv3d_with_split_k_matches_reference(emulation, dtype):
    x, dilation, modulation, weight, bias, attrs = _conv_inputs(SPLIT_K_CASE, seed=17, batch=2)
    tensors = [x, dilation, modulation, weight / 6, bias]
    if dtype == "fp16":
        tensors = [t.half() for t in tensors]
    expected = d2conv3d(*(t.double() for t in tensors), backend="torch", **attrs)
    _close(_emulated_conv(emulation, tensors, attrs), expected.numpy(), rel=1e-2 if dtype == "fp16" else 1e-4)


@pytest.mark.slow
def test_emulated_kernel_d2conv3d_sums_a_long_k_without_drifting_toward_zero(emulation):
    """C = 1,024 (3DC-Seg's widest D2Conv3D input) sums K = 27,648 products per output. Tensor cores
    truncate what they accumulate (the emulation does too): a sum kept in the accumulator for ~2,600 MMAs
    per K-slice would come out ~1e-4 low; each k-step is summed apart and added by the CUDA cores instead."""
    g = torch.Generator().manual_seed(21)
    c, cout = 1024, 16
    x = torch.rand(1, c, 2, 2, 2, generator=g) + 0.5           # positive terms: every partial sum grows,
    weight = torch.rand(cout, c, 3, 3, 3, generator=g) / 1000   # so truncation would bias them all one way
    dilation = torch.ones(1, 3, 2, 2, 2)
    modulation = torch.ones(1, 27, 2, 2, 2)
    attrs = dict(stride=(1, 1, 1), padding=(1, 1, 1), dilation_base=(1, 1, 1), groups=1)
    expected = d2conv3d(*(t.double() for t in (x, dilation, modulation, weight)), None, backend="torch", **attrs)
    actual = _emulated_conv(emulation, (x, dilation, modulation, weight, None), attrs)
    error = np.abs(actual - expected.numpy()) / np.abs(expected.numpy())
    assert error.max() < 5e-6, error.max()  # 4.8e-7; 4.2e-5 accumulated in the "tensor cores"


# ---- D2Conv3D entry points refuse a missing tensor alike: the CPU driver, the kernels (emulated) and the
# CPU operators (plugins/cpu) ----

@pytest.mark.parametrize("missing", ["x", "dilation", "modulation", "weight", "bias", "y"])
def test_d2conv3d_forward_entry_points_refuse_a_missing_tensor(driver, emulation, missing):
    from vosrt.sdk import cpu_ops

    x, dilation, modulation, weight, bias, attrs = _conv_inputs(CONV_CASES[0], seed=3)
    tensors = {"x": _np(x), "dilation": _np(dilation), "modulation": _np(modulation), "weight": _np(weight),
               "bias": _np(bias)}
    params = kernels.d2conv3d_params(x.shape, weight.shape, attrs["stride"], attrs["padding"],
                                     attrs["dilation_base"], attrs["groups"], True, True)
    out = (ctypes.c_int * 3)()
    emulation.vosrtD2Conv3DOutputShape(ctypes.byref(params), out)
    tensors["y"] = np.zeros((x.shape[0], weight.shape[0], *out), np.float32)
    pointers = [None if name == missing else _ptr(tensors[name])
                for name in ("x", "dilation", "modulation", "weight", "bias", "y")]
    workspace = np.zeros(emulation.vosrtD2Conv3DWorkspaceSize(ctypes.byref(params), kernels.FLOAT32), np.uint8)
    statuses = [driver.lib.vosrtCpuD2Conv3DForward(ctypes.byref(params), *pointers),
                emulation.vosrtD2Conv3DForward(ctypes.byref(params), kernels.FLOAT32, *pointers, _ptr(workspace),
                                               workspace.nbytes, None)]
    try:
        ops = cpu_ops.load_cpu_ops()
    except cpu_ops.CpuOpsUnavailable:
        ops = None  # plugins/cpu cannot be built here: the two others still answer
    if ops is not None:
        statuses.append(ops.lib.vosrtCpuOpsD2Conv3DForward(ctypes.byref(params), *pointers, 1))
    assert statuses == [1] * len(statuses)  # VOSRT_ERROR_INVALID_VALUE


def test_d2conv3d_backward_entry_points_refuse_a_missing_input_but_check_the_dtype_first(driver, emulation):
    x, dilation, modulation, weight, bias, attrs = _conv_inputs(CONV_CASES[0], seed=3)
    params = kernels.d2conv3d_params(x.shape, weight.shape, attrs["stride"], attrs["padding"],
                                     attrs["dilation_base"], attrs["groups"], True, True)
    arrays = [_np(t) for t in (x, dilation, modulation, weight)]
    grads = [np.zeros_like(a) for a in (*arrays, _np(bias))]
    inputs = [_ptr(a) for a in arrays] + [None]  # no grad_y
    assert driver.lib.vosrtCpuD2Conv3DBackward(ctypes.byref(params), *inputs, *(_ptr(g) for g in grads)) == 1
    for dtype, expected in ((kernels.FLOAT32, 1), (kernels.FLOAT16, 2)):  # fp16: not supported, before pointers
        assert emulation.vosrtD2Conv3DBackward(ctypes.byref(params), dtype, *inputs, *(_ptr(g) for g in grads),
                                               None, 0, None) == expected


# Padded axes whose size + 2·pad exceeds an int. (a) 11 + 2·(2³¹ − 3): the output size 2³² + 5 was truncated
# to 5 and accepted. (b) a 1-voxel axis padded by 2³⁰ with a 3-tap kernel of dilation 2³⁰: the shape is
# right (1 output), but the last tap's int coordinate 2·2³⁰ overflowed in d2c_coord (undefined behaviour;
# only -fsanitize=undefined saw it, docs/TESTING.md, Sanitizers).
HUGE_PAD_CASES = {"truncated-output": ((1, 1, 11, 1, 1), (1, 1, 1, 1, 1), (2**31 - 3, 0, 0), (1, 1, 1)),
                  "overflowing-coordinate": ((1, 1, 1, 1, 1), (1, 1, 3, 1, 1), (2**30, 0, 0), (2**30, 1, 1))}


@pytest.mark.parametrize("case", list(HUGE_PAD_CASES.values()), ids=list(HUGE_PAD_CASES))
def test_d2conv3d_refuses_a_padded_axis_beyond_an_int(driver, emulation, case):
    x_shape, w_shape, pad, dil = case
    params = kernels.d2conv3d_params(x_shape, w_shape, (1, 1, 1), pad, dil, 1, False, False)
    out = (ctypes.c_int * 3)()
    assert driver.lib.vosrtCpuD2Conv3DOutputShape(ctypes.byref(params), out) == 2  # not supported
    assert emulation.vosrtD2Conv3DOutputShape(ctypes.byref(params), out) == 2
    assert emulation.vosrtD2Conv3DValidate(ctypes.byref(params)) == 2
    if x_shape == (1, 1, 1, 1, 1):  # small enough to run: refused, not computed with an overflowing index
        with pytest.raises(KernelError, match="not supported"):
            driver.d2conv3d_forward(np.ones(x_shape, np.float32), np.zeros((1, 3, 1, 1, 1), np.float32), None,
                                    np.ones(w_shape, np.float32), None, (1, 1, 1), pad, dil, 1)


def test_shapes_beyond_the_launch_grid_limits_are_refused_as_not_supported(emulation):
    """gridDim.y and .z stop at 65,535: shapes whose grids would pass them are refused up front
    (VOSRT_ERROR_NOT_SUPPORTED, so the operators fall back to the reference) rather than failing to launch."""
    def conv(channels, groups=1):
        return kernels.d2conv3d_params((1, channels, 1, 2, 2), (groups, channels // groups, 3, 3, 3), (1, 1, 1),
                                       (1, 1, 1), (1, 1, 1), groups, True, False)
    assert emulation.vosrtD2Conv3DValidate(ctypes.byref(conv(310_000))) == 0    # C·K = 8,370,000 GEMM rows
    assert emulation.vosrtD2Conv3DValidate(ctypes.byref(conv(311_000))) == 2    # 8,397,000 > 65,535·128
    assert emulation.vosrtD2Conv3DValidate(ctypes.byref(conv(2 * 16_384, 16_384))) == 2  # 4·G GEMMs on .z

    def readout(batch, value_dim=8):
        return ctypes.byref(kernels.l2_readout_params((batch, 16, 100), 40, value_dim, 20, 0))
    assert emulation.vosrtL2ReadoutValidate(readout(65_535)) == 0
    assert emulation.vosrtL2ReadoutValidate(readout(65_536)) == 2
    assert emulation.vosrtL2ReadoutValidate(readout(1, 65_535 * 16 + 1)) == 2


def test_torch_readout_a_device_without_the_shared_memory_for_its_key_tiles_uses_the_reference(emulated_torch_ops,
                                                                                                 emulation):
    # Validate accepts Ck up to 256, but the forward answers "not supported" where the device's shared memory
    # cannot hold a block's key tiles at that Ck (a GPU with less than an H100's): that raised a KernelError
    # from training and the torch backend where every other unsupported case computes with the reference
    g = torch.Generator().manual_seed(18)
    tensors = [torch.randn(1, 256, 200, generator=g), torch.randn(1, 256, 7, generator=g),
               torch.randn(1, 3, 200, generator=g)]
    try:
        emulation.vosrtEmuSetSharedLimit(48 * 1024)   # a block's 1-stage key tiles at Ck 256 need ~150 KB
        out = emulated_torch_ops._l2_memory_readout(*tensors, 20, 0.3)
    finally:
        emulation.vosrtEmuSetSharedLimit(0)
    _close(out.numpy(), l2_memory_readout(*(t.double() for t in tensors), 20, 0.3, backend="torch").numpy())



def test_device_check_answers_not_supported_exactly_where_the_forward_would_for_shared_memory(emulation):
    # vosrtL2ReadoutDeviceCheck lets a TensorRT build refuse a key width the GPU cannot hold instead of
    # building an engine whose every enqueue fails; it must agree with the forward on every GPU
    def check(params, code):
        needed, available = ctypes.c_size_t(0), ctypes.c_size_t(0)
        status = emulation.vosrtL2ReadoutDeviceCheck(ctypes.byref(params), code, ctypes.byref(needed),
                                                     ctypes.byref(available))
        return status, needed.value, available.value

    g = np.random.default_rng(3)
    answers = {}
    try:
        for limit in (48 * 1024, 96 * 1024, 160 * 1024, 0):
            emulation.vosrtEmuSetSharedLimit(limit)
            for ck, dtype, top_k in ((256, np.float32, 20), (256, np.float32, 0), (256, np.float16, 20),
                                     (64, np.float32, 20), (160, np.float32, 0)):
                arrays = [g.standard_normal(s).astype(dtype) for s in ((1, ck, 70), (1, ck, 5), (1, 3, 70))]
                code = kernels.FLOAT16 if dtype == np.float16 else kernels.FLOAT32
                status, needed, available = check(kernels.l2_readout_params((1, ck, 70), 5, 3, top_k, 0.0), code)
                assert status == _call_readout(emulation, *arrays, top_k)[0], (limit, ck, dtype, top_k)
                answers[limit, ck, np.dtype(dtype).name, top_k] = status, needed, available
    finally:
        emulation.vosrtEmuSetSharedLimit(0)
    # one key stage at Ck 256: 17,664 bytes of scores + 131,072 of fp32 key and query tiles + 1,024 of list
    # floors (select) or 8,192 of values (dense)
    assert answers[96 * 1024, 256, "float32", 20] == (2, 149_760, 96 * 1024)
    assert answers[160 * 1024, 256, "float32", 0] == (0, 156_928, 160 * 1024)
    assert answers[96 * 1024, 256, "float16", 20][0] == 0 and answers[48 * 1024, 64, "float32", 20][0] == 2
    assert {status for status, _, _ in answers.values()} == {0, 2}
    params = kernels.l2_readout_params((1, 257, 70), 5, 3, 20, 0.0)
    assert check(params, kernels.FLOAT32)[0] == emulation.vosrtL2ReadoutValidate(ctypes.byref(params)) == 2


# ---- the same kernels under adversarial schedules (emulate.h): a block's warps one after another between
# barriers (ascending, descending, shuffled), and cp.async copies landing as soon as they are issued and again
# after older groups: orderings a GPU may produce and free host threads almost never do ----

@pytest.fixture
def scheduled(emulation, request):
    emulation.vosrtEmuSetSchedule(request.param, 1)
    try:
        yield emulation
    finally:
        emulation.vosrtEmuSetSchedule(0, 0)


@pytest.mark.slow   # ~55 s for the three schedules on 2 cores
@pytest.mark.parametrize("scheduled", [1, 2, 3], ids=["ascending", "descending", "shuffled"], indirect=True)
def test_emulated_kernels_under_warp_serial_schedules_and_eager_copies_match_reference(scheduled):
    lib = scheduled
    for case in (EMULATED_READOUTS[0], EMULATED_READOUTS[4]):  # top-k select (two stages, N split), dense
        _close(*_emulated_readout(lib, case, torch.float32))
    _close(*_emulated_readout(lib, EMULATED_READOUTS[0], torch.float16), rel=1e-2)
    mem_key, query_key, mem_value = _copy_case("fp16", 642, 0)  # 4-byte copies
    _close(_readout(lib, mem_key, query_key, mem_value, 20), _reference_readout(mem_key, query_key, mem_value, 20),
           rel=1e-2)
    mem_key, query_key, mem_value = _copy_case("fp32", 640, 0)
    try:  # one key stage: each tile copied into the buffer the previous one was read from
        lib.vosrtEmuSetSharedLimit(_readout_shared_bytes(4, 16, False, 1))
        out = _readout(lib, mem_key, query_key, mem_value, 20)
    finally:
        lib.vosrtEmuSetSharedLimit(0)
    _close(out, _reference_readout(mem_key, query_key, mem_value, 20))
    x, dilation, modulation, weight, bias, attrs = _conv_inputs(TILED_CASE, seed=9)  # 128×128 3xTF32 GEMM tiles
    expected = d2conv3d(_f64(x), _f64(dilation), _f64(modulation), _f64(weight), _f64(bias), backend="torch", **attrs)
    _close(_emulated_conv(lib, (x, dilation, modulation, weight, bias), attrs), expected.numpy())
    x, dilation, modulation, weight, bias, attrs = _conv_inputs(SPLIT_K_CASE, seed=17, batch=2)  # 64×64, split K
    tensors = [t.half() for t in (x, dilation, modulation, weight / 6, bias)]
    expected = d2conv3d(*(t.double() for t in tensors), backend="torch", **attrs)
    _close(_emulated_conv(lib, tensors, attrs), expected.numpy(), rel=1e-2)
    x, dilation, modulation, weight, bias, attrs = _conv_inputs(CONV_CASES[3], seed=10)  # backward, CUDA-core GEMM
    leaves = [_f64(t, True) for t in (x, dilation, modulation, weight, bias)]
    y = d2conv3d(*leaves, backend="torch", **attrs)
    grad_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(11))
    y.backward(grad_y.double())
    for leaf, grad in zip(leaves, _emulated_conv(lib, (x, dilation, modulation, weight, bias), attrs, grad_y)):
        if leaf is not None:
            _close(grad, leaf.grad.numpy())
