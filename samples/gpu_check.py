"""One-shot GPU validation of vosrt: build plugins/, run the GPU tests, benchmark, write a report.

    python samples/gpu_check.py OUT              # on a CUDA machine, within --budget (480 s)
    python samples/gpu_check.py OUT --dry-run    # anywhere: print the plan, run the CPU-side parts

Needs only what a bare CUDA machine has: PyTorch with CUDA, nvcc, CMake (CuPy, TensorRT and
onnxruntime-gpu are used when present and skipped, with a line saying so, when absent). No network.

Steps, each recorded in OUT/gpu_report.json and OUT/gpu_report.md (a failing step is recorded and the
others still run; the exit status is 1 when the build, a test or a benchmark failed). OUT holds at most
seven plain files: gpu_report.json, gpu_report.md, gpu_tests.xml, gpu_check.log (the build's and the tests'
output, written as they run) and one benchmark_<part>.json per benchmark (rewritten after each row).

1. environment: GPU, driver, CUDA runtime of torch, nvcc, CMake, optional packages.
2. build: ``cmake -S plugins -B plugins/build-gpu-check`` (``--build-dir``) for this GPU's architecture
   only, nvcc's warnings not made errors (``-DVOSRT_CUDA_WERROR=OFF``), with Ninja where there is no make:
   the CUDA kernels first, then the TensorRT plugins where their headers exist (the CPU driver, emulation and
   operators, which no GPU test uses, are left out); then whether the kernel library loads, and why not.
3. tests: ``pytest -m "gpu or tensorrt"`` on the test modules that hold such tests, against the libraries
   just built (never rebuilt by the tests: ``VOSRT_TEST_NO_BUILD``); each operator's kernel tests in a pytest
   process of their own (a kernel fault poisons its process's CUDA context), which fails where no test passed;
   a group past its time is interrupted (SIGINT, so pytest writes what ran) before it is killed; junit XML and
   pytest's log, written as it runs, in OUT. A module that cannot
   be imported because a package it needs is absent here (onnx, onnxruntime, pillow on a bare GPU
   machine) is named in the report and skipped, without failing the step; any other collection error
   fails it.
4. benchmarks, every figure a ratio of two timings taken in this run (per call, calls back to back; the
   median of single calls is kept in the JSON too):
   - L2MemoryReadout, fused kernel vs (a) the dense PyTorch reference (N×M affinity, top-k, softmax
     scattered back, one matmul) and (b) cuBLAS GEMM + torch.topk + gather (the repository's reference),
     at 5, 20 and 50 memory frames of 480p (N = frames × 30 × 54, M = 1,620, Ck = 64, Cv = 512), with
     1 and 4 objects (V = objects × 512), fp32 and fp16;
   - D2Conv3D fp32 and fp16 vs the PyTorch reference at the layers 3DC-Seg runs at 480p, with the peak
     memory of each call;
   - one STCN step at 480p (encode key, encode values, read a 20-frame memory, segment; published widths,
     random weights), PyTorch eager on the GPU, readout through the kernel vs the reference, per frame.
5. compute-sanitizer (where the toolkit has it): memcheck and racecheck, limited to vosrt's kernels, on small
   calls of every kernel path (``--sanitize-cases``: odd sizes, tile edges, N < top_k, the dense read, fp16,
   D2Conv3D's backward), with the time the benchmarks left; errors fail the check.

The check keeps to a time budget (``--budget``, 480 s: the 8 minutes its issue allows, with room under the 10
minutes a device session gives one command): each step's timeout is cut to what is left and kills the step's
whole process group, the report is rewritten after every step and every benchmark, and each benchmark runs in
a child process of its own with at most its share of the time left, so a crash or a hung kernel costs that
part only.

``--dry-run`` prints the plan, probes the environment, lists the GPU tests (collection only) and runs
every benchmark's reference path on the CPU at tiny shapes, then writes the report: CI runs it
(tests/test_gpu_check.py) so the script cannot rot before the first GPU meets it.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"
TESTS = ROOT / "tests"
TEST_MARKS = "gpu or tensorrt"
# The build lives in the checkout (git-ignored), not in OUT: OUT carries only the report and logs back.
DEFAULT_BUILD = PLUGINS / "build-gpu-check"
# Default time budget of the whole check (s): a device session runs one command for at most 10 minutes.
DEFAULT_BUDGET = 480
BENCHMARK_PARTS = ("readout", "d2conv3d", "stcn_step")

# Readout shapes at 480p: a 480×864 frame (480p padded to a multiple of 16) gives 30×54 at 1/16.
READOUT_FULL = dict(key_dim=64, hw=30 * 54, value_dim=512, frames=(5, 20, 50), objects=(1, 4), top_k=20)
READOUT_TINY = dict(key_dim=64, hw=6 * 8, value_dim=16, frames=(2,), objects=(1, 2), top_k=20)
# D2Conv3D layers of 3DC-Seg at 480p for an 8-frame clip: name, C, Cout, T, (H, W)
D2CONV_FULL = [("rf3.convFS1 1/16", 1024, 256, 2, (30, 54)), ("rf3 256->256 1/16", 256, 256, 2, (30, 54)),
               ("rf2.convFS1 1/8", 512, 256, 4, (60, 108)), ("rf2 256->256 1/8", 256, 256, 4, (60, 108))]
D2CONV_TINY = [("tiny 16->8", 16, 8, 2, (5, 6))]
STCN_FULL = dict(model="stcn", height=480, width=864, objects=2, memory_frames=20, frames=10)
STCN_TINY = dict(model="stcn-lite", height=64, width=64, objects=2, memory_frames=2, frames=2)
# The issue's targets, reported beside the measured ratios (never asserted anywhere).
TARGETS = {"readout_vs_gemm_topk_at_20_frames": 3.0, "d2conv3d_fp32_vs_reference": 3.0,
           "d2conv3d_fp16_vs_fp32": 1.5}


def say(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", flush=True)


_CHILDREN: set[subprocess.Popen] = set()  # running steps, killed with their process groups on SIGTERM
_STARTING = {"on": False, "pending": 0}     # a step's Popen under way; a signal seen meanwhile waits in pending


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL to the step's whole process group (cmake's nvcc jobs, not only cmake), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


def _run(cmd: list[str], timeout: float, env: dict | None = None, cwd: Path | None = None,
         log: Path | None = None, append: bool = False, tail: int = 3000, grace: float = 0.0) -> dict:
    """Runs cmd in a process group of its own, stdout and stderr interleaved into `log` (a file under OUT,
    written as the step runs, so it is there even if this script is killed) or a temporary file. Past
    `timeout` the whole group is killed (a timed-out build must not leave compilers running) and the
    status is 124. `append`: add to `log` instead of replacing it (output_tail is this step's only). `grace`:
    seconds between a SIGINT to the group at `timeout` and the kill (pytest then writes its junit XML of what
    ran; a SIGKILL leaves none)."""
    start = time.perf_counter()
    with (open(log, "a+b" if append else "w+b") if log else tempfile.TemporaryFile("w+b")) as sink:
        sink.seek(0, os.SEEK_END)
        begin = sink.tell()
        # A signal that lands while Popen is still returning (the child already exec'd, not yet in
        # _CHILDREN) is held until the child is registered, so _terminate always sees it.
        _STARTING["on"], proc, failed = True, None, None
        try:
            proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    cwd=cwd, start_new_session=True)
        except OSError as err:
            failed = err
        finally:
            _STARTING["on"] = False
        if proc is not None:
            _CHILDREN.add(proc)
        if _STARTING["pending"]:
            _terminate(_STARTING["pending"], None)
        if proc is None:
            return {"command": " ".join(cmd), "returncode": 127, "seconds": 0.0, "output_tail": str(failed)}
        try:
            code = proc.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            if grace > 0:
                try:
                    os.killpg(proc.pid, signal.SIGINT)
                    proc.wait(timeout=grace)
                except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
                    pass
            _kill_group(proc)   # the whole group, also where its leader ended on the SIGINT and left others
            code = 124
        finally:
            _CHILDREN.discard(proc)
        sink.seek(0, os.SEEK_END)
        sink.seek(max(begin, sink.tell() - max(tail, 12000)))
        output = sink.read().decode(errors="replace")
    if code == 124:
        output += f"\n(timed out after {timeout:.0f} s)"
    return {"command": " ".join(cmd), "returncode": code, "seconds": round(time.perf_counter() - start, 1),
            "output_tail": output[-tail:]}


def _terminate(signum, frame) -> None:
    """SIGTERM / SIGINT / SIGHUP: kill the running step's process group, then exit (the report written so far
    stays in OUT)."""
    if _STARTING["on"]:  # a step is being started: finish registering it, then come back here
        _STARTING["pending"] = signum
        return
    for proc in list(_CHILDREN):
        _kill_group(proc)
    raise SystemExit(128 + signum)


# ---------------------------------------------------------------------------------------------- 1


def probe_environment() -> dict:
    """Versions and devices; never fails (absent things are recorded as absent)."""
    env: dict = {"python": platform.python_version(), "platform": platform.platform(), "repo": str(ROOT)}
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_cuda_runtime"] = torch.version.cuda
        env["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            env["gpu"] = {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
                          "sms": props.multi_processor_count, "memory_gib": round(props.total_memory / 2**30, 1)}
    except ImportError:
        env["torch"] = None
        env["cuda_available"] = False
    smi = shutil.which("nvidia-smi")
    if smi:
        done = _run([smi, "--query-gpu=driver_version,name", "--format=csv,noheader"], 30)
        env["driver"] = done["output_tail"].strip().splitlines()[0] if done["returncode"] == 0 else None
    else:
        env["driver"] = None
    nvcc = find_nvcc()
    env["nvcc"], env["nvcc_path"] = None, nvcc
    if nvcc:
        match = re.search(r"release ([\d.]+)", _run([nvcc, "--version"], 30)["output_tail"])
        env["nvcc"] = match.group(1) if match else "unknown"
    cmake = find_tool("cmake")
    env["cmake_path"] = cmake
    env["cmake"] = _run([cmake, "--version"], 30)["output_tail"].split("\n")[0] if cmake else None
    env["make"], env["ninja"] = shutil.which("make"), shutil.which("ninja")
    for module in ("numpy", "pytest", "cupy", "tensorrt", "onnxruntime"):
        try:
            imported = __import__(module)
            env[module] = getattr(imported, "__version__", "present")
        except Exception:  # absent, or present but unusable here (no driver)
            env[module] = None
    if env.get("onnxruntime"):
        import onnxruntime

        env["onnxruntime_providers"] = onnxruntime.get_available_providers()
    env["tensorrt_headers"] = str(tensorrt_include()) if tensorrt_include() else None
    env["driver_note"] = driver_note(env.get("driver"), env.get("nvcc"))
    return env


# The oldest driver each CUDA major version's runtime runs on (NVIDIA's CUDA toolkit release notes, table 3):
# a library built by an nvcc newer than the driver loads, and then every CUDA call fails (cudaErrorInsufficientDriver).
MIN_DRIVER = {12: 525, 13: 580}


def driver_note(driver: str | None, nvcc: str | None) -> str | None:
    """A warning where the driver (nvidia-smi's "580.65.06, NVIDIA H100 ...") is older than nvcc's CUDA needs."""
    have = re.match(r"\s*(\d+)\.", driver or "")
    cuda = re.match(r"(\d+)\.", nvcc or "")
    need = MIN_DRIVER.get(int(cuda.group(1))) if cuda else None
    if have is None or need is None or int(have.group(1)) >= need:
        return None
    return (f"driver {driver.split(',')[0].strip()} is older than CUDA {cuda.group(1)} needs ({need} or newer): "
            f"kernels built by this nvcc {nvcc} load, then every call fails; put an nvcc of the driver's CUDA "
            "first on PATH (or CUDA_HOME)")


def find_tool(name: str) -> str | None:
    """A program on PATH, else beside this Python (a virtual environment's bin, pip's cmake or ninja, which
    need not be on PATH)."""
    found = shutil.which(name)
    if found:
        return found
    for folder in (Path(sys.executable).parent, Path(sys.prefix) / "bin"):
        if (folder / name).is_file() and os.access(folder / name, os.X_OK):
            return str(folder / name)
    return None


def find_nvcc() -> str | None:
    """nvcc on PATH, else under $CUDA_HOME, $CUDA_PATH, /usr/local/cuda or the newest /usr/local/cuda-*."""
    found = shutil.which("nvcc")
    if found:
        return found
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    homes += sorted((str(p) for p in Path("/usr/local").glob("cuda-*")),
                    key=lambda p: [int(n) for n in re.findall(r"\d+", p)], reverse=True)
    return next((str(Path(h) / "bin" / "nvcc") for h in homes if h and (Path(h) / "bin" / "nvcc").is_file()), None)


def tensorrt_include() -> Path | None:
    """A folder holding NvInfer.h: $TensorRT_ROOT/include, else the usual install prefixes."""
    roots = [Path(os.environ["TensorRT_ROOT"]) / "include"] if os.environ.get("TensorRT_ROOT") else []
    roots += [Path(p) for p in os.environ.get("VOSRT_TRT_INCLUDE", "").split(os.pathsep) if p]
    roots += [Path("/usr/include/x86_64-linux-gnu"), Path("/usr/include/aarch64-linux-gnu"),
              Path("/usr/local/tensorrt/include"), Path("/opt/tensorrt/include")]
    return next((r for r in roots if (r / "NvInfer.h").is_file()), None)


# ---------------------------------------------------------------------------------------------- 2


def cuda_architecture(env: dict) -> str:
    """CMake CUDA architecture of this GPU (SASS only: the build is for this machine), '80' without one."""
    capability = (env.get("gpu") or {}).get("compute_capability")
    return capability.replace(".", "") + "-real" if capability else "80-real"


class Deadline:
    """The time left of the check's budget; each step's timeout is cut to it."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self, reserve: float = 0.0) -> float:
        return self.end - time.monotonic() - reserve

    def timeout(self, cap: float, reserve: float = 0.0, floor: float = 30.0) -> float:
        """min(cap, what is left after `reserve`), but at least `floor` (a step too short to run is useless)."""
        return max(floor, min(cap, self.left(reserve)))

    def share(self, parts: int, reserve: float = 0.0, floor: float = 60.0) -> float:
        """The time of the next of `parts` steps still to run: an equal share of what is left after `reserve`,
        at least `floor` while that much is left (a step that would finish early leaves its time to the next)."""
        left = self.left(reserve)
        return min(left, max(left / parts, floor))


def cmake_generator(build_dir: Path) -> list[str]:
    """Ninja where CMake's default generator (Unix Makefiles) would find no make: a GPU image can carry CMake
    and ninja as Python packages without make, and the configure would then fail before compiling anything.
    [] (CMake's default) where make is there, $CMAKE_GENERATOR is set or build_dir was configured before (its
    generator cannot change)."""
    if (os.environ.get("CMAKE_GENERATOR") or shutil.which("make") or shutil.which("gmake")
            or (build_dir / "CMakeCache.txt").is_file()):
        return []
    ninja = find_tool("ninja")   # pip's ninja, in a virtual environment not on PATH
    if ninja is None:
        return []  # CMake then says that it found no build program
    return ["-G", "Ninja"] + ([] if shutil.which("ninja") else [f"-DCMAKE_MAKE_PROGRAM={ninja}"])


def build_commands(build_dir: Path, env: dict) -> list[list[str]]:
    arch = cuda_architecture(env)
    # nvcc's warnings stay warnings (in the log): one new in this machine's nvcc release must not cost the
    # kernels of a one-shot run. Without nvcc the rest (CPU driver, emulation, CPU operators) still builds.
    cmake = "cmake" if shutil.which("cmake") else env.get("cmake_path") or "cmake"   # found off PATH: its path
    # no GPU test uses the CPU driver, the emulation or the CPU operators: left out, they cost no build time and
    # cannot fail the build of what is checked here
    configure = [cmake, "-S", str(PLUGINS), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                 f"-DVOSRT_CUDA_ARCHS={arch}", f"-DCMAKE_CUDA_ARCHITECTURES={arch}", "-DVOSRT_CUDA_WERROR=OFF",
                 "-DVOSRT_BUILD_CPU_DRIVER=OFF", "-DVOSRT_BUILD_EMULATION=OFF", "-DVOSRT_BUILD_CPU_OPS=OFF",
                 *cmake_generator(build_dir)]
    if not env.get("nvcc"):
        configure.append("-DVOSRT_BUILD_KERNELS=OFF")
    include = tensorrt_include()
    if include is not None:
        configure.append(f"-DTensorRT_INCLUDE_DIR={include}")
        if os.environ.get("TensorRT_ROOT"):
            configure.append(f"-DTensorRT_ROOT={os.environ['TensorRT_ROOT']}")
    jobs = str(os.cpu_count() or 2)
    # The CUDA kernels first: a failure in another target (the host emulation, the CPU operators) then
    # still leaves them built for the tests and the benchmarks.
    kernels_first = [[cmake, "--build", str(build_dir), "-j", jobs, "--target", "vosrt_kernels"]] if env.get("nvcc") else []
    return [configure, *kernels_first, [cmake, "--build", str(build_dir), "-j", jobs]]


# nvcc's refusal of a host compiler newer than it knows ("unsupported GNU version! ... The nvcc flag
# '-allow-unsupported-compiler' can be used to override this version check")
_UNSUPPORTED_HOST = re.compile(r"unsupported (GNU|clang|Microsoft Visual Studio) version|-allow-unsupported-compiler")


def build_plugins(build_dir: Path, env: dict, dry_run: bool, deadline: Deadline, log: Path | None = None) -> dict:
    commands = build_commands(build_dir, env)
    result: dict = {"commands": [" ".join(c) for c in commands], "skipped": []}
    if tensorrt_include() is None:
        result["skipped"].append("TensorRT plugins: no NvInfer.h found (set TensorRT_ROOT to build them)")
    if env.get("nvcc") is None:
        result["skipped"].append("CUDA kernels: nvcc not found")
    for line in result["skipped"]:
        say(f"build: skipping {line}")
    if dry_run:
        result["status"] = "planned"
        return result
    if env.get("cmake") is None:
        result["status"] = "failed"
        result["error"] = "cmake not found"
        return result
    shell_env = dict(os.environ)
    for tool in ("nvcc", "cmake"):   # found off PATH: CMake looks for nvcc (and cmake for itself) on PATH
        if env.get(f"{tool}_path") and shutil.which(tool) is None:
            shell_env["PATH"] = f"{Path(env[f'{tool}_path']).parent}{os.pathsep}{shell_env.get('PATH', '')}"
    result["steps"] = []
    for position, cmd in enumerate(commands):
        # the configure's whole tail: CMake prints a failed compiler check's error well before its own end
        step = _run(cmd, deadline.timeout(900, reserve=240), env=shell_env, tail=12000 if position == 0 else 3000,
                    log=log, append=True)
        if position == 0 and step["returncode"] != 0 and _UNSUPPORTED_HOST.search(step["output_tail"]):
            # nvcc refuses this host compiler's version: configure once more, telling it to go ahead (CMake
            # keeps the failed compiler check in its cache, so that goes first)
            result["steps"].append(step)
            say("build: nvcc does not support this host compiler's version; configuring with "
                "-allow-unsupported-compiler")
            (build_dir / "CMakeCache.txt").unlink(missing_ok=True)
            shutil.rmtree(build_dir / "CMakeFiles", ignore_errors=True)
            step = _run(cmd + ["-DCMAKE_CUDA_FLAGS=-allow-unsupported-compiler"], deadline.timeout(900, reserve=240),
                        env=shell_env, log=log, append=True)
        result["steps"].append(step)
        say(f"build: {step['command'][:100]}... -> {step['returncode']} in {step['seconds']} s")
        if step["returncode"] != 0:
            result["status"] = "failed"
            break
    else:
        result["status"] = "ok"
    result["libraries"] = sorted(str(p.relative_to(build_dir)) for p in build_dir.glob("**/*.so"))
    result["kernels_load"] = load_check(built_kernels(build_dir))
    say(f"build: libvosrt_kernels.so {result['kernels_load']}")
    return result


def load_check(library: Path | None) -> str:
    """'loads', or why the kernel library cannot be opened (missing, or the loader's error)."""
    if library is None:
        return "not built"
    try:
        ctypes.CDLL(str(library))
    except OSError as err:
        return f"does not load: {err}"
    return "loads"


def built_kernels(build_dir: Path) -> Path | None:
    path = build_dir / "kernels" / "libvosrt_kernels.so"
    return path if path.is_file() else None


# ---------------------------------------------------------------------------------------------- 3


def gpu_test_files() -> list[str]:
    """Test modules that hold tier-2/3 tests (their source names the marks)."""
    return sorted(str(p) for p in TESTS.glob("test_*.py")
                  if re.search(r"pytest\.mark\.(gpu|tensorrt)\b", p.read_text(encoding="utf-8")))


# "No module named 'X'" (absent), "import of X halted; None in sys.modules" (blocked, as the tests do)
_MISSING_MODULE = re.compile(r"No module named '([\w.]+)'|import of ([\w.]+) halted")


def missing_package(error_text: str) -> str | None:
    """The third-party package whose absence a collection error reports, or None: a module of this
    repository (vosrt, a tests/ helper) that does not import is a bug, not a package missing here."""
    found = _MISSING_MODULE.findall(error_text)
    if not found:
        return None
    name = next(n for n in found[-1] if n)  # the last one: the exception that ended the import
    top = name.split(".")[0]
    if top == "vosrt" or (TESTS / f"{top}.py").is_file() or (ROOT / top).is_dir():
        return None
    return name


def junit_summary(path: Path) -> dict:
    """Counts, failed tests and, apart from them, the test modules that could not be imported because a
    package they need is not installed here ({module: reason}): those cost their own tests only and do
    not fail the check (a bare GPU machine has no onnx, onnxruntime or pillow)."""
    root = ElementTree.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    failed, unavailable = [], {}
    for case in root.iter("testcase"):
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        if problem is None:
            continue
        package = missing_package(problem.text or "") if problem.get("message") == "collection failure" else None
        if package is not None:
            unavailable[case.get("name")] = f"not importable here: needs {package}, which is not installed"
        else:
            failed.append(f"{case.get('classname')}::{case.get('name')}")
    total["tests"] -= len(unavailable)
    total["errors"] -= len(unavailable)
    total["passed"] = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    total["failed_tests"] = failed
    total["unavailable_modules"] = unavailable
    return total


def _test_command(xml: Path, files: list[str], *extra: str) -> list[str]:
    # --continue-on-collection-errors: a module that fails to import costs its own tests only; -p no:xdist: the
    # GPU tests run in one process (one GPU; their memory figures are per process), with or without pytest-xdist
    return [sys.executable, "-m", "pytest", "-m", TEST_MARKS, "-p", "no:cacheprovider", "-p", "no:xdist",
            f"--junitxml={xml}", "--continue-on-collection-errors", *extra, *files]


# The kernel tests of each operator run in a pytest process of their own: a kernel that faults (an illegal
# address, a misaligned access) leaves a sticky error in its process's CUDA context that fails every later
# CUDA call there, and would take the other operator's tests with it.
KERNEL_TESTS = "test_kernels_gpu.py"
KERNEL_TEST_GROUPS = (("D2Conv3D kernels", "d2conv3d"), ("L2MemoryReadout kernels", "not d2conv3d"))


def gpu_test_groups(files: list[str]) -> list[tuple[str, list[str], str | None]]:
    """(name, test files, -k expression or None) of each pytest process of the GPU tests."""
    kernel = [f for f in files if Path(f).name == KERNEL_TESTS]
    rest = [f for f in files if Path(f).name != KERNEL_TESTS]
    groups = [(name, kernel, keyword) for name, keyword in KERNEL_TEST_GROUPS] if kernel else []
    return groups + ([("other GPU and TensorRT tests", rest, None)] if rest else [])


def merge_junit(parts: list[Path], into: Path) -> None:
    """One junit XML of several pytest runs' XML files (their <testsuite> elements side by side)."""
    merged = ElementTree.Element("testsuites", name="gpu_check")
    for part in parts:
        root = ElementTree.parse(part).getroot()
        merged.extend([root] if root.tag == "testsuite" else list(root.iter("testsuite")))
    ElementTree.ElementTree(merged).write(into, encoding="utf-8", xml_declaration=True)


TEST_GRACE = 10.0   # seconds a timed-out pytest group has, after SIGINT, to write its junit XML before it is killed
LOG_NAME = "gpu_check.log"


def run_gpu_tests(out: Path, build_dir: Path, dry_run: bool, deadline: Deadline, env: dict | None = None) -> dict:
    if (env or {}).get("pytest", True) is None:
        say("tests: pytest is not installed in this Python: the GPU tests cannot run")
        return {"status": "failed", "error": f"pytest is not installed in {sys.executable}"}
    shell_env = dict(os.environ)
    shell_env["VOSRT_TEST_NO_BUILD"] = "1"   # the kernel tests use this build, or fail: never a build of their own
    kernels = built_kernels(build_dir)
    if kernels is not None:
        shell_env["VOSRT_KERNELS_LIB"] = str(kernels)
    trt_plugins = build_dir / "trt" / "libvosrt_plugins.so"
    if trt_plugins.is_file():
        shell_env["VOSRT_PLUGIN_LIB"] = str(trt_plugins)
    xml, log = out / "gpu_tests.xml", out / LOG_NAME
    xml.unlink(missing_ok=True)
    files = gpu_test_files()
    if dry_run:
        step = _run(_test_command(xml, files, "--collect-only", "-q"), deadline.timeout(300, reserve=60),
                    env=shell_env, cwd=ROOT, log=log, append=True)
        match = re.search(r"(\d+)(?:/\d+)? tests? collected", step["output_tail"])
        result = {"collected": int(match.group(1)) if match else 0, "command": step["command"],
                  "groups": [name for name, _, _ in gpu_test_groups(files)], "output_tail": step["output_tail"][-1500:]}
        summary = junit_summary(xml) if xml.is_file() else None
        if summary is not None:
            result.update(unavailable_modules=summary["unavailable_modules"], failed_tests=summary["failed_tests"])
        # rc 1 with nothing failed in the XML: only modules that need an absent package did not import
        ok = step["returncode"] == 0 or (summary is not None and step["returncode"] == 1 and not summary["failed_tests"])
        result["status"] = "collected" if ok else "failed"
        _say_unavailable(result)
        say(f"tests: {result['collected']} GPU/TensorRT tests collected (dry run: not run)")
        return result
    # what is left, less about 2.5 minutes kept for the benchmarks, shared among the groups
    window = Deadline(deadline.timeout(420, reserve=150))
    groups = gpu_test_groups(files)
    result: dict = {"groups": []}
    parts: list[Path] = []
    ok = True
    with tempfile.TemporaryDirectory() as scratch:
        for position, (name, group_files, keyword) in enumerate(groups):
            if window.left() < 10:
                result["groups"].append({"name": name, "error": "not run: the time budget (--budget) was spent"})
                ok = False
                say(f"tests: {name}: not run, out of time")
                continue
            part = Path(scratch) / f"part{position}.xml"
            # -v: the log names each test as it ends; -rfEs: and why one failed or was skipped
            cmd = _test_command(part, group_files, "-v", "-rfEs", *(["-k", keyword] if keyword else []))
            timeout = window.share(len(groups) - position)
            step = _run(cmd, max(timeout - TEST_GRACE, 10.0), env=shell_env, cwd=ROOT, log=log, append=True,
                        grace=TEST_GRACE)
            group = {"name": name, "command": step["command"], "returncode": step["returncode"],
                     "seconds": step["seconds"], "output_tail": step["output_tail"][-1500:]}
            summary = None
            if part.is_file():
                parts.append(part)
                merge_junit(parts, xml)  # after every group: a kill of this script keeps what ran
                summary = junit_summary(part)
                failed = summary["failed_tests"]
            else:
                failed = None
                group["error"] = (f"pytest ended with status {step['returncode']} without its XML report "
                                  f"(crashed, or killed past its time; see {LOG_NAME})")
            if step["returncode"] == 124:
                group["error"] = f"out of time after {step['seconds']} s: the tests that ran are in the XML"
            # 0: all passed; 5: nothing selected; 1 with nothing failed in the XML: only unavailable modules
            group_ok = failed == [] and step["returncode"] in (0, 1, 5)
            if group_ok and keyword is not None and summary is not None and summary["passed"] == 0:
                # the kernels' tests on a GPU: all skipped means nothing was checked (why: -rs in the log)
                group_ok = False
                group["error"] = f"no test passed: every one was skipped (the reasons are in {LOG_NAME})"
            ok = ok and group_ok
            result["groups"].append(group)
            say(f"tests: {name}: {'ok' if group_ok else 'FAILED'} (status {step['returncode']}) in {step['seconds']} s")
    if xml.is_file():
        result.update(junit_summary(xml))
    result["status"] = "ok" if ok and groups else "failed"
    errors = [f"{g['name']}: {g['error']}" for g in result["groups"] if "error" in g]
    if errors:
        result["error"] = "; ".join(errors)
    _say_unavailable(result)
    say(f"tests: {result.get('passed', '?')} passed, {result.get('failures', '?')} failed, "
        f"{result.get('errors', '?')} errors, {result.get('skipped', '?')} skipped")
    return result


def _say_unavailable(result: dict) -> None:
    for module, reason in result.get("unavailable_modules", {}).items():
        say(f"tests: skipping {module}: {reason}")


# ---------------------------------------------------------------------------------------------- 4


@dataclass
class Timing:
    ms: float               # per call, back to back: `repeat` calls between one pair of CUDA events
    call_ms: float          # median of single calls, each from an idle GPU (host launch overhead included)
    peak_mib: float | None  # device memory one call allocates beyond its inputs (None on the CPU)


def measure(fn: Callable[[], object], device: str, repeat: int, warmup: int = 2) -> Timing:
    """fn()'s time per call back to back (the ratios use it: the GPU kept busy, as in a stream of frames),
    the median of single calls, and its peak extra memory; wall clock on the CPU."""
    import torch

    for _ in range(warmup):
        fn()
    if device != "cuda":
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        median = statistics.median(times)
        return Timing(median, median, None)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeat):
        fn()
    end.record()
    torch.cuda.synchronize()
    return Timing(start.elapsed_time(end) / repeat, statistics.median(times), peak)


