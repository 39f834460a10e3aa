"""Test tiers: `gpu` tests need a CUDA device, `tensorrt` tests need TensorRT and a GPU; both skip cleanly
where there is no GPU. Whether there is one is asked of the driver, not of torch."""
import ctypes
import importlib.util
import os
from functools import lru_cache

import pytest


def _torch_has_cuda() -> bool:
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


def _cuda_device_count_via_driver() -> int:
    # The driver itself (libcuda, installed with the GPU driver), with no Python package at all.
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if libcuda.cuInit(0) != 0 or libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


@lru_cache(maxsize=None)
def _gpu_present() -> bool:
    """Decided by the driver, not by torch: a GPU host whose torch lacks CUDA must not skip tier 2."""
    return _torch_has_cuda() or _cuda_device_count_via_runtime() > 0 or _cuda_device_count_via_driver() > 0


def _has_tensorrt() -> bool:
    if importlib.util.find_spec("tensorrt") is None:
        return False
    return _gpu_present()


MAX_WORKERS = 4   # beyond this the largest test file (tests/test_export.py), which one worker runs, sets the time


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    """A plain ``pytest`` spreads the test files over the CPU's cores (at most MAX_WORKERS) with pytest-xdist
    (in the ``dev`` extra): on CI's two cores that halves the run. ``-n 0`` (or ``-p no:xdist``) keeps one
    process, as do ``--pdb``, ``--collect-only``, an explicit ``-n N``, test ids (``FILE::TEST``) or a single
    test file on the command line, and a host without pytest-xdist."""
    if not config.pluginmanager.hasplugin("xdist") or hasattr(config, "workerinput"):
        return
    if (config.option.numprocesses is not None or config.getoption("usepdb", False)
            or config.getoption("collectonly", False)):
        return
    if any("::" in arg for arg in config.args) or (len(config.args) == 1 and config.args[0].endswith(".py")):
        return   # single tests or one file named: one worker would run them all, after the workers started
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = min(cores, MAX_WORKERS)
    if workers < 2:
        return
    config.option.numprocesses = workers
    if config.option.dist == "no":
        config.option.dist = "loadfile"   # a file's tests share its fixtures (module-scoped exports) in one worker


def pytest_configure(config):
    """Ctrl-C as a terminal sends it. A test run started in the background without job control (``cmd &`` in a
    script, ``nohup``) inherits an ignored SIGINT, and its workers and the processes the tests start inherit it
    too: the tests that send SIGINT then saw nothing happen ("DID NOT RAISE KeyboardInterrupt" in a `.ci/run`
    started that way)."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config, items):
    skip_gpu = None if _gpu_present() else pytest.mark.skip(reason="no CUDA device (tier 2 GPU test)")
    skip_trt = None if _has_tensorrt() else pytest.mark.skip(reason="TensorRT or GPU absent (tier 3 test)")
    for item in items:
        if skip_gpu and "gpu" in item.keywords:
            item.add_marker(skip_gpu)
        if skip_trt and "tensorrt" in item.keywords:
            item.add_marker(skip_trt)


@pytest.fixture(autouse=True)
def _gpu_tests_need_torch_with_cuda(request):
    # On a GPU host, a torch without CUDA fails the tier-2 tests loudly instead of skipping them.
    if "gpu" in request.keywords and _gpu_present() and not _torch_has_cuda():
        pytest.fail("a CUDA device is present (driver) but this torch has no CUDA: install a CUDA build of "
                    "torch to run the tier-2 tests")
    yield


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


@pytest.fixture(scope="session")
def stcn_package():
    """A tiny random-weight stcn package (portable form), exported once per session (tests/sdk_packages.py)."""
    from sdk_packages import tiny_package
    return tiny_package("stcn")


@pytest.fixture(scope="session")
def clip_package():
    """A tiny random-weight 3dc-seg package, exported once per session (tests/sdk_packages.py)."""
    from sdk_packages import tiny_package
    return tiny_package("3dc-seg")
