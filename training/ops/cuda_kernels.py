"""PyTorch front of vosrt's CUDA kernels (``plugins/kernels``), used by the reference operators for
CUDA tensors when the library is built (``vosrt.training.ops.d2conv3d`` / ``l2_readout`` dispatch here).

The kernels are called through the C API with the tensors' device pointers on the current CUDA stream,
so they order correctly with the surrounding PyTorch work. Inputs the kernels do not take (a dtype other
than float32/float16, top_k above the on-chip limit) fall back to the reference implementations.

Gradients: D2Conv3D runs its CUDA backward (in float32; float16 inputs are upcast for it). The readout
recomputes the reference under autograd in its backward pass, in float32 (float16 inputs upcast, the
gradients cast back): its forward is the fast path for inference and training reads alike, its gradient
is the reference's.
"""
from __future__ import annotations

import contextlib
import ctypes
from functools import lru_cache
from typing import Sequence

import torch

from vosrt.sdk import kernels as _kernels
from vosrt.sdk.errors import UserError

_DTYPES = {torch.float32: _kernels.FLOAT32, torch.float16: _kernels.FLOAT16}
_NOT_SUPPORTED = 2


_load_error: list[str] = []  # why the last _library() found none (unavailable_reason)


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    _load_error.clear()
    try:
        return _kernels.load_kernels()
    except (UserError, OSError, AttributeError) as err:  # not built, CUDA runtime missing, or an older build
        _load_error.append(f"{type(err).__name__}: {err}")
        return None


def available() -> bool:
    """True when a CUDA device is present and ``libvosrt_kernels.so`` was found and loaded."""
    return torch.cuda.is_available() and _library() is not None


def unavailable_reason() -> str | None:
    """Why :func:`available` is False (no CUDA device, or the loader's error); None when it is True."""
    if not torch.cuda.is_available():
        return "no CUDA device visible to PyTorch"
    if _library() is None:
        return f"libvosrt_kernels.so not loaded: {_load_error[0] if _load_error else 'unknown error'}"
    return None


def _stream(device: torch.device) -> int | None:
    # Host tensors only reach here with the host emulation of the kernels (tests), which has no streams.
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else None