def kernel_skip_reason(device: str) -> str | None:
    """None where the kernels can be measured, else why not (for the report)."""
    if device != "cuda":
        return "skipped: benchmarks run on the CPU (no CUDA device, or --dry-run)"
    from vosrt.training.ops import cuda_kernels

    cuda_kernels._library.cache_clear()
    reason = cuda_kernels.unavailable_reason()
    return None if reason is None else f"skipped: {reason}"


def kernels_usable(device: str) -> bool:
    return kernel_skip_reason(device) is None


def dense_readout(mem_key, query_key, mem_value, top_k, scale):
    """STCN's dense read: the whole N×M affinity, top-k, softmax scattered back into N×M, one matmul."""
    import torch

    from vosrt.training.ops.l2_readout import l2_affinity

    affinity = l2_affinity(mem_key, query_key, scale)  # [B, N, M]
    values, index = torch.topk(affinity, top_k, dim=1)
    weights = torch.zeros_like(affinity).scatter_(1, index, torch.softmax(values, dim=1))
    return torch.bmm(mem_value, weights)  # [B, V, M]


def _row_error(err: BaseException) -> str:
    """A benchmark row's failure in one line (the row's other figures are what was measured before it)."""
    return f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"[:300]


def bench_readout(device: str, shapes: dict, repeat: int, emit: Callable[[list], None] | None = None) -> list[dict]:
    """The readout's rows; ``emit`` gets the rows so far after each (a later row that crashes or hangs its
    process keeps them). A row that raises records its error and the next row runs."""
    import torch

    skip = kernel_skip_reason(device)
    ck, hw, top_k = shapes["key_dim"], shapes["hw"], shapes["top_k"]
    scale = ck ** -0.5
    dtypes = {"fp32": torch.float32, "fp16": torch.float16} if device == "cuda" else {"fp32": torch.float32}
    rows = []
    for dtype_name, dtype in dtypes.items():
        for frames in shapes["frames"]:
            for objects in shapes["objects"]:
                n, v = frames * hw, objects * shapes["value_dim"]
                g = torch.Generator(device=device).manual_seed(frames * 10 + objects)
                mem_key = torch.randn(1, ck, n, device=device, generator=g).to(dtype)
                query_key = torch.randn(1, ck, hw, device=device, generator=g).to(dtype)
                mem_value = torch.randn(1, v, n, device=device, generator=g).to(dtype)
                args = (mem_key, query_key, mem_value, top_k, scale)
                row = {"dtype": dtype_name, "frames": frames, "objects": objects, "N": n, "M": hw, "V": v}
                try:
                    _readout_row(row, args, device, repeat, skip)
                except Exception as err:   # a kernel error, out of memory: this row only
                    row["error"] = _row_error(err)
                rows.append(row)
                if emit is not None:
                    emit(rows)
                del mem_key, query_key, mem_value, args
                if device == "cuda":
                    torch.cuda.empty_cache()
    return rows


