"""samples/gpu_check.py, the one-shot GPU validation, in its --dry-run form: CI runs the plan, the
environment probe, the collection of the GPU tests, every benchmark's reference path on the CPU and the
report writer, so the script works the first time a GPU machine runs it."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest


SCRIPT = Path(__file__).resolve().parents[1] / "samples" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# A GPU machine as the device tool lends it: vosrt is not pip-installed there, and it has PyTorch, numpy,
# opencv, CuPy, pytest, CMake and nvcc but none of onnx, onnxscript, onnxruntime, TensorRT or pillow.
# This sitecustomize makes this machine look so to a child Python.
BARE_MACHINE = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]  # no install of vosrt
for name in ("onnxruntime_extensions", "pycocotools", "trackeval", "playwright", "tensorrt", "onnx", "onnxscript",
             "onnxruntime", "PIL"):
    sys.modules[name] = None  # import raises ImportError, importlib.util.find_spec answers None
"""
# What the device tool brings back from OUT: at most 8 files, no folders here, names of these characters.
OUT_FILE_LIMIT = 8
OUT_NAME = re.compile(r"[A-Za-z0-9._-]+")


def test_dry_run_on_a_bare_checkout_plans_the_build_collects_the_gpu_tests_and_writes_a_report(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BARE_MACHINE)
    env = {**os.environ, "PYTHONPATH": str(site)}
    assert subprocess.run([sys.executable, "-c", "import vosrt"], env=env, cwd=tmp_path).returncode != 0
    out, build_dir = tmp_path / "out", tmp_path / "build"
    done = subprocess.run([sys.executable, str(SCRIPT), str(out), "--dry-run", "--build-dir", str(build_dir)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "gpu_report.json").read_text())
    assert report["dry_run"] is True
    configure, *builds = report["build"]["commands"]
    assert configure.startswith("cmake -S ") and "-DCMAKE_CUDA_ARCHITECTURES=" in configure
    assert all(build.startswith(f"cmake --build {build_dir}") for build in builds)
    # with nvcc, the kernels are built first, so a failure elsewhere still leaves them to test
    kernels_first = [f"cmake --build {build_dir} -j {os.cpu_count() or 2} --target vosrt_kernels"]
    assert builds[:-1] == (kernels_first if report["environment"].get("nvcc") else [])
    assert "--target" not in builds[-1]
    # each benchmark ran in a child of its own, which left its result beside the report
    assert sorted(p.name for p in out.glob("benchmark_*.json")) == [
        "benchmark_d2conv3d.json", "benchmark_readout.json", "benchmark_stcn_step.json"]
    # every GPU test module imports there but the SDK tracker's (pillow): it is skipped, saying so, and the
    # collection still counts as done; the TensorRT module skips itself without onnx
    assert report["tests"]["status"] == "collected" and report["tests"]["collected"] >= 50
    assert list(report["tests"]["unavailable_modules"]) == ["tests.test_sdk_tracker"]
    assert "needs PIL" in report["tests"]["unavailable_modules"]["tests.test_sdk_tracker"]
    assert "skipping tests.test_sdk_tracker" in done.stdout
    # what OUT holds fits what the device tool brings back
    files = list(out.iterdir())
    assert len(files) <= OUT_FILE_LIMIT and all(p.is_file() and OUT_NAME.fullmatch(p.name) for p in files), files
    assert (out / "gpu_check.log").is_file() and (out / "gpu_tests.xml").is_file()
    bench = report["benchmarks"]
    assert bench["device"] == "cpu"
    assert bench["readout"] and all(row["dense_ms"] > 0 and row["gemm_topk_gather_ms"] > 0 for row in bench["readout"])
    assert all(row["reference_ms"] > 0 for row in bench["d2conv3d"])
    assert bench["stcn_step"]["reference_readout_ms_per_frame"] > 0
    text = (out / "gpu_report.md").read_text()
    assert "## L2MemoryReadout" in text and "## D2Conv3D" in text and "## STCN step" in text
    assert "DRY RUN" in text
    assert "tests:" in done.stdout and "report:" in done.stdout


def test_test_summary_reads_pytest_junit_xml_with_a_failure_and_a_skip(tmp_path):
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n\ndef test_ok():\n    pass\n\ndef test_bad():\n    assert 1 == 2\n\n"
        "@pytest.mark.skip(reason='x')\ndef test_skipped():\n    pass\n")
    xml = tmp_path / "out.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
                    str(tmp_path / "test_sample.py")], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    summary = _module().junit_summary(xml)
    assert (summary["tests"], summary["passed"], summary["failures"], summary["skipped"]) == (3, 1, 1, 1)
    assert summary["failed_tests"] == ["test_sample::test_bad"]