def _on_device(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _ptr(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def _workspace(nbytes: int, device: torch.device) -> torch.Tensor:
    # Through the caching allocator: repeated calls reuse the block instead of cudaMalloc.
    return torch.empty(max(int(nbytes), 1), dtype=torch.uint8, device=device)


# ------------------------------------------------------------------------------------------------- D2Conv3D

class _D2Conv3D(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dilation, modulation, weight, bias, params):
        lib = _library()
        dtype = _DTYPES[x.dtype]
        out = (ctypes.c_int * 3)()
        _kernels.check_status(lib.vosrtD2Conv3DOutputShape(ctypes.byref(params), out), "vosrtD2Conv3DOutputShape")
        y = torch.empty((x.shape[0], weight.shape[0], *out), dtype=x.dtype, device=x.device)
        nbytes = lib.vosrtD2Conv3DWorkspaceSize(ctypes.byref(params), dtype)
        workspace = _workspace(nbytes, x.device)
        _kernels.check_status(lib.vosrtD2Conv3DForward(
            ctypes.byref(params), dtype, _ptr(x), _ptr(dilation), _ptr(modulation), _ptr(weight), _ptr(bias),
            _ptr(y), _ptr(workspace), nbytes, _stream(x.device)), "vosrtD2Conv3DForward")
        ctx.params = params
        ctx.has_modulation, ctx.has_bias = modulation is not None, bias is not None
        ctx.save_for_backward(x, dilation, modulation, weight)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        lib = _library()
        x, dilation, modulation, weight = ctx.saved_tensors
        need_x, need_d, need_m, need_w, need_b = ctx.needs_input_grad[:5]
        # The CUDA backward is float32: half inputs are upcast for it and the gradients cast back.
        x32, d32, w32, gy32 = (t.float().contiguous() for t in (x, dilation, weight, grad_y))
        m32 = modulation.float().contiguous() if modulation is not None else None
        grad = {"x": torch.empty_like(x32) if need_x else None,
                "dilation": torch.empty_like(d32) if need_d else None,
                "modulation": torch.empty_like(m32) if (need_m and m32 is not None) else None,
                "weight": torch.empty_like(w32) if need_w else None,
                "bias": torch.empty(weight.shape[0], dtype=torch.float32, device=x.device)
                if (need_b and ctx.has_bias) else None}
        params = ctx.params
        nbytes = lib.vosrtD2Conv3DBackwardWorkspaceSize(ctypes.byref(params), _kernels.FLOAT32)
        workspace = _workspace(nbytes, x.device)
        with _on_device(x.device):
            _kernels.check_status(lib.vosrtD2Conv3DBackward(
                ctypes.byref(params), _kernels.FLOAT32, _ptr(x32), _ptr(d32), _ptr(m32), _ptr(w32), _ptr(gy32),
                _ptr(grad["x"]), _ptr(grad["dilation"]), _ptr(grad["modulation"]), _ptr(grad["weight"]),
                _ptr(grad["bias"]), _ptr(workspace), nbytes, _stream(x.device)), "vosrtD2Conv3DBackward")
        like = {"x": x, "dilation": dilation, "modulation": modulation, "weight": weight, "bias": weight}
        out = [None if grad[k] is None else grad[k].to(like[k].dtype)
               for k in ("x", "dilation", "modulation", "weight", "bias")]
        return (*out, None)


def d2conv3d(x: torch.Tensor, dilation: torch.Tensor, modulation: torch.Tensor | None, weight: torch.Tensor,
             bias: torch.Tensor | None, stride: Sequence[int], padding: Sequence[int],
             dilation_base: Sequence[int], groups: int) -> torch.Tensor:
    """D2Conv3D on CUDA tensors through ``vosrtD2Conv3DForward`` (differentiable via the CUDA backward).

    Same arguments and result as ``vosrt.training.ops.d2conv3d.d2conv3d`` with stride, padding and
    dilation_base as (t, y, x) triples. dilation, modulation, weight and bias are cast to x's dtype.
    """
    from vosrt.training.ops.d2conv3d import d2conv3d as reference  # lazy: that module imports this one

    if x.dtype not in _DTYPES or not x.is_cuda:
        return reference(x, dilation, modulation, weight, bias, stride, padding, dilation_base, groups,
                         backend="torch")
    return _d2conv3d(x, dilation, modulation, weight, bias, stride, padding, dilation_base, groups)


def _d2conv3d(x, dilation, modulation, weight, bias, stride, padding, dilation_base, groups):
    """The kernel path of :func:`d2conv3d` for any tensors the loaded library can address."""
    from vosrt.training.ops.d2conv3d import d2conv3d as reference

    if x.dim() != 5 or weight.dim() != 5:
        raise UserError(f"d2conv3d: x [N, C, T, H, W] and weight [Cout, C/groups, kt, kh, kw] must be 5-D, "
                        f"got {tuple(x.shape)} and {tuple(weight.shape)}")
    params = _kernels.d2conv3d_params(x.shape, weight.shape, stride, padding, dilation_base, groups,
                                      modulation is not None, bias is not None)
    lib = _library()
    status = lib.vosrtD2Conv3DValidate(ctypes.byref(params))
    if status == _NOT_SUPPORTED:
        return reference(x, dilation, modulation, weight, bias, stride, padding, dilation_base, groups,
                         backend="torch")
    if status != 0 or weight.shape[1] * groups != x.shape[1]:
        raise UserError(f"d2conv3d: x {tuple(x.shape)}, weight {tuple(weight.shape)}, groups {groups}, stride "
                        f"{tuple(stride)}, padding {tuple(padding)}, dilation {tuple(dilation_base)} do not describe "
                        f"a valid convolution (C = weight.shape[1]·groups, Cout divisible by groups, output >= 1)")
    out = (ctypes.c_int * 3)()
    lib.vosrtD2Conv3DOutputShape(ctypes.byref(params), out)
    n, k = x.shape[0], weight.shape[2] * weight.shape[3] * weight.shape[4]
    if tuple(dilation.shape) != (n, 3, *out):
        raise UserError(f"d2conv3d: dilation must be {(n, 3, *out)} (N, 3, To, Ho, Wo), got {tuple(dilation.shape)}")
    if modulation is not None and tuple(modulation.shape) != (n, k, *out):
        raise UserError(f"d2conv3d: modulation must be {(n, k, *out)}, got {tuple(modulation.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise UserError(f"d2conv3d: bias must be ({weight.shape[0]},), got {tuple(bias.shape)}")
    tensors = [None if t is None else t.to(device=x.device, dtype=x.dtype).contiguous()
               for t in (x, dilation, modulation, weight, bias)]
    with _on_device(x.device):
        return _D2Conv3D.apply(*tensors, params)


# ------------------------------------------------------------------------------------------- L2 readout

class _L2Readout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mem_key, query_key, mem_value, top_k, scale):
        lib = _library()
        dtype = _DTYPES[mem_key.dtype]
        params = _kernels.l2_readout_params(mem_key.shape, query_key.shape[2], mem_value.shape[1], top_k, scale)
        out = torch.empty((mem_key.shape[0], mem_value.shape[1], query_key.shape[2]), dtype=mem_key.dtype,
                          device=mem_key.device)
        nbytes = lib.vosrtL2ReadoutWorkspaceSize(ctypes.byref(params), dtype)
        workspace = _workspace(nbytes, mem_key.device)
        status = lib.vosrtL2ReadoutForward(
            ctypes.byref(params), dtype, _ptr(mem_key), _ptr(query_key), _ptr(mem_value), _ptr(out),
            _ptr(workspace), nbytes, _stream(mem_key.device))
        if status == _NOT_SUPPORTED:
            # Valid, but this device's shared memory cannot hold a block's key tiles at this Ck (Validate
            # does not know the device): the reference computes it, as for the cases Validate turns away.
            from vosrt.training.ops.l2_readout import l2_memory_readout as reference
            out = reference(mem_key, query_key, mem_value, top_k, scale, backend="torch")
        else:
            _kernels.check_status(status, "vosrtL2ReadoutForward")
        ctx.top_k, ctx.scale = top_k, scale
        ctx.save_for_backward(mem_key, query_key, mem_value)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        from vosrt.training.ops.l2_readout import l2_memory_readout as reference

        saved = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        # Recomputed in float32 whatever the storage: the forward kernel scores in float32, and a float16
        # recompute rounds the scores enough to pick another top-k near a tie (a gradient of another read).
        with torch.enable_grad():
            leaves = [t.detach().float().requires_grad_(need) for t, need in zip(saved, needs)]
            out = reference(*leaves, ctx.top_k, ctx.scale, backend="torch")
            wanted = [t for t in leaves if t.requires_grad]
            grads = iter(torch.autograd.grad(out, wanted, grad_out.float()))
        return (*(next(grads).to(t.dtype) if need else None for t, need in zip(saved, needs)), None, None)


def l2_memory_readout(mem_key: torch.Tensor, query_key: torch.Tensor, mem_value: torch.Tensor, top_k: int,
                      scale: float) -> torch.Tensor:
    """Fused top-k L2 memory read on CUDA tensors through ``vosrtL2ReadoutForward``.

    mem_key ``[B, Ck, N]``, query_key ``[B, Ck, M]``, mem_value ``[B, V, N]`` -> ``[B, V, M]``; top_k 0 or
    >= N reads all N. Same result as ``vosrt.training.ops.l2_readout.l2_memory_readout`` (whose checks
    have run); query_key and mem_value are cast to mem_key's dtype.
    """
    from vosrt.training.ops.l2_readout import l2_memory_readout as reference

    if mem_key.dtype not in _DTYPES or not mem_key.is_cuda:
        return reference(mem_key, query_key, mem_value, top_k, scale, backend="torch")
    return _l2_memory_readout(mem_key, query_key, mem_value, top_k, scale)


def _l2_memory_readout(mem_key, query_key, mem_value, top_k, scale):
    """The kernel path of :func:`l2_memory_readout` for any tensors the loaded library can address."""
    from vosrt.training.ops.l2_readout import l2_memory_readout as reference

    params = _kernels.l2_readout_params(mem_key.shape, query_key.shape[2], mem_value.shape[1], top_k, scale)
    if _library().vosrtL2ReadoutValidate(ctypes.byref(params)) == _NOT_SUPPORTED:  # e.g. top_k > 64 < N
        return reference(mem_key, query_key, mem_value, top_k, scale, backend="torch")
    tensors = [t.to(device=mem_key.device, dtype=mem_key.dtype).contiguous() for t in (mem_key, query_key, mem_value)]
    with _on_device(mem_key.device):
        return _L2Readout.apply(*tensors, int(top_k), float(scale))
