"""Tier 2: the CUDA kernels against the PyTorch references (fp32 within 1e-4 relative, fp16 within 1e-2),
forward and backward, with samples outside the volume, N < top_k and odd sizes. Skipped without a GPU."""
import os

import pytest
import torch

from vosrt.sdk import kernels
from vosrt.training.ops import cuda_kernels
from vosrt.training.ops.d2conv3d import d2conv3d, output_size
from vosrt.training.ops.l2_readout import l2_memory_readout

from kernel_build import build
from operator_inputs import infinite_key_readout_inputs, nan_readout_inputs, same_nans_and_close

pytestmark = pytest.mark.gpu

# kernel, stride, padding, base dilation, groups, modulation, bias, (C, Cout), (T, H, W)
CONV_CASES = [
    ((3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 1, True, True, (8, 16), (4, 9, 11)),
    ((3, 3, 3), (2, 1, 2), (1, 2, 0), (1, 2, 1), 2, True, False, (6, 10), (5, 7, 13)),
    ((1, 3, 3), (1, 2, 2), (0, 2, 2), (1, 2, 2), 1, False, True, (5, 3), (3, 17, 9)),
    ((2, 3, 1), (1, 1, 1), (1, 1, 0), (2, 1, 1), 3, True, True, (9, 6), (5, 4, 3)),
]
CONV_IDS = ["k333", "stride-groups2", "k133-nomod", "k231-groups3"]


@pytest.fixture(scope="module", autouse=True)
def kernel_library():
    """Use an existing build of libvosrt_kernels.so, else build plugins/build-test (sm_80 + PTX); with
    $VOSRT_TEST_NO_BUILD (samples/gpu_check.py, which built them already) a library that does not load fails."""
    if not cuda_kernels.available():
        if os.environ.get("VOSRT_TEST_NO_BUILD"):
            pytest.fail(f"the kernels built for this check do not load: {cuda_kernels.unavailable_reason()}")
        folder, _ = build(with_kernels=True)
        os.environ[kernels.ENV_VAR] = str(folder / kernels.KERNELS_LIBRARY)
        cuda_kernels._library.cache_clear()
    assert cuda_kernels.available(), "libvosrt_kernels.so could not be loaded"


def _conv_inputs(case, seed, dtype=torch.float32, spread=1.5, batch=2):
    kernel, stride, padding, base, groups, has_mod, has_bias, (c, cout), size = case
    g = torch.Generator().manual_seed(seed)
    out = output_size(size, kernel, stride, padding, base)
    k = kernel[0] * kernel[1] * kernel[2]
    x = torch.randn(batch, c, *size, generator=g)
    dilation = 1 + (torch.rand(batch, 3, *out, generator=g) * (1.5 + spread) - 1.5)  # many samples leave the volume
    modulation = torch.rand(batch, k, *out, generator=g) if has_mod else None
    weight = torch.randn(cout, c // groups, *kernel, generator=g) / (c // groups * k) ** 0.5
    bias = torch.randn(cout, generator=g) if has_bias else None
    tensors = [None if t is None else t.to("cuda", dtype) for t in (x, dilation, modulation, weight, bias)]
    return tensors, dict(stride=stride, padding=padding, dilation_base=base, groups=groups)


def _assert_close(actual, expected, rel):
    expected = expected.double()
    scale = expected.abs().max().clamp_min(1e-6)
    torch.testing.assert_close(actual.double(), expected, rtol=rel, atol=rel * float(scale))


def _reference_conv(tensors, attrs, grad=False):
    leaves = [None if t is None else t.detach().double().requires_grad_(grad) for t in tensors]
    return d2conv3d(*leaves, backend="torch", **attrs), leaves


def _kernel_conv(tensors, attrs, grad=False):
    leaves = [None if t is None else t.detach().clone().requires_grad_(grad) for t in tensors]
    y = cuda_kernels.d2conv3d(*leaves, attrs["stride"], attrs["padding"], attrs["dilation_base"], attrs["groups"])
    return y, leaves


@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_d2conv3d_fp32_forward_matches_reference(case):
    tensors, attrs = _conv_inputs(case, seed=1)
    expected, _ = _reference_conv(tensors, attrs)
    actual, _ = _kernel_conv(tensors, attrs)
    assert actual.dtype == torch.float32
    _assert_close(actual, expected, 1e-4)


@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_d2conv3d_fp16_forward_matches_reference(case):
    tensors, attrs = _conv_inputs(case, seed=2, dtype=torch.float16)
    expected, _ = _reference_conv(tensors, attrs)  # the same fp16-rounded inputs, in fp64
    actual, _ = _kernel_conv(tensors, attrs)
    assert actual.dtype == torch.float16
    _assert_close(actual, expected, 1e-2)


@pytest.mark.parametrize("case", CONV_CASES, ids=CONV_IDS)
def test_d2conv3d_fp32_backward_matches_reference(case):
    tensors, attrs = _conv_inputs(case, seed=3)
    expected, ref_leaves = _reference_conv(tensors, attrs, grad=True)
    actual, leaves = _kernel_conv(tensors, attrs, grad=True)
    grad_y = torch.randn(actual.shape, generator=torch.Generator().manual_seed(4)).cuda()
    expected.backward(grad_y.double())
    actual.backward(grad_y)
    for name, ref, mine in zip(("x", "dilation", "modulation", "weight", "bias"), ref_leaves, leaves):
        if ref is not None:
            assert mine.grad is not None, name
            _assert_close(mine.grad, ref.grad, 1e-4)


def test_d2conv3d_fp16_backward_matches_reference():
    tensors, attrs = _conv_inputs(CONV_CASES[0], seed=5, dtype=torch.float16)
    expected, ref_leaves = _reference_conv(tensors, attrs, grad=True)
    actual, leaves = _kernel_conv(tensors, attrs, grad=True)
    grad_y = torch.randn(actual.shape, generator=torch.Generator().manual_seed(6)).cuda().half()
    expected.backward(grad_y.double())
    actual.backward(grad_y)
    for ref, mine in zip(ref_leaves, leaves):
        assert mine.grad.dtype == torch.float16
        _assert_close(mine.grad, ref.grad, 1e-2)


def test_d2conv3d_spanning_several_column_tiles_matches_reference():
    # C·K = 64·27 floats per column: the 64 MiB tile holds 9600 of the 10 000 positions per sample.
    case = ((3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 1, True, True, (64, 32), (4, 50, 50))
    tensors, attrs = _conv_inputs(case, seed=7, batch=2)
    expected, _ = _reference_conv(tensors, attrs)
    actual, _ = _kernel_conv(tensors, attrs)
    _assert_close(actual, expected, 1e-4)


# kernel, stride, padding, base dilation, groups, modulation, bias, (C, Cout), (T, H, W)
WIDE_CONV_CASES = {
    # 3DC-Seg's rf3.convFS1 reads C = 1,024 encoder channels at 1/16 of a 480p clip (T = 2, 30×54)
    "production-width": ((3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 1, True, True, (1024, 64), (2, 30, 54)),
    # few channels in, many out: 100 position tiles × 2 channel tiles of 128 give every SM of an H100/H200
    # a block, so the forward GEMM takes its 128×128 tensor-core tiles (the other cases take 64×64)
    "gemm-tiles-128": ((3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 1, True, True, (8, 256), (8, 40, 40)),
}


@pytest.mark.parametrize("name", WIDE_CONV_CASES)
@pytest.mark.parametrize("dtype, rel", [(torch.float32, 1e-4), (torch.float16, 1e-2)], ids=["fp32", "fp16"])
def test_d2conv3d_at_production_sizes_matches_reference(dtype, rel, name):
    tensors, attrs = _conv_inputs(WIDE_CONV_CASES[name], seed=9, dtype=dtype, batch=1)
    expected, _ = _reference_conv(tensors, attrs)
    actual, _ = _kernel_conv(tensors, attrs)
    _assert_close(actual, expected, rel)


def test_d2conv3d_auto_backend_dispatches_to_the_kernel():
    tensors, attrs = _conv_inputs(CONV_CASES[0], seed=8)
    auto = d2conv3d(*tensors, **attrs)
    direct, _ = _kernel_conv(tensors, attrs)
    torch.testing.assert_close(auto, direct, rtol=0, atol=0)


def _readout_inputs(b, ck, n, m, v, seed, dtype=torch.float32, key_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    mem_key = torch.randn(b, ck, n, generator=g) * key_scale
    query_key = torch.randn(b, ck, m, generator=g) * key_scale
    mem_value = torch.randn(b, v, n, generator=g)
    return [t.to("cuda", dtype) for t in (mem_key, query_key, mem_value)]


# A query whose k-th and (k+1)-th similarities (fp64) are closer than this may select either in fp32 or
# fp16 arithmetic, which moves its output far more than rounding does: such queries are left out of the
# comparison. Similarities (2·mk·qk − ‖mk‖², before the scale) are ~10-100 here; fp32 rounds them to ~1e-5.
TIE_MARGIN = 1e-3


def _assert_readout_close(actual, expected, mem_key, query_key, top_k, rel):
    """actual ≈ expected [B, V, M] on the queries whose top-k is not decided by a near-tie (most of them)."""
    n = mem_key.shape[2]
    if 0 < top_k < n:
        mk, qk = mem_key.double(), query_key.double()
        similarity = 2 * torch.bmm(mk.transpose(1, 2), qk) - (mk * mk).sum(1).unsqueeze(2)  # [B, N, M]
        top = torch.topk(similarity, top_k + 1, dim=1).values
        clear = (top[:, top_k - 1] - top[:, top_k]) > TIE_MARGIN  # [B, M]
        assert clear.float().mean() > 0.9, "too many near-ties to test this case"
        keep = clear.unsqueeze(1).expand_as(expected)
        actual, expected = actual[keep], expected[keep]
    _assert_close(actual, expected, rel)


READOUT_CASES = [  # B, Ck, N, M, V, top_k
    (1, 64, 1620, 200, 24, 20),
    (2, 24, 1000, 37, 5, 1),
    (2, 24, 1000, 37, 5, 64),
    (1, 64, 777, 65, 3, 7),
    (2, 16, 12, 70, 9, 20),    # N < top_k: softmax over all N
    (1, 40, 333, 129, 33, 0),  # top_k = 0: all N
    (1, 64, 5000, 31, 17, 33),
    (1, 64, 20 * 1620, 1620, 512, 20),  # production: 20 frames of 480p memory, one object's Cv = 512
]
READOUT_IDS = [f"b{c[0]}ck{c[1]}n{c[2]}m{c[3]}v{c[4]}k{c[5]}" for c in READOUT_CASES]


@pytest.mark.parametrize("case", READOUT_CASES, ids=READOUT_IDS)
def test_readout_fp32_matches_reference(case):
    b, ck, n, m, v, top_k = case
    mem_key, query_key, mem_value = _readout_inputs(b, ck, n, m, v, seed=n + m)
    scale = 1.0 / ck ** 0.5
    expected = l2_memory_readout(mem_key.double(), query_key.double(), mem_value.double(), top_k, backend="torch")
    actual = cuda_kernels.l2_memory_readout(mem_key, query_key, mem_value, top_k, scale)
    _assert_readout_close(actual, expected, mem_key, query_key, top_k, 1e-4)


@pytest.mark.parametrize("case", READOUT_CASES, ids=READOUT_IDS)
def test_readout_fp16_matches_reference(case):
    b, ck, n, m, v, top_k = case
    mem_key, query_key, mem_value = _readout_inputs(b, ck, n, m, v, seed=n + m + 1, dtype=torch.float16,
                                                    key_scale=0.5)
    scale = 1.0 / ck ** 0.5
    expected = l2_memory_readout(mem_key.double(), query_key.double(), mem_value.double(), top_k, backend="torch")
    actual = cuda_kernels.l2_memory_readout(mem_key, query_key, mem_value, top_k, scale)
    assert actual.dtype == torch.float16
    _assert_readout_close(actual, expected, mem_key, query_key, top_k, 1e-2)


# mem_key rows that start on 16, 8 or 4 bytes, or on 2 (fp16 with an odd N, or an address one element
# off): the key tiles move by cp.async in the widest vector the rows allow, or by plain loads.
@pytest.mark.parametrize("top_k", [20, 0], ids=["select", "dense"])
@pytest.mark.parametrize("n, offset", [(640, 0), (642, 0), (641, 0), (640, 1)],
                         ids=["n640", "n642", "n641", "n640-offset1"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_readout_key_tiles_at_every_row_alignment_match_reference(dtype, n, offset, top_k):
    fp16 = dtype == torch.float16
    mem_key, query_key, mem_value = _readout_inputs(2, 16, n, 40, 3, seed=n + offset, dtype=dtype,
                                                    key_scale=0.5 if fp16 else 1.0)
    buffer = torch.empty(mem_key.numel() + offset, device="cuda", dtype=dtype)
    shifted = buffer[offset:].view(mem_key.shape)
    shifted.copy_(mem_key)
    assert shifted.is_contiguous() and shifted.data_ptr() % 16 == offset * shifted.element_size()
    expected = l2_memory_readout(mem_key.double(), query_key.double(), mem_value.double(), top_k, backend="torch")
    actual = cuda_kernels.l2_memory_readout(shifted, query_key, mem_value, top_k, 0.25)
    assert actual.dtype == dtype
    _assert_readout_close(actual, expected, mem_key, query_key, top_k, 1e-2 if fp16 else 1e-4)


def test_readout_backward_matches_reference():
    tensors = _readout_inputs(1, 32, 500, 40, 6, seed=11)
    mine = [t.clone().requires_grad_() for t in tensors]
    ref = [t.double().requires_grad_() for t in tensors]
    grad = torch.randn(1, 6, 40, generator=torch.Generator().manual_seed(12)).cuda()
    cuda_kernels.l2_memory_readout(*mine, 20, 32 ** -0.5).backward(grad)
    l2_memory_readout(*ref, 20, backend="torch").backward(grad.double())
    for a, e in zip(mine, ref):
        _assert_close(a.grad, e.grad, 1e-4)


def test_readout_fp16_backward_matches_reference():
    tensors = _readout_inputs(1, 32, 500, 40, 6, seed=14, dtype=torch.float16, key_scale=0.5)
    mine = [t.clone().requires_grad_() for t in tensors]
    ref = [t.double().requires_grad_() for t in tensors]
    grad = torch.randn(1, 6, 40, generator=torch.Generator().manual_seed(15)).cuda()
    cuda_kernels.l2_memory_readout(*mine, 20, 32 ** -0.5).backward(grad.half())
    l2_memory_readout(*ref, 20, backend="torch").backward(grad.double())
    for a, e in zip(mine, ref):
        assert a.grad.dtype == torch.float16
        _assert_close(a.grad, e.grad, 1e-2)


def test_readout_device_memory_does_not_grow_with_memory_length():
    peaks = []
    for frames in (2, 20):
        tensors = _readout_inputs(1, 64, frames * 1620, 1620, 64, seed=frames, dtype=torch.float16)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = cuda_kernels.l2_memory_readout(*tensors, 20, 0.125)
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated() - base - out.numel() * out.element_size())
        del tensors, out
    assert peaks[1] <= peaks[0]  # workspace only; an N×M affinity at 20 frames alone would be 105 MB


def test_readout_top_k_above_the_on_chip_limit_falls_back_to_the_reference():
    tensors = _readout_inputs(1, 16, 300, 20, 4, seed=13)
    expected = l2_memory_readout(*(t.double() for t in tensors), 100, backend="torch")
    _assert_close(cuda_kernels.l2_memory_readout(*tensors, 100, 0.25), expected, 1e-4)


def test_readout_device_check_agrees_with_the_gpu_s_shared_memory():
    # what TensorRT's configurePlugin asks before building: STCN's Ck = 64 fits any GPU this runs on, and the
    # bytes a block may have are the device's opt-in shared memory per block (less static shared memory)
    import ctypes

    lib = cuda_kernels._library()
    optin = getattr(torch.cuda.get_device_properties(0), "shared_memory_per_block_optin", 256 * 1024)
    answers = {}
    for ck, code in ((64, kernels.FLOAT32), (64, kernels.FLOAT16), (256, kernels.FLOAT32)):
        needed, available = ctypes.c_size_t(0), ctypes.c_size_t(0)
        status = lib.vosrtL2ReadoutDeviceCheck(ctypes.byref(kernels.l2_readout_params((1, ck, 32_400), 1620, 512, 20, 0)),
                                               code, ctypes.byref(needed), ctypes.byref(available))
        assert status == (0 if needed.value <= available.value else 2) and 0 < available.value <= optin
        answers[ck, code] = status
    assert answers[64, kernels.FLOAT32] == answers[64, kernels.FLOAT16] == 0


# ---- NaN policy (plugins/kernels/README.md) on the device: the same NaN masks as the references, as the
# CPU driver and the host emulation show on the CPU (test_kernels_cpu.py) ----


def _same_nans(actual, expected, rel):
    same_nans_and_close(actual.double().cpu().numpy(), expected.double().cpu().numpy(), rel)


@pytest.mark.parametrize("top_k", [20, 0], ids=["select", "dense"])
@pytest.mark.parametrize("where", ["mem_key", "query_key", "mem_value", "infinite-keys"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_readout_propagates_nan_as_the_reference(dtype, where, top_k):
    inputs = infinite_key_readout_inputs() if where == "infinite-keys" else nan_readout_inputs(where)
    mem_key, query_key, mem_value = (t.to("cuda", dtype) for t in inputs)
    expected = l2_memory_readout(mem_key.double(), query_key.double(), mem_value.double(), top_k, 0.25,
                                 backend="torch")
    actual = cuda_kernels.l2_memory_readout(mem_key, query_key, mem_value, top_k, 0.25)
    if where == "infinite-keys" and dtype == torch.float32:
        # fp32 runs 3xTF32, whose split of an infinite key gives NaN scores (inf − inf): more NaN than the
        # reference's −∞ scores make, never less (documented in plugins/kernels/README.md)
        assert torch.isnan(actual[torch.isnan(expected)]).all()
        return
    _same_nans(actual, expected, 1e-2 if dtype == torch.float16 else 1e-4)


@pytest.mark.parametrize("tensor, index, value", [
    ("dilation", (0, 1, 1, 2, 3), float("nan")), ("dilation", (1, 2, 3, 4, 4), float("inf")),
    ("modulation", (1, 13, 2, 4, 1), float("nan")), ("x", (0, 1, 2, 4, 3), float("nan")),
    ("x", (1, 0, 0, 0, 0), float("nan"))], ids=["D", "D-inf", "M", "x-inside", "x-border"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_d2conv3d_propagates_nan_as_the_reference(dtype, tensor, index, value):
    tensors, attrs = _conv_inputs(CONV_CASES[0], seed=22, dtype=dtype)
    tensors[("x", "dilation", "modulation").index(tensor)][index] = value
    expected, _ = _reference_conv(tensors, attrs)
    if tensor != "x":  # a NaN sample position: every channel of that one location (an infinite D: 0·inf)
        assert torch.isnan(expected[index[0], :, index[2], index[3], index[4]]).all()
        assert int(torch.isnan(expected).sum()) == expected.shape[1]
    actual, _ = _kernel_conv(tensors, attrs)
    _same_nans(actual, expected, 1e-2 if dtype == torch.float16 else 1e-4)