def _readout_row(row: dict, args: tuple, device: str, repeat: int, skip: str | None) -> None:
    """One row's timings and accuracy, into ``row`` as they are measured."""
    import torch

    from vosrt.training.ops import cuda_kernels
    from vosrt.training.ops.l2_readout import l2_memory_readout

    top_k, scale = args[3], args[4]
    with torch.no_grad():
        dense = measure(lambda: dense_readout(*args), device, repeat)
        row.update(dense_ms=dense.ms, dense_call_ms=dense.call_ms, dense_peak_mib=dense.peak_mib)
        gemm = measure(lambda: l2_memory_readout(*args, backend="torch"), device, repeat)
        row.update(gemm_topk_gather_ms=gemm.ms, gemm_topk_gather_call_ms=gemm.call_ms,
                   gemm_topk_gather_peak_mib=gemm.peak_mib)
        if skip is not None:
            row["kernel"] = skip
            return
        fused = measure(lambda: cuda_kernels.l2_memory_readout(*args), device, repeat)
        row.update(kernel_ms=fused.ms, kernel_call_ms=fused.call_ms, kernel_peak_mib=fused.peak_mib,
                   vs_dense=dense.ms / fused.ms, vs_gemm_topk_gather=gemm.ms / fused.ms)
        # against float32 on the same (rounded) inputs: the kernel scores in float32
        expected = l2_memory_readout(*(t.float() for t in args[:3]), top_k, scale, backend="torch")
        actual = cuda_kernels.l2_memory_readout(*args).float()
        per_query = (actual - expected).abs().amax(dim=1)  # [B, M]
        row.update(max_abs_diff=float(per_query.max()),
                   # a query off by more than fp16 rounds: another top-k (a near-tie) or a bug
                   queries_off=int((per_query > 1e-2 * float(expected.abs().max())).sum()))


