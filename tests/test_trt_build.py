"""`vosrt build` logic that needs no TensorRT: optimisation profiles, comparison inputs, refusals."""
from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest
from trt_fixtures import HEIGHT, STRONGLY_TYPED_BIT, WIDTH, FakeTensorRT, write_stcn_package

from vosrt.cli import main
from vosrt.export.trt_build import (build_engines, comparison_inputs, embeddable_plugin_library,
                                     limit_plugin_workspace, profile_shapes)
from vosrt.sdk.errors import UserError, install_command
from vosrt.sdk.package import load_package

HW = (HEIGHT // 16) * (WIDTH // 16)


def test_profile_spans_one_memory_frame_to_capacity_and_one_to_k_objects(tmp_path):
    package = load_package(write_stcn_package(tmp_path / "pkg"))
    profile = profile_shapes(package, "segment", max_objects=5)
    assert profile["mem_key"] == {"min": [1, 16, HW], "opt": [1, 16, 6 * HW], "max": [1, 16, 6 * HW]}
    assert profile["mem_value"] == {"min": [1, 8, HW], "opt": [2, 8, 6 * HW], "max": [5, 8, 6 * HW]}
    assert profile["query_key"]["min"] == profile["query_key"]["max"] == [1, 16, HEIGHT // 16, WIDTH // 16]
    masks = profile_shapes(package, "encode_value", max_objects=1)["masks"]
    assert masks == {"min": [1, 1, HEIGHT, WIDTH], "opt": [1, 1, HEIGHT, WIDTH], "max": [1, 1, HEIGHT, WIDTH]}


def test_profile_memory_frames_override_the_package_capacity(tmp_path):
    package = load_package(write_stcn_package(tmp_path / "pkg"))
    profile = profile_shapes(package, "segment", max_objects=2, max_memory_frames=11)
    assert profile["mem_key"]["max"] == [1, 16, 11 * HW]


def test_profile_falls_back_to_known_axis_names_without_manifest_io(tmp_path):
    package = load_package(write_stcn_package(tmp_path / "pkg", io_axes=False))
    assert profile_shapes(package, "segment", max_objects=3)["mem_value"]["max"] == [3, 8, 6 * HW]


def test_profile_refuses_nonpositive_limits(tmp_path):
    package = load_package(write_stcn_package(tmp_path / "pkg"))
    with pytest.raises(UserError, match="--max-objects"):
        profile_shapes(package, "segment", max_objects=0)
    with pytest.raises(UserError, match="--max-memory-frames"):
        profile_shapes(package, "segment", max_objects=2, max_memory_frames=-1)


@pytest.mark.parametrize("frames", [0, 1])
def test_a_memory_no_session_can_use_is_refused_before_tensorrt_is_needed(tmp_path, frames):
    # --max-memory-frames 0 used to mean the package's capacity (`0 or capacity`), 1 built a profile the tracker's
    # bank (>= 2 frames) cannot use, and build_engines checked neither before asking for TensorRT
    pkg = write_stcn_package(tmp_path / "pkg")
    with pytest.raises(UserError, match="--max-memory-frames must be a whole number >= 2"):
        profile_shapes(load_package(pkg), "segment", max_objects=2, max_memory_frames=frames)
    with pytest.raises(UserError, match="--max-memory-frames must be a whole number >= 2"):
        build_engines(pkg, max_memory_frames=frames)
    with pytest.raises(UserError, match="--max-objects must be a whole number >= 1"):
        build_engines(pkg, max_objects=0)


def test_comparison_inputs_have_the_graph_shapes_and_value_ranges(tmp_path):
    package = load_package(write_stcn_package(tmp_path / "pkg"))
    feeds = comparison_inputs(package, "segment", objects=3, memory_frames=2)
    assert feeds["mem_key"].shape == (1, 16, 2 * HW) and feeds["mem_value"].shape == (3, 8, 2 * HW)
    masks = comparison_inputs(package, "encode_value", objects=3)["masks"]
    assert masks.shape == (3, 1, HEIGHT, WIDTH)
    assert masks.min() >= 0 and np.all(masks.sum(axis=0) <= 1 + 1e-6)
    image = comparison_inputs(package, "encode_key")["image"]
    assert image.dtype == np.float32 and 0 <= image.min() and image.max() <= 1


@pytest.mark.parametrize("limits", [{"max_objects": 1}, {"max_memory_frames": 2}], ids=["objects", "memory"])
def test_engines_are_compared_within_the_object_and_memory_limits_they_were_built_for(monkeypatch, tmp_path, limits):
    # `vosrt check --backend tensorrt` compared 2 objects and 3 memory frames whatever the engines took: on engines
    # built with --max-objects 1 or --max-memory-frames 2 the engine refused the shape (a ValueError telling the
    # user to rebuild engines that were fine). Here ONNX Runtime runs the graphs, with the engines' limits and
    # refusing a larger memory or more objects as an engine's profile does.
    from vosrt.export.trt_build import compare_engines_with_onnxruntime
    from vosrt.sdk.backends import tensorrt as trt_backend
    from vosrt.sdk.backends.onnxruntime import OnnxRuntimeBackend

    class Engines(OnnxRuntimeBackend):
        max_objects, max_memory_frames = limits.get("max_objects", 8), limits.get("max_memory_frames", 6)

        def __init__(self, package, precision=None, plugin_lib=None):
            super().__init__(package, form="portable", threads=1)

        def run(self, graph, inputs, outputs=None):
            for name, value in inputs.items():
                for axis, size in enumerate(np.shape(value)):
                    label = self.package.axis_label(graph, name, axis)
                    most = {"objects": self.max_objects, "memory": self.max_memory_frames * HW}.get(label)
                    if most is not None and size > most:
                        raise ValueError(f"graph '{graph}': input '{name}' is outside the engine's profile")
            return super().run(graph, inputs, outputs)

    monkeypatch.setattr(trt_backend, "TensorRTBackend", Engines)
    report = compare_engines_with_onnxruntime(write_stcn_package(tmp_path / "pkg"))
    assert set(report) == {"encode_key", "encode_value", "segment"}
    assert report["segment"]["prob"]["max_abs"] == 0


def test_build_refuses_a_package_without_the_plugin_form(tmp_path):
    pkg = write_stcn_package(tmp_path / "pkg", forms=("portable",))
    with pytest.raises(UserError, match="no plugin form"):
        build_engines(pkg, plugin_lib=tmp_path / "lib.so", progress=None)


def test_build_refuses_a_missing_plugin_library_and_says_how_to_build_it(tmp_path):
    from vosrt.sdk.backends.tensorrt import find_plugin_library

    with pytest.raises(UserError, match="cmake -S plugins"):
        find_plugin_library(tmp_path / "missing.so")
    if importlib.util.find_spec("tensorrt") is not None:   # build asks for the library once TensorRT is there
        with pytest.raises(UserError, match="cmake -S plugins"):
            build_engines(write_stcn_package(tmp_path / "pkg"), plugin_lib=tmp_path / "missing.so", progress=None)


def test_build_refuses_an_unknown_precision(tmp_path):
    with pytest.raises(UserError, match="--precision"):
        build_engines(write_stcn_package(tmp_path / "pkg"), precision="int8", progress=None)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_build_command_without_tensorrt_says_what_to_install(tmp_path, capsys):
    pkg = write_stcn_package(tmp_path / "pkg")
    library = tmp_path / "libvosrt_plugins.so"
    library.write_bytes(b"\x7fELF")
    assert main(["build", str(pkg), "--plugin-lib", str(library)]) == 2
    err = capsys.readouterr().err
    assert install_command("trt") in err and "vosrt build" in err and "--backend onnxruntime" in err


def test_embed_plugins_needs_the_self_contained_library_beside_the_plugin_library(tmp_path):
    library = tmp_path / "libvosrt_plugins.so"
    library.write_bytes(b"\x7fELF")
    # (build_engines asks for TensorRT first, then makes this same check)
    with pytest.raises(UserError, match="libvosrt_plugins_embed.so"):
        embeddable_plugin_library(library)
    (tmp_path / "libvosrt_plugins_embed.so").write_bytes(b"\x7fELF")
    assert embeddable_plugin_library(library) == tmp_path / "libvosrt_plugins_embed.so"


def test_workspace_limit_reaches_every_d2conv3d_node_and_only_those():
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    def d2(name, **extra):
        return helper.make_node("D2Conv3D", ["x", "d", "w"], [name], domain="trt.plugins", kernel_shape=[3, 3, 3],
                                plugin_version="1", plugin_namespace="", **extra)

    nodes = [d2("y1"), d2("y2", max_workspace_mb=512),
             helper.make_node("L2MemoryReadout", ["k", "q", "v"], ["r"], domain="trt.plugins", top_k=20),
             helper.make_node("Relu", ["y1"], ["z"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                                           for n in ("x", "d", "w", "k", "q", "v")],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("z", "y2", "r")])
    model = helper.make_model(graph)
    assert limit_plugin_workspace(model, 96) == 2
    limits = {n.output[0]: [helper.get_attribute_value(a) for a in n.attribute if a.name == "max_workspace_mb"]
              for n in model.graph.node}
    assert limits == {"y1": [96], "y2": [96], "r": [], "z": []}
    d2_attrs = [a.name for a in model.graph.node[0].attribute]
    assert "kernel_shape" in d2_attrs and "plugin_version" in d2_attrs


@pytest.mark.parametrize("workspace_mb, expected", [(None, 0), (48, 48)])
def test_every_d2conv3d_node_reaches_the_parser_with_its_workspace_field(tmp_path, workspace_mb, expected):
    # Without --workspace the nodes had no max_workspace_mb, a field the plugin's creator lists: TensorRT's ONNX
    # parser warned for each that the engine "may fail to build"
    import onnx

    from vosrt.export.trt_build import plugin_graph_bytes
    from sdk_packages import tiny_package

    source = next(tiny_package("3dc-seg", forms=("portable", "plugin")).glob("*.plugin.onnx"))
    model = onnx.load_from_string(plugin_graph_bytes(source, workspace_mb))
    limits = [[onnx.helper.get_attribute_value(a) for a in n.attribute if a.name == "max_workspace_mb"]
              for n in model.graph.node if n.op_type == "D2Conv3D"]
    assert limits and all(found == [expected] for found in limits), limits


def test_fp16_graphs_go_into_the_package_engine_folder_and_never_through_a_link_out_of_it(tmp_path):
    from vosrt.export.trt_build import write_fp16_graphs

    package = load_package(write_stcn_package(tmp_path / "pkg"))
    record = write_fp16_graphs(package, progress=None)
    assert all((package.path / name).is_file() for name in record["graphs"].values())
    shutil.rmtree(package.path / "engines")
    (tmp_path / "elsewhere").mkdir()
    (package.path / "engines").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="engine folder.*outside the package"):
        write_fp16_graphs(package, progress=None)
    assert not list((tmp_path / "elsewhere").iterdir())


@pytest.mark.parametrize("flags", [["--max-memory-frames", "4"], ["--max-objects", "4"]])
def test_stcn_limits_given_for_a_clip_package_are_refused_before_tensorrt_is_needed(tmp_path, capsys, flags):
    # A stem-seg (or 3dc-seg) package's graphs have no memory or objects axis: the flags were accepted and
    # ignored (the build went on to ask for TensorRT, and would have built engines as without them)
    from sdk_packages import colour_embedding_package

    pkg = colour_embedding_package(tmp_path / "pkg")
    assert main(["build", str(pkg), *flags]) == 2
    err = capsys.readouterr().err
    assert f"error: {flags[0]}: the graphs of stem-seg package" in err and f"drop {flags[0]}" in err
    with pytest.raises(UserError, match=f"{flags[0]}: the graphs of stem-seg"):
        build_engines(pkg, **{flags[0][2:].replace("-", "_"): 4})


H100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def _fake_build_host(monkeypatch, tmp_path, version):
    """TensorRT ``version`` (a stand-in of its Python bindings) and a plugin library compiled for it."""
    from vosrt.sdk.backends import tensorrt as trt_backend

    trt = FakeTensorRT(version)
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda for_build=False: trt)
    monkeypatch.setattr(trt_backend, "current_gpu", lambda: dict(H100))
    monkeypatch.setattr(trt_backend, "_loaded_plugin_libraries", {})
    library = tmp_path / "lib" / "libvosrt_plugins.so"
    library.parent.mkdir()
    record = b"vosrt-plugins-build-record: tensorrt=" + version.encode() + b";\0"
    library.write_bytes(b"\x7fELF" + bytes(64) + record)
    (library.parent / "libvosrt_plugins_embed.so").write_bytes(b"\x7fELF" + bytes(64) + record)
    return trt, library


