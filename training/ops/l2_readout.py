"""STCN's memory read: top-k softmax over the negative squared L2 distance between keys.

Reference implementation of the ``L2MemoryReadout`` operator (ARCHITECTURE.md, "Operator 2")::

    S[b,n,m] = (2·Σ_c mk[b,c,n]·qk[b,c,m] − Σ_c mk[b,c,n]²) · scale
    T = the top_k largest S[b,:,m];  w = softmax over T (max subtracted)
    out[b,v,m] = Σ_{n∈T} w[n] · mv[b,v,n]

−‖q‖² is left out: it is constant per query, so it changes neither the top-k nor the softmax.
NaN policy (the same in the CUDA kernels, their CPU driver and ONNX's TopK): a NaN score ranks above
every number, so it enters the top-k and makes its query's output NaN; a NaN in mem_key makes every
query NaN, one in query_key its own query, one in mem_value the queries that select that entry.
This file is the source of truth; the CUDA kernel, the ONNX decomposition and the TensorRT plugin are
tested against it. On CUDA tensors ``backend="auto"`` hands the work to the CUDA kernel when it is built.
"""
from __future__ import annotations

import math

import torch

from vosrt.sdk.errors import UserError

try:  # the CUDA kernels are optional: a CPU-only install has no compiled library
    from vosrt.training.ops import cuda_kernels
except ImportError:
    cuda_kernels = None

# Top-k slots gathered at once: bounds the temporary to V × GATHER_GROUP × M values.
GATHER_GROUP = 8


def l2_memory_readout(mem_key: torch.Tensor, query_key: torch.Tensor, mem_value: torch.Tensor,
                      top_k: int = 20, scale: float | None = None, backend: str = "auto") -> torch.Tensor:
    """Read the memory for every query position.

    mem_key ``[B, Ck, N]``, query_key ``[B, Ck, M]``, mem_value ``[B, V, N]`` -> ``[B, V, M]``.
    ``top_k`` = 0 or ≥ N uses all N memory entries; ``scale`` defaults to 1/sqrt(Ck) (so does a ``scale`` <= 0,
    as in an ONNX node's attribute).
    ``backend``: ``"auto"`` (CUDA kernel for CUDA tensors when available, else this reference) or
    ``"torch"`` (always the reference). Differentiable in the torch backend.
    """
    top_k, scale = _check(mem_key, query_key, mem_value, top_k, scale, backend)
    if _use_kernel(mem_key, backend):
        return cuda_kernels.l2_memory_readout(mem_key, query_key, mem_value, top_k, scale)
    return _readout(mem_key, query_key, mem_value, top_k, scale)


def l2_memory_readout_chunked(mem_key: torch.Tensor, query_key: torch.Tensor, mem_value: torch.Tensor,
                              top_k: int = 20, scale: float | None = None, chunk_size: int = 1024,
                              backend: str = "auto") -> torch.Tensor:
    """Same result as :func:`l2_memory_readout`, computed ``chunk_size`` queries at a time so that at
    most an N × chunk_size block of the affinity exists at once (long memories, large frames)."""
    top_k, scale = _check(mem_key, query_key, mem_value, top_k, scale, backend)
    if chunk_size < 1:
        raise UserError(f"chunk_size must be a positive number of query positions, got {chunk_size}")
    if _use_kernel(mem_key, backend):  # the kernel never materialises the affinity anyway
        return cuda_kernels.l2_memory_readout(mem_key, query_key, mem_value, top_k, scale)
    queries = query_key.shape[2]
    mem_sq = mem_key.pow(2).sum(dim=1)  # [B, N], shared by every chunk
    chunks = [_readout(mem_key, query_key[:, :, start:start + chunk_size], mem_value, top_k, scale, mem_sq)
              for start in range(0, queries, chunk_size)]
    return torch.cat(chunks, dim=2)  # [B, V, M]


