"""Inputs and comparisons shared by the tests of the operators' host implementations (the CUDA kernels'
CPU driver and emulation in test_kernels_cpu.py, the fast CPU operators in test_cpu_ops.py, the portable
ONNX form in test_graphs.py), which all check against the PyTorch references of vosrt.training.ops."""
from __future__ import annotations

import numpy as np
import torch

from vosrt.training.ops.d2conv3d import output_size


def conv_inputs(case, seed, spread=1.5, batch=2):
    """Random D2Conv3D inputs for ``case`` = (kernel, stride, padding, dilation base, groups, has modulation,
    has bias, (C, Cout), input size): ``(x, dilation, modulation, weight, bias, attributes)``."""
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


def to_numpy(t):
    return None if t is None else t.detach().numpy()


def as_f64(t, grad=False):
    return None if t is None else t.double().requires_grad_(grad)


def assert_close(actual, expected, rel=1e-4):
    """``actual`` within ``rel`` of ``expected``, relative to each element and to the largest magnitude."""
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(float(np.abs(expected).max()), 1e-6)
    np.testing.assert_allclose(actual, expected, rtol=rel, atol=rel * scale)


def same_nans_and_close(actual, expected, rel=1e-4):
    """NaN policy comparisons (plugins/kernels/README.md): the same NaN mask as ``expected`` (which must hold
    a NaN), and the finite values within ``rel``."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert np.isnan(expected).any(), "the case must produce NaN in the reference"
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    finite = ~np.isnan(expected)
    if finite.any():
        assert_close(actual[finite], expected[finite], rel)


def nan_readout_inputs(where):
    """L2MemoryReadout inputs [1, 16, 300], [1, 16, 30], [1, 12, 300] with one NaN in ``where``: entry 17 of
    mem_key, query 9 of query_key, or the whole value channel 2 of mem_value."""
    g = torch.Generator().manual_seed(21)
    mem_key, query_key, mem_value = (torch.randn(1, 16, 300, generator=g), torch.randn(1, 16, 30, generator=g),
                                     torch.randn(1, 12, 300, generator=g))
    {"mem_key": lambda: mem_key.__setitem__((0, 3, 17), float("nan")),
     "query_key": lambda: query_key.__setitem__((0, 0, 9), float("nan")),
     "mem_value": lambda: mem_value.__setitem__((0, 2, slice(None)), float("nan"))}[where]()
    return mem_key, query_key, mem_value


def infinite_key_readout_inputs():
    """L2MemoryReadout inputs [3, 16, 300], [3, 16, 30], [3, 12, 300] whose scores are −∞ (an infinite key
    against a negative query channel): in batch 0 every memory key is +inf in channel 0 and every query
    negative there, so each query's scores are all −∞ (2·(−∞) − ∞) and the reference's output is NaN
    (−∞ − (−∞) in its softmax); in batch 1 only half the keys are, so each query keeps 150 finite scores and a
    finite output; in batch 2 the first 128 are (whole tiles of −∞ before any finite score: the online softmax
    of the dense readout gave NaN there, expf(−∞ − (−∞))), and the output is finite too."""
    g = torch.Generator().manual_seed(29)
    mem_key, query_key, mem_value = (torch.randn(3, 16, 300, generator=g), torch.randn(3, 16, 30, generator=g),
                                     torch.randn(3, 12, 300, generator=g))
    mem_key[0, 0, :] = float("inf")
    mem_key[1, 0, ::2] = float("inf")
    mem_key[2, 0, :128] = float("inf")
    query_key[:, 0, :] = -query_key[:, 0, :].abs() - 0.1
    return mem_key, query_key, mem_value
