"""Tier 1 (no GPU): the CUDA kernels compile, and the math they share with the CPU driver
(plugins/kernels/src/*_math.h) agrees with the PyTorch reference operators."""
import ctypes

import numpy as np
import pytest
import torch

from vosrt.sdk import kernels
from vosrt.sdk.kernels import KernelError, load_cpu_driver
from vosrt.training.ops.d2conv3d import d2conv3d, output_size
from vosrt.training.ops.l2_readout import l2_memory_readout

from kernel_build import build, cpu_driver_path, have_nvcc

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


def _conv_inputs(case, seed, spread=1.5):
    kernel, stride, padding, base, groups, has_mod, has_bias, (c, cout), size = case
    g = torch.Generator().manual_seed(seed)
    out = output_size(size, kernel, stride, padding, base)
    k = kernel[0] * kernel[1] * kernel[2]
    x = torch.randn(2, c, *size, generator=g)
    # D spans (−0.5, 1 + spread): some kernels shrink past the centre, many samples leave the volume.
    dilation = 1 + (torch.rand(2, 3, *out, generator=g) * (1.5 + spread) - 1.5)
    modulation = torch.rand(2, k, *out, generator=g) if has_mod else None
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