@pytest.mark.parametrize("version", ["10.16.0", "11.1.0"])
@pytest.mark.parametrize("options", [{}, {"workspace_mb": 64, "embed_plugins": True}], ids=["plain", "workspace-embed"])
def test_build_writes_every_engine_through_the_bindings_of_both_tensorrt_majors(monkeypatch, tmp_path, version,
                                                                                 options):
    # build_serialized_network returns an IHostMemory, which has the buffer protocol and .nbytes but no
    # __len__: the progress line's len(serialized) raised TypeError once the first engine was on disk
    trt, library = _fake_build_host(monkeypatch, tmp_path, version)
    pkg = write_stcn_package(tmp_path / "pkg")
    said = []
    entry = build_engines(pkg, max_objects=3, plugin_lib=library, progress=said.append, **options)
    assert set(entry["files"]) == {"encode_key", "encode_value", "segment"} and len(trt.built) == 3
    for (network, config, engine), graph in zip(trt.built, ("encode_key", "encode_value", "segment")):
        assert (pkg / entry["files"][graph]).read_bytes() == engine
        # strongly typed on both majors: the flag bit of each tag's enum (11 ignores it, 10 needs it)
        assert network.flags & (1 << STRONGLY_TYPED_BIT[version])
        (profile,) = config.profiles
        assert set(profile.shapes) == {i.name for i in network.inputs}
        assert (trt.BuilderFlag.VERSION_COMPATIBLE in config.flags) == bool(options.get("embed_plugins"))
        # fp32 means fp32: TensorRT's default TF32 moved encoder outputs ~1e-3 of their peak (10x the engine tests'
        # bound against ONNX Runtime)
        assert trt.BuilderFlag.TF32 not in config.flags
    assert entry["tf32"] is False
    assert trt.built[2][1].profiles[0].shapes["mem_value"][2] == [3, 8, 6 * HW]
    assert any("encode_key: 0.0 MiB" in line for line in said), said
    assert (pkg / "engines" / "timing.cache").read_bytes().startswith(b"timing-cache:")
    assert load_package(pkg).engines["default"] == "fp32"


