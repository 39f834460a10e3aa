"""libvosrt_plugins.so compiles without warnings against every TensorRT header set found on this machine.

TensorRT is not installed in CI; this test looks for headers in VOSRT_TRT_INCLUDE (os.pathsep-separated
include folders, e.g. the unpacked include/ of several TensorRT releases), $TensorRT_ROOT/include and the
usual install prefixes, and skips when there are none. libnvinfer and the CUDA kernels are not linked
(their symbols stay unresolved), so the library is compiled and its exports checked, never loaded.
``$VOSRT_TEST_CXXFLAGS`` (tests/kernel_build.py; e.g. sanitizer flags) is added to every compile and link.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "plugins" / "trt" / "src"
EXTRA = shlex.split(os.environ.get("VOSRT_TEST_CXXFLAGS", ""))  # e.g. -fsanitize=address,undefined
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
             "-isystem", str(trt_include), "-isystem", str(cuda), f"-I{ROOT / 'plugins' / 'kernels' / 'include'}",
             *EXTRA]

    def compile_one(name: str) -> tuple[str, subprocess.CompletedProcess]:
        obj = out / (name + ".o")
        return str(obj), subprocess.run([compiler, *flags, "-c", str(SRC / name), "-o", str(obj)],
                                        capture_output=True, text=True)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(SOURCES, pool.map(compile_one, SOURCES)))
    library = out / "libvosrt_plugins.so"
    if all(r.returncode == 0 for _, r in results.values()):
        subprocess.run([compiler, "-shared", *EXTRA, "-o", str(library), *[obj for obj, _ in results.values()],
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
    assert names == {"getCreators", "setLoggerFinder", "initVosrtPlugins"}
    # Everything else stays hidden so two copies of the library (one serialised into an engine) never
    # bind to each other's creators.


@pytest.fixture(scope="module")
def host(built, tmp_path_factory):
    """tests/trt_plugin_host.cpp built against the same headers: a stand-in TensorRT process."""
    trt_include, library, _ = built
    if not library.exists():
        pytest.skip("library not built")
    compiler, cuda = _toolchain()
    exe = tmp_path_factory.mktemp("host") / "trt_plugin_host"
    subprocess.run([compiler, "-std=c++17", "-O0", "-rdynamic", "-Wno-deprecated-declarations", *EXTRA, "-isystem",
                    str(trt_include), "-isystem", str(cuda), f"-I{ROOT / 'plugins' / 'kernels' / 'include'}",
                    str(Path(__file__).with_name("trt_plugin_host.cpp")), "-o", str(exe), "-ldl"],
                   check=True, capture_output=True, text=True)
    return exe, library


@pytest.mark.parametrize("auto_register", ["1", None], ids=["load-time-registration", "initVosrtPlugins"])
def test_plugins_register_once_and_translate_fields_shapes_and_pointers_in_a_stand_in_host(host, auto_register):
    exe, library = host
    env = {k: v for k, v in os.environ.items() if k != "VOSRT_PLUGINS_AUTO_REGISTER"}
    if auto_register:
        env["VOSRT_PLUGINS_AUTO_REGISTER"] = auto_register
    mode = "registered" if auto_register else "unregistered"
    result = subprocess.run([str(exe), str(library), mode], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK 0 failure(s)" in result.stdout


# ---- libvosrt_plugins_embed.so: the self-contained library `vosrt build --embed-plugins` serialises ----


@pytest.fixture(scope="module")
def embeddable(built):
    kernel_build = pytest.importorskip("kernel_build")
    return kernel_build.build_embeddable_plugins(built[0])


def _dynamic_section(library: Path) -> str:
    if shutil.which("readelf") is None:
        pytest.skip("readelf is not installed")
    return subprocess.run(["readelf", "-d", "-W", str(library)], capture_output=True, text=True, check=True).stdout


def test_embeddable_plugin_library_needs_neither_tensorrt_nor_the_cuda_runtime_nor_the_kernel_library(embeddable):
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", _dynamic_section(embeddable))
    assert needed, "readelf found no DT_NEEDED entries at all"
    for name in needed:
        assert not name.startswith(("libnvinfer", "libcudart", "libvosrt_kernels", "libcuda.")), needed


def test_embeddable_plugin_library_exports_only_the_loader_entry_points_and_uses_no_libnvinfer_symbol(embeddable):
    if shutil.which("nm") is None:
        pytest.skip("no nm")
    exported = subprocess.run(["nm", "-D", "--defined-only", str(embeddable)], capture_output=True, text=True).stdout
    names = {line.split()[-1] for line in exported.splitlines() if " T " in line}
    assert names == {"getCreators", "setLoggerFinder"}
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(embeddable)], capture_output=True, text=True).stdout
    for symbol in ("getPluginRegistry", "getLogger", "vosrtD2Conv3DForward", "cudaLaunchKernel"):
        assert symbol not in undefined, undefined


def test_both_plugin_libraries_record_the_tensorrt_headers_they_were_compiled_against(built, embeddable):
    from vosrt.sdk.backends.tensorrt import check_plugin_library_version, plugin_library_tensorrt_version
    from vosrt.sdk.errors import UserError

    trt_include, library, _ = built
    if not library.exists():
        pytest.skip("library not built")
    version = _version(trt_include)
    major = int(version.split(".")[0])
    for path in (library, embeddable):
        assert plugin_library_tensorrt_version(path) == version
        assert check_plugin_library_version(path, f"{major}.99.1") == version  # a later release of the major
        with pytest.raises(UserError, match=rf"TensorRT {re.escape(version)}, but this is TensorRT {major + 1}\.0"):
            check_plugin_library_version(path, f"{major + 1}.0.0")


def test_embeddable_plugin_library_hands_both_creators_to_tensorrt_and_registers_nothing(host, embeddable):
    exe, _ = host
    env = dict(os.environ, VOSRT_PLUGINS_AUTO_REGISTER="1")  # ignored: the variant has no load-time registration
    result = subprocess.run([str(exe), str(embeddable), "embedded"], capture_output=True, text=True, env=env,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK 0 failure(s)" in result.stdout


# ---- the plugins with the kernels' own code on host threads (libvosrt_kernels_emu.so), vs PyTorch ----


@pytest.fixture(scope="module")
def run_plugin(built, tmp_path_factory):
    """``run_plugin(name, fields, inputs, out_shape) -> array``: one plugin through TensorRT's call sequence
    in tests/trt_plugin_run.cpp, with libvosrt_plugins.so linked against the emulated kernels."""
    trt_include, library, _ = built
    if not library.exists():
        pytest.skip("library not built")
    kernel_build = pytest.importorskip("kernel_build")
    emulation = kernel_build.emulation_path()
    compiler, cuda = _toolchain()
    out = tmp_path_factory.mktemp("emulated")
    linked = out / "libvosrt_plugins.so"
    subprocess.run([compiler, "-shared", *EXTRA, "-o", str(linked), *sorted(str(p) for p in library.parent.glob("*.o")),
                    f"-L{emulation.parent}", "-l:" + emulation.name, f"-Wl,-rpath,{emulation.parent}",
                    "-Wl,--unresolved-symbols=ignore-all"], check=True, capture_output=True, text=True)
    exe = out / "trt_plugin_run"
    subprocess.run([compiler, "-std=c++17", "-O1", "-rdynamic", "-Wno-deprecated-declarations", *EXTRA, "-isystem",
                    str(trt_include), "-isystem", str(cuda), str(Path(__file__).with_name("trt_plugin_run.cpp")),
                    "-o", str(exe), "-ldl"], check=True, capture_output=True, text=True)
    counter = iter(range(10**6))

    def run(name: str, fields: dict, inputs: list, out_shape, dtype: str = "float", shared_limit=None,
            profile_min=()):
        """The output array; with ``shared_limit=(at build, at run)`` (bytes of shared memory per block of
        the emulated GPU), the run's stdout instead, whether or not it succeeded. ``profile_min``: ``(input,
        axis, size)`` triples, minima of the optimisation profile below the sizes run (default: those sizes)."""
        import numpy as np

        case = out / f"case{next(counter)}"
        case.mkdir()
        lines = [f"plugin {name}", f"dtype {dtype}"]
        for key, value in fields.items():
            if isinstance(value, float):
                lines.append(f"field {key} float {value!r}")
            else:
                lines.append(f"field {key} int " + " ".join(str(v) for v in np.atleast_1d(value)))
        for index, array in enumerate(inputs):
            path = case / f"in{index}.bin"
            np.ascontiguousarray(array, np.float32).tofile(path)
            lines.append(f"input {array.ndim} {' '.join(map(str, array.shape))} {path}")
        lines.append(f"output {len(out_shape)} {' '.join(map(str, out_shape))} {case / 'out.bin'}")
        if shared_limit is not None:
            lines.append(f"shared_limit {shared_limit[0]} {shared_limit[1]}")
        lines += [f"profile_min {index} {axis} {size}" for index, axis, size in profile_min]
        (case / "spec.txt").write_text("\n".join(lines) + "\n")
        result = subprocess.run([str(exe), str(linked), str(case / "spec.txt")], capture_output=True, text=True,
                                timeout=300)
        if shared_limit is not None:
            return result.stdout + result.stderr
        assert result.returncode == 0, result.stdout + result.stderr
        return np.fromfile(case / "out.bin", np.float32).reshape(out_shape)

    return run


def _close(actual, expected, rel=1e-4):
    import numpy as np

    scale = max(1.0, float(np.abs(expected).max()))
    assert np.abs(actual - expected).max() <= rel * scale, float(np.abs(actual - expected).max())


def _fill(inputs, has_m, has_b):
    """The present inputs back in X, D, M, Wt, B positions (None where absent)."""
    it = iter(inputs)
    x, d = next(it), next(it)
    m = next(it) if has_m else None
    w = next(it)
    b = next(it) if has_b else None
    return [x, d, m, w, b]


# kernel, stride, pads, dilations, group, (C, Cout), (T, H, W), has M, has B
D2_PLUGIN_CASES = {
    "all-inputs": ((3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 1, (3, 4), (3, 5, 6), True, True),
    "no-modulation": ((3, 3, 3), (1, 2, 2), (1, 1, 1), (1, 1, 1), 1, (2, 3), (3, 6, 5), False, True),
    "no-bias": ((1, 3, 3), (1, 1, 1), (0, 2, 2), (1, 2, 2), 2, (4, 2), (2, 5, 5), True, False),
    "three-inputs": ((3, 1, 3), (2, 1, 1), (1, 0, 1), (1, 1, 1), 1, (2, 2), (5, 3, 4), False, False),
}


@pytest.mark.parametrize("dtype", ["float", "half"])
@pytest.mark.parametrize("case", list(D2_PLUGIN_CASES.values()), ids=list(D2_PLUGIN_CASES))
def test_d2conv3d_plugin_with_emulated_kernels_matches_the_pytorch_reference(run_plugin, case, dtype):
    import numpy as np

    torch = pytest.importorskip("torch")
    from vosrt.training.ops.d2conv3d import d2conv3d, output_size

    kernel, stride, pads, dil, group, (c, cout), size, has_m, has_b = case
    g = torch.Generator().manual_seed(sum(size))
    out = output_size(size, kernel, stride, pads, dil)
    x = torch.randn(2, c, *size, generator=g)
    dilation = 0.5 + 1.5 * torch.rand(2, 3, *out, generator=g)
    modulation = torch.rand(2, kernel[0] * kernel[1] * kernel[2], *out, generator=g) if has_m else None
    weight = torch.randn(cout, c // group, *kernel, generator=g)
    bias = torch.randn(cout, generator=g) if has_b else None
    expected = d2conv3d(x.double(), dilation.double(), None if modulation is None else modulation.double(),
                        weight.double(), None if bias is None else bias.double(), stride=stride, padding=pads,
                        dilation_base=dil, groups=group, backend="torch")
    inputs = [t.numpy() for t in (x, dilation, modulation, weight, bias) if t is not None]
    fields = {"kernel_shape": kernel, "strides": stride, "pads": pads, "dilations": dil, "group": group}
    if dtype == "half":  # the reference sees the same fp16-rounded inputs
        inputs = [a.astype(np.float16).astype(np.float32) for a in inputs]
        expected = d2conv3d(*(None if a is None else torch.from_numpy(a).double() for a in _fill(inputs, has_m, has_b)),
                            stride=stride, padding=pads, dilation_base=dil, groups=group, backend="torch")
    actual = run_plugin("D2Conv3D", fields, inputs, tuple(expected.shape), dtype)
    _close(actual, expected.numpy(), rel=1e-4 if dtype == "float" else 1e-2)


@pytest.mark.parametrize("batch, top_k, scale, dtype", [(1, 20, 0.0, "float"), (1, 0, 0.0, "float"),
                                                        (2, 5, 0.3, "float"), (1, 20, 0.0, "half")])
def test_l2_readout_plugin_with_emulated_kernels_matches_the_pytorch_reference(run_plugin, batch, top_k, scale, dtype):
    torch = pytest.importorskip("torch")
    from vosrt.training.ops.l2_readout import l2_memory_readout

    g = torch.Generator().manual_seed(top_k)
    mem_key, query_key, mem_value = (torch.randn(batch, 16, 90, generator=g), torch.randn(batch, 16, 12, generator=g),
                                     torch.randn(batch, 6, 90, generator=g))
    if dtype == "half":  # the reference sees the same fp16-rounded inputs
        mem_key, query_key, mem_value = (t.half().float() for t in (mem_key, query_key, mem_value))
    expected = l2_memory_readout(mem_key.double(), query_key.double(), mem_value.double(), top_k=top_k,
                                 scale=scale or None, backend="torch")
    fields = {"top_k": top_k} if scale == 0.0 else {"top_k": top_k, "scale": scale}
    actual = run_plugin("L2MemoryReadout", fields, [mem_key.numpy(), query_key.numpy(), mem_value.numpy()],
                        tuple(expected.shape), dtype)
    _close(actual, expected.numpy(), rel=1e-4 if dtype == "float" else 1e-2)


def test_l2_readout_plugin_refuses_a_key_width_the_gpu_cannot_hold_at_build_and_says_why_at_run(run_plugin):
    # the plugin built an engine that failed every enqueue with "forward failed: not supported"; a block at
    # Ck = 256 in fp32 needs 149,760 bytes of shared memory (1 key stage), more than a 96 KB GPU has
    import numpy as np

    g = np.random.default_rng(0)
    inputs = [g.standard_normal((1, 256, 90), np.float32), g.standard_normal((1, 256, 12), np.float32),
              g.standard_normal((1, 6, 90), np.float32)]
    small, h200 = 96 * 1024, 227 * 1024
    why = ("(L2MemoryReadout): at key width Ck = 256 in fp32 a block of the readout needs 149760 bytes of shared "
           f"memory, and this GPU gives it {small}: run the model on a GPU with more shared memory per block, or "
           "with the onnxruntime backend")
    built_small = run_plugin("L2MemoryReadout", {"top_k": 20}, inputs, (1, 6, 12), shared_limit=(small, small))
    assert "FAIL configurePlugin failed" in built_small and why in built_small
    run_small = run_plugin("L2MemoryReadout", {"top_k": 20}, inputs, (1, 6, 12), shared_limit=(h200, small))
    assert "FAIL enqueue failed" in run_small and why in run_small and "forward failed" not in run_small
    assert "OK" in run_plugin("L2MemoryReadout", {"top_k": 20}, inputs, (1, 6, 12), shared_limit=(h200, h200))
    # in fp16 the key tiles take half the bytes: Ck = 256 fits the small GPU
    assert "OK" in run_plugin("L2MemoryReadout", {"top_k": 20}, inputs, (1, 6, 12), "half", shared_limit=(small, small))


@pytest.mark.parametrize("shortest", [20, 21])
def test_l2_readout_plugin_checks_the_all_n_kernel_at_build_where_the_profile_s_memory_reaches_it(run_plugin, shortest):
    # A memory of at most top_k entries runs the all-N kernel, whose blocks hold 7 KB more than the top-k kernel's.
    # configurePlugin checked the shared memory at the profile's largest shapes only (the top-k kernel), so an
    # engine whose profile starts at N <= top_k built on a GPU that holds the top-k kernel but not the all-N one,
    # and failed every enqueue of a short memory.
    import numpy as np

    g = np.random.default_rng(0)
    inputs = [g.standard_normal((1, 256, 90), np.float32), g.standard_normal((1, 256, 12), np.float32),
              g.standard_normal((1, 6, 90), np.float32)]
    top_k_fits = 149760 + 4 * 1024   # Ck = 256 in fp32: a top-k block needs 149,760 bytes, an all-N one 156,928
    out = run_plugin("L2MemoryReadout", {"top_k": 20}, inputs, (1, 6, 12), shared_limit=(top_k_fits, top_k_fits),
                     profile_min=[(0, 2, shortest), (2, 2, shortest)])
    if shortest > 20:   # the all-N kernel is never run: the engine builds and runs
        assert "OK" in out, out
    else:
        assert "FAIL configurePlugin failed" in out and "a block of the readout needs 156928 bytes" in out, out


@pytest.mark.parametrize("wheel_cuda", ["12", "13"])
def test_cmake_refuses_a_tensorrt_built_for_another_cuda_major_than_nvcc(tmp_path, wheel_cuda):
    """A pip-style TensorRT (tensorrt_libs/ beside its tensorrt_cuNN_libs dist-info) is checked against nvcc's
    major version at configure time; libnvinfer is only looked up, never loaded, so an empty file stands in."""
    from kernel_build import have_cmake_and_cxx, have_nvcc

    if not (have_cmake_and_cxx() and have_nvcc()):
        pytest.skip("needs cmake, a C++ compiler and nvcc")
    nvcc = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout
    nvcc_major = re.search(r"release (\d+)\.", nvcc).group(1)
    site = tmp_path / "site-packages"
    (site / "tensorrt_libs").mkdir(parents=True)
    (site / "tensorrt_libs" / "libnvinfer.so").write_bytes(b"")
    (site / f"tensorrt_cu{wheel_cuda}_libs-10.16.0.dist-info").mkdir()
    root = tmp_path / "trt"
    root.mkdir()
    (root / "include").symlink_to(INCLUDES[0].resolve())
    (root / "lib").symlink_to(site / "tensorrt_libs")
    done = subprocess.run(["cmake", "-S", str(ROOT / "plugins"), "-B", str(tmp_path / "build"),
                           f"-DTensorRT_ROOT={root}", "-DVOSRT_CUDA_ARCHS=80", "-DCMAKE_CUDA_ARCHITECTURES=80",
                           "-DVOSRT_BUILD_CPU_OPS=OFF", "-DVOSRT_BUILD_CPU_DRIVER=OFF", "-DVOSRT_BUILD_EMULATION=OFF"],
                          capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    if wheel_cuda == nvcc_major:
        assert done.returncode == 0, output[-3000:]
        assert f"TensorRT and nvcc agree on CUDA {wheel_cuda}" in output
    else:
        assert done.returncode != 0
        assert f"built for CUDA {wheel_cuda}, but nvcc is CUDA {nvcc_major}" in " ".join(output.split())
        assert f"pip install tensorrt-cu{nvcc_major}" in " ".join(output.split())


def test_cmake_finds_the_versioned_libnvinfer_of_a_pip_tensorrt(tmp_path):
    # The pip wheels' tensorrt_libs/ hold libnvinfer.so.10 and no unversioned libnvinfer.so: find_library(NAMES
    # nvinfer) missed it, and libvosrt_plugins was skipped ("libnvinfer not found") on such a TensorRT.
    from kernel_build import have_cmake_and_cxx, have_nvcc

    if not (have_cmake_and_cxx() and have_nvcc()):
        pytest.skip("needs cmake, a C++ compiler and nvcc")
    nvcc = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout
    nvcc_major = re.search(r"release (\d+)\.", nvcc).group(1)
    include = INCLUDES[0].resolve()
    major = re.search(r"define TRT_MAJOR_ENTERPRISE (\d+)", (include / "NvInferVersion.h").read_text()).group(1)
    site = tmp_path / "site-packages"
    (site / "tensorrt_libs").mkdir(parents=True)
    (site / "tensorrt_libs" / f"libnvinfer.so.{major}").write_bytes(b"")
    (site / f"tensorrt_cu{nvcc_major}_libs-{major}.0.0.dist-info").mkdir()
    root = tmp_path / "trt"
    root.mkdir()
    (root / "include").symlink_to(include)
    (root / "lib").symlink_to(site / "tensorrt_libs")
    done = subprocess.run(["cmake", "-S", str(ROOT / "plugins"), "-B", str(tmp_path / "build"),
                           f"-DTensorRT_ROOT={root}", "-DVOSRT_CUDA_ARCHS=80", "-DCMAKE_CUDA_ARCHITECTURES=80",
                           "-DVOSRT_BUILD_CPU_OPS=OFF", "-DVOSRT_BUILD_CPU_DRIVER=OFF", "-DVOSRT_BUILD_EMULATION=OFF"],
                          capture_output=True, text=True, timeout=300)
    output = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 0, output[-3000:]
    assert "libnvinfer not found" not in output
    assert f"TensorRT and nvcc agree on CUDA {nvcc_major}" in output
    cache = (tmp_path / "build" / "CMakeCache.txt").read_text()
    assert f"TensorRT_LIBRARY:FILEPATH={root}/lib/libnvinfer.so.{major}" in cache or \
        f"tensorrt_libs/libnvinfer.so.{major}" in cache, cache