def test_a_test_module_needing_an_absent_package_is_skipped_but_a_broken_one_fails(tmp_path):
    (tmp_path / "test_needs_pkg.py").write_text("import vosrt_absent_package_xyz\n\ndef test_a():\n    pass\n")
    (tmp_path / "test_broken.py").write_text("import vosrt.no_such_module\n\ndef test_b():\n    pass\n")
    (tmp_path / "test_fine.py").write_text("def test_c():\n    pass\n")
    xml = tmp_path / "out.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
                    "--continue-on-collection-errors", str(tmp_path)], capture_output=True, text=True, timeout=120,
                   cwd=tmp_path)
    summary = _module().junit_summary(xml)
    assert list(summary["unavailable_modules"]) == ["test_needs_pkg"]
    assert "vosrt_absent_package_xyz" in summary["unavailable_modules"]["test_needs_pkg"]
    assert summary["failed_tests"] == ["::test_broken"]  # a module of the repository that does not import
    assert (summary["tests"], summary["passed"], summary["errors"]) == (2, 1, 1)


def test_a_kernel_crash_costs_only_its_operators_test_group_and_the_others_report(tmp_path, monkeypatch):
    gpu_check = _module()
    tests, out = tmp_path / "tests", tmp_path / "out"
    tests.mkdir()
    out.mkdir()
    header = "import os\nimport pytest\n\npytestmark = pytest.mark.gpu\n\n"
    (tests / "test_kernels_gpu.py").write_text(
        header + "def test_d2conv3d_faults():\n    os.abort()  # a kernel fault ends the process\n\n"
                 "def test_readout_runs():\n    pass\n")
    (tests / "test_other.py").write_text(header + "def test_other_runs():\n    pass\n")
    files = [str(tests / "test_kernels_gpu.py"), str(tests / "test_other.py")]
    assert [name for name, _, _ in gpu_check.gpu_test_groups(files)] == [
        "D2Conv3D kernels", "L2MemoryReadout kernels", "other GPU and TensorRT tests"]
    monkeypatch.setattr(gpu_check, "gpu_test_files", lambda: files)
    result = gpu_check.run_gpu_tests(out, tmp_path / "build", False, gpu_check.Deadline(400))
    d2conv, readout, other = result["groups"]
    assert "without its XML report" in d2conv["error"] and d2conv["returncode"] != 0
    assert readout["returncode"] == 0 and other["returncode"] == 0
    assert result["status"] == "failed" and result["passed"] == 2 and "D2Conv3D kernels" in result["error"]
    log = (out / "gpu_check.log").read_text()  # every group's output, in order
    assert log.index("test_d2conv3d_faults") < log.index("test_readout_runs PASSED") < log.index("test_other_runs")
    text = gpu_check.markdown({"dry_run": False, "started": "now", "seconds": 1.0, "environment": {}, "tests": result})
    assert "without its XML report" in text
    assert "skipped 0, collected 2" in text  # a run's count is its XML's (only the dry run's is pytest's line)


def test_a_driver_older_than_nvcc_s_cuda_is_said_before_the_build():
    # a CUDA 13 build on a CUDA 12 driver loads and then fails every call: the run read as a wall of kernel failures
    gc = _module()
    note = gc.driver_note("575.57.08, NVIDIA H100 80GB HBM3", "13.0")
    assert note.startswith("driver 575.57.08 is older than CUDA 13 needs (580 or newer)"), note
    assert gc.driver_note("580.65.06, NVIDIA H200", "13.0") is None
    assert gc.driver_note("550.1, NVIDIA A100", "12.4") is None
    assert gc.driver_note(None, "13.0") is None and gc.driver_note("575.1, X", None) is None
    report = {"environment": {"driver": "575.57.08, X", "driver_note": note}, "dry_run": False, "started": "now",
              "seconds": 1.0}
    assert f"(**{note}**)" in gc.markdown(report)


def test_missing_package_names_third_party_packages_only():
    missing = _module().missing_package
    assert missing("E   ModuleNotFoundError: No module named 'PIL'") == "PIL"
    assert missing("ModuleNotFoundError: import of onnx halted; None in sys.modules") == "onnx"
    assert missing("No module named 'onnx'\n...\nNo module named 'onnxruntime.capi'") == "onnxruntime.capi"
    assert missing("No module named 'vosrt.sdk.nothing'") is None      # a bug of the repository
    assert missing("No module named 'kernel_build'") is None           # a tests/ helper
    assert missing("ImportError: cannot import name 'x' from 'y'") is None


def test_a_timed_out_step_is_killed_with_its_whole_process_group_and_its_log_kept(tmp_path):
    gpu_check = _module()
    pid_file, log = tmp_path / "pid", tmp_path / "step.log"
    step = gpu_check._run(["sh", "-c", f"echo started; sleep 60 & echo $! > {pid_file}; wait"], 2, log=log)
    assert step["returncode"] == 124 and "started" in step["output_tail"] and "timed out" in step["output_tail"]
    assert log.read_text().startswith("started")
    grandchild = int(pid_file.read_text())
    for _ in range(50):  # killed with the group: gone, or a zombie until init reaps it
        status = Path(f"/proc/{grandchild}/status")
        if not status.exists() or "zombie" in status.read_text():
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the step's background process {grandchild} outlived the timeout")
    missing = gpu_check._run(["/nonexistent/tool"], 5)
    assert missing["returncode"] == 127


