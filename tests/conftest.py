"""Test tiers: `gpu` tests need a CUDA device, `tensorrt` tests need TensorRT and a GPU; both skip cleanly."""
import importlib.util
import os

import pytest


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _cuda_device_count_via_runtime() -> int:
    # A TensorRT host may have CPU-only torch; ask the CUDA runtime through cuda-python instead.
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            return 0
    err, count = cudart.cudaGetDeviceCount()
    return count if int(err) == 0 else 0


def _has_tensorrt() -> bool:
    if importlib.util.find_spec("tensorrt") is None:
        return False
    return _has_cuda() or _cuda_device_count_via_runtime() > 0


def pytest_collection_modifyitems(config, items):
    skip_gpu = None if _has_cuda() else pytest.mark.skip(reason="no CUDA device (tier 2 GPU test)")
    skip_trt = None if _has_tensorrt() else pytest.mark.skip(reason="TensorRT or GPU absent (tier 3 test)")
    for item in items:
        if skip_gpu and "gpu" in item.keywords:
            item.add_marker(skip_gpu)
        if skip_trt and "tensorrt" in item.keywords:
            item.add_marker(skip_trt)


@pytest.fixture(autouse=True, scope="session")
def _limit_threads():
    # CI has two cores; keep torch and onnxruntime from oversubscribing them.
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    try:
        import torch
        torch.set_num_threads(2)
    except ImportError:
        pass
    yield
