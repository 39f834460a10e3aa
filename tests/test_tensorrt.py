"""The TensorRT path: engines built from the plugin form, compared with ONNX Runtime, streamed through the
TensorRT backend.

Tests marked ``tensorrt`` need TensorRT, cuda-python, a GPU and ``libvosrt_plugins.so`` (found through
``$VOSRT_PLUGIN_LIB`` or ``plugins/build/trt/``, else built here with CMake when TensorRT's headers are
found through ``$TensorRT_ROOT``); on such a machine ``pytest -m tensorrt`` runs the whole path: export
stcn-lite and 3dc-seg-lite packages, build fp32 and fp16 engines, compare them with ONNX Runtime and
stream 500 frames. The refusal tests at the top run everywhere.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

# Every test here exports or reads ONNX graphs: without onnx (a bare GPU machine running
# samples/gpu_check.py) the module is skipped, saying so, instead of failing the collection.
pytest.importorskip("onnx")

from trt_fixtures import (FP16_LABEL_MARGIN, FP16_MAX_ABS, FP32_LABEL_MISMATCH, FP32_MAX_REL, add_engine_record,
                          write_stcn_package)

import vosrt.sdk
from vosrt.sdk.backends.tensorrt import PLUGIN_LIBRARY_ENV, check_engine_compatibility
from vosrt.sdk.errors import UserError, install_command

ROOT = Path(__file__).resolve().parents[1]
CHECKOUT_LIBRARY = ROOT / "plugins" / "build" / "trt" / "libvosrt_plugins.so"
H100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


# ------------------------------------------------------------------------------------------------
# refusals (no TensorRT needed)


def test_backend_refuses_a_package_without_engines_and_says_to_build(tmp_path, monkeypatch):
    import importlib.util

    pkg = write_stcn_package(tmp_path / "pkg")
    with pytest.raises(UserError, match="has no TensorRT engines.*vosrt build"):
        vosrt.sdk.load(pkg, backend="tensorrt")
    # where TensorRT is not installed, `vosrt build` cannot run here either: said, with what installs it
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorrt" else find_spec(name, *a))
    with pytest.raises(UserError, match=r"no TensorRT engines, and TensorRT is not installed here: the TensorRT "
                                        r"backend needs TensorRT and an NVIDIA GPU on the machine that runs it \(pip "
                                        r"install .*\[trt\].*\), where `vosrt build .*` makes engines for its GPU"):
        vosrt.sdk.load(pkg, backend="tensorrt")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "tensorrt" else
                        find_spec(name, *a))
    with pytest.raises(UserError, match="no TensorRT engines: build them on this machine with `vosrt build "):
        vosrt.sdk.load(pkg, backend="tensorrt")


def test_backend_refuses_engines_missing_on_disk(tmp_path):
    pkg = write_stcn_package(tmp_path / "pkg")
    add_engine_record(pkg, write_files=False)
    with pytest.raises(UserError, match="engine of graph .* is missing; rebuild"):
        vosrt.sdk.load(pkg, backend="tensorrt")


def test_backend_refuses_a_precision_that_was_not_built(tmp_path):
    pkg = write_stcn_package(tmp_path / "pkg")
    add_engine_record(pkg, precision="fp32")
    with pytest.raises(UserError, match="no fp16 engines .* --precision fp16"):
        vosrt.sdk.load(pkg, backend="tensorrt", precision="fp16")


def test_backend_refuses_a_missing_plugin_library_and_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.delenv(PLUGIN_LIBRARY_ENV, raising=False)
    pkg = write_stcn_package(tmp_path / "pkg")
    add_engine_record(pkg, plugin_library=str(tmp_path / "gone" / "libvosrt_plugins.so"))
    with pytest.raises(UserError, match="cmake -S plugins"):
        vosrt.sdk.load(pkg, backend="tensorrt", plugin_lib=tmp_path / "missing.so")
    if not CHECKOUT_LIBRARY.exists() and importlib.util.find_spec("tensorrt") is not None:
        # (without TensorRT, that is what the refusal names: see the test below)
        with pytest.raises(UserError, match="libvosrt_plugins.so\\) was not found"):
            vosrt.sdk.load(pkg, backend="tensorrt")


@pytest.mark.parametrize("command", ["run", "bench"])
def test_the_plugin_library_hint_of_vosrt_run_and_bench_names_only_options_they_take(tmp_path, monkeypatch, capsys,
                                                                                     command):
    # it said "pass plugin_lib=PATH (CLI: --plugin-lib PATH)": only vosrt build has --plugin-lib
    from vosrt.cli import build_parser, main

    monkeypatch.setenv(PLUGIN_LIBRARY_ENV, str(tmp_path / "missing.so"))
    pkg = write_stcn_package(tmp_path / "pkg")
    add_engine_record(pkg)
    argv = [command, str(pkg), "--backend", "tensorrt"] + (["--source", str(tmp_path / "none.mp4")]
                                                           if command == "run" else [])
    assert main(argv) == 2
    message = capsys.readouterr().err
    assert "libvosrt_plugins.so" in message or "missing.so" in message, message
    assert PLUGIN_LIBRARY_ENV in message
    for flag in set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", message)) - {"--build"}:   # cmake --build: not ours
        _, unknown = build_parser()[0].parse_known_args(argv + [flag, "X"])
        assert flag not in unknown, f"the hint names {flag}, which vosrt {command} does not take: {message}"


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_backend_without_tensorrt_says_what_to_install(tmp_path):
    pkg = write_stcn_package(tmp_path / "pkg")
    add_engine_record(pkg)
    library = tmp_path / "libvosrt_plugins.so"
    library.write_bytes(b"\x7fELF")
    with pytest.raises(UserError) as refused:
        vosrt.sdk.load(pkg, backend="tensorrt", plugin_lib=library)
    assert install_command("trt") in str(refused.value) and "--backend onnxruntime" in str(refused.value)



@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_without_tensorrt_the_missing_tensorrt_is_named_before_the_plugin_library_it_would_need(tmp_path, monkeypatch):
    # it used to say "libvosrt_plugins.so was not found; build it with cmake ... -DTensorRT_ROOT=<TensorRT>",
    # which cannot be done without TensorRT, and only after that that TensorRT is missing (vosrt build says
    # TensorRT first)
    monkeypatch.delenv(PLUGIN_LIBRARY_ENV, raising=False)
    pkg = write_stcn_package(tmp_path / "pkg")
    add_engine_record(pkg)
    with pytest.raises(UserError) as refused:
        vosrt.sdk.load(pkg, backend="tensorrt")
    assert install_command("trt") in str(refused.value) and "cmake" not in str(refused.value)


def test_engines_from_another_tensorrt_version_are_refused_with_a_rebuild_hint():
    build = {"tensorrt": "10.16.0", "gpu": H100}
    with pytest.raises(UserError, match="built by TensorRT 10.16.0, but this is TensorRT 11.1.0.*vosrt build PKG"):
        check_engine_compatibility(build, "11.1.0", H100, "PKG")


@pytest.mark.parametrize("runtime, runs", [("10.16.0", True), ("10.17.1", True), ("11.1.0", False),
                                            ("10.15.0", False)])
def test_version_compatible_engines_run_on_later_tensorrt_versions_of_their_major_only(runtime, runs):
    # --embed-plugins builds them VERSION_COMPATIBLE: later 10.x runs them; 11 would run the engine but not
    # the plugin library it carries (compiled against 10's logger and registry interfaces); older cannot
    build = {"tensorrt": "10.16.0", "gpu": H100, "plugins_serialized": True}
    if runs:
        check_engine_compatibility(build, runtime, H100, "PKG")
    else:
        with pytest.raises(UserError, match=f"built by TensorRT 10.16.0, but this is TensorRT {runtime}"):
            check_engine_compatibility(build, runtime, H100, "PKG")


def test_engines_for_another_gpu_are_refused_with_a_rebuild_hint():
    build = {"tensorrt": "10.16.0", "gpu": H100}
    other = {"name": "NVIDIA L4", "compute_capability": "8.9"}
    with pytest.raises(UserError, match="built for NVIDIA H100.*this GPU is NVIDIA L4.*rebuild"):
        check_engine_compatibility(build, "10.16.0", other, "PKG")
    check_engine_compatibility(build, "10.16.0", dict(H100), "PKG")  # same GPU and version: accepted


# ------------------------------------------------------------------------------------------------
# the whole path (TensorRT + GPU)

FAMILIES = ("stcn-lite", "3dc-seg-lite")
SIZE = (64, 96)
MAX_OBJECTS = 3
MEMORY_CAPACITY = 6


def _tensorrt_include() -> Path | None:
    for base in (os.environ.get("TensorRT_ROOT"), "/usr", "/usr/local/tensorrt", "/opt/tensorrt"):
        if not base:
            continue
        for sub in ("include", "include/x86_64-linux-gnu", "include/aarch64-linux-gnu"):
            if (Path(base) / sub / "NvInfer.h").exists():
                return Path(base)
    return None


@pytest.fixture(scope="module")
def plugin_library(tmp_path_factory) -> Path:
    if os.environ.get(PLUGIN_LIBRARY_ENV):
        return Path(os.environ[PLUGIN_LIBRARY_ENV])
    if CHECKOUT_LIBRARY.exists():
        return CHECKOUT_LIBRARY
    trt_root = _tensorrt_include()
    if trt_root is None or shutil.which("cmake") is None:
        pytest.skip(f"no libvosrt_plugins.so: set {PLUGIN_LIBRARY_ENV}, or TensorRT_ROOT so that it can be built")
    build = tmp_path_factory.mktemp("plugins-build")
    subprocess.run(["cmake", "-S", str(ROOT / "plugins"), "-B", str(build), f"-DTensorRT_ROOT={trt_root}",
                    "-DVOSRT_BUILD_CPU_DRIVER=OFF"], check=True)
    subprocess.run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2)], check=True)
    return build / "trt" / "libvosrt_plugins.so"


def _c3dseg_model():
    """3dc-seg-lite whose D²Conv3D layers sample off the grid: random weights leave every deform_params at zero
    (D = 1, M = 0.5), which would check the plugin only as a plain convolution."""
    import torch

    from sdk_packages import d2conv_layers
    from vosrt.training.models import build_model

    torch.manual_seed(0)
    model = build_model("3dc-seg-lite").eval()
    for layer in d2conv_layers(model):
        torch.nn.init.normal_(layer.deform_params.weight, std=0.02)
    return model


def _c3dseg_checkpoint(folder: Path) -> Path:
    """The checkpoint of :func:`_c3dseg_model`, which the 3dc-seg-lite engines are built from."""
    from vosrt.training.models import save_checkpoint

    checkpoint = folder / "c3d.pt"
    save_checkpoint(checkpoint, _c3dseg_model())
    return checkpoint


@pytest.fixture(scope="module")
def packages(tmp_path_factory, plugin_library) -> dict[str, Path]:
    from vosrt.export.package import export_package
    from vosrt.export.trt_build import build_engines

    out = {}
    for name in FAMILIES:
        folder = tmp_path_factory.mktemp(name)
        if name.startswith("stcn"):
            pkg = export_package(name, None, folder / "pkg", *SIZE, random_weights=True,
                                 streaming={"memory_capacity": MEMORY_CAPACITY})
        else:
            pkg = export_package(name, _c3dseg_checkpoint(folder), folder / "pkg", *SIZE)
        for precision in ("fp32", "fp16"):
            build_engines(pkg, precision=precision, max_objects=MAX_OBJECTS, plugin_lib=plugin_library, progress=None)
        out[name] = pkg
    return out


def _assert_within_fp32_bounds(report: dict) -> None:
    """Every output of every graph: floats within FP32_MAX_REL of ONNX Runtime, label maps identical on
    all but FP32_LABEL_MISMATCH of the pixels (test_a_wrong_top_k_moves_stcn_outputs_beyond_the_fp32_bound
    shows that a wrong plugin fails these)."""
    checked = 0
    for graph, outputs in report.items():
        for name, result in outputs.items():
            checked += 1
            if "mismatch_fraction" in result:
                assert result["mismatch_fraction"] <= FP32_LABEL_MISMATCH, (graph, name, result)
            else:
                assert result["max_rel"] <= FP32_MAX_REL, (graph, name, result)
    assert checked >= 2, report


@pytest.mark.tensorrt
@pytest.mark.parametrize("name", FAMILIES)
def test_build_records_version_gpu_precision_profiles_and_the_fp32_nodes_of_each_graph(packages, plugin_library, name):
    import onnx
    import tensorrt

    from vosrt.export import fp16
    from vosrt.sdk import families
    from vosrt.sdk.backends.tensorrt import TensorRTBackend, current_gpu
    from vosrt.sdk.package import load_package

    package = load_package(packages[name])
    engines = package.engines
    assert engines["default"] == "fp16"
    for precision in ("fp32", "fp16"):
        entry = engines[precision]
        assert entry["tensorrt"] == tensorrt.__version__ and entry["gpu"] == current_gpu()
        assert entry["precision"] == precision and set(entry["files"]) == set(entry["profiles"])
        assert all((packages[name] / f).stat().st_size > 0 for f in entry["files"].values())
    record = engines["fp16"]["fp16"]
    assert set(record["fp32_nodes"]) == set(package.graphs)
    table = families.get(package.family).graphs
    for graph in package.graphs:
        # the counts recorded are those of the graph the engine was built from, rule by rule
        _, report = fp16.convert_to_fp16(onnx.load(str(package.graph_path(graph, "plugin"))), table[graph].memory)
        assert record["fp32_nodes"][graph] == report["fp32_nodes"], graph
        assert record["fp16_nodes"][graph] == report["fp16_nodes"] > 0, graph
        assert record["memory"][graph] == sorted(table[graph].memory), graph
    if package.family == "stcn":
        # the bank is float16, so the readout runs in float16 storage (float32 accumulation in the kernel)
        assert record["fp32_nodes"]["segment"]["memory_readout"] == 0
        assert record["fp32_nodes"]["segment"]["output_tail"] > 0
        backend = TensorRTBackend(package, precision="fp16", plugin_lib=plugin_library)
        assert backend.input_dtype("segment", "mem_key") == np.float16
    assert (packages[name] / "engines" / "timing.cache").stat().st_size > 0


@pytest.mark.tensorrt
@pytest.mark.parametrize("name", FAMILIES)
def test_fp32_engines_match_onnxruntime_on_every_output_of_every_graph(packages, plugin_library, name):
    from vosrt.export.trt_build import compare_engines_with_onnxruntime

    report = compare_engines_with_onnxruntime(packages[name], precision="fp32", plugin_lib=plugin_library)
    _assert_within_fp32_bounds(report)


# (objects, memory frames) at the profile's minimum, optimum and maximum
PROFILE_POINTS = [(1, 1), (2, MEMORY_CAPACITY), (MAX_OBJECTS, MEMORY_CAPACITY)]


@pytest.mark.tensorrt
@pytest.mark.parametrize("objects, frames", PROFILE_POINTS, ids=["min", "opt", "max"])
def test_fp32_stcn_engines_match_onnxruntime_across_the_profile(packages, plugin_library, objects, frames):
    from vosrt.export.trt_build import compare_engines_with_onnxruntime

    report = compare_engines_with_onnxruntime(packages["stcn-lite"], precision="fp32", objects=objects,
                                              memory_frames=frames, plugin_lib=plugin_library)
    _assert_within_fp32_bounds(report)


@pytest.mark.tensorrt
def test_an_object_count_beyond_the_profile_is_refused_with_a_rebuild_hint(packages, plugin_library):
    from vosrt.export.trt_build import comparison_inputs
    from vosrt.sdk.backends.tensorrt import TensorRTBackend
    from vosrt.sdk.package import load_package

    package = load_package(packages["stcn-lite"])
    backend = TensorRTBackend(package, precision="fp32", plugin_lib=plugin_library)
    try:
        feeds = comparison_inputs(package, "segment", objects=MAX_OBJECTS + 1, memory_frames=2)
        with pytest.raises(ValueError, match="mem_value.*outside the engine's profile.*--max-objects"):
            backend.run("segment", feeds)
    finally:
        backend.close()


def _clear_labels(prob: np.ndarray, margin: float = FP16_LABEL_MARGIN) -> np.ndarray:
    """Pixels whose reference label is clear: its top two class probabilities (axis 0) differ by > margin."""
    top_two = np.sort(prob, axis=0)[-2:]
    return (top_two[1] - top_two[0]) > margin


@pytest.mark.tensorrt
@pytest.mark.parametrize("name", FAMILIES)
def test_fp16_engines_agree_with_onnxruntime_labels_where_the_reference_is_clear(packages, plugin_library, name):
    import onnxruntime as ort

    from vosrt.export.trt_build import comparison_inputs
    from vosrt.sdk.backends.tensorrt import TensorRTBackend
    from vosrt.sdk.package import load_package

    package = load_package(packages[name])
    backend = TensorRTBackend(package, precision="fp16", plugin_lib=plugin_library)
    try:
        graph = "segment" if package.family == "stcn" else "segment_clip"
        feeds = comparison_inputs(package, graph, objects=2, memory_frames=3)
        session = ort.InferenceSession(str(package.graph_path(graph, "portable")), providers=["CPUExecutionProvider"])
        expected = session.run(["prob"], feeds)[0]
        actual = backend.download(backend.run(graph, feeds, ["prob"])["prob"])
    finally:
        backend.close()
    assert np.abs(actual - expected).max() <= FP16_MAX_ABS
    if package.family == "stcn":
        clear = _clear_labels(expected)
        same = actual.argmax(axis=0) == expected.argmax(axis=0)
    else:  # one foreground probability: the label is clear away from 0.5
        clear = np.abs(expected - 0.5) > FP16_LABEL_MARGIN / 2
        same = (actual > 0.5) == (expected > 0.5)
    assert clear.mean() > 0.5, "too few clear pixels for the comparison to mean anything"
    assert same[clear].all(), float(1 - same[clear].mean())


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_streaming_with_objects_added_and_removed_matches_onnxruntime(packages, plugin_library, precision):
    from vosrt.sdk.synthetic import generate_sequence

    sequence = generate_sequence(11, num_frames=30, height=SIZE[0], width=SIZE[1], num_objects=3)
    first = np.where(sequence.labels[0] == 3, 0, sequence.labels[0])  # objects 1 and 2 first
    runs = {}
    for backend in ("onnxruntime", "tensorrt"):
        options = {"precision": precision, "plugin_lib": plugin_library} if backend == "tensorrt" else {}
        tracker = vosrt.sdk.load(packages["stcn-lite"], backend=backend, **options)
        labels = []
        for index, frame in enumerate(sequence.frames):
            if index == 0:
                labels.append(tracker.step(frame, mask=first))
            elif index == 10:  # object 3 appears
                labels.append(tracker.step(frame, mask=sequence.labels[index], objects=[3]))
            else:
                if index == 20:
                    tracker.remove_objects([1])
                labels.append(tracker.step(frame))
        runs[backend] = np.stack(labels)
        if backend == "tensorrt":
            tracker.backend.close()
    agreement = np.mean(runs["tensorrt"] == runs["onnxruntime"])
    assert agreement >= (0.999 if precision == "fp32" else 0.98), agreement
    assert not (runs["tensorrt"][21:] == 1).any() and (runs["tensorrt"][11:] == 3).any()


def test_a_wrong_top_k_moves_stcn_outputs_beyond_the_fp32_bound():
    # The bound the fp32 engine tests use must catch a plugin that reads the memory wrongly: top_k 15
    # instead of 20 in the same segment graph (PyTorch, CPU) on the comparison inputs moves `prob` by
    # many times FP32_MAX_REL.
    import torch

    from vosrt.training.graphs import SegmentGraph
    from vosrt.training.models import build_model

    torch.manual_seed(0)
    model = build_model("stcn-lite").eval()
    dims, (h, w) = model.dims, (SIZE[0] // 16, SIZE[1] // 16)
    rng = np.random.default_rng(0)
    shapes = {"mem_key": (1, dims["key_dim"], 3 * h * w), "mem_value": (2, dims["value_dim"], 3 * h * w),
              "query_key": (1, dims["key_dim"], h, w)}
    with torch.no_grad():
        key, f16_thin, _, f8, f4 = model.encode_key(torch.from_numpy(rng.random((1, 3, *SIZE), dtype=np.float32)))
    feeds = {name: torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)) for name, shape in shapes.items()}
    graph = SegmentGraph(model, top_k=20)
    with torch.no_grad():
        right, _ = graph(feeds["mem_key"], feeds["mem_value"], feeds["query_key"], f16_thin, f8, f4)
        wrong, _ = graph(feeds["mem_key"], feeds["mem_value"], feeds["query_key"], f16_thin, f8, f4,
                         torch.tensor([15]))
    moved = float((wrong - right).abs().max() / right.abs().max())
    assert moved > 5 * FP32_MAX_REL, moved


@pytest.mark.parametrize("mistake", ["dilation ignored", "modulation ignored", "dilation rounded",
                                     "dilation axes swapped"])
def test_a_wrong_d2conv3d_moves_the_c3dseg_engine_model_beyond_the_bounds(monkeypatch, mistake):
    # The same for the D2Conv3D plugin: each mistake a plugin could make, in PyTorch on the CPU, moves the logits
    # of the model the 3dc-seg-lite engines are built from (its dilations 0.06..4.9, modulations 0.006..1.0)
    # by many times FP32_MAX_REL, and its probabilities by more than the fp16 engines' FP16_MAX_ABS.
    import torch

    from vosrt.training.ops import d2conv3d as op

    model = _c3dseg_model()
    clip = torch.rand(1, 3, 8, *SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        right = model(clip)
    exact = op.d2conv3d
    wrong_inputs = {"dilation ignored": lambda d, m: (torch.ones_like(d), m),
                    "modulation ignored": lambda d, m: (d, None),
                    "dilation rounded": lambda d, m: (torch.round(d), m),
                    "dilation axes swapped": lambda d, m: (d.flip(1), m)}[mistake]
    monkeypatch.setattr(op, "d2conv3d", lambda x, d, m, *args, **kw: exact(x, *wrong_inputs(d, m), *args, **kw))
    with torch.no_grad():
        wrong = model(clip)
    assert float((wrong - right).abs().max() / right.abs().max()) > 5 * FP32_MAX_REL
    assert float((wrong.sigmoid() - right.sigmoid()).abs().max()) > FP16_MAX_ABS


@pytest.mark.tensorrt
@pytest.mark.parametrize("name", FAMILIES)
def test_streaming_500_frames_keeps_device_memory_constant(packages, plugin_library, name):
    from vosrt.sdk.backends.tensorrt import device_memory_used
    from vosrt.sdk.synthetic import generate_sequence

    sequence = generate_sequence(7, num_frames=500, height=SIZE[0], width=SIZE[1], num_objects=2)
    session = vosrt.sdk.load(packages[name], backend="tensorrt", precision="fp32", plugin_lib=plugin_library)
    backend = session.backend
    marks = {}
    for index, frame in enumerate(sequence.frames):
        if name.startswith("stcn"):
            labels = session.step(frame, mask=sequence.labels[0] if index == 0 else None)
            assert labels.shape == SIZE
        else:
            session.push(frame)
        if index in (150, 499):  # the 6-frame bank is full long before frame 150
            backend.synchronize()
            marks[index] = (backend.allocated_bytes, device_memory_used())
    if not name.startswith("stcn"):
        assert len(session.flush()) > 0
    backend.close()
    assert marks[499][0] == marks[150][0]
    assert marks[499][1] - marks[150][1] <= 1 << 20, marks


@pytest.mark.tensorrt
def test_cuda_graph_replay_gives_the_same_labels(packages, plugin_library):
    from vosrt.sdk.synthetic import generate_sequence

    sequence = generate_sequence(3, num_frames=40, height=SIZE[0], width=SIZE[1], num_objects=2)
    results = []
    for cuda_graphs in (False, True):
        tracker = vosrt.sdk.load(packages["stcn-lite"], backend="tensorrt", precision="fp32",
                                 plugin_lib=plugin_library, cuda_graphs=cuda_graphs)
        results.append([tracker.step(f, mask=sequence.labels[0] if i == 0 else None)
                        for i, f in enumerate(sequence.frames)])
        tracker.backend.close()
    assert all(np.array_equal(a, b) for a, b in zip(*results))


class _ForeignDeviceArray:
    """A device array from 'another library': only the CUDA array interface."""

    def __init__(self, interface: dict):
        self.__cuda_array_interface__ = dict(interface)


@pytest.mark.tensorrt
def test_backend_takes_an_external_stream_and_cuda_array_interface_inputs(packages, plugin_library):
    from vosrt.sdk.backends.tensorrt import TensorRTBackend, check_cuda, cudart
    from vosrt.sdk.package import load_package

    package = load_package(packages["stcn-lite"])
    rt = cudart()
    stream = check_cuda(rt.cudaStreamCreate(), "cudaStreamCreate")
    backend = TensorRTBackend(package, precision="fp32", plugin_lib=plugin_library, stream=int(stream))
    try:
        image = np.random.default_rng(0).random((1, 3, *SIZE), dtype=np.float32)
        on_device = backend.zeros(image.shape)
        backend.write(on_device, 0, 0, image)
        foreign = _ForeignDeviceArray(on_device.__cuda_array_interface__)
        from_host = backend.download(backend.run("encode_key", {"image": image})["key"])
        from_device = backend.download(backend.run("encode_key", {"image": foreign})["key"])
        assert np.array_equal(from_host, from_device)
    finally:
        backend.close()
        rt.cudaStreamDestroy(stream)