def bench_d2conv3d(device: str, layers: list, repeat: int, emit: Callable[[list], None] | None = None) -> list[dict]:
    """The D2Conv3D rows; ``emit`` and a row's error as in :func:`bench_readout`."""
    import torch

    skip = kernel_skip_reason(device)
    dtypes = {"fp32": torch.float32, "fp16": torch.float16} if device == "cuda" else {"fp32": torch.float32}
    rows = []
    for layer, cin, cout, frames, (h, w) in layers:
        kernel_ms = {}
        for dtype_name, dtype in dtypes.items():
            row = {"layer": layer, "dtype": dtype_name, "x_shape": [1, cin, frames, h, w], "cout": cout}
            try:
                g = torch.Generator(device=device).manual_seed(cin + frames)
                x = torch.randn(1, cin, frames, h, w, device=device, generator=g).to(dtype)
                dilation = (1 + torch.rand(1, 3, frames, h, w, device=device, generator=g)).to(dtype)
                modulation = torch.rand(1, 27, frames, h, w, device=device, generator=g).to(dtype)
                weight = (torch.randn(cout, cin, 3, 3, 3, device=device, generator=g) * 0.02).to(dtype)
                bias = torch.randn(cout, device=device, generator=g).to(dtype)
                _d2conv3d_row(row, (x, dilation, modulation, weight, bias), device, repeat, skip)
                if "kernel_ms" in row:
                    kernel_ms[dtype_name] = row["kernel_ms"]
            except Exception as err:   # a kernel error, out of memory: this row only
                row["error"] = _row_error(err)
            rows.append(row)
            if "fp16" in kernel_ms and "fp32" in kernel_ms and dtype_name == "fp16":
                row["fp16_vs_fp32"] = kernel_ms["fp32"] / kernel_ms["fp16"]
            if emit is not None:
                emit(rows)
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