def l2_affinity(mem_key: torch.Tensor, query_key: torch.Tensor, scale: float,
                mem_sq: torch.Tensor | None = None) -> torch.Tensor:
    """S = (2·mkᵀqk − ‖mk‖²)·scale: mem_key ``[B, Ck, N]``, query_key ``[B, Ck, M]`` -> ``[B, N, M]``."""
    if mem_sq is None:
        mem_sq = mem_key.pow(2).sum(dim=1)  # [B, N]
    similarity = 2 * torch.bmm(mem_key.transpose(1, 2), query_key) - mem_sq.unsqueeze(2)  # [B, N, M]
    return similarity * scale


def _readout(mem_key, query_key, mem_value, top_k, scale, mem_sq=None):
    affinity = l2_affinity(mem_key, query_key, scale, mem_sq)  # [B, N, M]
    memory = affinity.shape[1]
    if top_k == 0 or top_k >= memory:
        # softmax subtracts the column maximum itself
        return torch.bmm(mem_value, torch.softmax(affinity, dim=1))  # [B, V, M]
    top_values, top_index = torch.topk(affinity, top_k, dim=1)  # [B, k, M]
    weights = torch.softmax(top_values, dim=1)  # [B, k, M]
    batch, channels, _ = mem_value.shape
    queries = query_key.shape[2]
    out = mem_value.new_zeros(batch, channels, queries)
    # Gather the values of a few top-k slots at a time: [B, V, g, M] rather than [B, V, k, M].
    for start in range(0, top_k, GATHER_GROUP):
        index = top_index[:, start:start + GATHER_GROUP]  # [B, g, M]
        group = index.shape[1]
        gathered = torch.gather(mem_value.unsqueeze(2).expand(batch, channels, group, memory), 3,
                                index.unsqueeze(1).expand(batch, channels, group, queries))  # [B, V, g, M]
        out = out + (gathered * weights[:, start:start + group].unsqueeze(1)).sum(dim=2)
    return out


def _use_kernel(mem_key: torch.Tensor, backend: str) -> bool:
    return (backend != "torch" and mem_key.is_cuda and cuda_kernels is not None
            and cuda_kernels.available())


def _check(mem_key, query_key, mem_value, top_k, scale, backend):
    if backend not in ("auto", "torch"):
        raise UserError(f"backend must be 'auto' or 'torch', got {backend!r}")
    for name, tensor in (("mem_key", mem_key), ("query_key", query_key), ("mem_value", mem_value)):
        if tensor.dim() != 3:
            raise UserError(f"{name} must be 3-D ([B, C, positions]), got shape {tuple(tensor.shape)}")
    (batch, key_dim, memory), (qb, qc, _), (vb, _, vn) = mem_key.shape, query_key.shape, mem_value.shape
    if (qb, qc) != (batch, key_dim) or (vb, vn) != (batch, memory):
        raise UserError(f"shapes do not fit: mem_key [B, Ck, N] = {tuple(mem_key.shape)}, query_key [B, Ck, M] = "
                        f"{tuple(query_key.shape)}, mem_value [B, V, N] = {tuple(mem_value.shape)}")
    if memory == 0:
        raise UserError("the memory is empty (N = 0): add a frame with masks before reading it")
    top_k = int(top_k)
    if top_k < 0:
        raise UserError(f"top_k must be >= 0 (0 = all memory entries), got {top_k}")
    # The operator's policy (ARCHITECTURE.md operator 2, plugins/trt/README.md): no scale, or one <= 0 as
    # an ONNX node's attribute may carry, means 1/sqrt(Ck), as in the kernels and the CPU operators.
    if scale is not None and not math.isfinite(float(scale)):
        raise UserError(f"scale must be finite (None or <= 0 for 1/sqrt(Ck)), got {scale}")
    scale = 1.0 / math.sqrt(key_dim) if scale is None or float(scale) <= 0 else float(scale)
    return top_k, scale