def test_the_re_export_a_build_without_the_plugin_form_suggests_keeps_the_package_top_k(tmp_path):
    # The suggested `vosrt export ... --forms plugin,portable` left out the package's top_k: a package exported with
    # --top-k 7 came back reading with the default 20, its plugin form (and the engines) holding 20 as a constant.
    import json

    from media import suggested_commands

    pkg = write_stcn_package(tmp_path / "pkg", forms=("portable",))
    manifest = json.loads((pkg / "manifest.json").read_text())
    manifest["streaming"]["top_k"] = 7                           # as `vosrt export ... --top-k 7` writes it
    manifest["source"] = {"checkpoint": str(tmp_path / "stcn.pth")}
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="no plugin form") as err:
        build_engines(pkg, plugin_lib=tmp_path / "lib.so", progress=None)
    command = suggested_commands(str(err.value))[-1]
    assert command[:2] == ["export", "stcn-lite"] and command[command.index("--top-k") + 1] == "7"


def test_a_rebuild_that_fails_on_a_later_graph_leaves_the_engines_and_manifest_of_the_earlier_build(monkeypatch,
                                                                                                    tmp_path):
    # Each engine replaced the earlier build's as soon as it was built: a rebuild stopped at its third graph (a
    # failure, Ctrl-C) left encode_key and encode_value engines for --max-objects 3 under a manifest recording the
    # earlier build's 8, which the TensorRT backend sizes its sessions by.
    from trt_fixtures import FakeHostMemory

    trt, library = _fake_build_host(monkeypatch, tmp_path, "10.16.0")
    pkg = write_stcn_package(tmp_path / "pkg")
    build_engines(pkg, plugin_lib=library, progress=None)
    engines = pkg / "engines"
    before = {p.name: p.read_bytes() for p in engines.iterdir()}
    manifest = (pkg / "manifest.json").read_bytes()

    class FailingAtSegment(trt.Builder):
        def build_serialized_network(self, network, config):
            if "mem_value" in {i.name for i in network.inputs}:
                return None   # what TensorRT returns when a build fails
            return FakeHostMemory(b"rebuilt")

    monkeypatch.setattr(trt, "Builder", FailingAtSegment)
    with pytest.raises(UserError, match="could not build an engine for segment"):
        build_engines(pkg, max_objects=3, plugin_lib=library, progress=None)
    assert {p.name: p.read_bytes() for p in engines.iterdir()} == before   # no partial file left either
    assert (pkg / "manifest.json").read_bytes() == manifest
    assert load_package(pkg).engines["fp32"]["max_objects"] == 8


