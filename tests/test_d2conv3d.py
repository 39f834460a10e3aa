"""The D²Conv3D reference operator against Conv3d, a naive loop of the contract formula, and gradcheck."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from vosrt.sdk.errors import UserError
from vosrt.training.ops import d2conv3d as d2mod
from vosrt.training.ops.d2conv3d import d2conv3d, output_size


def _naive_d2conv3d(x, dilation, modulation, weight, bias, stride, padding, base, groups):
    """ARCHITECTURE.md Operator 1 written as scalar loops: per output location, per kernel point."""
    n_, c_, t_, h_, w_ = x.shape
    cout, cin_g, kt, kh, kw = weight.shape
    to, ho, wo = dilation.shape[2:]
    out = torch.zeros(n_, cout, to, ho, wo, dtype=torch.float64)
    xd = x.double()
    size = (t_, h_, w_)

    def sample(n, q):
        if any(qa <= -1 or qa >= s for qa, s in zip(q, size)):
            return torch.zeros(c_, dtype=torch.float64)
        value = torch.zeros(c_, dtype=torch.float64)
        floors = [math.floor(qa) for qa in q]
        for corner in itertools.product((0, 1), repeat=3):
            idx = [f + d for f, d in zip(floors, corner)]
            if any(i < 0 or i >= s for i, s in zip(idx, size)):
                continue
            wgt = 1.0
            for qa, i in zip(q, idx):
                wgt *= 1.0 - abs(qa - i)
            value += wgt * xd[n, :, idx[0], idx[1], idx[2]]
        return value

    for n, ot, oy, ox in itertools.product(range(n_), range(to), range(ho), range(wo)):
        d = [float(dilation[n, a, ot, oy, ox]) for a in range(3)]
        for k, (i, j, l) in enumerate(itertools.product(range(kt), range(kh), range(kw))):
            q = [o * s - p + idx * b + (idx - kk // 2) * b * (da - 1)
                 for o, s, p, idx, b, kk, da in zip((ot, oy, ox), stride, padding, (i, j, l), base, (kt, kh, kw), d)]
            xs = sample(n, q)  # [C]
            m = 1.0 if modulation is None else float(modulation[n, k, ot, oy, ox])
            for co in range(cout):
                g = co // (cout // groups)
                channels = xs[g * cin_g:(g + 1) * cin_g]
                out[n, co, ot, oy, ox] += m * float((weight[co, :, i, j, l].double() * channels).sum())
    if bias is not None:
        out += bias.double().view(1, -1, 1, 1, 1)
    return out


GRID = [  # kernel, stride, padding, base dilation, groups
    ((1, 3, 3), (1, 1, 1), (0, 1, 1), (1, 1, 1), 1),
    ((3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 1),
    ((3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), 2),
    ((3, 3, 3), (1, 2, 1), (2, 0, 3), (2, 1, 3), 4),
    ((1, 3, 3), (1, 2, 2), (0, 2, 2), (1, 2, 2), 2),
    ((3, 3, 3), (2, 1, 2), (0, 0, 0), (1, 2, 1), 1),
]


@pytest.mark.parametrize("kernel,stride,padding,base,groups", GRID)
def test_unit_dilation_and_modulation_equal_conv3d(kernel, stride, padding, base, groups):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 9, 10)
    weight = torch.randn(12, 8 // groups, *kernel)
    bias = torch.randn(12)
    expected = F.conv3d(x, weight, bias, stride=stride, padding=padding, dilation=base, groups=groups)
    out_size = expected.shape[2:]
    k = kernel[0] * kernel[1] * kernel[2]
    ones_d = torch.ones(2, 3, *out_size)
    for modulation in (torch.ones(2, k, *out_size), None):
        got = d2conv3d(x, ones_d, modulation, weight, bias, stride, padding, base, groups)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel,stride,padding,base,groups", [
    ((3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 1),
    ((1, 3, 3), (1, 2, 2), (0, 1, 1), (1, 2, 1), 2),
    ((3, 3, 3), (2, 1, 1), (1, 2, 2), (1, 2, 2), 2),
])
def test_random_dilation_matches_naive_loop_including_samples_outside(kernel, stride, padding, base, groups):
    torch.manual_seed(1)
    x = torch.randn(2, 4, 4, 5, 6, dtype=torch.float64)
    weight = torch.randn(4, 4 // groups, *kernel, dtype=torch.float64)
    bias = torch.randn(4, dtype=torch.float64)
    out_size = output_size(x.shape[2:], kernel, stride, padding, base)
    k = kernel[0] * kernel[1] * kernel[2]
    # Dilations in (-1, 3]: negative flips the kernel, large ones push edge taps out of the volume.
    dilation = torch.empty(2, 3, *out_size, dtype=torch.float64).uniform_(-0.99, 3.0)
    modulation = torch.rand(2, k, *out_size, dtype=torch.float64)
    got = d2conv3d(x, dilation, modulation, weight, bias, stride, padding, base, groups)
    expected = _naive_d2conv3d(x, dilation, modulation, weight, bias, stride, padding, base, groups)
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)

    unmodulated = d2conv3d(x, dilation, None, weight, None, stride, padding, base, groups)
    torch.testing.assert_close(
        unmodulated, _naive_d2conv3d(x, dilation, None, weight, None, stride, padding, base, groups))


def test_samples_far_outside_the_volume_contribute_nothing():
    x = torch.randn(1, 2, 3, 4, 4, dtype=torch.float64)
    weight = torch.randn(3, 2, 3, 3, 3, dtype=torch.float64)
    bias = torch.randn(3, dtype=torch.float64)
    # With D = 100 every tap except the centre lands outside; only the centre term and the bias remain.
    dilation = torch.full((1, 3, 3, 4, 4), 100.0, dtype=torch.float64)
    got = d2conv3d(x, dilation, None, weight, bias, 1, 1, 1, 1)
    centre = F.conv3d(x, weight[:, :, 1:2, 1:2, 1:2], bias)
    torch.testing.assert_close(got, centre)


def test_small_chunk_budget_gives_the_same_result(monkeypatch):
    torch.manual_seed(2)
    x = torch.randn(1, 6, 4, 6, 6)
    weight = torch.randn(5, 6, 3, 3, 3)
    dilation = torch.rand(1, 3, 4, 6, 6) * 2
    modulation = torch.rand(1, 27, 4, 6, 6)
    whole = d2conv3d(x, dilation, modulation, weight, None, 1, 1)
    monkeypatch.setattr(d2mod, "_CHUNK_BYTES", 1)  # one kernel point per chunk
    chunked = d2conv3d(x, dilation, modulation, weight, None, 1, 1)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)


def test_recomputed_chunks_give_the_same_gradients(monkeypatch):
    torch.manual_seed(6)
    inputs = [torch.randn(1, 3, 3, 4, 4), 0.5 + torch.rand(1, 3, 3, 4, 4), torch.rand(1, 27, 3, 4, 4),
              torch.randn(2, 3, 3, 3, 3), torch.randn(2)]

    def grads():
        leaves = [t.clone().requires_grad_() for t in inputs]
        (d2conv3d(*leaves, stride=1, padding=1) ** 2).sum().backward()
        return [t.grad for t in leaves]

    whole = grads()
    monkeypatch.setattr(d2mod, "_CHUNK_BYTES", 1)  # one kernel point per chunk, recomputed in backward
    for got, expected in zip(grads(), whole):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("groups,stride", [(1, 1), (2, (1, 2, 1))])
def test_gradcheck_in_float64(groups, stride):
    torch.manual_seed(3)
    kernel = (3, 3, 3)
    x = torch.randn(1, 2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    out_size = output_size(x.shape[2:], kernel, stride, 1, 1)
    # Keep positions away from integer taps, where trilinear interpolation has kinks.
    dilation = (torch.rand(1, 3, *out_size, dtype=torch.float64) * 1.6 + 0.2 + 0.013).requires_grad_()
    modulation = torch.rand(1, 27, *out_size, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 2 // groups, *kernel, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, dtype=torch.float64, requires_grad=True)

    def op(x_, d_, m_, w_, b_):
        return d2conv3d(x_, d_, m_, w_, b_, stride=stride, padding=1, groups=groups)

    inputs = (x, dilation, modulation, weight, bias)
    assert torch.autograd.gradcheck(op, inputs, eps=1e-6, atol=1e-5, fast_mode=True)


def test_dilation_gradient_element_by_element():
    # The dilation gradient is what this operator adds to Conv3d: check every entry of the Jacobian.
    torch.manual_seed(7)
    x = torch.randn(1, 2, 2, 3, 3, dtype=torch.float64)
    dilation = (torch.rand(1, 3, 2, 3, 3, dtype=torch.float64) * 1.6 + 0.213).requires_grad_()
    modulation = torch.rand(1, 27, 2, 3, 3, dtype=torch.float64)
    weight = torch.randn(1, 2, 3, 3, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda d_: d2conv3d(x, d_, modulation, weight, None, 1, 1), (dilation,),
                                    eps=1e-6, atol=1e-5)


def test_gradients_flow_without_modulation():
    torch.manual_seed(5)
    x = torch.randn(1, 2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    dilation = (torch.rand(1, 3, 2, 3, 3, dtype=torch.float64) + 0.3).requires_grad_()
    weight = torch.randn(2, 2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x_, d_, w_: d2conv3d(x_, d_, None, w_, None, 1, (0, 1, 1)), (x, dilation, weight), atol=1e-5,
        fast_mode=True)


def test_wrong_dilation_shape_is_reported():
    x = torch.randn(1, 2, 3, 4, 4)
    weight = torch.randn(2, 2, 3, 3, 3)
    with pytest.raises(UserError, match="dilation must be"):
        d2conv3d(x, torch.ones(1, 3, 3, 4, 5), None, weight, None, 1, 1)


def test_chunks_bound_the_saved_columns_of_a_one_eighth_scale_clip(monkeypatch):
    # 8-frame 480×864 clip at 1/8 scale: kernel points are grouped so the columns one chunk keeps for
    # backward stay under the budget. Narrow channels keep the test quick; the budget logic is the same.
    calls = []
    real = d2mod._chunk_forward

    def spy(geo, points, *rest):
        calls.append(len(points))
        return real(geo, points, *rest)

    monkeypatch.setattr(d2mod, "_chunk_forward", spy)
    monkeypatch.setattr(d2mod, "_CHUNK_BYTES", 16 * 2**20)
    x = torch.randn(1, 8, 8, 60, 108)
    with torch.no_grad():
        out = d2conv3d(x, 1 + torch.rand(1, 3, 8, 60, 108), torch.rand(1, 27, 8, 60, 108),
                       torch.randn(8, 8, 3, 3, 3), None, 1, 1)
    assert out.shape == (1, 8, 8, 60, 108)
    per_point = 2 * 8 * 60 * 108 * 8 * 4
    assert sum(calls) == 27 and max(calls) * per_point <= 16 * 2**20 and len(calls) > 1
