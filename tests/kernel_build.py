"""Builds plugins/ (the CUDA kernels, their CPU driver and host emulation) for the kernel tests, once
per session.

The build lives in plugins/build-test/ (git-ignored), so reruns only recompile what changed. It targets
one architecture, sm_80 SASS + compute_80 PTX: that keeps CI's compile short (2 cores) and still runs on
every GPU from sm_80 up (newer ones JIT the PTX).

``$VOSRT_TEST_CXXFLAGS`` (e.g. ``-fsanitize=address,undefined -fno-omit-frame-pointer -g``) adds host C++
compiler and linker flags to these builds (the host libraries: CPU driver, emulation, embeddable plugins'
host code; not nvcc's device code), which then go to a folder of their own,
``$VOSRT_TEST_BUILD_DIR`` or ``<tmp>/vosrt-build-test-<hash of the flags>``, outside plugins/ so that
no normal run ever finds an instrumented library there. docs/TESTING.md, "Sanitizers", shows the rest
(LD_PRELOAD of the sanitizer runtimes for Python).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"
BUILD_DIR = PLUGINS / "build-test"
TEST_ARCH = "80"
# Every core: 2 on CI; on a GPU machine this build is the kernel tests' fallback when gpu_check's failed.
JOBS = os.environ.get("VOSRT_TEST_JOBS") or str(os.cpu_count() or 2)
EXTRA_FLAGS = os.environ.get("VOSRT_TEST_CXXFLAGS", "").strip()


def _build_dir(name: str) -> Path:
    """plugins/<name>, or with $VOSRT_TEST_CXXFLAGS a folder outside the source tree for those flags."""
    if not EXTRA_FLAGS:
        return PLUGINS / name
    root = os.environ.get("VOSRT_TEST_BUILD_DIR")
    if not root:
        digest = hashlib.sha256(EXTRA_FLAGS.encode()).hexdigest()[:10]
        root = str(Path(tempfile.gettempdir()) / f"vosrt-build-test-{digest}")
    return Path(root) / name


@contextlib.contextmanager
def _only_one_build(build_dir: Path):
    """Holds an exclusive lock on ``build_dir`` while one process configures and builds it: the test run's
    workers (pytest -n) share the build folders, and a second cmake in a folder being built breaks both."""
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir.parent / f".{build_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _build_env() -> dict[str, str]:
    """The environment of the build commands: this one, less LD_PRELOAD (a sanitized test run preloads the
    sanitizer runtimes for Python; nvcc's front end crashes with them)."""
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if shutil.which("nvcc") is None:
        env["PATH"] = f"/usr/local/cuda/bin:{env.get('PATH', '')}"
    return env


def _flag_options() -> list[str]:
    """CMake options carrying $VOSRT_TEST_CXXFLAGS to the C++ compiler and the linker (none without it)."""
    if not EXTRA_FLAGS:
        return []
    return [f"-DCMAKE_CXX_FLAGS={EXTRA_FLAGS}", f"-DCMAKE_SHARED_LINKER_FLAGS={EXTRA_FLAGS}",
            f"-DCMAKE_EXE_LINKER_FLAGS={EXTRA_FLAGS}"]


def have_cmake_and_cxx() -> bool:
    return shutil.which("cmake") is not None and (shutil.which("c++") or shutil.which("g++")) is not None


def have_nvcc() -> bool:
    return shutil.which("nvcc") is not None or Path("/usr/local/cuda/bin/nvcc").is_file()


@lru_cache(maxsize=None)
def build(with_kernels: bool) -> tuple[Path, str]:
    """Configure and build plugins/ into BUILD_DIR; returns (kernels build folder, build log).

    Skips the calling test when cmake or a C++ compiler (or, with_kernels, nvcc) is missing.
    """
    if not have_cmake_and_cxx():
        pytest.skip("cmake or a C++ compiler is not installed")
    if with_kernels and not have_nvcc():
        pytest.skip("nvcc is not installed: the CUDA kernels cannot be compiled here")
    build_dir = _build_dir("build-test" if with_kernels else "build-test-cpu")
    env = _build_env()
    configure = ["cmake", "-S", str(PLUGINS), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                 f"-DVOSRT_BUILD_KERNELS={'ON' if with_kernels else 'OFF'}", "-DVOSRT_BUILD_TRT=OFF",
                 f"-DVOSRT_CUDA_ARCHS={TEST_ARCH}", f"-DCMAKE_CUDA_ARCHITECTURES={TEST_ARCH}", *_flag_options()]
    targets = ["vosrt_kernels_cpu", "vosrt_kernels_emu"] + (["vosrt_kernels"] if with_kernels else [])
    log = []
    with _only_one_build(build_dir):
        for cmd in (configure, ["cmake", "--build", str(build_dir), "-j", JOBS, "--target", *targets]):
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
            log.append(done.stdout + done.stderr)
            if done.returncode != 0:
                raise AssertionError(f"{' '.join(cmd)} failed:\n{log[-1][-4000:]}")
    return build_dir / "kernels", "\n".join(log)


def cpu_driver_path() -> Path:
    """libvosrt_kernels_cpu.so, built with the kernels when nvcc exists, else on its own."""
    folder, _ = build(with_kernels=have_nvcc())
    return folder / "libvosrt_kernels_cpu.so"


def emulation_path() -> Path:
    """libvosrt_kernels_emu.so (the fp32 kernels on host threads), built like the CPU driver."""
    folder, _ = build(with_kernels=have_nvcc())
    return folder / "libvosrt_kernels_emu.so"


@lru_cache(maxsize=None)
def build_embeddable_plugins(trt_include: Path) -> Path:
    """libvosrt_plugins_embed.so (the self-contained plugin library for --embed-plugins engines) built with
    CMake against the TensorRT headers in ``trt_include``; skips the caller without cmake, g++ or nvcc."""
    if not have_cmake_and_cxx():
        pytest.skip("cmake or a C++ compiler is not installed")
    if not have_nvcc():
        pytest.skip("nvcc is not installed: the embeddable plugin library compiles the kernels in")
    version = "".join(c if c.isalnum() else "-" for c in str(trt_include.resolve()))[-60:]
    build_dir = _build_dir(f"build-test-embed{version}")
    env = _build_env()
    configure = ["cmake", "-S", str(PLUGINS), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                 "-DVOSRT_BUILD_KERNELS=ON", "-DVOSRT_BUILD_TRT=ON", f"-DTensorRT_INCLUDE_DIR={trt_include}",
                 "-DVOSRT_BUILD_CPU_DRIVER=OFF", "-DVOSRT_BUILD_EMULATION=OFF",
                 f"-DVOSRT_CUDA_ARCHS={TEST_ARCH}", f"-DCMAKE_CUDA_ARCHITECTURES={TEST_ARCH}", *_flag_options()]
    with _only_one_build(build_dir):
        for cmd in (configure, ["cmake", "--build", str(build_dir), "-j", JOBS, "--target", "vosrt_plugins_embed"]):
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
            if done.returncode != 0:
                raise AssertionError(f"{' '.join(cmd)} failed:\n{(done.stdout + done.stderr)[-4000:]}")
            if "warning" in done.stdout.lower() + done.stderr.lower() and cmd is not configure:
                raise AssertionError(f"warnings building libvosrt_plugins_embed:\n{done.stdout + done.stderr}")
    return build_dir / "trt" / "libvosrt_plugins_embed.so"
