"""D²Conv3D: dynamic dilated 3D convolution, the PyTorch reference of ARCHITECTURE.md "Operator 1".

For kernel point (i, j, l) and output location o = (ot, oy, ox) the sample position along t is

    q_t = ot·s_t − pad_t + i·dil_t + (i − kt//2)·dil_t·(D[n,0,o] − 1)

(likewise y with j, D[n,1,o] and x with l, D[n,2,o]). X is sampled trilinearly in voxel-index units;
a corner outside the volume contributes 0 and a position with any coordinate ≤ −1 or ≥ size contributes
0 (also to the gradients, as in the deformable-convolution kernels). NaN policy (the same in the CUDA
kernels and their CPU driver): NaN propagates and is never taken for "outside": a NaN in D or M at a
location makes that location's outputs NaN, a NaN voxel of X reaches the outputs whose samples have it
among their in-volume corners (corners outside the volume read nothing). Then

    Y[n, co, o] = B[co] + Σ_{c ∈ group(co)} Σ_k M[n,k,o] · Wt[co, c, k] · X̃[n, c, q(k, o)]

This file is the source of truth that the CUDA kernel, the ONNX decompositions and the TensorRT plugin
are checked against, so it favours plain arithmetic over speed. It works in channels-last layout so that
the 8 trilinear corners of a sample are one weighted ``embedding_bag`` sum of whole channel rows, and it
visits the kernel points one at a time, so without gradients only one sampled column ``[N·P, C]`` exists
at once (an 8-frame 480×864 clip at 1/8 scale with C = 256 peaks well under 1 GB). With gradients, autograd
would keep about two columns per kernel point; the points are therefore grouped into chunks whose saved
columns stay under ``_CHUNK_BYTES``, and when there is more than one chunk each runs under activation
checkpointing, i.e. its columns are recomputed in the backward pass instead of being kept.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from vosrt.sdk.errors import UserError

try:  # written by the CUDA-kernel work; absent on CPU-only installs
    from vosrt.training.ops import cuda_kernels
except ImportError:
    cuda_kernels = None

# Upper bound for the columns autograd keeps for one chunk of kernel points (2 × [N·P, C] per point).
_CHUNK_BYTES = 256 * 2**20

IntOr3 = int | Sequence[int]


def _triple(value: IntOr3, name: str) -> tuple[int, int, int]:
    if isinstance(value, int):
        return (value, value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 3:
        raise UserError(f"d2conv3d: {name} must be an int or 3 ints (t, y, x), got {value}")
    return value


def output_size(size: Sequence[int], kernel: Sequence[int], stride: IntOr3 = 1, padding: IntOr3 = 0,
                dilation_base: IntOr3 = 1) -> tuple[int, int, int]:
    """(To, Ho, Wo) of a D²Conv3D over a (T, H, W) volume: the Conv3d output size formula."""
    stride, padding, dilation_base = (_triple(v, n) for v, n in
                                      ((stride, "stride"), (padding, "padding"), (dilation_base, "dilation_base")))
    return tuple((s + 2 * p - d * (k - 1) - 1) // st + 1
                 for s, k, st, p, d in zip(size, kernel, stride, padding, dilation_base))


def d2conv3d(x: torch.Tensor, dilation: torch.Tensor, modulation: torch.Tensor | None, weight: torch.Tensor,
             bias: torch.Tensor | None = None, stride: IntOr3 = 1, padding: IntOr3 = 0,
             dilation_base: IntOr3 = 1, groups: int = 1, backend: str = "auto") -> torch.Tensor:
    """Dynamic dilated 3D convolution (contract: ARCHITECTURE.md, Operator 1).

    Args:
        x: features ``[N, C, T, H, W]``.
        dilation: dilation scale per output location ``[N, 3, To, Ho, Wo]``, channels (t, y, x).
        modulation: ``[N, K, To, Ho, Wo]`` with K = kt·kh·kw in (kt, kh, kw) row-major order, or None (= 1).
        weight: ``[Cout, C/groups, kt, kh, kw]``.
        bias: ``[Cout]`` or None.
        stride, padding, dilation_base: int or (t, y, x) triple, as in Conv3d (padding is symmetric).
        groups: channel groups, as in Conv3d.
        backend: "auto" uses the CUDA kernel for CUDA tensors when it is built, "torch" forces this reference.

    Returns:
        ``[N, Cout, To, Ho, Wo]``. Differentiable in x, dilation, modulation, weight and bias.
    """
    stride, padding, dilation_base = (_triple(v, n) for v, n in
                                      ((stride, "stride"), (padding, "padding"), (dilation_base, "dilation_base")))
    if backend not in ("auto", "torch"):
        raise UserError(f"d2conv3d: backend must be 'auto' or 'torch', got {backend!r}")
    if (backend != "torch" and x.is_cuda and cuda_kernels is not None and cuda_kernels.available()):
        return cuda_kernels.d2conv3d(x, dilation, modulation, weight, bias, stride, padding, dilation_base, groups)
    _check_shapes(x, dilation, modulation, weight, bias, stride, padding, dilation_base, groups)
    return _d2conv3d_torch(x, dilation, modulation, weight, bias, stride, padding, dilation_base, groups)


def _check_shapes(x, dilation, modulation, weight, bias, stride, padding, dilation_base, groups) -> None:
    if x.dim() != 5:
        raise UserError(f"d2conv3d: x must be [N, C, T, H, W], got shape {tuple(x.shape)}")
    if weight.dim() != 5:
        raise UserError(f"d2conv3d: weight must be [Cout, C/groups, kt, kh, kw], got shape {tuple(weight.shape)}")
    n, c = x.shape[:2]
    cout, cin_g = weight.shape[:2]
    kernel = tuple(weight.shape[2:])
    if groups < 1 or c % groups or cout % groups or cin_g * groups != c:
        raise UserError(f"d2conv3d: x has {c} channels and weight {tuple(weight.shape)} with groups={groups}; "
                        f"expected C = weight.shape[1]·groups and Cout divisible by groups")
    out = output_size(x.shape[2:], kernel, stride, padding, dilation_base)
    if min(out) < 1:
        raise UserError(f"d2conv3d: input {tuple(x.shape[2:])} is too small for kernel {kernel} "
                        f"(stride {stride}, padding {padding}, dilation {dilation_base})")
    if tuple(dilation.shape) != (n, 3, *out):
        raise UserError(f"d2conv3d: dilation must be {(n, 3, *out)} (N, 3, To, Ho, Wo), got {tuple(dilation.shape)}")
    k = kernel[0] * kernel[1] * kernel[2]
    if modulation is not None and tuple(modulation.shape) != (n, k, *out):
        raise UserError(f"d2conv3d: modulation must be {(n, k, *out)} (N, K, To, Ho, Wo), "
                        f"got {tuple(modulation.shape)}")
    if bias is not None and tuple(bias.shape) != (cout,):
        raise UserError(f"d2conv3d: bias must be ({cout},), got {tuple(bias.shape)}")


class _Geometry:
    """Sizes and Conv3d taps shared by every kernel point of one call."""

    def __init__(self, x_shape, kernel, out_size, stride, padding, dilation_base, device, dtype):
        self.n, self.c, self.t, self.h, self.w = x_shape
        self.kernel = kernel
        self.dilation_base = dilation_base
        to, ho, wo = out_size
        # Conv3d tap of kernel point 0 at every output location, broadcastable to [N, To, Ho, Wo].
        self.grid_t = (torch.arange(to, device=device, dtype=dtype) * stride[0] - padding[0]).view(1, to, 1, 1)
        self.grid_y = (torch.arange(ho, device=device, dtype=dtype) * stride[1] - padding[1]).view(1, 1, ho, 1)
        self.grid_x = (torch.arange(wo, device=device, dtype=dtype) * stride[2] - padding[2]).view(1, 1, 1, wo)
        self.batch_base = (torch.arange(self.n, device=device) * (self.t * self.h * self.w)).view(self.n, 1, 1, 1)


def _sample_point(geo: _Geometry, x_rows: torch.Tensor, scale: torch.Tensor, point: tuple[int, int, int]):
    """Trilinear samples of x at one kernel point for every output location.

    x_rows: ``[N·T·H·W, C]`` (channels last); scale: D − 1 ``[N, 3, To, Ho, Wo]``. Returns ``[N·P, C]``.
    """
    (i, j, l), (kt, kh, kw), (dt_, dy_, dx_) = point, geo.kernel, geo.dilation_base
    t, h, w = geo.t, geo.h, geo.w
    qt = geo.grid_t + i * dt_ + (i - kt // 2) * dt_ * scale[:, 0]  # [N, To, Ho, Wo]
    qy = geo.grid_y + j * dy_ + (j - kh // 2) * dy_ * scale[:, 1]
    qx = geo.grid_x + l * dx_ + (l - kw // 2) * dx_ * scale[:, 2]
    inside = (qt > -1) & (qt < t) & (qy > -1) & (qy < h) & (qx > -1) & (qx < w)  # [N, To, Ho, Wo]

    def corners(q: torch.Tensor, size: int, shape: tuple[int, int, int]):
        """Both integer neighbours of q along one axis, their weights and validity, shaped for the 2×2×2 cube."""
        low = q.floor()
        frac = q - low
        idx = torch.stack((low, low + 1)).long()  # [2, N, To, Ho, Wo]
        wgt = torch.stack((1 - frac, frac))
        ok = (idx >= 0) & (idx < size)
        view = (*shape, *q.shape)
        return idx.clamp(0, size - 1).view(view), (wgt * ok).view(view), ok.view(view)

    it, wt, ok_t = corners(qt, t, (2, 1, 1))
    iy, wy, ok_y = corners(qy, h, (1, 2, 1))
    ix, wx, ok_x = corners(qx, w, (1, 1, 2))
    flat = (geo.batch_base + (it * h + iy) * w + ix).reshape(8, -1).t()  # [N·P, 8] rows of x_rows
    # Out-of-volume corners read the zero row at the end of x_rows (weighted by 0 as well): they read
    # nothing, so a NaN voxel at the border reaches only the samples that really touch it (NaN policy).
    in_volume = (ok_t & ok_y & ok_x & inside).reshape(8, -1).t()
    flat = torch.where(in_volume, flat, x_rows.shape[0] - 1)
    corner_w = (wt * wy * wx * inside).reshape(8, -1).t().to(x_rows.dtype)  # [N·P, 8]
    # embedding_bag is exactly "weighted sum of gathered rows" in one kernel, differentiable in both.
    return F.embedding_bag(flat, x_rows, mode="sum", per_sample_weights=corner_w)  # [N·P, C]


def _chunk_forward(geo: _Geometry, points, groups: int, x_rows, scale, w_k, mod):
    """Sum over ``points`` (a chunk of kernel points, as (k, (i, j, l))) of M·W·X̃: [groups, N·P, Cout/groups]."""
    acc = None
    for k, point in points:
        col = _sample_point(geo, x_rows, scale, point)  # [N·P, C]
        if mod is not None:
            col = col * mod[:, k:k + 1]
        col = col.view(col.shape[0], groups, -1).transpose(0, 1)  # [groups, N·P, C/groups]
        part = torch.bmm(col, w_k[k])  # [groups, N·P, Cout/groups]
        acc = part if acc is None else acc + part
    return acc


def _d2conv3d_torch(x, dilation, modulation, weight, bias, stride, padding, dilation_base, groups):
    n, c, t, h, w = x.shape
    cout = weight.shape[0]
    kernel = tuple(weight.shape[2:])
    to, ho, wo = dilation.shape[2:]
    k_total = kernel[0] * kernel[1] * kernel[2]
    positions = to * ho * wo
    # Positions in at least float32 so half inputs still hit the integer taps exactly when D = 1.
    pos_dtype = torch.promote_types(dilation.dtype, torch.float32)
    geo = _Geometry(x.shape, kernel, (to, ho, wo), stride, padding, dilation_base, x.device, pos_dtype)
    scale = dilation.to(pos_dtype) - 1  # [N, 3, To, Ho, Wo]; exactly 0 where D = 1

    # [N·T·H·W + 1, C], channels last; the extra zero row is what out-of-volume corners read. Filled in
    # place from the permuted view, so X is copied once, as before the zero row existed.
    x_rows = x.new_empty(n * t * h * w + 1, c)
    x_rows[:-1].view(n, t, h, w, c).copy_(x.permute(0, 2, 3, 4, 1))
    x_rows[-1].zero_()
    # [K, groups, C/groups, Cout/groups]: each kernel point is one batched matmul over the groups.
    w_k = weight.reshape(groups, cout // groups, c // groups, k_total).permute(3, 0, 2, 1)
    mod = None
    if modulation is not None:
        mod = modulation.permute(0, 2, 3, 4, 1).reshape(n * positions, k_total)  # [N·P, K]

    points = list(enumerate((i, j, l) for i in range(kernel[0]) for j in range(kernel[1]) for l in range(kernel[2])))
    # Saved for backward per kernel point: the interpolated column and its modulated copy, [N·P, C] each.
    chunk = max(1, min(k_total, _CHUNK_BYTES // max(2 * n * positions * c * x.element_size(), 1)))
    # Recompute instead of storing the columns only when they exceed the budget (more than one chunk).
    recompute = chunk < k_total and torch.is_grad_enabled() and any(
        v is not None and v.requires_grad for v in (x, dilation, modulation, weight))
    out = None
    for first in range(0, k_total, chunk):
        args = (geo, points[first:first + chunk], groups, x_rows, scale, w_k, mod)
        part = checkpoint(_chunk_forward, *args, use_reentrant=False) if recompute else _chunk_forward(*args)
        out = part if out is None else out + part
    out = out.transpose(0, 1).reshape(n, to, ho, wo, cout).permute(0, 4, 1, 2, 3)  # [N, Cout, To, Ho, Wo]
    if bias is not None:
        out = out + bias.view(1, cout, 1, 1, 1)
    return out.contiguous()