def _d2conv3d_row(row: dict, args: tuple, device: str, repeat: int, skip: str | None) -> None:
    import torch

    from vosrt.training.ops import cuda_kernels
    from vosrt.training.ops.d2conv3d import d2conv3d

    cout, (_, cin, frames, h, w) = row["cout"], row["x_shape"]
    with torch.no_grad():
        ref = measure(lambda: d2conv3d(*args, 1, 1, 1, 1, backend="torch"), device, repeat)
        row.update(reference_ms=ref.ms, reference_call_ms=ref.call_ms, reference_peak_mib=ref.peak_mib)
        if skip is not None:
            row["kernel"] = skip
            return
        run = lambda: cuda_kernels.d2conv3d(*args, (1,) * 3, (1,) * 3, (1,) * 3, 1)  # noqa: E731
        kernel = measure(run, device, repeat)
        row.update(kernel_ms=kernel.ms, kernel_call_ms=kernel.call_ms, kernel_peak_mib=kernel.peak_mib,
                   vs_reference=ref.ms / kernel.ms, tflops=2.0 * cout * cin * 27 * frames * h * w / kernel.ms / 1e9)
        expected = d2conv3d(*args, 1, 1, 1, 1, backend="torch").float()
        row["max_rel_diff"] = float((run().float() - expected).abs().max() / expected.abs().max())


def bench_stcn_step(device: str, shape: dict, repeat: int, emit: Callable[[dict], None] | None = None) -> dict:
    """Per-frame time of one STCN step (encode key, encode values, read the memory, segment); ``emit`` gets the
    result after the reference's timing, and a kernel's error is recorded in it."""
    import torch

    from vosrt.training.models import build_model
    from vosrt.training.ops.l2_readout import l2_memory_readout

    model = build_model(shape["model"]).to(device).eval()
    g = torch.Generator(device=device).manual_seed(0)
    frame = torch.randn(1, 3, shape["height"], shape["width"], device=device, generator=g)
    masks = torch.rand(shape["objects"], 1, shape["height"], shape["width"], device=device, generator=g)
    objects = shape["objects"]
    with torch.inference_mode():
        key, _, f16, _, _ = model.encode_key(frame)
        value = model.encode_value(frame, f16, masks)  # [O, Cv, h, w]
        mem_key = key.flatten(2).repeat(1, 1, shape["memory_frames"])  # [1, Ck, frames·h·w]
        # each memory frame its own: copies of one frame would make every query's top-k a run of exact ties
        mem_key = mem_key + 0.1 * mem_key.std() * torch.randn(mem_key.shape, device=device, generator=g)
        mem_value = value.flatten(2).reshape(1, -1, key.shape[2] * key.shape[3]).repeat(1, 1, shape["memory_frames"])

    def step(readout_backend: str):
        key, f16_thin, f16, f8, f4 = model.encode_key(frame)
        model.encode_value(frame, f16, masks)
        readout = l2_memory_readout(mem_key, key.flatten(2), mem_value, top_k=20, backend=readout_backend)
        return model.segment(readout.view(objects, -1, *key.shape[-2:]), f16_thin, f8, f4)

    result = {**shape, "N": int(mem_key.shape[2]), "device": device}
    with torch.inference_mode():
        reference = measure(lambda: step("torch"), device, repeat, warmup=1)
        result["reference_readout_ms_per_frame"] = reference.ms
        if emit is not None:
            emit(result)
        skip = kernel_skip_reason(device)
        if skip is None:
            try:
                kernel = measure(lambda: step("auto"), device, repeat, warmup=1)
                result["kernel_readout_ms_per_frame"] = kernel.ms
                result["speedup"] = reference.ms / kernel.ms
            except Exception as err:
                result["kernel"] = f"failed: {_row_error(err)}"
        else:
            result["kernel"] = skip
    return result