def test_a_rebuild_hint_repeats_the_flags_the_engines_were_built_with_as_a_valid_command(monkeypatch, tmp_path):
    # The hints to rebuild said `vosrt build PKG` (or PKG --max-objects N, from a session): the path unquoted, so no
    # command for a package in a folder with a space, and without the build's flags, so fp16 engines were rebuilt
    # as fp32 ones (made the default) and --embed-plugins or a --max-memory-frames limit was lost.
    import shlex

    import vosrt.sdk
    from vosrt.sdk.backends import open_backend
    from vosrt.sdk.backends.tensorrt import check_engine_compatibility, rebuild_command, select_build

    _, library = _fake_build_host(monkeypatch, tmp_path, "10.16.0")
    pkg = write_stcn_package(tmp_path / "my packages" / "pkg")
    build_engines(pkg, precision="fp16", max_memory_frames=4, embed_plugins=True, plugin_lib=library, progress=None)
    package = load_package(pkg)
    build = package.engines["fp16"]
    asked = ["vosrt", "build", str(pkg), "--precision", "fp16", "--max-memory-frames", "4", "--embed-plugins"]
    assert shlex.split(rebuild_command(pkg, build)) == asked

    def command(error) -> list[str]:
        return shlex.split(str(error.value).rsplit("`", 2)[-2])

    with pytest.raises(UserError) as refused:
        check_engine_compatibility(build, "10.16.0", {"name": "NVIDIA L4", "compute_capability": "8.9"}, pkg)
    assert command(refused) == asked
    with pytest.raises(UserError, match="has no fp32 engines") as refused:
        select_build(package, "fp32")
    assert command(refused) == ["vosrt", "build", str(pkg), "--precision", "fp32"]
    (pkg / build["files"]["segment"]).unlink()
    with pytest.raises(UserError, match="engine of graph 'segment'.* is missing") as refused:
        select_build(package, "fp16")
    assert command(refused) == asked
    # a session asking for more memory than the engines take: the same build with the one flag changed
    tracker_backend = open_backend(package, "onnxruntime", form="portable", threads=1)
    tracker_backend.max_memory_frames, tracker_backend.build = 4, build   # as a TensorRT backend has them
    with pytest.raises(UserError, match="memory_capacity=6") as refused:
        vosrt.sdk.open_session(tracker_backend, package, memory_capacity=6)
    assert command(refused) == asked[:6] + ["6", asked[-1]]
    # a manifest whose engines entry is damaged: the same, from the package's own check
    import json

    manifest = json.loads((pkg / "manifest.json").read_text())
    manifest["engines"]["default"] = 5
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="engines.default should name a precision") as refused:
        load_package(pkg)
    assert command(refused) == ["vosrt", "build", str(pkg)]