def test_each_benchmark_gets_a_share_of_the_budget_and_the_report_follows_each_part(tmp_path, monkeypatch):
    gpu_check = _module()
    timeouts, seen = [], []

    def hung_child(cmd, result_file, timeout):
        timeouts.append(timeout)
        return {"error": "exit status 124 after 0 s"}

    monkeypatch.setattr(gpu_check, "run_child", hung_child)
    results = gpu_check.run_benchmarks(tmp_path, "cpu", 1, gpu_check.Deadline(305),
                                       progress=lambda r: seen.append(sorted(r)))
    assert len(timeouts) == 3 and 60 <= timeouts[0] <= 100 and max(timeouts) <= 300  # not all to the first
    assert seen[0] == ["device", "readout"] and len(seen) == 3
    assert set(results) == {"device", "readout", "d2conv3d", "stcn_step"}
    assert gpu_check.run_benchmarks(tmp_path, "cpu", 1, gpu_check.Deadline(10))["readout"]["error"].startswith(
        "not run")


def test_build_targets_this_gpu_only_and_finds_tensorrt_headers_from_the_environment(tmp_path, monkeypatch):
    gpu_check = _module()
    assert gpu_check.cuda_architecture({"gpu": {"compute_capability": "9.0"}}) == "90-real"
    assert gpu_check.cuda_architecture({}) == "80-real"
    include = tmp_path / "trt" / "include"
    include.mkdir(parents=True)
    monkeypatch.setenv("TensorRT_ROOT", str(tmp_path / "trt"))
    assert gpu_check.tensorrt_include() != include  # a folder without NvInfer.h is not TensorRT
    (include / "NvInfer.h").write_text("")
    assert gpu_check.tensorrt_include() == include  # $TensorRT_ROOT comes before any other place
    h200 = {"gpu": {"compute_capability": "9.0"}, "nvcc": "13.0"}
    configure, *builds = gpu_check.build_commands(tmp_path / "build", h200)
    assert f"-DTensorRT_INCLUDE_DIR={include}" in configure and "-DVOSRT_CUDA_ARCHS=90-real" in configure
    # nvcc warnings are not errors there; the kernels build first
    assert "-DVOSRT_CUDA_WERROR=OFF" in configure and "-DVOSRT_BUILD_KERNELS=OFF" not in configure
    assert builds[0][-2:] == ["--target", "vosrt_kernels"]
    # without nvcc the CPU-side libraries still configure and build
    configure, *builds = gpu_check.build_commands(tmp_path / "build", {"gpu": {"compute_capability": "9.0"}})
    assert "-DVOSRT_BUILD_KERNELS=OFF" in configure and len(builds) == 1


def test_the_build_uses_ninja_where_cmake_would_find_no_make(tmp_path, monkeypatch):
    # CMake's default generator needs make; a GPU image may carry CMake and ninja (Python packages) without it
    gpu_check = _module()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    monkeypatch.setattr(gpu_check.sys, "executable", str(venv_bin / "python3"))
    monkeypatch.delenv("CMAKE_GENERATOR", raising=False)
    monkeypatch.setenv("PATH", str(bin_dir))
    h200 = {"gpu": {"compute_capability": "9.0"}, "nvcc": "13.0"}
    configure = gpu_check.build_commands(tmp_path / "build", h200)[0]
    assert "-G" not in configure  # neither make nor ninja: CMake's default, and CMake's own error
    (venv_bin / "ninja").write_text("#!/bin/sh\n")  # pip's ninja beside this python, off PATH
    (venv_bin / "ninja").chmod(0o755)
    configure = gpu_check.build_commands(tmp_path / "build", h200)[0]
    at = configure.index("-G")   # (TensorRT include flags may follow, where VOSRT_TRT_INCLUDE is set)
    assert configure[at:at + 3] == ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={venv_bin / 'ninja'}"]
    for name in ("ninja", "make"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
        configure = gpu_check.build_commands(tmp_path / "build", h200)[0]
        if name == "ninja":
            at = configure.index("-G")
            assert configure[at:at + 2] == ["-G", "Ninja"] and configure[:3] == ["cmake", "-S", str(gpu_check.PLUGINS)]
            assert not any(flag.startswith("-DCMAKE_MAKE_PROGRAM") for flag in configure)
        else:
            assert "-G" not in configure  # make is there: CMake's default generator
    (bin_dir / "make").unlink()
    monkeypatch.setenv("CMAKE_GENERATOR", "Unix Makefiles")  # the caller's choice stands
    assert "-G" not in gpu_check.build_commands(tmp_path / "build", h200)[0]
    monkeypatch.delenv("CMAKE_GENERATOR")
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "CMakeCache.txt").write_text("")  # configured before: its generator cannot change
    assert "-G" not in gpu_check.build_commands(tmp_path / "build", h200)[0]


