"""Tiny random-weight model packages for the SDK tests, exported once and shared.

Each package is a real ``vosrt.export.export_package`` output (portable ONNX form) of a narrowed
``-lite`` model saved as a checkpoint first, so the torch backend can reproduce it. Sizes are chosen so
that thousands of frames stream in seconds on a 2-core CPU.

An export costs about 40 s of CPU, so the packages are kept in ``$VOSRT_TEST_PACKAGES`` (default
``<tmp>/vosrt-test-packages-<uid>``), in a folder named by a hash of everything they are made from: vosrt's
Python sources, this file and the versions of torch, onnx, onnxscript, onnxruntime and numpy. The test
processes of one run (pytest-xdist workers) and later runs on the same code take them from there: one
process makes each under a file lock while the others wait, and each later use first checks every file
against the digests recorded when it was made, making it again if a file changed or is missing. A change
to any source file names a new folder; folders unused for a day are removed.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from importlib import metadata
from pathlib import Path

_ROOT: Path | None = None
_CACHE: dict[tuple, Path] = {}     # (kind, forms) -> package folder, once checked in this process
_EXPORTS: dict[str, Path] = {}     # kind -> its one export
_REPO = Path(__file__).resolve().parent.parent
_SOURCES = ("export", "sdk", "training", "vosrt")    # the folders whose Python code makes a package
_VERSIONS = ("torch", "onnx", "onnxscript", "onnxruntime", "numpy")
_KEEP_UNUSED_S = 24 * 3600

# name -> (model, config overrides, height, width, streaming overrides)
SPECS = {
    "stcn": ("stcn-lite", {"value_widths": (16, 32, 64), "value_dim": 64, "f16_thin_dim": 64,
                           "decoder_dims": (64, 32, 32)}, 32, 32, {"mem_every": 5, "top_k": 20, "memory_capacity": 8}),
    # one bottleneck per stage (3dc-seg-lite has 3, 4, 6, 3): a quarter of the graph to export, the same decoder
    "3dc-seg": ("3dc-seg-lite", {"depths": (1, 1, 1, 1)}, 32, 32, {"clip_length": 8, "overlap": 3}),
    # 80 is the least side whose 1/32 map (3) fits the decoders' 3×3×3 pooling window in PyTorch.
    "stem-seg": ("stem-seg-lite", {}, 80, 80, {"clip_length": 8, "overlap": 4}),
}


def _source_key() -> str:
    """Hash of what the packages are made from (see the module's docstring)."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for folder in _SOURCES:
        for path in sorted((_REPO / folder).rglob("*.py")):
            digest.update(str(path.relative_to(_REPO)).encode() + b"\0" + path.read_bytes())
    for package in _VERSIONS:
        try:
            digest.update(f"{package}={metadata.version(package)}".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{package} absent".encode())
    return digest.hexdigest()[:16]


def _root() -> Path:
    """This code's folder of packages, made on first use (older folders unused for a day are removed)."""
    global _ROOT
    if _ROOT is None:
        # one folder per user: another user's, in a shared /tmp, could be read but not written
        base = Path(os.environ.get("VOSRT_TEST_PACKAGES")
                    or Path(tempfile.gettempdir()) / f"vosrt-test-packages-{os.getuid()}")
        _ROOT = base / _source_key()
        _ROOT.mkdir(parents=True, exist_ok=True)
        os.utime(_ROOT)
        for other in base.iterdir():
            with contextlib.suppress(OSError):
                if other != _ROOT and other.is_dir() and time.time() - other.stat().st_mtime > _KEEP_UNUSED_S:
                    shutil.rmtree(other)
    return _ROOT


def _digests(paths: list[Path]) -> dict[str, str]:
    """{file, relative to the packages' folder: sha256} of every file in ``paths`` (files or folders)."""
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*")) if p.is_dir() else [])]
    return {str(f.relative_to(_root())): hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()}


def _made(name: str, paths: list[Path], make) -> None:
    """Runs ``make()``, which writes ``paths``, unless an earlier make left them complete and unchanged; one
    process at a time (a file lock), so that the others wait for its result instead of making their own."""
    record = _root() / f".{name}.done.json"
    with open(_root() / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if record.is_file() and json.loads(record.read_text()) == _digests(paths):
            return
        record.unlink(missing_ok=True)
        for path in paths:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        make()
        record.write_text(json.dumps(_digests(paths)))


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

    out = _root() / "-".join(sorted(forms)) / kind     # the folder keeps the kind's name (samples print it)

    def copy():
        from vosrt.sdk.package import write_manifest

        shutil.copytree(full, out, ignore=lambda folder, names: [n for n in names if n.endswith(".onnx") and
                                                                  n.split(".")[-2] not in forms])
        manifest = json.loads((out / "manifest.json").read_text())
        manifest["graphs"] = {graph: {f: name for f, name in files.items() if f in forms}
                              for graph, files in manifest["graphs"].items()}
        write_manifest(out, manifest)

    _made(f"{'-'.join(sorted(forms))}-{kind}", [out], copy)
    _CACHE[key] = out
    return out


def tiny_checkpoint(kind: str) -> Path:
    """The checkpoint the tiny ``kind`` package was exported from (exporting it on first use)."""
    tiny_package(kind, ("portable",))
    return _root() / f"{kind}.pth"


def tiny_int8_package() -> Path:
    """The tiny stcn package quantized by ``vosrt quantize`` on a generated 4-frame clip (made on first use)."""
    key = ("stcn-int8", ())
    if key not in _CACHE:
        source = tiny_package("stcn")
        calib, out = _root() / "calib", _root() / "stcn-int8"

        def quantize():
            from vosrt.cli import main
            from vosrt.sdk.synthetic import generate_sequence, write_davis

            write_davis(calib, "calib", generate_sequence(11, num_frames=4, height=32, width=32, num_objects=2))
            if main(["quantize", str(source), "--calibrate", str(calib / "JPEGImages" / "480p" / "calib"),
                     "--out", str(out), "--frames", "4"]) != 0:
                raise RuntimeError("vosrt quantize of the tiny stcn package failed (see its output above)")

        _made("stcn-int8", [calib, out], quantize)
        _CACHE[key] = out
    return _CACHE[key]


def d2conv_layers(model) -> list:
    """The D²Conv3D layers of ``model``, in module order."""
    return [m for m in model.modules() if hasattr(m, "deform_params") and hasattr(m, "deform_conv")]


def _export(kind: str, forms: tuple[str, ...]) -> Path:
    if kind in _EXPORTS:
        return _EXPORTS[kind]
    checkpoint, out = _root() / f"{kind}.pth", _root() / kind

    def export():
        import torch

        from vosrt.export.package import export_package
        from vosrt.training.models import build_model, save_checkpoint

        name, overrides, height, width, streaming = SPECS[kind]
        torch.manual_seed(0)
        model = build_model(name, **overrides)
        # D²Conv3D layers start at D = 1 (deform_params zero): random predictors make them sample off the grid
        for layer in d2conv_layers(model):
            torch.nn.init.normal_(layer.deform_params.weight, std=0.02)
        save_checkpoint(checkpoint, model)
        export_package(name, checkpoint, out, height, width, forms=list(forms), streaming=streaming)

    _made(kind, [checkpoint, out], export)
    _EXPORTS[kind] = out
    return out


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