def benchmark_part(name: str, device: str, repeat: int, emit: Callable | None = None):
    """One benchmark, run in this process: 480p shapes on the GPU, tiny ones on the CPU. ``emit``: called with
    the result so far as it grows (the child writes it to its result file each time)."""
    full = device == "cuda"
    if name == "readout":
        return bench_readout(device, READOUT_FULL if full else READOUT_TINY, repeat, emit)
    if name == "d2conv3d":
        return bench_d2conv3d(device, D2CONV_FULL if full else D2CONV_TINY, repeat, emit)
    return bench_stcn_step(device, STCN_FULL if full else STCN_TINY, repeat, emit)


def write_text(path: Path, text: str) -> None:
    """``text`` to ``path`` through a temporary name, then renamed: a kill mid-write leaves the previous file whole."""
    part = path.with_name(path.name + ".part")
    part.write_text(text)
    os.replace(part, path)


def write_json(path: Path, value) -> None:
    write_text(path, json.dumps(value, indent=2, default=str) + "\n")


def run_child(cmd: list[str], result_file: Path, timeout: float) -> dict | list:
    """Runs cmd, which writes its JSON result to result_file: that result, or {"error": ...} saying how the
    child ended (a crash, a hang past timeout or an exception), so one failure costs one part only."""
    result_file.unlink(missing_ok=True)
    step = _run(cmd, timeout, cwd=ROOT)
    found = json.loads(result_file.read_text()) if result_file.is_file() else None
    if step["returncode"] == 0 and found is not None:
        return found
    tail = step["output_tail"].strip().splitlines()[-12:]
    failure = {"error": f"exit status {step['returncode']} after {step['seconds']} s", "output_tail": tail}
    if isinstance(found, list) and found:   # the rows measured before the child crashed or ran out of time
        return found + [{"error": _failure(failure), "after": "the rows above"}]
    if isinstance(found, dict):
        return {**found, "kernel": f"not measured: {_failure(failure)}"} if "kernel" not in found else found
    return failure


def benchmark_failed(result) -> bool:
    """A benchmark's result that records a failure: the child's own, a row's, or the STCN kernel's."""
    if isinstance(result, list):
        return any("error" in row for row in result)
    if isinstance(result, dict):
        return "error" in result or str(result.get("kernel", "")).startswith(("failed", "not measured"))
    return False


def run_benchmarks(out: Path, device: str, repeat: int, deadline: Deadline,
                   progress: Callable[[dict], None] | None = None) -> dict:
    """Each benchmark in a child process of its own (a crashed context or a hung kernel is recorded and
    the next benchmark still runs), within what is left of the budget: a part may take its share of what
    is left (at least a minute), so one that hangs cannot starve the ones after it. ``progress`` gets the
    results so far after each part (the caller rewrites the report)."""
    results: dict = {"device": device}
    for position, name in enumerate(BENCHMARK_PARTS):
        if deadline.left() < 20:
            results[name] = {"error": "not run: the time budget (--budget) was spent"}
            say(f"benchmark {name}: not run, out of time")
            continue
        result_file = out / f"benchmark_{name}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--benchmark", name, "--device", device,
               "--repeat", str(repeat), "--result", str(result_file)]
        timeout = deadline.share(len(BENCHMARK_PARTS) - position, reserve=5)
        result = results[name] = run_child(cmd, result_file, timeout)
        failed = benchmark_failed(result)
        said = result["error"] if isinstance(result, dict) and "error" in result else "a row or the kernel failed"
        say(f"benchmark {name}: {'failed, ' + said if failed else 'done'}")
        if progress is not None:
            progress(results)
    return results


# ---------------------------------------------------------------------------------------------- 5

SANITIZER_TOOLS = ("memcheck", "racecheck")
SANITIZER_EXIT = 99   # compute-sanitizer's exit status where it found errors (--error-exitcode)


def find_sanitizer(env: dict) -> str | None:
    """compute-sanitizer on PATH, else beside nvcc or under $CUDA_HOME (the toolkit installs it with nvcc)."""
    found = find_tool("compute-sanitizer")
    if found:
        return found
    folders = [Path(env["nvcc_path"]).parent] if env.get("nvcc_path") else []
    folders += [Path(h) / "bin" for h in (os.environ.get("CUDA_HOME"), "/usr/local/cuda") if h]
    return next((str(f / "compute-sanitizer") for f in folders if (f / "compute-sanitizer").is_file()), None)


READOUT_SANITIZE_CASES = ((64, 256, 64, 32, 20), (63, 1001, 77, 40, 8), (16, 10, 33, 8, 20), (64, 500, 130, 16, 0))
D2CONV_SANITIZE_CASES = ((12, 10, 3, 9, 11, 1), (32, 64, 2, 17, 6, 2))


def sanitize_dtypes(device: str) -> tuple[str, ...]:
    """The torch dtypes :func:`sanitize_cases` runs every case in on ``device`` (fp16 on CUDA only)."""
    return ("float32", "float16") if device == "cuda" else ("float32",)


def sanitize_case_count(device: str) -> int:
    """How many cases :func:`sanitize_cases` runs on ``device``."""
    return len(sanitize_dtypes(device)) * (len(READOUT_SANITIZE_CASES) + len(D2CONV_SANITIZE_CASES))


