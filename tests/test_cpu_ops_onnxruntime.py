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


def _cpu_ops() -> cpu_ops.CpuOps:
    """The CPU operator library; the test is skipped, not failed, where it cannot be built."""
    try:
        return cpu_ops.load_cpu_ops()
    except cpu_ops.CpuOpsUnavailable as err:
        pytest.skip(f"the CPU operators cannot be built here: {err}")


@pytest.fixture(scope="module")
def packages():
    """Tiny stcn and 3dc-seg packages in both forms (random weights)."""
    _cpu_ops()
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


def test_a_package_exported_in_the_plugin_form_alone_runs_on_onnxruntime(packages, monkeypatch):
    # `vosrt export --forms plugin` writes no portable file: ONNX Runtime refused the package ("no 'portable'
    # form of graph 'encode_key'"), though its graphs without custom operators run as they are and the others
    # through the CPU operators.
    from vosrt.sdk.synthetic import generate_sequence
    from vosrt.sdk.tracker import Tracker

    both, alone = packages["stcn"], load_package(tiny_package("stcn", forms=("plugin",)))
    assert alone.forms == ["plugin"]
    backend = OnnxRuntimeBackend(alone, device="cpu")
    assert backend.forms == {"encode_key": "plugin", "encode_value": "plugin", "segment": "plugin"}
    assert "encode_key" not in backend._cpu_ops_graphs and "segment" in backend._cpu_ops_graphs
    sequence = generate_sequence(3, num_frames=6, height=both.height, width=both.width, num_objects=2)
    trackers = [Tracker(backend, alone, color="rgb"),
                Tracker(OnnxRuntimeBackend(both, form="plugin", device="cpu"), both, color="rgb")]
    for t, frame in enumerate(sequence.frames):
        mask = sequence.labels[0] if t == 0 else None
        np.testing.assert_array_equal(*(tracker.step(frame, mask) for tracker in trackers))
    with pytest.raises(UserError, match=r"form='portable': package .* has no portable form of graph\(s\) segment, "
                                        r"whose custom operators .*; use form='auto'"):
        OnnxRuntimeBackend(alone, form="portable", device="cpu")
    monkeypatch.setenv(cpu_ops.ENV_LIB, "/nonexistent/libvosrt_cpu_ops.so")   # no fallback to a missing form
    with pytest.raises(UserError, match=r"has graph\(s\) segment only in the plugin form, which needs vosrt's CPU "
                                        r"operators"):
        OnnxRuntimeBackend(alone, device="cpu")


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
    from google.protobuf.message import DecodeError   # what onnx raises for bytes that are not a graph

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
    with pytest.raises(DecodeError):                         # the rewrite's own failure: not a graph
        cpu_ops.cpu_graph_for(broken)
    assert sorted(second.parent.iterdir()) == [second]


# ---- Hand-written plugin-form graphs: the nodes as a foreign exporter might write them, in real ONNX
# Runtime sessions with the CPU operators registered as the backend registers them. ----