def test_a_host_compiler_nvcc_refuses_is_retried_with_allow_unsupported_compiler(tmp_path, monkeypatch):
    gpu_check = _module()
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    # a cmake whose configure fails as nvcc's version check does, unless told to go ahead
    (bin_dir / "cmake").write_text(
        f"#!/bin/sh\necho \"$*\" >> {calls}\n"
        "case \"$*\" in *--build*) exit 0;; *allow-unsupported-compiler*) exit 0;; esac\n"
        "echo '#error -- unsupported GNU version! gcc versions later than 14 are not supported!'\nexit 1\n")
    (bin_dir / "cmake").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    build = tmp_path / "build"
    (build / "CMakeFiles").mkdir(parents=True)
    (build / "CMakeCache.txt").write_text("CMAKE_CUDA_COMPILER_WORKS:INTERNAL=0\n")
    env = {"cmake": "cmake version 3.28", "nvcc": "13.0", "gpu": {"compute_capability": "9.0"}}
    result = gpu_check.build_plugins(build, env, dry_run=False, deadline=gpu_check.Deadline(600))
    assert result["status"] == "ok", result
    configures = [line for line in calls.read_text().splitlines() if "--build" not in line]
    assert len(configures) == 2 and configures[1].endswith("-DCMAKE_CUDA_FLAGS=-allow-unsupported-compiler")
    assert not (build / "CMakeCache.txt").exists()  # the failed compiler check is not reused


def test_nvcc_off_path_is_found_under_cuda_home(tmp_path, monkeypatch):
    gpu_check = _module()
    nvcc = tmp_path / "cuda-13.0" / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text("#!/bin/sh\n")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "cuda-13.0"))
    assert gpu_check.find_nvcc() == str(nvcc)


