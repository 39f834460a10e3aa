"""Tier 1 (no GPU): the CUDA kernels compile; the math they share with the CPU driver
(plugins/kernels/src/*_math.h) and the fp32 kernels' own code run on host threads (libvosrt_kernels_emu)
agree with the PyTorch reference operators."""
import ctypes

import numpy as np
import pytest
import torch

from vosrt.sdk import kernels
from vosrt.sdk.kernels import KernelError, load_cpu_driver
from vosrt.training.ops.d2conv3d import d2conv3d, output_size
from vosrt.training.ops.l2_readout import l2_memory_readout

from kernel_build import build, cpu_driver_path, emulation_path, have_nvcc

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


def _conv_inputs(case, seed, spread=1.5, batch=2):
    kernel, stride, padding, base, groups, has_mod, has_bias, (c, cout), size = case
    g = torch.Generator().manual_seed(seed)
    out = output_size(size, kernel, stride, padding, base)
    k = kernel[0] * kernel[1] * kernel[2]
    x = torch.randn(batch, c, *size, generator=g)
    # D spans (−0.5, 1 + spread): some kernels shrink past the centre, many samples leave the volume.
    dilation = 1 + (torch.rand(batch, 3, *out, generator=g) * (1.5 + spread) - 1.5)
    modulation = torch.rand(batch, k, *out, generator=g) if has_mod else None
    weight = torch.randn(cout, c // groups, *kernel, generator=g)
    bias = torch.randn(cout, generator=g) if has_bias else None
    return x, dilation, modulation, weight, bias, dict(stride=stride, padding=padding, dilation_base=base,
                                                       groups=groups)


def _np(t):
    return None if t is None else t.detach().numpy()


def _f64(t, grad=False):
    return None if t is None else t.double().requires_grad_(grad)


def _close(actual, expected, rel=1e-4):
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(float(np.abs(expected).max()), 1e-6)
    np.testing.assert_allclose(actual, expected, rtol=rel, atol=rel * scale)


@pytest.mark.slow
def test_kernel_library_compiles_for_one_architecture():
    if not have_nvcc():
        pytest.skip("nvcc is not installed")
    folder, log = build(with_kernels=True)
    assert (folder / "libvosrt_kernels.so").is_file()
    assert "warning" not in log.lower()


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


def test_emulated_kernel_d2conv3d_refuses_a_short_workspace(emulation):
    x, dilation, modulation, weight, bias, attrs = _conv_inputs(TILED_CASE, seed=12)
    params = kernels.d2conv3d_params(x.shape, weight.shape, attrs["stride"], attrs["padding"], attrs["dilation_base"],
                                     1, True, True)
    nbytes = emulation.vosrtD2Conv3DWorkspaceSize(ctypes.byref(params), kernels.FLOAT32)
    arrays = [t.numpy() for t in (x, dilation, modulation, weight, bias)]
    y = np.zeros(1, np.float32)
    workspace = np.zeros(nbytes, np.uint8)
    status = emulation.vosrtD2Conv3DForward(ctypes.byref(params), kernels.FLOAT32, *(_ptr(a) for a in arrays),
                                            _ptr(y), _ptr(workspace), nbytes - 1, None)
    assert status == 4  # VOSRT_ERROR_WORKSPACE


# B, Ck, N, M, V, top_k: N splits over several blocks, odd sizes, N < top_k, top_k = 0
EMULATED_READOUTS = [(2, 24, 1000, 37, 5, 20), (1, 20, 333, 70, 3, 1), (1, 16, 700, 9, 17, 64),
                     (2, 16, 12, 5, 4, 20), (1, 24, 200, 65, 33, 0)]


def _emulated_readout(lib, case, dtype):
    b, ck, n, m, v, top_k = case
    g = torch.Generator().manual_seed(n + m)
    key_scale = 0.5 if dtype == torch.float16 else 1.0
    mem_key, query_key, mem_value = (torch.randn(b, ck, n, generator=g) * key_scale,
                                     torch.randn(b, ck, m, generator=g) * key_scale, torch.randn(b, v, n, generator=g))
    mem_key, query_key, mem_value = (t.to(dtype) for t in (mem_key, query_key, mem_value))
    code = kernels.FLOAT16 if dtype == torch.float16 else kernels.FLOAT32
    params = kernels.l2_readout_params(mem_key.shape, m, v, top_k, 0.0)
    nbytes = lib.vosrtL2ReadoutWorkspaceSize(ctypes.byref(params), code)
    workspace = np.zeros(max(nbytes, 1), np.uint8)
    out = np.full((b, v, m), np.nan, mem_key.numpy().dtype)
    kernels.check_status(lib.vosrtL2ReadoutForward(
        ctypes.byref(params), code, _ptr(mem_key.numpy()), _ptr(query_key.numpy()),
        _ptr(mem_value.numpy()), _ptr(out), _ptr(workspace), nbytes, None), "vosrtL2ReadoutForward")
    expected = l2_memory_readout(mem_key.double(), query_key.double(), mem_value.double(), top_k, backend="torch")
    return out, expected.numpy()


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


def test_torch_readout_above_the_top_k_limit_uses_the_reference(emulated_torch_ops):
    g = torch.Generator().manual_seed(17)
    tensors = [torch.randn(1, 8, 200, generator=g), torch.randn(1, 8, 5, generator=g), torch.randn(1, 3, 200, generator=g)]
    out = emulated_torch_ops._l2_memory_readout(*tensors, 100, 0.3)
    _close(out.numpy(), l2_memory_readout(*(t.double() for t in tensors), 100, 0.3, backend="torch").numpy())