def _plugin_session(tmp_path, nodes, inputs, outputs, initializers=()):
    """A session of a plugin-form graph made of ``nodes`` (trt.plugins nodes); its run raises what an
    operator kept (as the backend's run does)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from vosrt.sdk import native_callbacks
    from vosrt.sdk.backends.onnxruntime import session_options

    ops = _cpu_ops()  # before anything else
    value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, None)  # noqa: E731
    graph = helper.make_graph(nodes, "g", [i if not isinstance(i, str) else value(i) for i in inputs],
                              [value(o) for o in outputs], list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("trt.plugins", 1)])
    model.ir_version = 10
    path = tmp_path / f"graph{len(list(tmp_path.glob('*.onnx')))}.plugin.onnx"
    onnx.save(model, str(path))
    options = session_options(1)
    options.register_custom_ops_library(cpu_ops.register_onnxruntime_ops(ops))
    session = ort.InferenceSession(cpu_ops.plugin_model_for_cpu(path), options, providers=["CPUExecutionProvider"])

    def run(feeds):
        try:
            return session.run(None, feeds)
        finally:
            native_callbacks.release()
    return run


def _conv_node(inputs=("X", "D", "M", "W", "B"), name="conv1", **attrs):
    from onnx import helper
    attrs = {"kernel_shape": [3, 3, 3], "strides": [1, 1, 1], "pads": [1, 1, 1], "dilations": [1, 1, 1], "group": 1,
             **attrs}
    attrs = {k: v for k, v in attrs.items() if v is not None}
    return helper.make_node("D2Conv3D", list(inputs), ["Y"], name=name, domain="trt.plugins", plugin_version="1",
                            plugin_namespace="", **attrs)


def _readout_node(name="read1", output="out", **attrs):
    from onnx import helper
    return helper.make_node("L2MemoryReadout", ["mk", "qk", "mv"], [output], name=name, domain="trt.plugins",
                            plugin_version="1", plugin_namespace="", **attrs)


def _conv_feeds(n=1, c=2, cout=4, thw=(4, 5, 6), groups=1, seed=0):
    rng = np.random.default_rng(seed)
    return {"X": rng.standard_normal((n, c, *thw), dtype=np.float32),
            "D": 1 + rng.random((n, 3, *thw), dtype=np.float32),
            "M": rng.random((n, 27, *thw), dtype=np.float32),
            "W": rng.standard_normal((cout, c // groups, 3, 3, 3), dtype=np.float32),
            "B": rng.standard_normal(cout, dtype=np.float32)}


def _readout_feeds(b=1, ck=8, n=100, m=30, v=5, seed=0):
    rng = np.random.default_rng(seed)
    return {"mk": rng.standard_normal((b, ck, n), dtype=np.float32),
            "qk": rng.standard_normal((b, ck, m), dtype=np.float32),
            "mv": rng.standard_normal((b, v, n), dtype=np.float32)}


CONV_MISFITS = {  # input -> (the array fed instead, the message)
    "D": (lambda f: f["D"][:, :, :1], r"D must be \[N, 3, To, Ho, Wo\] = \[1, 3, 4, 5, 6\], got \[1, 3, 1, 5, 6\]"),
    "M": (lambda f: f["M"][:, :8], r"M must be \[N, kt\*kh\*kw, To, Ho, Wo\] = \[1, 27, 4, 5, 6\], got \[1, 8"),
    "W": (lambda f: f["W"][:, :1], r"Wt \[Cout, C/group, kt, kh, kw\] must have C/group = 2 in dim 1"),
    "B": (lambda f: f["B"][:2], r"B must be \[Cout\] = \[4\], got \[2\]"),
    "X": (lambda f: f["X"][0], r"X must have rank 5 \(\[N, C, T, H, W\]\)"),
}


@pytest.mark.parametrize("misfit", list(CONV_MISFITS))
def test_d2conv3d_node_with_an_input_that_does_not_fit_is_an_error_naming_the_node(tmp_path, misfit):
    # The library takes only X's and Wt's sizes: a smaller D, M or B was read past its end (a silently
    # wrong Y), a Wt with too few input channels likewise.
    run = _plugin_session(tmp_path, [_conv_node()], ["X", "D", "M", "W", "B"], ["Y"])
    feeds = _conv_feeds()
    assert run(feeds)[0].shape == (1, 4, 4, 5, 6)
    change, message = CONV_MISFITS[misfit]
    with pytest.raises(UserError, match="D2Conv3D node 'conv1': " + message):
        run(dict(feeds, **{misfit: change(feeds)}))


def test_d2conv3d_node_whose_weights_disagree_with_its_attributes_is_an_error(tmp_path):
    feeds = _conv_feeds()
    run = _plugin_session(tmp_path, [_conv_node(group=2)], ["X", "D", "M", "W", "B"], ["Y"])
    with pytest.raises(UserError, match=r"D2Conv3D node 'conv1': Wt .* must have C/group = 1 in dim 1, got \[4, 2"):
        run(feeds)
    run = _plugin_session(tmp_path, [_conv_node(kernel_shape=[1, 3, 3])], ["X", "D", "M", "W", "B"], ["Y"])
    with pytest.raises(UserError, match=r"has kernel \[3, 3, 3\] but kernel_shape is \[1, 3, 3\]"):
        run(feeds)


READOUT_MISFITS = {
    "mv": (lambda f: f["mv"][:, :, :10], r"memory length differs: mem_key \[B, Ck, N\] = \[1, 8, 100\], "
                                         r"mem_value \[B, V, N\] = \[1, 5, 10\]"),
    "qk": (lambda f: f["qk"][:, :2], r"key channels differ"),
    "mk": (lambda f: np.concatenate([f["mk"], f["mk"]]), r"batch differs"),
}


@pytest.mark.parametrize("misfit", list(READOUT_MISFITS))
def test_readout_node_with_an_input_that_does_not_fit_is_an_error_naming_the_node(tmp_path, misfit):
    run = _plugin_session(tmp_path, [_readout_node(top_k=4)], ["mk", "qk", "mv"], ["out"])
    feeds = _readout_feeds()
    assert run(feeds)[0].shape == (1, 5, 30)
    change, message = READOUT_MISFITS[misfit]
    with pytest.raises(UserError, match="L2MemoryReadout node 'read1': " + message):
        run(dict(feeds, **{misfit: change(feeds)}))


@pytest.mark.parametrize("attrs, message", [
    ({"group": 0}, r"group must be an integer >= 1, got 0"),
    ({"strides": [0, 1, 1]}, r"strides must be 3 integers >= 1 \(t, h, w\), got \[0, 1, 1\]"),
    ({"dilations": [1, 1]}, r"dilations must be 3 integers >= 1"),
    ({"pads": [0, 0, 0, 2, 2, 2]}, r"pads must be 3 integers >= 0 \(t, h, w, symmetric\)"),  # ONNX Conv's begin/end
    ({"kernel_shape": None}, r"the kernel_shape attribute \(3 ints, t h w\) is required"),
], ids=["group0", "stride0", "dilations2", "pads6", "no-kernel_shape"])
def test_d2conv3d_node_with_an_attribute_out_of_range_is_refused_when_opened(tmp_path, attrs, message):
    # group 0 and stride 0 were a bare "invalid value" at run time; six pads ran with the first three
    # (wrong for asymmetric pads); a missing kernel_shape was not noticed.
    with pytest.raises(UserError, match="D2Conv3D node 'conv1': " + message):
        _plugin_session(tmp_path, [_conv_node(**attrs)], ["X", "D", "M", "W", "B"], ["Y"])


def test_readout_node_with_a_negative_top_k_is_refused_and_top_k_beyond_the_limit_says_so(tmp_path):
    # A negative top_k read every entry, as top_k = 0 does.
    with pytest.raises(UserError, match=r"L2MemoryReadout node 'read1': top_k must be an integer >= 0 .* got -1"):
        _plugin_session(tmp_path, [_readout_node(top_k=-1)], ["mk", "qk", "mv"], ["out"])
    run = _plugin_session(tmp_path, [_readout_node(top_k=65)], ["mk", "qk", "mv"], ["out"])
    with pytest.raises(Exception, match=r"L2MemoryReadout node 'read1': top_k 65 is not supported: at most 64"):
        run(_readout_feeds(n=100))
    assert run(_readout_feeds(n=60))[0].shape == (1, 5, 30)  # top_k >= N: every entry


def test_d2conv3d_node_inputs_absent_by_empty_name_or_told_apart_by_rank(tmp_path):
    from onnx import TensorProto, helper

    feeds = _conv_feeds()
    full = _plugin_session(tmp_path, [_conv_node()], ["X", "D", "M", "W", "B"], ["Y"])
    no_mod = dict(feeds, M=np.ones_like(feeds["M"]))
    want = full(no_mod)[0]
    given = {k: v for k, v in feeds.items() if k != "M"}
    # ONNX's way of leaving out an optional input: an empty name (ONNX Runtime refused the rewrite).
    run = _plugin_session(tmp_path, [_conv_node(["X", "D", "", "W", "B"])], ["X", "D", "W", "B"], ["Y"])
    np.testing.assert_allclose(run(given)[0], want, rtol=1e-5, atol=1e-5)
    # X, D, Wt, B with B a graph input of stated rank 1 (it was taken for X, D, M, Wt: an IndexError)
    bias = helper.make_tensor_value_info("B", TensorProto.FLOAT, [4])
    run = _plugin_session(tmp_path, [_conv_node(["X", "D", "W", "B"])], ["X", "D", "W", bias], ["Y"])
    np.testing.assert_allclose(run(given)[0], want, rtol=1e-5, atol=1e-5)
    with pytest.raises(UserError, match=r"with 4 inputs, input 3 \('B'\) must be Wt after M \(rank 5\) or B after "
                                        r"Wt \(rank 1\), and its rank is not stated"):
        _plugin_session(tmp_path, [_conv_node(["X", "D", "W", "B"])], ["X", "D", "W", "B"], ["Y"])


def test_empty_tensors_give_empty_outputs_and_an_empty_memory_is_an_error(tmp_path):
    conv = _plugin_session(tmp_path, [_conv_node()], ["X", "D", "M", "W", "B"], ["Y"])
    feeds = _conv_feeds()
    assert conv({k: (v[:0] if k in "XDM" else v) for k, v in feeds.items()})[0].shape == (0, 4, 4, 5, 6)
    read = _plugin_session(tmp_path, [_readout_node(top_k=4)], ["mk", "qk", "mv"], ["out"])
    feeds = _readout_feeds()
    assert read(dict(feeds, mv=feeds["mv"][:, :0]))[0].shape == (1, 0, 30)                  # no objects
    assert read(dict(feeds, qk=feeds["qk"][:, :, :0]))[0].shape == (1, 5, 0)                # no queries
    assert read({k: v[:0] for k, v in feeds.items()})[0].shape == (0, 5, 30)                # batch 0
    with pytest.raises(UserError, match=r"L2MemoryReadout node 'read1': the memory is empty \(N = 0\)"):
        read(dict(feeds, mk=feeds["mk"][:, :, :0], mv=feeds["mv"][:, :, :0]))


def test_two_readout_nodes_with_different_top_k_each_read_with_their_own(tmp_path):
    # The rewrite turns top_k into an input; the second node's top_k used to be served by the first
    # node's input, so it silently read with the first node's top_k.
    nodes = [_readout_node("read_k2", "out2", top_k=2), _readout_node("read_all", "out_all", top_k=0)]
    run = _plugin_session(tmp_path, nodes, ["mk", "qk", "mv"], ["out2", "out_all"])
    feeds = _readout_feeds()
    ops = _cpu_ops()
    got2, got_all = run(feeds)
    np.testing.assert_allclose(got2, ops.l2_memory_readout(feeds["mk"], feeds["qk"], feeds["mv"], 2), rtol=1e-6)
    np.testing.assert_allclose(got_all, ops.l2_memory_readout(feeds["mk"], feeds["qk"], feeds["mv"], 0), rtol=1e-6)


def _most_threads_during(call) -> tuple[int, int]:
    """(threads of this process just before ``call``, the most seen while it ran), sampled from /proc."""
    import threading
    import time

    seen, done = [], threading.Event()

    def sample():
        while not done.is_set():
            seen.append(len(os.listdir("/proc/self/task")))
            time.sleep(0.0005)
    sampler = threading.Thread(target=sample)
    sampler.start()
    while not seen:
        time.sleep(0.001)
    before = len(os.listdir("/proc/self/task"))
    try:
        call()
    finally:
        done.set()
        sampler.join()
    return before, max(seen)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
def test_each_backend_runs_the_cpu_operators_on_its_own_thread_count(tmp_path, packages, monkeypatch):
    # The library is one per process; the backend used to set its thread count on it, so the last backend
    # made (threads=3 here) decided the threads of every other backend's runs, and of direct calls.
    ops = _cpu_ops()
    one = OnnxRuntimeBackend(packages["3dc-seg"], form="plugin", device="cpu", threads=1)
    three = OnnxRuntimeBackend(packages["3dc-seg"], form="plugin", device="cpu", threads=3)
    assert ops.threads == 0  # the library's own setting, for direct calls, is left alone
    (graph,) = packages["3dc-seg"].graphs
    clip = np.zeros((1, 3, 8, packages["3dc-seg"].height, packages["3dc-seg"].width), np.float32)
    # the thread count each backend's own runs hand the library (its operators are called from those runs)
    given = []
    monkeypatch.setattr(ops, "_threads", lambda threads=ops._threads: given.append(threads()) or given[-1])
    for backend, threads in ((one, 1), (three, 3), (one, 1)):
        given.clear()
        assert set(backend.run(graph, {"clip": clip})) == set(backend.output_names(graph))
        assert given and set(given) == {threads}, (threads, given)
    monkeypatch.undo()
    # What a run under a backend's setting does, seen on an operator large enough to split (64 tiles of
    # output positions): no worker thread for 1, two for 3.
    run = _plugin_session(tmp_path, [_conv_node()], ["X", "D", "M", "W", "B"], ["Y"])
    feeds = _conv_feeds(c=32, cout=32, thw=(8, 32, 32))
    for threads, workers in ((1, 0), (3, 2)):
        with cpu_ops.operator_threads(threads):
            before, most = _most_threads_during(lambda: run(feeds))
        assert most - before == workers, (threads, before, most)


def test_a_tracker_top_k_beyond_32_bits_reads_all_of_the_memory_on_the_plugin_form(packages):
    # The CPU readout takes top_k as a 32-bit int: fed as given, 2**32 + 1 read the top 1 and 2**31 failed in the
    # kernel. k = min(top_k, N), so the tracker feeds at most the bank's positions.
    import vosrt.sdk
    from vosrt.sdk.synthetic import generate_sequence
    video = generate_sequence(7, num_frames=4, height=32, width=32, num_objects=2, num_distractors=0)

    def probabilities(top_k):
        tracker = vosrt.sdk.load(packages["stcn"].path, threads=1, form="plugin", mem_every=1, top_k=top_k)
        tracker.step(video.frames[0], video.labels[0])
        return np.stack([tracker.step(frame, return_probabilities=True)[1] for frame in video.frames[1:]])

    every = probabilities(0)
    for huge in (2**31, 2**32 + 1):
        np.testing.assert_allclose(probabilities(huge), every, atol=1e-6)
    assert np.abs(probabilities(1) - every).max() > 1e-4    # reading the top 1 differs: the check can fail


def test_a_ctrl_c_raised_while_the_handlers_are_put_back_leaves_no_later_signal_held():
    # The KeyboardInterrupt of Ctrl-C landing just after holding() had put Python's own SIGINT handler back skipped
    # the rest: SIGTERM and SIGHUP kept their stand-ins and the depth stayed at 1, so every later stop signal of the
    # process (an application that goes on after Ctrl-C: a notebook) was held for a release that never came.
    # The signal's landing is placed with a trace function: the first line run once SIGINT's handler is back.
    import signal
    import sys

    from vosrt.sdk import native_callbacks

    before = {s: signal.getsignal(s) for s in native_callbacks._STOP_SIGNALS}
    lines = []

    def local(frame, event, arg):
        if event == "line" and not lines and signal.getsignal(signal.SIGINT) is before[signal.SIGINT]:
            lines.append(frame.f_lineno)
            raise KeyboardInterrupt
        return local

    def tracer(frame, event, arg):
        return local if frame.f_code is native_callbacks._restore.__code__ else None

    try:
        with pytest.raises(KeyboardInterrupt):
            with native_callbacks.holding():
                assert signal.getsignal(signal.SIGINT) is not before[signal.SIGINT]   # the stand-in
                sys.settrace(tracer)
        sys.settrace(None)
        assert lines   # it landed
        assert native_callbacks._main_depth == 0
        assert {s: signal.getsignal(s) for s in before} == before
        assert not native_callbacks.hold(signal.SIGINT)   # a later signal is not held
    finally:
        sys.settrace(None)
        native_callbacks._main_depth = 0
        for signum, handler in before.items():
            signal.signal(signum, handler)
