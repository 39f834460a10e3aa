"""Inputs and comparisons shared by the tests of the operators' host implementations (the CUDA kernels'
CPU driver and emulation in test_kernels_cpu.py, the fast CPU operators in test_cpu_ops.py), which both
check against the PyTorch references of vosrt.training.ops."""
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
