"""The plugin-form graphs on a real runtime: ONNX Runtime with vosrt's CPU operators.

The plugin form is what TensorRT parses; here its D2Conv3D and L2MemoryReadout nodes run through
onnxruntime-extensions Python operators calling libvosrt_cpu_ops.so, and must agree with the portable
form (standard ONNX) within the export parity bounds, for both families.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest

from vosrt.sdk import cpu_ops
from vosrt.sdk.backends.onnxruntime import OnnxRuntimeBackend
from vosrt.sdk.errors import UserError
from vosrt.sdk.package import load_package

from sdk_packages import tiny_package

REPO = Path(__file__).resolve().parent.parent
PROB_BOUND = 1e-4  # the export parity bound on probabilities


@pytest.fixture(scope="module")
def packages():
    """Tiny stcn and 3dc-seg packages in both forms (random weights)."""
    try:
        cpu_ops.load_cpu_ops()
    except cpu_ops.CpuOpsUnavailable as err:
        pytest.skip(f"the CPU operators cannot be built here: {err}")
    return {kind: load_package(tiny_package(kind, forms=("portable", "plugin"))) for kind in ("stcn", "3dc-seg")}


def _random_feeds(backend, graph, sizes, seed=0):
    rng = np.random.default_rng(seed)
    feeds = {}
    for info in backend.sessions[graph].get_inputs():
        shape = [d if isinstance(d, int) else sizes[(info.name, i)] for i, d in enumerate(info.shape)]
        feeds[info.name] = rng.standard_normal(shape, dtype=np.float32)
    return feeds


def test_stcn_segment_plugin_form_on_onnxruntime_equals_portable_form(packages):
    package = packages["stcn"]
    plugin = OnnxRuntimeBackend(package, form="plugin", device="cpu")
    portable = OnnxRuntimeBackend(package, form="portable", device="cpu")
    assert plugin.forms["segment"] == "plugin" and plugin.forms["encode_key"] == "portable"
    n = 7 * 2 * 2  # 7 memory frames of 2×2 keys: more entries than top_k = 20
    sizes = {("mem_key", 2): n, ("mem_value", 0): 2, ("mem_value", 2): n}
    feeds = _random_feeds(portable, "segment", sizes)
    for top_k in (None, 3, 0):
        run_feeds = dict(feeds) if top_k is None else dict(feeds, top_k=np.array([top_k], np.int64))
        got, want = plugin.run("segment", run_feeds), portable.run("segment", run_feeds)
        assert np.abs(got["prob"] - want["prob"]).max() <= PROB_BOUND, top_k
        assert (got["labels"] == want["labels"]).mean() > 0.99, top_k


def test_3dc_seg_segment_clip_plugin_form_on_onnxruntime_equals_portable_form(packages):
    package = packages["3dc-seg"]
    plugin = OnnxRuntimeBackend(package, form="plugin", device="cpu")
    portable = OnnxRuntimeBackend(package, form="portable", device="cpu")
    assert set(plugin.forms.values()) == {"plugin"}
    (graph,) = package.graphs
    clip = np.random.default_rng(1).random((1, 3, 8, package.height, package.width), dtype=np.float32)
    got, want = plugin.run(graph, {"clip": clip}), portable.run(graph, {"clip": clip})
    for name in want:
        assert np.abs(got[name] - want[name]).max() <= PROB_BOUND, name


def test_plugin_form_streams_like_the_portable_form(packages):
    from vosrt.sdk.synthetic import generate_sequence
    from vosrt.sdk.tracker import Tracker

    package = packages["stcn"]
    sequence = generate_sequence(3, num_frames=14, height=package.height, width=package.width, num_objects=2)
    results = {}
    for form in ("plugin", "portable"):
        tracker = Tracker(OnnxRuntimeBackend(package, form=form, device="cpu"), package, color="rgb")
        results[form] = [tracker.step(frame, sequence.labels[0] if t == 0 else None)
                         for t, frame in enumerate(sequence.frames)]
    agree = np.mean([np.mean(a == b) for a, b in zip(results["plugin"], results["portable"])])
    assert agree > 0.99


def test_auto_form_says_which_form_runs(packages):
    backend = OnnxRuntimeBackend(packages["stcn"], device="cpu")
    assert backend.forms == {"encode_key": "portable", "encode_value": "portable", "segment": "plugin"}
    assert "plugin form with vosrt CPU operators for segment" in backend.describe()


def test_missing_library_falls_back_to_the_portable_form_with_one_line_notice(packages, monkeypatch, capfd):
    monkeypatch.setenv(cpu_ops.ENV_LIB, "/nonexistent/libvosrt_cpu_ops.so")
    backend = OnnxRuntimeBackend(packages["3dc-seg"], device="cpu")
    err = capfd.readouterr().err.strip().splitlines()
    assert set(backend.forms.values()) == {"portable"}
    assert len(err) == 1 and "CPU operators unavailable" in err[0] and "portable form" in err[0]
    with pytest.raises(UserError, match="needs vosrt's CPU operators"):
        OnnxRuntimeBackend(packages["3dc-seg"], form="plugin", device="cpu")


def test_portable_form_when_asked_needs_no_library(packages, monkeypatch, capfd):
    monkeypatch.setenv(cpu_ops.ENV_LIB, "/nonexistent/libvosrt_cpu_ops.so")
    backend = OnnxRuntimeBackend(packages["stcn"], form="portable", device="cpu")
    assert set(backend.forms.values()) == {"portable"} and capfd.readouterr().err == ""


@pytest.mark.slow
def test_non_editable_install_in_a_fresh_venv_runs_the_plugin_form(packages, tmp_path):
    # The fresh venv sees this environment's third-party packages through a .pth line (no download), but
    # vosrt itself comes from a wheel built from the repository: no editable finder, no source tree.
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)  # pip and setuptools come from this environment
    python = env_dir / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    here = [p for p in sys.path if p.endswith("site-packages")]
    Path(site, "outer.pth").write_text("\n".join(here) + "\n")
    # Built from a copy of the source, so the build's by-products stay out of the working tree.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md", "MANIFEST.in", "vosrt", "sdk", "training", "export",
                 "plugins"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("build*", "__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(source)],
                   check=True, cwd=tmp_path)
    script = (
        "import sys, vosrt, numpy as np\n"
        "from vosrt.sdk.package import load_package\n"
        "from vosrt.sdk.backends.onnxruntime import OnnxRuntimeBackend\n"
        "assert 'site-packages' in vosrt.__file__, vosrt.__file__\n"
        f"package = load_package({str(packages['3dc-seg'].path)!r})\n"
        "backend = OnnxRuntimeBackend(package, device='cpu')\n"
        "(graph,) = package.graphs\n"
        "out = backend.run(graph, {'clip': np.zeros((1, 3, 8, package.height, package.width), np.float32)})\n"
        "print(backend.forms[graph], vosrt.sdk.cpu_ops.find_library())\n"
    )
    env = dict(os.environ, VOSRT_CACHE=str(tmp_path / "cache"), PYTHONPATH="")
    env.pop(cpu_ops.ENV_LIB, None)
    result = subprocess.run([python, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    form, library = result.stdout.split()
    assert form == "plugin" and library.startswith(str(tmp_path / "cache"))
    assert "compiling the CPU operator library" in result.stderr


def test_cpu_graph_cache_keeps_one_rewrite_per_source_and_nothing_from_a_failure(tmp_path, monkeypatch):
    """A re-exported graph replaces its earlier rewrite in the cache, long-unused rewrites go, and a
    rewrite that fails leaves no file behind."""
    monkeypatch.setenv(cpu_ops.ENV_CACHE, str(tmp_path / "cache"))
    source = tmp_path / "segment.plugin.onnx"
    shutil.copy(REPO / "sdk" / "models" / "stcn-lite" / "segment.plugin.onnx", source)
    first = cpu_ops.cpu_graph_for(source)
    assert first.is_file() and first.parent == tmp_path / "cache" / "cpu_graphs"
    assert cpu_ops.cpu_graph_for(source) == first            # unchanged source: the same rewrite

    forgotten = first.parent / "other.0123456789abcdef.onnx"  # some other source's, unused for 31 days
    forgotten.write_bytes(b"x")
    old = os.stat(first).st_mtime - 31 * 24 * 3600
    os.utime(forgotten, (old, old))
    os.utime(source, ns=(os.stat(source).st_atime_ns, os.stat(source).st_mtime_ns + 10**9))  # "re-exported"
    second = cpu_ops.cpu_graph_for(source)
    assert second != first and sorted(second.parent.iterdir()) == [second]

    broken = tmp_path / "broken.plugin.onnx"
    broken.write_bytes(b"trt.plugins but not a graph")
    with pytest.raises(Exception):
        cpu_ops.cpu_graph_for(broken)
    assert sorted(second.parent.iterdir()) == [second]