def test_the_kernels_configure_without_nvcc_warnings_as_errors_when_asked(tmp_path):
    from kernel_build import have_cmake_and_cxx, have_nvcc

    if not (have_cmake_and_cxx() and have_nvcc()):
        pytest.skip("needs cmake, a C++ compiler and nvcc")
    gpu_check = _module()
    configure = gpu_check.build_commands(tmp_path / "b", {"nvcc": "13", "nvcc_path": gpu_check.find_nvcc()})[0]
    env = dict(os.environ, PATH=f"{Path(gpu_check.find_nvcc()).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    done = subprocess.run(configure + ["-DVOSRT_BUILD_TRT=OFF"], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    flags = (tmp_path / "b" / "kernels" / "CMakeFiles" / "vosrt_kernels.dir" / "flags.make").read_text()
    assert "-lineinfo" in flags and "--Werror" not in flags


def test_a_crashed_or_hung_benchmark_child_costs_only_its_own_part(tmp_path):
    gpu_check = _module()
    result = tmp_path / "r.json"
    crashed = gpu_check.run_child([sys.executable, "-c", "print('before the crash', flush=True); import os; os.abort()"],
                                  result, timeout=60)
    assert crashed["error"].startswith("exit status -6") and "before the crash" in crashed["output_tail"]
    hung = gpu_check.run_child([sys.executable, "-c", "import time; time.sleep(60)"], result, timeout=1)
    assert hung["error"].startswith("exit status 124")
    wrote = gpu_check.run_child([sys.executable, "-c", f"open({str(result)!r}, 'w').write('[1, 2]')"], result, 60)
    assert wrote == [1, 2]
    stale = gpu_check.run_child([sys.executable, "-c", "pass"], result, 60)  # a result left by an earlier run
    assert "error" in stale
    raised = gpu_check.run_child([sys.executable, "-c", "print('a line after'); raise ValueError('boom')"], result, 60)
    assert "ValueError: boom" in gpu_check.benchmark_tables({"readout": raised})  # the report names the exception


def test_a_benchmark_keeps_the_rows_measured_before_one_fails_or_its_child_dies(tmp_path, monkeypatch):
    # one exception, or a child killed at its time, lost every row of the benchmark (12 readout rows)
    gpu_check = _module()
    real = gpu_check.dense_readout

    def dense(mem_key, *rest):
        if mem_key.shape[2] == 3 * 48:
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore")
        return real(mem_key, *rest)

    monkeypatch.setattr(gpu_check, "dense_readout", dense)
    emitted = []
    rows = gpu_check.bench_readout("cpu", dict(gpu_check.READOUT_TINY, frames=(2, 3, 4), objects=(1,)), 1,
                                   emit=lambda so_far: emitted.append(len(so_far)))
    assert emitted == [1, 2, 3] and [r["frames"] for r in rows] == [2, 3, 4]
    assert rows[1]["error"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert "dense_ms" not in rows[1] and rows[0]["dense_ms"] > 0 and rows[2]["dense_ms"] > 0
    table = gpu_check.benchmark_tables({"readout": rows})
    assert "- fp32, 3 frames, 1 objects: RuntimeError: CUDA error" in table and "| fp32 | 4 | 1 |" in table
    # a child that dies after writing two rows: those rows, then how it ended
    result = tmp_path / "r.json"
    partial = gpu_check.run_child([sys.executable, "-c", f"import json, os; open({str(result)!r}, 'w').write("
                                   f"json.dumps({rows[:1] + rows[2:]!r})); print('killed'); os.abort()"], result, 60)
    assert len(partial) == 3 and partial[2]["error"].startswith("exit status -6")
    table = gpu_check.benchmark_tables({"readout": partial})
    assert "| fp32 | 2 | 1 |" in table and "| fp32 | 4 | 1 |" in table and "- ended after the rows above: exit" in table
    # the STCN step: its reference timing stays when the kernel's part is lost
    stcn = gpu_check.run_child([sys.executable, "-c", f"import json, os; open({str(result)!r}, 'w').write(json.dumps("
                                f"{dict(gpu_check.STCN_TINY, N=8, device='cpu', reference_readout_ms_per_frame=2.5)!r})); "
                                "os.abort()"], result, 60)
    assert stcn["reference_readout_ms_per_frame"] == 2.5 and stcn["kernel"].startswith("not measured: exit status -6")
    assert "reference readout 2.50" in gpu_check.benchmark_tables({"stcn_step": stcn})
    # each counts as a failed benchmark (the check exits 1), as a child that ended without rows did
    assert gpu_check.benchmark_failed(partial) and gpu_check.benchmark_failed(stcn) and gpu_check.benchmark_failed(rows)
    assert not gpu_check.benchmark_failed(rows[:1]) and not gpu_check.benchmark_failed("cuda")
    assert not gpu_check.benchmark_failed(dict(stcn, kernel="skipped: benchmarks run on the CPU"))


def test_a_test_group_past_its_time_is_interrupted_first_so_pytest_writes_what_ran(tmp_path):
    # SIGKILL at once left no junit XML: the group's results were lost with it
    gpu_check = _module()
    done = tmp_path / "done"
    script = (f"import signal, sys, time\n"
              f"def stop(*_):\n    open({str(done)!r}, 'w').write('interrupted')\n    sys.exit(2)\n"
              f"signal.signal(signal.SIGINT, stop)\nprint('running', flush=True)\ntime.sleep(60)\n")
    step = gpu_check._run([sys.executable, "-c", script], 2, grace=10)
    assert step["returncode"] == 124 and done.read_text() == "interrupted" and step["seconds"] < 10
    stubborn = gpu_check._run([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGINT, "
                               "signal.SIG_IGN); time.sleep(60)"], 1, grace=1)
    assert stubborn["returncode"] == 124 and stubborn["seconds"] < 10       # killed after the grace
    # a leader that ends on the SIGINT takes the rest of its group with it
    pid_file = tmp_path / "pid"
    leader = gpu_check._run(["sh", "-c", f"(trap '' INT; sleep 60) & echo $! > {pid_file}; trap 'exit 2' INT; wait"],
                            1, grace=3)
    assert leader["returncode"] == 124
    left = int(pid_file.read_text())
    for _ in range(50):
        status = Path(f"/proc/{left}/status")
        if not status.exists() or "zombie" in status.read_text():
            break
        time.sleep(0.1)
    else:
        os.kill(left, 9)
        raise AssertionError("a process of the interrupted step's group outlived it")


def test_kernel_tests_that_all_skip_on_a_gpu_fail_their_group(tmp_path, monkeypatch):
    # "tests: ok, passed 0, skipped 100": a kernel library that did not load (or no cmake) checked nothing
    gpu_check = _module()
    tests, out = tmp_path / "tests", tmp_path / "out"
    tests.mkdir()
    out.mkdir()
    (tests / "test_kernels_gpu.py").write_text(
        "import pytest\n\npytestmark = pytest.mark.gpu\n\n"
        "def test_d2conv3d_runs():\n    pytest.skip('no kernels here')\n\n"
        "def test_readout_runs():\n    pass\n")
    monkeypatch.setattr(gpu_check, "gpu_test_files", lambda: [str(tests / "test_kernels_gpu.py")])
    result = gpu_check.run_gpu_tests(out, tmp_path / "build", False, gpu_check.Deadline(400))
    d2conv, readout = result["groups"]
    assert d2conv["error"].startswith("no test passed: every one was skipped") and "error" not in readout
    assert result["status"] == "failed"
    assert "no kernels here" in (out / "gpu_check.log").read_text()          # -rs: why it skipped
    assert gpu_check.run_gpu_tests(out, tmp_path / "build", False, gpu_check.Deadline(400),
                                   {"pytest": None})["error"].startswith("pytest is not installed")


def test_compute_sanitizer_runs_each_tool_on_the_kernel_cases_and_its_errors_fail_the_check(tmp_path, monkeypatch):
    # stand-ins for compute-sanitizer: each runs the real --sanitize-cases child (on the CPU here) after its options
    gpu_check = _module()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    run_rest = 'while [ "${1#-}" != "$1" ]; do case "$1" in --tool|--error-exitcode|--print-limit|--kernel-name) ' \
               'shift 2;; *) shift;; esac; done; "$@"'
    clean = f'#!/bin/sh\n{run_rest}\necho "========= ERROR SUMMARY: 0 errors"\n'
    sanitizer = bin_dir / "compute-sanitizer"
    sanitizer.write_text(clean)
    sanitizer.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    log = tmp_path / "gpu_check.log"
    result = gpu_check.run_sanitizer({}, False, gpu_check.Deadline(300), log)
    assert result["status"] == "ok" and set(result["tools"]) == {"memcheck", "racecheck"}
    memcheck = result["tools"]["memcheck"]
    assert memcheck["status"] == "ok" and memcheck["summary"] == "ERROR SUMMARY: 0 errors"
    assert len(memcheck["cases"]) == 6 and all(": ok" in line for line in memcheck["cases"])   # fp32 on the CPU
    racecheck = result["tools"]["racecheck"]      # the same child, its command not the lines the first one printed
    assert racecheck["status"] == "ok" and " --sanitize-cases --result " in racecheck["command"] and racecheck["cases"]
    assert "d2conv3d float32 C=12" in log.read_text()
    # errors found: the tool's status, its first reports, and the check fails
    sanitizer.write_text('#!/bin/sh\necho "========= Invalid __global__ read of size 16 bytes"\n'
                         'echo "=========     at vosrt::select_kernel"\necho "========= ERROR SUMMARY: 2 errors"\nexit 99\n')
    result = gpu_check.run_sanitizer({}, False, gpu_check.Deadline(300), log)
    assert result["status"] == "failed" and result["tools"]["memcheck"]["status"] == "ERRORS"
    assert "========= Invalid __global__ read of size 16 bytes" in result["tools"]["memcheck"]["first_reports"]
    assert "memcheck ERRORS (ERROR SUMMARY: 2 errors" in gpu_check._sanitizer_line(result)
    # a compute-sanitizer without --kernel-name: run again checking every kernel
    sanitizer.write_text(f'#!/bin/sh\ncase "$*" in *--kernel-name*) echo "Unrecognized option: --kernel-name"; exit 1;; '
                         f'esac\n{run_rest}\necho "========= ERROR SUMMARY: 0 errors"\n')
    assert gpu_check.run_sanitizer({}, False, gpu_check.Deadline(300), log)["status"] == "ok"
    # a sanitizer that cannot run here (a crash, an unsupported device) checked nothing: the step fails too
    sanitizer.write_text('#!/bin/sh\necho "========= Error: Device not supported"\nexit 1\n')
    result = gpu_check.run_sanitizer({}, False, gpu_check.Deadline(300), log)
    assert result["status"] == "failed" and result["tools"]["memcheck"]["status"] == "did not finish"
    # one that says 0 errors without running the cases (or fewer of them) checked less than planned: failed
    sanitizer.write_text('#!/bin/sh\necho "========= ERROR SUMMARY: 0 errors"\n')
    result = gpu_check.run_sanitizer({}, False, gpu_check.Deadline(300), log)
    assert result["status"] == "failed" and result["tools"]["memcheck"]["status"] == "ran 0 of ? cases"
    # one the budget stopped: said, and no failure (the time went to the benchmarks)
    sanitizer.write_text('#!/bin/sh\nsleep 30\n')
    monkeypatch.setattr(gpu_check, "SANITIZER_MIN_SECONDS", 1)
    result = gpu_check.run_sanitizer({}, False, gpu_check.Deadline(8), log)
    assert result["tools"]["memcheck"]["status"] == "stopped at the time budget" and result["status"] == "ok"
    monkeypatch.setattr(gpu_check, "SANITIZER_MIN_SECONDS", 60)
    # no time left: not started; none installed: skipped, said so
    assert gpu_check.run_sanitizer({}, False, gpu_check.Deadline(20))["tools"]["racecheck"]["status"].startswith("not run")
    assert gpu_check.find_sanitizer({}) == str(sanitizer)
    sanitizer.unlink()
    nvcc_bin = tmp_path / "cuda" / "bin"          # the toolkit's, beside nvcc, off PATH
    nvcc_bin.mkdir(parents=True)
    (nvcc_bin / "compute-sanitizer").write_text(clean)
    assert gpu_check.find_sanitizer({"nvcc_path": str(nvcc_bin / "nvcc")}) == str(nvcc_bin / "compute-sanitizer")
    monkeypatch.setattr(gpu_check, "find_sanitizer", lambda env: None)
    assert gpu_check.run_sanitizer({}, False, gpu_check.Deadline(300))["status"].startswith("skipped: compute-sanitizer")


def test_time_budget_cuts_step_timeouts_and_a_partial_report_still_renders():
    gpu_check = _module()
    deadline = gpu_check.Deadline(300)
    assert 290 < deadline.timeout(900) <= 300          # cut to what is left
    assert 140 < deadline.timeout(420, reserve=150) <= 150
    assert deadline.timeout(420, reserve=400) == 30     # never below the floor
    text = gpu_check.markdown({"dry_run": False, "started": "now", "seconds": 12.0,
                               "environment": {"gpu": {"name": "H200", "compute_capability": "9.0"}},
                               "build": {"status": "ok"}})
    assert "build: ok" in text and "tests: not reached" in text


def test_a_killed_check_leaves_its_report_so_far_and_no_running_step(tmp_path):
    """The device tool stops a command at its time limit: what the check wrote must be whole, and the
    step running then (here the pytest collection) must go down with it."""
    import signal

    out = tmp_path / "out"
    check = subprocess.Popen([sys.executable, str(SCRIPT), "--out", str(out), "--dry-run", "--build-dir",
                              str(tmp_path / "build")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):  # the tests step has started: its log exists
            if (out / "gpu_check.log").exists() or check.poll() is not None:
                break
            time.sleep(0.1)
        check.send_signal(signal.SIGTERM)
        assert check.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        check.kill()
    report = json.loads((out / "gpu_report.json").read_text())
    assert report["build"]["status"] == "planned" and "benchmarks" not in report
    time.sleep(0.5)
    left = [p for p in Path("/proc").glob("[0-9]*") if _cmdline(p) and str(out) in _cmdline(p)]
    assert not left, [_cmdline(p) for p in left]


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_gpu_check_refuses_a_budget_too_short_to_build(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--budget", "10"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--budget" in done.stderr


@pytest.mark.parametrize("repeat", ["0", "-1"])
def test_gpu_check_refuses_a_repeat_count_below_one_before_the_build(tmp_path, repeat):
    # 0 was silently the default (10 on a GPU), -1 failed every benchmark at the end of the run
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--dry-run", "--skip-build",
                           "--skip-tests", "--repeat", repeat], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and f"--repeat: expected timed calls >= 1, got {repeat}" in done.stderr
    assert not (tmp_path / "gpu_report.json").exists()


BENCH = SCRIPT.with_name("bench_kernels.py")


@pytest.mark.slow   # about 6 s of CPU on a 2-core machine: bench_kernels.py's dry run
def test_bench_kernels_runs_gpu_checks_benchmarks_and_prints_their_tables():
    done = subprocess.run([sys.executable, str(BENCH), "--dry-run", "--repeat", "1"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "## L2MemoryReadout" in done.stdout and "## D2Conv3D" in done.stdout
    rows = [line for line in done.stdout.splitlines() if line.startswith("| fp32 |")]
    assert len(rows) == 2  # the tiny readout shapes: 1 frame count × 2 object counts
    only = subprocess.run([sys.executable, str(BENCH), "--dry-run", "--repeat", "1", "--only", "d2conv3d"],
                          capture_output=True, text=True, timeout=300)
    assert only.returncode == 0 and "## D2Conv3D" in only.stdout and "L2MemoryReadout" not in only.stdout


def test_bench_kernels_dry_run_takes_the_frame_object_and_clip_counts_it_is_given():
    # --dry-run ran its fixed tiny shapes whatever --frames, --objects and --clip-frames said
    done = subprocess.run([sys.executable, str(BENCH), "--dry-run", "--repeat", "1", "--frames", "3", "--objects",
                           "1", "--clip-frames", "16"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [line.split("|")[2:4] for line in done.stdout.splitlines() if line.startswith("| fp32 | ")] == [
        [" 3 ", " 1 "]]
    assert "| tiny 16->8 | fp32 | 1x16x4x5x6 |" in done.stdout   # T of the 8-frame clip's 2, doubled


def test_bench_kernels_refuses_bad_sizes_naming_the_option():
    done = subprocess.run([sys.executable, str(BENCH), "--frames", "0", "5"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "--frames" in done.stderr


@pytest.mark.parametrize("args, says", [
    # the dense reference's torch.topk "selected index k out of range": a traceback after the other rows ran
    (["--dry-run", "--only", "readout", "--top-k", "97"], "--top-k 97: more than the memory of 2 frame(s) holds "
                                                           "(N = 96 entries); give --top-k 96 or less"),
    # above the kernel's limit l2_memory_readout runs the reference, which was timed and printed as the kernel
    (["--top-k", "65"], "--top-k 65: the fused kernel reads at most 64 entries per query"),
])
def test_bench_kernels_refuses_a_top_k_it_cannot_time_naming_the_option(args, says):
    done = subprocess.run([sys.executable, str(BENCH), "--repeat", "1", *args], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and says in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "L2MemoryReadout" not in done.stdout


@pytest.mark.slow   # about 7 s of CPU on a 2-core machine: the benchmarks' kernel rows on the emulation
def test_kernel_rows_of_the_benchmarks_run_on_the_emulated_kernels(monkeypatch):
    """The benchmarks' GPU-only branch (the fused kernels' timings, ratios and differences) driven on the
    CPU through the host emulation of the kernels, so its first run on a GPU is not its first run."""
    from kernel_build import emulation_path

    from vosrt.sdk import kernels
    from vosrt.training.ops import cuda_kernels

    check = _module()
    emulation = kernels.load_emulation(emulation_path())
    monkeypatch.setattr(cuda_kernels, "_library", lambda: emulation)
    monkeypatch.setattr(cuda_kernels, "l2_memory_readout", cuda_kernels._l2_memory_readout)  # host tensors too
    monkeypatch.setattr(cuda_kernels, "d2conv3d", cuda_kernels._d2conv3d)
    monkeypatch.setattr(check, "kernel_skip_reason", lambda device: None)

    (row,) = check.bench_readout("cpu", dict(check.READOUT_TINY, objects=(1,)), repeat=1)
    assert row["kernel_ms"] > 0 and row["vs_gemm_topk_gather"] == row["gemm_topk_gather_ms"] / row["kernel_ms"]
    assert row["max_abs_diff"] < 1e-4 and row["queries_off"] == 0
    (conv,) = check.bench_d2conv3d("cpu", check.D2CONV_TINY, repeat=1)
    assert conv["kernel_ms"] > 0 and conv["tflops"] > 0 and conv["max_rel_diff"] < 1e-4
    tables = check.benchmark_tables({"readout": [row], "d2conv3d": [conv]})
    assert "| 0 |" in tables and "queries off" in tables
    # the STCN step's readout="auto" reaches the kernel for host tensors too (the autograd Function under
    # inference_mode, as on the GPU)
    from vosrt.training.ops import l2_readout

    calls = []
    monkeypatch.setattr(l2_readout, "_use_kernel", lambda mem_key, backend: backend != "torch")
    monkeypatch.setattr(cuda_kernels, "l2_memory_readout",
                        lambda *args: calls.append(args) or cuda_kernels._l2_memory_readout(*args))
    step = check.bench_stcn_step("cpu", check.STCN_TINY, repeat=1)
    assert step["kernel_readout_ms_per_frame"] > 0 and step["speedup"] > 0 and "kernel" not in step
    assert len(calls) == 2  # the warm-up and the one timed step


def test_kernel_skip_reason_names_the_loader_error(monkeypatch):
    from vosrt.sdk import kernels
    from vosrt.training.ops import cuda_kernels

    check = _module()
    assert "CPU" in check.kernel_skip_reason("cpu")
    monkeypatch.setattr(cuda_kernels.torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv(kernels.ENV_VAR, "/nonexistent/libvosrt_kernels.so")
    try:
        reason = check.kernel_skip_reason("cuda")
    finally:
        cuda_kernels._library.cache_clear()
    assert reason.startswith("skipped: libvosrt_kernels.so not loaded: ") and "/nonexistent" in reason, reason
    assert check.load_check(None) == "not built"


def test_a_signal_while_a_step_is_starting_still_kills_that_step(tmp_path, monkeypatch):
    """The race CI once hit: SIGTERM arriving after the child has been exec'd but before Popen has
    returned (so before the step is registered). The step must still be killed with the check."""
    import signal

    gpu_check = _module()
    started: list[subprocess.Popen] = []
    real_popen = subprocess.Popen

    def popen_then_signal(*args, **kwargs):
        proc = real_popen(*args, **kwargs)
        started.append(proc)
        os.kill(os.getpid(), signal.SIGTERM)  # handled here, inside the window, by gpu_check's handler
        return proc

    previous = signal.signal(signal.SIGTERM, gpu_check._terminate)
    monkeypatch.setattr(gpu_check.subprocess, "Popen", popen_then_signal)
    try:
        with pytest.raises(SystemExit) as stopped:
            gpu_check._run([sys.executable, "-c", "import time; time.sleep(60)"], timeout=60,
                           log=tmp_path / "step.log")
    finally:
        signal.signal(signal.SIGTERM, previous)
        gpu_check._STARTING.update(on=False, pending=0)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert started and started[0].poll() is not None, "the step outlived the check"
