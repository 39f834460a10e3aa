"""libvosrt_plugins.so compiles without warnings against every TensorRT header set found on this machine.

TensorRT is not installed in CI; this test looks for headers in VOSRT_TRT_INCLUDE (os.pathsep-separated
include folders, e.g. the unpacked include/ of several TensorRT releases), $TensorRT_ROOT/include and the
usual install prefixes, and skips when there are none. libnvinfer and the CUDA kernels are not linked
(their symbols stay unresolved), so the library is compiled and its exports checked, never loaded.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "plugins" / "trt" / "src"
SOURCES = ["vosrt_trt_translate.cpp", "plugin_common.cpp", "d2conv3d_plugin.cpp", "l2_readout_plugin.cpp",
           "plugin_library.cpp"]


def _tensorrt_includes() -> list[Path]:
    candidates = [Path(p) for p in os.environ.get("VOSRT_TRT_INCLUDE", "").split(os.pathsep) if p]
    if os.environ.get("TensorRT_ROOT"):
        candidates.append(Path(os.environ["TensorRT_ROOT"]) / "include")
    candidates += [Path("/usr/include/x86_64-linux-gnu"), Path("/usr/include/aarch64-linux-gnu"),
                   Path("/usr/local/tensorrt/include"), Path("/opt/tensorrt/include")]
    found = []
    for path in candidates:
        if (path / "NvInfer.h").exists() and path.resolve() not in [f.resolve() for f in found]:
            found.append(path)
    return found


def _cuda_include() -> Path | None:
    for base in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if base and (Path(base) / "include" / "cuda_runtime_api.h").exists():
            return Path(base) / "include"
    return None


def _version(include: Path) -> str:
    text = (include / "NvInferVersion.h").read_text()
    parts = [re.search(rf"#define (?:TRT|NV_TENSORRT)_{name}(?:_ENTERPRISE)?\s+(\d+)", text) for name in
             ("MAJOR", "MINOR", "PATCH")]
    return ".".join(m.group(1) for m in parts if m) or "unknown"


INCLUDES = _tensorrt_includes()
pytestmark = pytest.mark.skipif(not INCLUDES, reason="no TensorRT headers found (set VOSRT_TRT_INCLUDE)")


def _toolchain() -> tuple[str, Path]:
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    cuda = _cuda_include()
    if compiler is None or cuda is None:
        pytest.skip("needs g++ and the CUDA runtime headers (TensorRT's headers include them)")
    return compiler, cuda


@pytest.fixture(scope="module", params=INCLUDES, ids=[_version(p) for p in INCLUDES])
def built(request, tmp_path_factory):
    """Compile every plugin source against one TensorRT header set and link libvosrt_plugins.so unlinked
    to libnvinfer: ``(trt_include, library, compiler results by source)``."""
    trt_include = request.param
    compiler, cuda = _toolchain()
    out = tmp_path_factory.mktemp("plugins-" + _version(trt_include))
    flags = ["-std=c++17", "-O1", "-Wall", "-Wextra", "-fPIC", "-fvisibility=hidden", "-fno-gnu-unique",
             "-isystem", str(trt_include), "-isystem", str(cuda), f"-I{ROOT / 'plugins' / 'kernels' / 'include'}"]

    def compile_one(name: str) -> tuple[str, subprocess.CompletedProcess]:
        obj = out / (name + ".o")
        return str(obj), subprocess.run([compiler, *flags, "-c", str(SRC / name), "-o", str(obj)],
                                        capture_output=True, text=True)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(SOURCES, pool.map(compile_one, SOURCES)))
    library = out / "libvosrt_plugins.so"
    if all(r.returncode == 0 for _, r in results.values()):
        subprocess.run([compiler, "-shared", "-o", str(library), *[obj for obj, _ in results.values()],
                        "-Wl,--unresolved-symbols=ignore-all"], check=True, capture_output=True, text=True)
    return trt_include, library, {name: r for name, (_, r) in results.items()}


def test_plugin_sources_compile_without_warnings(built):
    trt_include, _, results = built
    for name, result in results.items():
        assert result.returncode == 0, f"{name} against TensorRT {_version(trt_include)}:\n{result.stderr}"
        assert "warning" not in result.stderr, f"{name} against TensorRT {_version(trt_include)}:\n{result.stderr}"


def test_plugin_library_exports_only_the_loader_entry_points(built):
    _, library, _ = built
    if not library.exists() or shutil.which("nm") is None:
        pytest.skip("library not built or no nm")
    exported = subprocess.run(["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True).stdout
    names = {line.split()[-1] for line in exported.splitlines() if " T " in line}
    assert {"getCreators", "setLoggerFinder"} <= names
    # Everything else stays hidden so two copies of the library (one serialised into an engine) never
    # bind to each other's creators.
    assert not [n for n in names if "vosrt" in n.lower()]


@pytest.fixture(scope="module")
def host(built, tmp_path_factory):
    """tests/trt_plugin_host.cpp built against the same headers: a stand-in TensorRT process."""
    trt_include, library, _ = built
    if not library.exists():
        pytest.skip("library not built")
    compiler, cuda = _toolchain()
    exe = tmp_path_factory.mktemp("host") / "trt_plugin_host"
    subprocess.run([compiler, "-std=c++17", "-O0", "-rdynamic", "-Wno-deprecated-declarations", "-isystem",
                    str(trt_include), "-isystem", str(cuda), f"-I{ROOT / 'plugins' / 'kernels' / 'include'}",
                    str(Path(__file__).with_name("trt_plugin_host.cpp")), "-o", str(exe), "-ldl"],
                   check=True, capture_output=True, text=True)
    return exe, library


@pytest.mark.parametrize("auto_register", ["1", "0"])
def test_plugins_register_once_and_translate_fields_shapes_and_pointers_in_a_stand_in_host(host, auto_register):
    exe, library = host
    env = dict(os.environ, VOSRT_PLUGINS_AUTO_REGISTER=auto_register)
    mode = "registered" if auto_register == "1" else "unregistered"
    result = subprocess.run([str(exe), str(library), mode], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK 0 failure(s)" in result.stdout
