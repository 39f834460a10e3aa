"""Tiny random-weight model packages for the SDK tests, exported once per test process.

Each package is a real ``vosrt.export.export_package`` output (portable ONNX form) of a narrowed
``-lite`` model saved as a checkpoint first, so the torch backend can reproduce it. Sizes are chosen so
that thousands of frames stream in seconds on a 2-core CPU.
"""
from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

_ROOT: Path | None = None
_CACHE: dict[tuple, Path] = {}     # (kind, forms) -> package folder
_EXPORTS: dict[str, Path] = {}     # kind -> its one export

# name -> (model, config overrides, height, width, streaming overrides)
SPECS = {
    "stcn": ("stcn-lite", {"value_widths": (16, 32, 64), "value_dim": 64, "f16_thin_dim": 64,
                           "decoder_dims": (64, 32, 32)}, 32, 32, {"mem_every": 5, "top_k": 20, "memory_capacity": 8}),
    # one bottleneck per stage (3dc-seg-lite has 3, 4, 6, 3): a quarter of the graph to export, the same decoder
    "3dc-seg": ("3dc-seg-lite", {"depths": (1, 1, 1, 1)}, 32, 32, {"clip_length": 8, "overlap": 3}),
    # 80 is the least side whose 1/32 map (3) fits the decoders' 3×3×3 pooling window in PyTorch.
    "stem-seg": ("stem-seg-lite", {}, 80, 80, {"clip_length": 8, "overlap": 4}),
}


def tiny_package(kind: str, forms: tuple[str, ...] = ("portable",)) -> Path:
    """Path of the tiny ``kind`` (``"stcn"``, ``"3dc-seg"`` or ``"stem-seg"``) package holding ``forms``,
    exporting it on first use. The families with custom operators are exported once, in both forms; the
    portable-only package is a copy of that export without the plugin form (the portable files of an export
    do not depend on the forms asked for), so asking for both costs no second export."""
    key = (kind, tuple(sorted(forms)))
    if key in _CACHE:
        return _CACHE[key]
    exported = ("portable", "plugin") if kind in ("stcn", "3dc-seg") else ("portable",)
    full = _export(kind, exported)
    if set(forms) == set(exported):
        _CACHE[key] = full
        return full
    from vosrt.sdk.package import write_manifest

    out = _ROOT / "-".join(sorted(forms)) / kind     # the folder keeps the kind's name (samples print it)
    shutil.copytree(full, out, ignore=lambda folder, names: [n for n in names if n.endswith(".onnx") and
                                                              n.split(".")[-2] not in forms])
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["graphs"] = {graph: {f: name for f, name in files.items() if f in forms}
                          for graph, files in manifest["graphs"].items()}
    write_manifest(out, manifest)
    _CACHE[key] = out
    return out


def tiny_checkpoint(kind: str) -> Path:
    """The checkpoint the tiny ``kind`` package was exported from (exporting it on first use)."""
    tiny_package(kind, ("portable",))
    return _ROOT / f"{kind}.pth"


def tiny_int8_package() -> Path:
    """The tiny stcn package quantized by ``vosrt quantize`` on a generated 4-frame clip (made on first use)."""
    key = ("stcn-int8", ())
    if key not in _CACHE:
        from vosrt.cli import main
        from vosrt.sdk.synthetic import generate_sequence, write_davis

        source = tiny_package("stcn")   # (makes the tests' folder, _ROOT)
        calib = _ROOT / "calib"
        write_davis(calib, "calib", generate_sequence(11, num_frames=4, height=32, width=32, num_objects=2))
        out = _ROOT / "stcn-int8"
        if main(["quantize", str(source), "--calibrate", str(calib / "JPEGImages" / "480p" / "calib"),
                 "--out", str(out), "--frames", "4"]) != 0:
            raise RuntimeError("vosrt quantize of the tiny stcn package failed (see its output above)")
        _CACHE[key] = out
    return _CACHE[key]


def d2conv_layers(model) -> list:
    """The D²Conv3D layers of ``model``, in module order."""
    return [m for m in model.modules() if hasattr(m, "deform_params") and hasattr(m, "deform_conv")]


def _export(kind: str, forms: tuple[str, ...]) -> Path:
    global _ROOT
    if kind in _EXPORTS:
        return _EXPORTS[kind]
    import torch

    from vosrt.export.package import export_package
    from vosrt.training.models import build_model, save_checkpoint

    if _ROOT is None:
        _ROOT = Path(tempfile.mkdtemp(prefix="vosrt-sdk-tests-"))
        atexit.register(shutil.rmtree, _ROOT, True)
    name, overrides, height, width, streaming = SPECS[kind]
    torch.manual_seed(0)
    model = build_model(name, **overrides)
    # D²Conv3D layers start at D = 1 (deform_params zero): random predictors make them sample off the grid
    for layer in d2conv_layers(model):
        torch.nn.init.normal_(layer.deform_params.weight, std=0.02)
    checkpoint = _ROOT / f"{kind}.pth"
    save_checkpoint(checkpoint, model)
    _EXPORTS[kind] = Path(export_package(name, checkpoint, _ROOT / kind, height, width, forms=list(forms),
                                         streaming=streaming))
    return _EXPORTS[kind]


def colour_embedding_package(folder: Path, height: int = 64, width: int = 64, overlap: int = 4) -> Path:
    """A ``stem-seg`` package whose graph is written by hand (no learned weights): a pixel's embedding is
    its colour averaged over 4×4 cells, its bandwidth 100 (std 0.1) per dimension, its seediness and
    foreground its brightest channel. Objects of distinct saturated colours on black are then exactly
    the clusters, so the session's clustering, linking and emission can be checked through a real ONNX
    Runtime session against known tracks."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np

    from vosrt.sdk.package import write_manifest

    h, w = height // 4, width // 4
    def out(name, channels):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, channels, 8, h, w])
    consts = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("zero", 0.0), ("hundred", 100.0),
                                                                              ("one", 1.0))]
    consts.append(numpy_helper.from_array(np.array([1], np.int64), "channel_axis"))
    nodes = [
        helper.make_node("AveragePool", ["clip"], ["embeddings"], kernel_shape=[1, 4, 4], strides=[1, 4, 4]),
        helper.make_node("Mul", ["embeddings", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "hundred"], ["bandwidths"]),
        helper.make_node("ReduceMax", ["embeddings", "channel_axis"], ["seediness"], keepdims=1),
        helper.make_node("Identity", ["seediness"], ["foreground"]),
        helper.make_node("Sub", ["one", "seediness"], ["background"]),
        helper.make_node("Concat", ["background", "seediness"], ["categories"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "colour_embeddings",
        [helper.make_tensor_value_info("clip", TensorProto.FLOAT, [1, 3, 8, height, width])],
        [out("embeddings", 3), out("bandwidths", 3), out("seediness", 1), out("foreground", 1), out("categories", 2)],
        consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "embed_clip.portable.onnx"))
    write_manifest(folder, {
        "format_version": 1, "family": "stem-seg", "variant": "colour-embeddings", "config": {},
        "resolution": {"height": height, "width": width, "stride": 16},
        "graphs": {"embed_clip": {"portable": "embed_clip.portable.onnx"}},
        "streaming": {"clip_length": 8, "overlap": overlap, "min_seediness": 0.5, "foreground_threshold": 0.25,
                      "max_instances": 20}})
    return folder