def sanitize_cases(device: str) -> list[str]:
    """Small calls of every kernel path, for compute-sanitizer to watch (odd sizes, tile edges, N < top_k, the
    dense path, fp16, D2Conv3D's backward); returns one line per case (an exception is a line too, not the end)."""
    import torch

    from vosrt.training.ops import cuda_kernels

    done = []
    g = torch.Generator(device=device).manual_seed(0)
    for dtype in (getattr(torch, name) for name in sanitize_dtypes(device)):
        # (Ck, N, M, V, top_k): tiles met exactly, odd Ck and sizes off the tiles, N < top_k, the dense path
        for ck, n, m, v, top_k in READOUT_SANITIZE_CASES:
            name = f"readout {str(dtype)[6:]} Ck={ck} N={n} M={m} V={v} top_k={top_k}"
            try:
                mk, qk = (torch.randn(2, ck, size, device=device, generator=g).to(dtype) for size in (n, m))
                mv = torch.randn(2, v, n, device=device, generator=g).to(dtype)
                out = cuda_kernels.l2_memory_readout(mk, qk, mv, top_k, ck ** -0.5)
                done.append(f"{name}: ok, {tuple(out.shape)}")
            except Exception as err:
                done.append(f"{name}: {_row_error(err)}")
        # (C, Cout, T, H, W, groups): D2Conv3D forward and backward, a frame off every tile, two groups
        for c, cout, t, h, w, groups in D2CONV_SANITIZE_CASES:
            name = f"d2conv3d {str(dtype)[6:]} C={c} Cout={cout} {t}x{h}x{w} groups={groups}"
            try:
                def leaf(*shape, low=0.0):
                    return (low + torch.rand(*shape, device=device, generator=g)).to(dtype).requires_grad_()
                x = leaf(1, c, t, h, w, low=-0.5)
                dilation, modulation = leaf(1, 3, t, h, w, low=0.5), leaf(1, 27, t, h, w)
                weight, bias = leaf(cout, c // groups, 3, 3, 3, low=-0.5), leaf(cout)
                y = cuda_kernels.d2conv3d(x, dilation, modulation, weight, bias, (1, 1, 1), (1, 1, 1), (1, 1, 1), groups)
                y.float().square().sum().backward()
                done.append(f"{name}: ok, forward and backward")
            except Exception as err:
                done.append(f"{name}: {_row_error(err)}")
    if device == "cuda":
        torch.cuda.synchronize()
    return done


SANITIZER_MIN_SECONDS = 60   # a tool is started only with this much of the budget left (torch starts slowly under it)


def run_sanitizer(env: dict, dry_run: bool, deadline: Deadline, log: Path | None = None) -> dict:
    """compute-sanitizer's memcheck and racecheck on :func:`sanitize_cases`, limited to vosrt's kernels, with the
    time the benchmarks left. A tool that found errors, crashed, or ran fewer cases than planned (the child writes
    them to a file) fails the step; one the budget left no time for, or stopped, is said so and fails nothing."""
    sanitizer = find_sanitizer(env)
    if sanitizer is None:
        return {"status": "skipped: compute-sanitizer not found (it comes with the CUDA toolkit, beside nvcc)"}
    child = [sys.executable, str(Path(__file__).resolve()), "--sanitize-cases"]
    if dry_run:
        return {"status": "planned", "commands": [" ".join([sanitizer, "--tool", t, "...", *child]) for t in SANITIZER_TOOLS]}
    result: dict = {"status": "ok", "tools": {}}
    for tool in SANITIZER_TOOLS:
        if deadline.left() < SANITIZER_MIN_SECONDS:
            result["tools"][tool] = {"status": "not run: the time budget (--budget) was spent"}
            continue
        base = [sanitizer, "--tool", tool, "--error-exitcode", str(SANITIZER_EXIT), "--print-limit", "20"]
        with tempfile.TemporaryDirectory() as scratch:
            cases_file = Path(scratch) / "cases.json"
            cases = child + ["--result", str(cases_file)]
            step = _run(base + ["--kernel-name", "kns=vosrt"] + cases, min(deadline.left(5), 150), cwd=ROOT, log=log,
                        append=True)
            if step["returncode"] not in (0, SANITIZER_EXIT, 124) and "kernel-name" in step["output_tail"]:
                # a compute-sanitizer that does not take the filter: every kernel checked, torch's too (slower)
                step = _run(base + cases, min(deadline.left(5), 150), cwd=ROOT, log=log, append=True)
            ran = json.loads(cases_file.read_text()) if cases_file.is_file() else {"cases": [], "planned": None}
        summary = re.findall(r"(?:ERROR|RACECHECK) SUMMARY: .*", step["output_tail"])
        found = [line.strip() for line in step["output_tail"].splitlines() if line.strip().startswith("=========")]
        case_lines = ran["cases"]
        verdict = ("ok" if step["returncode"] == 0 else "ERRORS" if step["returncode"] == SANITIZER_EXIT
                   else "stopped at the time budget" if step["returncode"] == 124 else "did not finish")
        if verdict == "ok" and (ran["planned"] is None or len(case_lines) < ran["planned"]):
            verdict = f"ran {len(case_lines)} of {ran['planned'] or '?'} cases"
        elif verdict == "ok" and any(": ok" not in line for line in case_lines):
            verdict = "a case raised"
        result["tools"][tool] = {"status": verdict, "returncode": step["returncode"], "seconds": step["seconds"],
                                 "command": step["command"], "summary": summary[-1] if summary else None,
                                 "first_reports": found[:12], "cases": case_lines}
        say(f"sanitizer {tool}: {verdict} ({summary[-1] if summary else 'no summary'}) in {step['seconds']} s")
        if verdict not in ("ok", "stopped at the time budget"):   # errors found, or less checked than planned
            result["status"] = "failed"
    return result


def _fmt(value, spec: str = ".3f") -> str:
    if value is None:
        return "–"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def markdown(report: dict) -> str:
    env = report["environment"]
    gpu = env.get("gpu") or {}
    build, tests = report.get("build", {"status": "not reached"}), report.get("tests", {"status": "not reached"})
    lines = ["# vosrt GPU check", "",
             f"{'DRY RUN (CPU, tiny shapes) — ' if report['dry_run'] else ''}{report['started']}, "
             f"{report['seconds']:.0f} s", "",
             f"- GPU: {gpu.get('name', 'none')} (cc {gpu.get('compute_capability', '–')}), driver {env.get('driver')}"
             + (f" (**{env['driver_note']}**)" if env.get("driver_note") else ""),
             f"- torch {env.get('torch')} (CUDA {env.get('torch_cuda_runtime')}), nvcc {env.get('nvcc')}, "
             f"{env.get('cmake')}",
             f"- CuPy {env.get('cupy')}, TensorRT {env.get('tensorrt')} (headers {env.get('tensorrt_headers')}), "
             f"onnxruntime {env.get('onnxruntime')}",
             f"- build: {build.get('status')}; skipped: {'; '.join(build.get('skipped', [])) or 'nothing'}",
             f"- tests: {tests.get('status')}, passed {tests.get('passed', '–')}, failed "
             f"{tests.get('failures', '–')}, errors {tests.get('errors', '–')}, skipped "
             f"{tests.get('skipped', '–')}, collected {tests.get('collected', tests.get('tests', '–'))}",
             f"- compute-sanitizer: {_sanitizer_line(report.get('sanitizer'))}", ""]
    for name in tests.get("failed_tests", [])[:20]:
        lines.append(f"  - failed: {name}")
    for module, reason in tests.get("unavailable_modules", {}).items():
        lines.append(f"  - skipped {module}: {reason}")
    if tests.get("error"):
        lines.append(f"  - {tests['error']}")
    if lines[-1]:
        lines.append("")
    return "\n".join(lines + [benchmark_tables(report.get("benchmarks", {}))])


def _sanitizer_line(result: dict | None) -> str:
    if not result:
        return "not reached"
    tools = result.get("tools") or {}
    said = "; ".join(f"{tool} {r['status']}" + (f" ({r['summary']}, {r['seconds']} s)" if r.get("summary") else "")
                     for tool, r in tools.items())
    return f"{result['status']}" + (f": {said}" if said else "")


def _failure(result: dict) -> str:
    """A failed benchmark in one line: how its child ended and the last line it printed (the exception)."""
    tail = [line.strip() for line in result.get("output_tail", []) if line.strip()]
    raised = [line for line in tail if re.match(r"[\w.]*(Error|Exception|Exit|Interrupt)\b", line)]
    last = (raised or tail)[-1][:300] if tail else None
    return f"{result.get('error')}" + (f": `{last}`" if last else "")


def _row_errors(rows: list, name: Callable[[dict], str]) -> list[str]:
    """Lines naming the rows that failed (their figures before the failure are in the table) and how a child
    that crashed or ran out of time after some rows ended."""
    return [f"- {name(r) if 'after' not in r else 'ended after the rows above'}: {r['error']}"
            for r in rows if "error" in r]


def benchmark_tables(bench: dict, timing: str = "ms per call, back to back") -> str:
    """Markdown tables of run_benchmarks' results (also printed by samples/bench_kernels.py). ``timing``: what the
    figures are, in the tables' headers (bench_kernels.py --dry-run times medians of single calls on the CPU)."""
    lines: list[str] = []
    readout = bench.get("readout")
    if isinstance(readout, list):
        lines += [f"## L2MemoryReadout ({timing}; ratios = other / fused kernel)", "",
                  "| dtype | frames | objects | N | dense | GEMM+topk+gather | fused | vs dense | vs GEMM+topk | "
                  "fused MiB | queries off |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in (r for r in readout if "dtype" in r):
            lines.append(f"| {r['dtype']} | {r['frames']} | {r['objects']} | {r['N']} | {_fmt(r.get('dense_ms'))} | "
                         f"{_fmt(r.get('gemm_topk_gather_ms'))} | {_fmt(r.get('kernel_ms'))} | "
                         f"{_fmt(r.get('vs_dense'), '.1f')} | {_fmt(r.get('vs_gemm_topk_gather'), '.2f')} | "
                         f"{_fmt(r.get('kernel_peak_mib'), '.1f')} | {_fmt(r.get('queries_off'), 'd')} |")
        lines += ["", "queries off: queries whose fused output differs from float32 on the same inputs by more "
                  "than 1% of the output's range (a top-k taken differently at a near-tie, or a bug)"]
        lines += _row_errors(readout, lambda r: f"{r['dtype']}, {r['frames']} frames, {r['objects']} objects")
        lines.append("")
    elif readout is not None:
        lines += [f"L2MemoryReadout benchmark failed: {_failure(readout)}", ""]
    d2 = bench.get("d2conv3d")
    if isinstance(d2, list):
        lines += [f"## D2Conv3D ({timing}; ratio = reference / kernel)", "",
                  "| layer | dtype | x | reference | kernel | speed-up | TFLOP/s | ref MiB | kernel MiB | fp16 vs fp32 |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in (r for r in d2 if "layer" in r):
            lines.append(f"| {r['layer']} | {r['dtype']} | {'x'.join(map(str, r['x_shape']))} | "
                         f"{_fmt(r.get('reference_ms'))} | {_fmt(r.get('kernel_ms'))} | {_fmt(r.get('vs_reference'), '.2f')} | "
                         f"{_fmt(r.get('tflops'), '.1f')} | {_fmt(r.get('reference_peak_mib'), '.0f')} | "
                         f"{_fmt(r.get('kernel_peak_mib'), '.0f')} | {_fmt(r.get('fp16_vs_fp32'), '.2f')} |")
        lines += _row_errors(d2, lambda r: f"{r['layer']} {r['dtype']}")
        lines.append("")
    elif d2 is not None:
        lines += [f"D2Conv3D benchmark failed: {_failure(d2)}", ""]
    stcn = bench.get("stcn_step")
    if isinstance(stcn, dict) and "error" not in stcn:
        lines += ["## STCN step (ms per frame)", "",
                  f"{stcn['model']} at {stcn['height']}x{stcn['width']}, {stcn['objects']} objects, memory of "
                  f"{stcn['memory_frames']} frames (N = {stcn['N']}) on {stcn['device']}: reference readout "
                  f"{_fmt(stcn['reference_readout_ms_per_frame'], '.2f')}, kernel readout "
                  f"{_fmt(stcn.get('kernel_readout_ms_per_frame'), '.2f')}, speed-up {_fmt(stcn.get('speedup'), '.2f')}"
                  + (f" (kernel: {stcn['kernel']})" if stcn.get("kernel") else ""), ""]
    elif stcn is not None:
        lines += [f"STCN step benchmark failed: {_failure(stcn)}", ""]
    lines += ["Targets (issue 13, reported, not asserted): " +
              ", ".join(f"{k} >= {v}x" for k, v in TARGETS.items()), ""]
    return "\n".join(lines)


def plan(out: Path, build_dir: Path, env: dict, dry_run: bool, budget: float) -> list[str]:
    steps = [f"1. environment probe (GPU: {(env.get('gpu') or {}).get('name', 'none')})",
             "2. build: " + " && ".join(" ".join(c) for c in build_commands(build_dir, env)),
             f"3. tests: pytest -m \"{TEST_MARKS}\" --continue-on-collection-errors on the "
             f"{len(gpu_test_files())} modules of {TESTS} that hold GPU/TensorRT tests, with "
             f"VOSRT_KERNELS_LIB={build_dir / 'kernels'}, one pytest process per group: "
             + ", ".join(name for name, _, _ in gpu_test_groups(gpu_test_files())),
             "4. benchmarks, each in a child process: L2MemoryReadout (frames 5/20/50, objects 1/4, fp32/fp16) vs "
             "dense and vs GEMM+topk+gather; D2Conv3D 3DC-Seg 480p layers fp32/fp16 vs reference; STCN step at 480p",
             "5. compute-sanitizer memcheck and racecheck on small calls of every kernel path, with the time left "
             f"({find_sanitizer(env) or 'compute-sanitizer not found: skipped'})",
             f"6. report: {out / 'gpu_report.json'} and {out / 'gpu_report.md'}, rewritten after every step",
             f"time budget: {budget:.0f} s in all (--budget); each step's timeout is cut to what is left"]
    if dry_run:
        steps.append("dry run: the build is only planned, tests are collected, benchmarks run their reference "
                     "paths on the CPU at tiny shapes")
    return steps


def write_report(out: Path, report: dict, started: float) -> None:
    report["seconds"] = time.perf_counter() - started
    write_json(out / "gpu_report.json", report)
    write_text(out / "gpu_report.md", markdown(report))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, nargs="?", help="folder for the report, the logs and the test results")
    parser.add_argument("--out", type=Path, dest="out_flag", metavar="OUT", help="the same folder, as an option "
                        "(python samples/gpu_check.py --out $OUT)")
    parser.add_argument("--build-dir", type=Path, default=DEFAULT_BUILD,
                        help=f"CMake build folder (default {DEFAULT_BUILD.relative_to(ROOT)}, git-ignored)")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                        help=f"seconds for the whole check (default {DEFAULT_BUDGET}); steps are cut to fit")
    parser.add_argument("--dry-run", action="store_true", help="plan + the CPU-side parts only (CI)")
    parser.add_argument("--skip-build", action="store_true", help="use --build-dir as it is")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--repeat", type=int, default=None, help="timed calls per benchmark (median)")
    # internal: one benchmark in this process, its JSON result written to --result (run_benchmarks' children)
    parser.add_argument("--benchmark", choices=BENCHMARK_PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    # internal: the small kernel calls compute-sanitizer watches (run_sanitizer's child)
    parser.add_argument("--sanitize-cases", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.sanitize_cases:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        lines = sanitize_cases(device)
        for line in lines:
            print(line, flush=True)
        if args.result is not None:   # read by run_sanitizer: the output's tail may hold the sanitizer's reports only
            write_json(args.result, {"cases": lines, "planned": sanitize_case_count(device)})
        return 0
    if args.benchmark:
        if args.result is None:
            parser.error("--benchmark needs --result FILE")
        rows = benchmark_part(args.benchmark, args.device, args.repeat or 2,
                              emit=lambda so_far: write_json(args.result, so_far))
        write_json(args.result, rows)
        return 0
    if (args.out is None) == (args.out_flag is None):
        parser.error("give the report folder once: OUT or --out OUT")
    if args.budget < 60:
        parser.error(f"--budget must be at least 60 seconds, got {args.budget:g}")
    if args.repeat is not None and args.repeat < 1:
        # 0 was taken for the default and a negative count failed every benchmark after the build and the tests
        parser.error(f"--repeat: expected timed calls >= 1, got {args.repeat} (leave it out for 10 on a GPU, 2 on "
                     "the CPU)")
    out = (args.out or args.out_flag).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _terminate)
    build_dir = args.build_dir.resolve()
    started = time.perf_counter()
    deadline = Deadline(args.budget)

    env = probe_environment()
    gpu = bool(env.get("cuda_available"))
    if not gpu and not args.dry_run:
        say("no CUDA device visible to PyTorch: running as --dry-run (nothing below measures a GPU)")
        args.dry_run = True
    steps = plan(out, build_dir, env, args.dry_run, args.budget)
    for line in steps:
        say(line)
    for name in ("cupy", "tensorrt", "onnxruntime"):
        if env.get(name) is None:
            say(f"{name} is not installed: the parts that use it are skipped")
    for name in ("numpy", "pytest"):
        if env.get(name) is None:
            say(f"warning: {name} is not installed in {sys.executable}: "
                + ("the kernels' Python bindings and the benchmarks need it" if name == "numpy"
                   else "the GPU tests cannot run (the benchmarks still do)"))
    if env.get("driver_note"):
        say(f"warning: {env['driver_note']}")

    report: dict = {"dry_run": args.dry_run, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "environment": env, "plan": steps, "targets": TARGETS, "build_dir": str(build_dir)}
    log = out / LOG_NAME
    log.write_bytes(b"")
    report["build"] = {"status": "running (the check was stopped here)"}
    write_report(out, report, started)
    report["build"] = ({"status": "skipped (--skip-build)"} if args.skip_build
                       else build_plugins(build_dir, env, args.dry_run, deadline, log))
    report["tests"] = {"status": "running (the check was stopped here)"}
    write_report(out, report, started)
    report["tests"] = ({"status": "skipped (--skip-tests)"} if args.skip_tests
                       else run_gpu_tests(out, build_dir, args.dry_run, deadline, env))
    write_report(out, report, started)
    if built_kernels(build_dir) is not None:
        os.environ["VOSRT_KERNELS_LIB"] = str(built_kernels(build_dir))
    device = "cuda" if gpu and not args.dry_run else "cpu"
    repeat = args.repeat or (10 if device == "cuda" else 2)
    def benchmarks_so_far(results: dict) -> None:
        report["benchmarks"] = results
        write_report(out, report, started)

    report["benchmarks"] = run_benchmarks(out, device, repeat, deadline, progress=benchmarks_so_far)
    report["sanitizer"] = {"status": "running (the check was stopped here)"}
    write_report(out, report, started)
    report["sanitizer"] = (run_sanitizer(env, args.dry_run, deadline, log) if kernels_usable(device) or args.dry_run
                           else {"status": "skipped: the kernels cannot run here"})
    write_report(out, report, started)
    say(f"report: {out / 'gpu_report.json'}, {out / 'gpu_report.md'} ({report['seconds']:.0f} s)")
    failed = any(report[step].get("status") == "failed" for step in ("build", "tests", "sanitizer"))
    errors = [k for k, v in report["benchmarks"].items() if benchmark_failed(v)]
    if errors:
        say(f"benchmarks with errors: {', '.join(errors)}")
    return 1 if failed or errors else 0


if __name__ == "__main__":
    sys.exit(main())
