"""The TensorRT backend's buffer arithmetic (write / read / upload / download pitches and offsets).

There is no GPU in CI, so these tests give the backend a host-memory stand-in for the handful of CUDA
runtime calls it makes (malloc, memset, memcpy, memcpy2D on byte addresses); what is checked is the
backend's own offset and pitch arithmetic against numpy slicing. On a GPU, tests/test_tensorrt.py
exercises the same code with the real runtime.
"""
from __future__ import annotations

import ctypes
import enum
import types

import numpy as np
import pytest

from vosrt.sdk.backends import tensorrt as trt_backend


class _HostRuntime:
    """cudaMalloc & co. on host memory, with cuda-python's (error, value) return convention."""

    cudaError_t = types.SimpleNamespace(cudaSuccess=0)
    cudaMemcpyKind = enum.IntEnum("cudaMemcpyKind", "cudaMemcpyHostToDevice cudaMemcpyDeviceToHost "
                                                    "cudaMemcpyDeviceToDevice")

    def __init__(self):
        self.blocks: dict[int, ctypes.Array] = {}

    def cudaMalloc(self, size):
        block = (ctypes.c_char * size)()
        address = ctypes.addressof(block)
        self.blocks[address] = block
        return 0, address

    def cudaFree(self, address):
        self.blocks.pop(address)
        return (0,)

    def cudaMemsetAsync(self, address, value, count, stream):
        ctypes.memset(address, value, count)
        return (0,)

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        ctypes.memmove(dst, src, count)
        return (0,)

    def cudaMemcpy2DAsync(self, dst, dpitch, src, spitch, width, height, kind, stream):
        assert width <= dpitch and width <= spitch
        for row in range(height):
            ctypes.memmove(dst + row * dpitch, src + row * spitch, width)
        return (0,)

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaGetErrorString(self, err):
        return 0, b"error"


@pytest.fixture
def backend(monkeypatch):
    runtime = _HostRuntime()
    monkeypatch.setattr(trt_backend, "cudart", lambda: runtime)
    instance = object.__new__(trt_backend.TensorRTBackend)
    instance.stream = 0
    instance.allocated_bytes = 0
    instance._graphs = {}
    return instance


def test_zeros_then_download_gives_zeros(backend):
    bank = backend.zeros((2, 3, 10))
    assert backend.shape(bank) == (2, 3, 10)
    assert np.array_equal(backend.download(bank), np.zeros((2, 3, 10), np.float32))
    assert backend.allocated_bytes == 2 * 3 * 10 * 4


def test_write_host_frame_into_a_memory_bank_column_range(backend):
    rng = np.random.default_rng(0)
    bank = backend.zeros((2, 3, 5 * 6))                      # [O, C, capacity * h * w], h * w = 6
    expected = np.zeros((2, 3, 30), np.float32)
    for slot in (0, 3, 1):
        value = rng.standard_normal((2, 3, 2, 3)).astype(np.float32)   # [O, C, h, w]
        backend.write(bank, 2, slot * 6, value)
        expected[:, :, slot * 6:(slot + 1) * 6] = value.reshape(2, 3, 6)
    assert np.array_equal(backend.download(bank), expected)


def test_write_device_tensor_along_axis_0_and_2(backend):
    rng = np.random.default_rng(1)
    source = rng.standard_normal((1, 4, 6)).astype(np.float32)
    on_device = backend.zeros(source.shape)
    backend.write(on_device, 0, 0, backend.upload(source))
    bank = backend.zeros((3, 4, 6))
    backend.write(bank, 0, 2, on_device)
    expected = np.zeros((3, 4, 6), np.float32)
    expected[2:3] = source
    assert np.array_equal(backend.download(bank), expected)
    clip = backend.zeros((1, 3, 4, 2, 2))                    # [1, 3, L, H, W]
    frame = rng.random((1, 3, 1, 2, 2), dtype=np.float32)
    backend.write(clip, 2, 3, frame)
    assert np.array_equal(backend.download(clip)[:, :, 3:4], frame)
    assert not backend.download(clip)[:, :, :3].any()


def test_read_of_a_column_range_matches_numpy_and_reuses_one_scratch_buffer(backend):
    data = np.arange(2 * 3 * 12, dtype=np.float32).reshape(2, 3, 12)
    bank = backend.zeros(data.shape)
    backend.write(bank, 0, 0, data)
    first = backend.read(bank, 2, 0, 5)
    assert np.array_equal(backend.download(first), data[:, :, 0:5])
    allocated = backend.allocated_bytes
    for stop in (7, 12, 3):
        assert np.array_equal(backend.download(backend.read(bank, 2, 0, stop)), data[:, :, :stop])
    assert backend.allocated_bytes == allocated               # constant memory while streaming


def test_read_of_leading_rows_is_a_view_without_a_copy(backend):
    data = np.arange(4 * 2 * 3, dtype=np.float32).reshape(4, 2, 3)
    prob = backend.zeros(data.shape)
    backend.write(prob, 0, 0, data)
    view = backend.read(prob, 0, 1, 3)
    assert view.ptr == prob.ptr + 1 * 2 * 3 * 4 and view.shape == (2, 2, 3)
    assert np.array_equal(backend.download(view), data[1:3])


def test_write_refuses_a_source_that_does_not_fit(backend):
    bank = backend.zeros((1, 3, 8))
    with pytest.raises(ValueError, match="does not fit"):
        backend.write(bank, 2, 6, np.zeros((1, 3, 4), np.float32))
    with pytest.raises(ValueError, match="does not fit"):
        backend.write(bank, 2, 0, np.zeros((1, 2, 4), np.float32))


def test_cuda_array_interface_round_trip(backend):
    data = np.random.default_rng(2).random((2, 5), dtype=np.float32)
    tensor = backend.zeros(data.shape)
    backend.write(tensor, 0, 0, data)

    class Foreign:
        __cuda_array_interface__ = tensor.__cuda_array_interface__

    wrapped = backend.wrap(Foreign(), expected_dtype=np.float32)
    assert wrapped.ptr == tensor.ptr and wrapped.shape == (2, 5)
    assert np.array_equal(backend.download(Foreign()), data)
    with pytest.raises(trt_backend.UserError, match="expected float16"):
        backend.wrap(Foreign(), expected_dtype=np.float16)


def test_freed_tensors_return_their_memory(backend):
    tensor = backend.zeros((16, 16))
    assert backend.allocated_bytes == 16 * 16 * 4
    del tensor
    assert backend.allocated_bytes == 0