def test_a_failed_engine_check_names_onnx_runtime_and_the_check_command_that_accepts_its_errors(monkeypatch, tmp_path,
                                                                                                capsys):
    # `vosrt check --backend tensorrt` compares the engines with ONNX Runtime, but its failure said the outputs
    # "differ from PyTorch", and it said nothing of what to do (fp16 engines differ by about 1e-2 and fail the
    # default tolerance). The engines cannot run here: their report is what compare_engines_with_onnxruntime
    # returns for fp16 engines of this package.
    import shlex

    from vosrt.export import trt_build

    pkg = write_stcn_package(tmp_path / "my pkg")
    report = {"segment": {"prob": {"max_abs": 9e-3, "max_rel": 9.4e-3}},
              "encode_key": {"key": {"max_abs": 1e-4, "max_rel": 2e-4}}}
    monkeypatch.setattr(trt_build, "compare_engines_with_onnxruntime", lambda package: report)
    assert main(["check", str(pkg), "--backend", "tensorrt"]) == 1
    out = capsys.readouterr().out
    assert "differ from ONNX Runtime" in out and "PyTorch" not in out, out
    command = shlex.split(out.rsplit("`", 2)[-2])
    assert command == ["vosrt", "check", str(pkg), "--backend", "tensorrt", "--tolerance", "0.01"]
    monkeypatch.setattr(trt_build, "compare_engines_with_onnxruntime", lambda package: report)
    assert main(command[1:]) == 0   # the command it gives passes
