"""The L2MemoryReadout reference against independent dense formulations of the contract."""
import math

import pytest
import torch

from vosrt.sdk.errors import UserError
from vosrt.training.ops.l2_readout import l2_memory_readout, l2_memory_readout_chunked


def random_memory(batch=2, key_dim=16, memory=50, queries=37, values=12, seed=0, key_scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    mem_key = torch.randn(batch, key_dim, memory, generator=generator, dtype=torch.float64) * key_scale
    query_key = torch.randn(batch, key_dim, queries, generator=generator, dtype=torch.float64) * key_scale
    mem_value = torch.randn(batch, values, memory, generator=generator, dtype=torch.float64)
    return mem_key, query_key, mem_value


def affinity(mem_key, query_key, scale):
    # Written out per the contract: S[b,n,m] = (2 Σ_c mk·qk − Σ_c mk²)·scale
    dot = torch.einsum("bcn,bcm->bnm", mem_key, query_key)
    return (2 * dot - (mem_key ** 2).sum(1)[:, :, None]) * scale  # [B, N, M]


def full_attention(mem_key, query_key, mem_value, scale):
    """Softmax over every memory entry, as a dense matrix product."""
    return mem_value @ torch.softmax(affinity(mem_key, query_key, scale), dim=1)


def dense_top_k(mem_key, query_key, mem_value, top_k, scale):
    """Top-k, softmax of the kept scores, scattered into a dense [B, N, M] weight matrix, one matmul."""
    scores = affinity(mem_key, query_key, scale)
    kept, index = scores.topk(top_k, dim=1)
    weights = torch.zeros_like(scores).scatter(1, index, torch.softmax(kept, dim=1))
    return mem_value @ weights


@pytest.mark.parametrize("memory", [5, 50, 300])
def test_top_k_zero_equals_full_softmax_attention(memory):
    mem_key, query_key, mem_value = random_memory(memory=memory)
    out = l2_memory_readout(mem_key, query_key, mem_value, top_k=0)
    expected = full_attention(mem_key, query_key, mem_value, 1 / math.sqrt(16))
    assert torch.allclose(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("memory", [21, 50, 300, 1000])
def test_top_20_equals_dense_top_k_scatter_matmul(memory):
    mem_key, query_key, mem_value = random_memory(memory=memory, seed=memory)
    out = l2_memory_readout(mem_key, query_key, mem_value, top_k=20)
    expected = dense_top_k(mem_key, query_key, mem_value, 20, 1 / math.sqrt(16))
    assert out.shape == (2, 12, 37)
    assert torch.allclose(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("memory", [1, 7, 19, 20])
def test_memory_smaller_than_top_k_uses_every_entry(memory):
    mem_key, query_key, mem_value = random_memory(memory=memory)
    out = l2_memory_readout(mem_key, query_key, mem_value, top_k=20)
    expected = full_attention(mem_key, query_key, mem_value, 1 / math.sqrt(16))
    assert torch.allclose(out, expected, atol=1e-5, rtol=0)


def test_float32_top_k_matches_the_float64_dense_form():
    mem_key, query_key, mem_value = random_memory(batch=1, key_dim=64, memory=400, queries=120, values=32)
    out = l2_memory_readout(mem_key.float(), query_key.float(), mem_value.float(), top_k=20)
    expected = dense_top_k(mem_key, query_key, mem_value, 20, 1 / 8)
    assert out.dtype == torch.float32
    assert torch.allclose(out.double(), expected, atol=1e-5, rtol=0)


def test_result_is_the_softmax_of_negative_squared_distances():
    # Dropping −‖q‖² must not change anything: compare with the true −‖mk − qk‖² affinity.
    mem_key, query_key, mem_value = random_memory(memory=60)
    distance = ((mem_key[:, :, :, None] - query_key[:, :, None, :]) ** 2).sum(1)  # [B, N, M]
    scores = -distance / 4
    kept, index = scores.topk(10, dim=1)
    weights = torch.zeros_like(scores).scatter(1, index, torch.softmax(kept, dim=1))
    out = l2_memory_readout(mem_key, query_key, mem_value, top_k=10)
    assert torch.allclose(out, mem_value @ weights, atol=1e-5, rtol=0)


def test_explicit_scale_is_used():
    mem_key, query_key, mem_value = random_memory(memory=80)
    out = l2_memory_readout(mem_key, query_key, mem_value, top_k=20, scale=0.05)
    assert torch.allclose(out, dense_top_k(mem_key, query_key, mem_value, 20, 0.05), atol=1e-5, rtol=0)
    assert not torch.allclose(out, l2_memory_readout(mem_key, query_key, mem_value, top_k=20), atol=1e-3)


def test_large_scores_do_not_overflow_in_float32():
    mem_key, query_key, mem_value = random_memory(memory=100, key_scale=30.0)
    out = l2_memory_readout(mem_key.float(), query_key.float(), mem_value.float(), top_k=20)
    expected = dense_top_k(mem_key, query_key, mem_value, 20, 1 / 4)
    assert torch.isfinite(out).all()
    assert torch.allclose(out.double(), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("top_k", [0, 5, 20])
@pytest.mark.parametrize("chunk_size", [1, 10, 37, 64])
def test_chunked_form_equals_the_dense_form(top_k, chunk_size):
    mem_key, query_key, mem_value = random_memory(memory=90, seed=top_k)
    whole = l2_memory_readout(mem_key, query_key, mem_value, top_k=top_k)
    chunked = l2_memory_readout_chunked(mem_key, query_key, mem_value, top_k=top_k, chunk_size=chunk_size)
    assert torch.allclose(chunked, whole, atol=1e-12, rtol=0)


def test_gradients_match_the_dense_form():
    inputs = [t.requires_grad_() for t in random_memory(memory=40, queries=9)]
    l2_memory_readout(*inputs, top_k=8).square().sum().backward()
    ours = [t.grad.clone() for t in inputs]
    dense_inputs = [t.detach().clone().requires_grad_() for t in inputs]
    dense_top_k(*dense_inputs, 8, 1 / 4).square().sum().backward()
    for mine, theirs in zip(ours, dense_inputs):
        assert torch.allclose(mine, theirs.grad, atol=1e-8, rtol=0)


def test_mismatched_shapes_are_rejected_with_the_shapes():
    mem_key, query_key, mem_value = random_memory(memory=30)
    with pytest.raises(UserError, match="mem_value"):
        l2_memory_readout(mem_key, query_key, mem_value[:, :, :29])
    with pytest.raises(UserError, match="mem_key must be 3-D"):
        l2_memory_readout(mem_key[0], query_key, mem_value)


def test_negative_top_k_and_unknown_backend_are_rejected():
    mem_key, query_key, mem_value = random_memory(memory=30)
    with pytest.raises(UserError, match="top_k"):
        l2_memory_readout(mem_key, query_key, mem_value, top_k=-1)
    with pytest.raises(UserError, match="backend"):
        l2_memory_readout(mem_key, query_key, mem_value, backend="cuda")


@pytest.mark.gpu
def test_torch_backend_on_cuda_equals_cpu():
    mem_key, query_key, mem_value = (t.float() for t in random_memory(memory=500, queries=300))
    cpu = l2_memory_readout(mem_key, query_key, mem_value, top_k=20, backend="torch")
    gpu = l2_memory_readout(mem_key.cuda(), query_key.cuda(), mem_value.cuda(), top_k=20, backend="torch")
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-5, rtol=0)
