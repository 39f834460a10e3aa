"""The fast CPU operators (plugins/cpu, libvosrt_cpu_ops.so) equal the PyTorch reference operators.

fp32 results against float64 references, within 1e-5 of the output's magnitude, over the shapes of the
kernel tests plus shapes that cross every tile of the CPU code (more reduction rows than one GEMM pass,
more output positions than one tile, output channels that fill no whole register block).
"""
import functools
import os
import stat

import numpy as np
import pytest
import torch

from vosrt.sdk import cpu_ops
from vosrt.sdk.kernels import KernelError
from vosrt.training.ops.d2conv3d import d2conv3d
from vosrt.training.ops.l2_readout import l2_memory_readout

from operator_inputs import (as_f64 as _f64, assert_close, conv_inputs as _conv_inputs, infinite_key_readout_inputs,
                             nan_readout_inputs, same_nans_and_close, to_numpy as _np)

REL = 1e-5

# kernel, stride, padding, base dilation, groups, modulation, bias, (C, Cout), (T, H, W)
CONV_CASES = {
    "3x3x3": ((3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 1, True, True, (3, 4), (4, 5, 6)),
    "strided-grouped-nobias": ((3, 3, 3), (2, 1, 2), (1, 2, 0), (1, 2, 1), 2, True, False, (4, 6), (5, 7, 6)),
    "1x3x3-no-modulation": ((1, 3, 3), (1, 2, 2), (0, 2, 2), (1, 2, 2), 1, False, True, (2, 3), (3, 9, 7)),
    "2x3x1-groups3": ((2, 3, 1), (1, 1, 1), (1, 1, 0), (2, 1, 1), 3, True, True, (3, 3), (5, 4, 3)),
    # 24·27 = 648 reduction rows (3 GEMM passes), 13 output channels, 6·11·13 = 858 positions (7 tiles)
    "tiles": ((3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 1, True, True, (24, 13), (6, 11, 13)),
    "tiles-grouped": ((3, 3, 3), (1, 1, 1), (2, 2, 2), (2, 2, 2), 2, True, True, (20, 14), (5, 12, 9)),
}


@pytest.fixture(scope="module")
def ops():
    try:
        return cpu_ops.load_cpu_ops()
    except cpu_ops.CpuOpsUnavailable as err:
        pytest.skip(f"the CPU operators cannot be built here: {err}")


_close = functools.partial(assert_close, rel=REL)  # this library's bound against the references


def _conv(ops, x, dilation, modulation, weight, bias, attrs):
    return ops.d2conv3d(_np(x), _np(dilation), _np(modulation), _np(weight), _np(bias), attrs["stride"],
                        attrs["padding"], attrs["dilation_base"], attrs["groups"])


@pytest.mark.parametrize("name", list(CONV_CASES))
def test_cpu_d2conv3d_matches_reference(ops, name):
    x, dilation, modulation, weight, bias, attrs = _conv_inputs(CONV_CASES[name], seed=1)
    expected = d2conv3d(_f64(x), _f64(dilation), _f64(modulation), _f64(weight), _f64(bias), backend="torch", **attrs)
    _close(_conv(ops, x, dilation, modulation, weight, bias, attrs), expected.numpy())


def test_cpu_d2conv3d_samples_far_outside_the_volume_give_the_bias(ops):
    x, dilation, modulation, weight, bias, attrs = _conv_inputs(CONV_CASES["3x3x3"], seed=2)
    dilation = torch.full_like(dilation, 40.0)  # every kernel point but the centre lands outside
    centre_only = torch.zeros_like(weight)
    centre_only[:, :, 1, 1, 1] = weight[:, :, 1, 1, 1]
    _close(_conv(ops, x, dilation, modulation, weight, bias, attrs),
           _conv(ops, x, dilation, modulation, centre_only, bias, attrs))


def test_cpu_d2conv3d_with_unit_dilation_is_conv3d(ops):
    x, dilation, _, weight, bias, attrs = _conv_inputs(CONV_CASES["tiles-grouped"], seed=3)
    expected = torch.nn.functional.conv3d(x.double(), weight.double(), bias.double(), attrs["stride"],
                                          attrs["padding"], attrs["dilation_base"], attrs["groups"])
    _close(_conv(ops, x, torch.ones_like(dilation), None, weight, bias, attrs), expected.numpy())


def test_cpu_d2conv3d_gives_the_same_bits_on_one_thread_and_on_several(ops):
    x, dilation, modulation, weight, bias, attrs = _conv_inputs(CONV_CASES["tiles"], seed=4)
    try:
        ops.threads = 1
        one = _conv(ops, x, dilation, modulation, weight, bias, attrs)
        ops.threads = 3
        several = _conv(ops, x, dilation, modulation, weight, bias, attrs)
    finally:
        ops.threads = 0
    assert np.array_equal(one, several)


def _readout_inputs(b, ck, n, m, v, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, ck, n, generator=g), torch.randn(b, ck, m, generator=g), torch.randn(b, v, n, generator=g)


@pytest.mark.parametrize("top_k", [1, 5, 20, 33, 64, 0, 150, 400], ids=lambda k: f"top{k}")
def test_cpu_readout_matches_reference(ops, top_k):
    mem_key, query_key, mem_value = _readout_inputs(2, 16, 150, 37, 7, seed=top_k)
    expected = l2_memory_readout(mem_key.double(), query_key.double(), mem_value.double(), top_k, backend="torch")
    _close(ops.l2_memory_readout(_np(mem_key), _np(query_key), _np(mem_value), top_k), expected.numpy())


# B, Ck, N, M, V, top_k: N over several affinity tiles, odd sizes, N < top_k, top_k = 0 over several tiles
READOUT_SHAPES = [(2, 24, 1000, 37, 5, 20), (1, 20, 333, 70, 3, 1), (1, 16, 700, 9, 17, 64),
                  (2, 16, 12, 5, 4, 20), (1, 24, 200, 65, 33, 0), (1, 64, 1003, 131, 40, 20)]


@pytest.mark.parametrize("shape", READOUT_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cpu_readout_matches_reference_across_shapes(ops, shape):
    b, ck, n, m, v, top_k = shape
    mem_key, query_key, mem_value = _readout_inputs(b, ck, n, m, v, seed=n + m)
    expected = l2_memory_readout(mem_key.double(), query_key.double(), mem_value.double(), top_k, backend="torch")
    _close(ops.l2_memory_readout(_np(mem_key), _np(query_key), _np(mem_value), top_k), expected.numpy())


def test_cpu_readout_with_tied_scores_matches_reference(ops):
    # Entries with identical keys and identical values tie in the affinity; whichever of them the top-k
    # keeps, the output is the same.
    mem_key, query_key, mem_value = _readout_inputs(1, 16, 300, 40, 6, seed=7)
    mem_key[:, :, 100:130] = mem_key[:, :, 10:11]
    mem_value[:, :, 100:130] = mem_value[:, :, 10:11]
    expected = l2_memory_readout(mem_key.double(), query_key.double(), mem_value.double(), 20, backend="torch")
    _close(ops.l2_memory_readout(_np(mem_key), _np(query_key), _np(mem_value), 20), expected.numpy())


def test_cpu_readout_uses_the_given_scale(ops):
    mem_key, query_key, mem_value = _readout_inputs(1, 16, 90, 11, 5, seed=8)
    expected = l2_memory_readout(mem_key.double(), query_key.double(), mem_value.double(), 10, scale=0.05,
                                 backend="torch")
    _close(ops.l2_memory_readout(_np(mem_key), _np(query_key), _np(mem_value), 10, 0.05), expected.numpy())


@pytest.mark.parametrize("scale", [0.0, -0.5])
def test_cpu_readout_and_reference_read_a_scale_at_or_below_zero_as_the_default(ops, scale):
    # One policy (plugins/trt/README.md): a scale <= 0, as a node's attribute may carry, means 1/sqrt(Ck).
    # The reference used it as given (a uniform softmax for 0, the bottom-k for a negative scale).
    mem_key, query_key, mem_value = _readout_inputs(1, 16, 90, 11, 5, seed=9)
    args = (mem_key.double(), query_key.double(), mem_value.double(), 10)
    default = l2_memory_readout(*args, backend="torch")
    torch.testing.assert_close(l2_memory_readout(*args, scale=scale, backend="torch"), default, rtol=0, atol=0)
    _close(ops.l2_memory_readout(_np(mem_key), _np(query_key), _np(mem_value), 10, scale), default.numpy())


def test_cpu_readout_with_a_top_k_beyond_32_bits_reads_every_entry(ops):
    # the library takes top_k as a 32-bit int: 2**32 + 3 read the top 3, and 2**31 failed in the kernel
    mem_key, query_key, mem_value = _readout_inputs(1, 8, 60, 4, 3, seed=10)
    every = ops.l2_memory_readout(_np(mem_key), _np(query_key), _np(mem_value), 0)
    for huge in (2**31, 2**32 + 3):
        np.testing.assert_array_equal(ops.l2_memory_readout(_np(mem_key), _np(query_key), _np(mem_value), huge), every)
    assert np.abs(ops.l2_memory_readout(_np(mem_key), _np(query_key), _np(mem_value), 3) - every).max() > 1e-4


def test_cpu_readout_rejects_top_k_above_the_supported_limit(ops):
    mem_key, query_key, mem_value = _readout_inputs(1, 8, 200, 4, 3, seed=9)
    with pytest.raises(KernelError, match="not supported"):
        ops.l2_memory_readout(_np(mem_key), _np(query_key), _np(mem_value), 65)


# ---- NaN policy (plugins/kernels/README.md): these operators, which ONNX Runtime runs for the plugin form
# on a CPU, propagate NaN as the references do; compared as NaN masks plus the finite values ----


@pytest.mark.parametrize("top_k", [20, 0])
@pytest.mark.parametrize("where", ["mem_key", "query_key", "mem_value", "infinite-keys"])
def test_cpu_readout_propagates_nan_as_the_reference(ops, where, top_k):
    # "infinite-keys": queries whose scores are all −∞ read NaN as in the reference, not 0
    mem_key, query_key, mem_value = infinite_key_readout_inputs() if where == "infinite-keys" else \
        nan_readout_inputs(where)
    expected = l2_memory_readout(_f64(mem_key), _f64(query_key), _f64(mem_value), top_k, backend="torch").numpy()
    if where == "infinite-keys":   # batch 2: finite, after whole tiles of −∞ scores (the dense path gave NaN)
        assert not np.isnan(expected[1:]).any()
    same_nans_and_close(ops.l2_memory_readout(_np(mem_key), _np(query_key), _np(mem_value), top_k), expected, REL)


@pytest.mark.parametrize("tensor, index, value", [
    ("dilation", (0, 1, 1, 2, 3), float("nan")), ("dilation", (1, 2, 3, 4, 4), float("inf")),
    ("modulation", (1, 13, 2, 4, 1), float("nan")), ("x", (0, 1, 2, 4, 3), float("nan")),
    ("x", (1, 0, 0, 0, 0), float("nan"))], ids=["D", "D-inf", "M", "x-inside", "x-border"])
def test_cpu_d2conv3d_propagates_nan_as_the_reference(ops, tensor, index, value):
    x, dilation, modulation, weight, bias, attrs = _conv_inputs(CONV_CASES["3x3x3"], seed=22)
    {"x": x, "dilation": dilation, "modulation": modulation}[tensor][index] = value
    expected = d2conv3d(_f64(x), _f64(dilation), _f64(modulation), _f64(weight), _f64(bias), backend="torch",
                        **attrs).numpy()
    if tensor != "x":  # a NaN sample position: every channel of that one location (an infinite D: 0·inf)
        assert np.isnan(expected[index[0], :, index[2], index[3], index[4]]).all()
        assert np.isnan(expected).sum() == expected.shape[1]
    same_nans_and_close(_conv(ops, x, dilation, modulation, weight, bias, attrs), expected, REL)


def test_library_is_built_on_first_use_into_the_cache_with_progress(monkeypatch, tmp_path, capfd):
    monkeypatch.setenv(cpu_ops.ENV_CACHE, str(tmp_path))
    monkeypatch.delenv(cpu_ops.ENV_LIB, raising=False)
    monkeypatch.setattr(cpu_ops, "_cmake_builds", lambda: [])  # a CMake build of plugins/ would be taken first
    root = cpu_ops.source_root()
    if root is None:
        pytest.skip("no CPU operator sources in this installation")
    mask = os.umask(0o022)
    try:
        path = cpu_ops.find_library()
    finally:
        os.umask(mask)
    assert path.is_file() and path.is_relative_to(tmp_path)
    # Readable by all, as the umask allows (it was 0711: other users of a shared cache could not load it),
    # and no scratch left beside it.
    assert stat.S_IMODE(path.stat().st_mode) == 0o755 and list(path.parent.iterdir()) == [path]
    assert "compiling the CPU operator library" in capfd.readouterr().err
    assert cpu_ops.CpuOps(path).lib.vosrtCpuOpsVersion() == 1
    assert cpu_ops.find_library() == path  # cached: no second build
    assert "compiling" not in capfd.readouterr().err


def test_cpu_d2conv3d_refuses_a_padded_axis_beyond_an_int(ops):
    # pad 2³⁰ and dilation 2³⁰ on a 1-voxel axis, 3 taps: one output, whose last tap's int coordinate 2·2³⁰
    # overflowed (undefined behaviour, found by -fsanitize=undefined); refused now, as the kernels refuse it
    x, d, w = np.ones((1, 1, 1, 1, 1), np.float32), np.zeros((1, 3, 1, 1, 1), np.float32), np.ones((1, 1, 3, 1, 1),
                                                                                                  np.float32)
    with pytest.raises(KernelError, match="not supported"):
        ops.d2conv3d(x, d, None, w, None, (1, 1, 1), (2**30, 0, 0), (2**30, 1, 1))


_OUT_OF_MEMORY = r"""
import resource, sys
import numpy as np
from vosrt.sdk import cpu_ops
from vosrt.sdk.kernels import KernelError

ops = cpu_ops.load_cpu_ops(sys.argv[1])
rng = np.random.default_rng(0)
if sys.argv[2] == "readout":
    # 2**22 queries of one channel, 128 entries: the top-64 lists need 2**22 * 64 * 8 B = 2 GiB of scratch
    args = (rng.standard_normal((1, 1, 128), np.float32), rng.standard_normal((1, 1, 1 << 22), np.float32),
            rng.standard_normal((1, 1, 128), np.float32))
    call = lambda: ops.l2_memory_readout(*args, top_k=64)
else:
    # 65,536 channels x 27 taps: each worker's column tile needs 65,536 * 27 * 128 * 4 B = 906 MB
    c = 1 << 16
    args = (rng.standard_normal((2, c, 1, 1, 1), np.float32), np.ones((2, 3, 1, 1, 1), np.float32),
            np.full((2, 27, 1, 1, 1), 0.5, np.float32), rng.standard_normal((1, c, 3, 3, 3), np.float32))
    call = lambda: ops.d2conv3d(*args, padding=(1, 1, 1))
    ops.threads = 2
# Address space: what is mapped now plus 256 MiB, so the scratch cannot be had.
pages = int(open("/proc/self/statm").read().split()[0])
resource.setrlimit(resource.RLIMIT_AS, (pages * resource.getpagesize() + (256 << 20), resource.RLIM_INFINITY))
try:
    call()
except KernelError as err:
    print("KernelError:", err)
    sys.exit(0)
print("no error")
sys.exit(1)
"""


@pytest.mark.parametrize("operator", ["readout", "d2conv3d"])
def test_cpu_operators_out_of_host_memory_report_an_error_instead_of_ending_the_process(ops, operator):
    """An allocation that fails in a C entry point (or in one of its worker threads) must come back as
    VOSRT_ERROR_HOST_RESOURCES: an exception crossing into ctypes or ONNX Runtime aborts the process."""
    import subprocess
    import sys

    if "libasan" in os.environ.get("LD_PRELOAD", ""):  # docs/TESTING.md, Sanitizers
        pytest.skip("AddressSanitizer aborts on a failed operator new (it never throws std::bad_alloc)")
    done = subprocess.run([sys.executable, "-c", _OUT_OF_MEMORY, str(ops.path), operator], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "out of host memory or threads (vosrtStatus_t 5)" in done.stdout, done.stdout


@pytest.mark.slow   # compiles the library again (7 s); the first-use build is in the default tier
def test_a_corrupt_library_in_the_cache_is_built_again(monkeypatch, tmp_path, capfd):
    # A truncated or corrupt cached library (a full disk, a crash, a copied cache) was an OSError on every
    # later use: the backend fell back to the portable form for good, form='plugin' failed for good.
    monkeypatch.setenv(cpu_ops.ENV_CACHE, str(tmp_path))
    monkeypatch.delenv(cpu_ops.ENV_LIB, raising=False)
    monkeypatch.setattr(cpu_ops, "_cmake_builds", lambda: [])
    root = cpu_ops.source_root()
    if root is None:
        pytest.skip("no CPU operator sources in this installation")
    cached = cpu_ops.cached_library_path(root)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"\x7fELF, cut short")
    ops = cpu_ops.load_cpu_ops()
    assert ops.path == cached and ops.lib.vosrtCpuOpsVersion() == 1
    err = capfd.readouterr().err
    assert f"{cached} cannot be loaded" in err and "building it again" in err
    named = tmp_path / "named.so"  # a file named outright is refused (CpuOpsUnavailable), not rebuilt
    named.write_bytes(b"not a library")
    with pytest.raises(cpu_ops.CpuOpsUnavailable, match="named.so cannot be loaded"):
        cpu_ops.load_cpu_ops(named)
