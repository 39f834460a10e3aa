"""INT8 model packages: ONNX Runtime static quantization (QDQ, per-channel weights) calibrated on frames.

``quantize_package(src, frames, first_mask, out_dir)`` streams the calibration frames through the fp32
package exactly as ``vosrt run`` would, hands every graph's inputs on the way to ONNX Runtime's min/max
calibrator of that graph (then drops them: kept, a full STCN's memory-bank feeds took gigabytes), and
quantizes each graph's portable form with the ranges found. Quantized are the convolutions of the
encoders and the decoder; the custom operators stay fp32: the memory readout (its MatMul, TopK and
gather are not touched, since only Conv nodes are quantized) and the D2Conv3D decomposition (its
1×1×1 Conv reads GridSample's samples and is excluded); 3D convolutions stay fp32 too, since ONNX
Runtime's INT8 3D convolution is slower than its fp32 one on the CPU (a package with nothing but 3D
convolutions, 3DC-Seg, is refused). A graph's plugin form is quantized too, with the
ranges calibrated on its portable form: ONNX Runtime's calibrator loads no custom operators, but the two
forms differ only in the custom-operator nodes and name every convolution's input and output alike, so
the portable form's calibration table covers the plugin form's convolutions (checked: a plugin graph with
a convolution tensor the table lacks is left out, with a notice). The INT8 plugin form is what runs on
the CPU by default, where the fused readout replaces the portable TopK/Gather chain. The new package
records how it was made under ``quantization`` in its manifest.
"""
from __future__ import annotations

import filecmp
import json
import os
import shlex
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from vosrt.sdk.backends.base import Backend, DelegatingBackend
from vosrt.sdk.errors import UserError
from vosrt.sdk.package import (held_manifest, make_folders, output_folder, refuse_replacing, remove_made,
                               write_manifest)
from vosrt.sdk.progress import Progress

# Calibration feeds taken per graph (the first ones seen): enough for min/max ranges.
MAX_SAMPLES = 48


class RecordingBackend(DelegatingBackend):
    """Delegates to ``inner`` and hands a host copy of the first ``MAX_SAMPLES`` input feeds of each graph to
    ``take(graph, feeds)`` before running it; ``counts`` says how many each graph gave."""

    def __init__(self, inner: Backend, take: Callable[[str, dict[str, np.ndarray]], None]):
        super().__init__(inner)
        self.take = take
        self.counts: Counter = Counter()

    def run(self, graph, inputs, outputs=None):
        if self.counts[graph] < MAX_SAMPLES:
            self.take(graph, {k: np.array(self.inner.download(v)) for k, v in inputs.items()})
            self.counts[graph] += 1
        return self.inner.run(graph, inputs, outputs)


class RangeCalibration:
    """The min/max ranges of each graph's convolution tensors: ONNX Runtime's MinMax calibrator, made as
    ``quantize_static`` makes it (on the portable form, for Conv nodes), takes each feed when the fp32 package
    makes it (``self(graph, feeds)``), and the feed is dropped. ``quantize_static`` made the same ranges from every
    feed at once (a min of the mins, a max of the maxes), but held all of them first: 48 frames of a full STCN's
    memory bank at 480x864. Its files (named and augmented graphs) go in ``folder``."""

    def __init__(self, package, folder: Path):
        self.package, self.folder = package, Path(folder)
        self._calibrators: dict[str, tuple] = {}

    def __call__(self, graph: str, feeds: dict[str, np.ndarray]) -> None:
        calibrator, names = self._calibrator(graph)
        calibrator.collect_data(_Reader([feeds], names))   # the ranges of this feed, merged into the graph's

    def _calibrator(self, graph: str) -> tuple:
        if graph not in self._calibrators:
            from onnxruntime.quantization import CalibrationMethod, create_calibrator

            model = _load_named(self.package.graphs[graph]["portable"])
            self.folder.mkdir(parents=True, exist_ok=True)
            named = self.folder / f"{graph}.named.onnx"
            onnx.save(model, str(named))
            calibrator = create_calibrator(str(named), ["Conv"], calibrate_method=CalibrationMethod.MinMax,
                                           augmented_model_path=str(self.folder / f"{graph}.augmented.onnx"))
            calibrator.infer_session = _session_without_arena(calibrator.augmented_model_path)
            calibrator.merge_range = _merge_ranges   # NaN-aware, as quantize_static's all-at-once nanmin/nanmax
            self._calibrators[graph] = (calibrator, {i.name for i in model.graph.input})
        return self._calibrators[graph]

    def write_table(self, graph: str, path: Path) -> None:
        """The ranges of ``graph`` as ONNX Runtime's calibration cache (JSON), which ``quantize_static`` reads."""
        from onnxruntime.quantization.calibrate import save_tensors_data

        save_tensors_data(self._calibrators[graph][0].compute_data(), path)


def _merge_ranges(old, new):
    """The calibrator's running ranges merged with those of the latest feed, as its own ``merge_range`` (min of the
    minima, max of the maxima) but skipping NaN: quantize_static took every feed at once through np.nanmin/np.nanmax,
    where a feed whose activation was NaN did not count; merged with min()/max(), a NaN in the first feed stayed."""
    from onnxruntime.quantization.calibrate import TensorData

    if not old:
        return new
    for key, value in old.items():
        low, high = value.range_value if isinstance(value, TensorData) else value
        latest = new[key]
        new_low, new_high = latest.range_value if isinstance(latest, TensorData) else latest
        low, high = np.fmin(low, new_low), np.fmax(high, new_high)
        new[key] = TensorData(lowest=low, highest=high) if isinstance(value, TensorData) or \
            isinstance(latest, TensorData) else (low, high)
    return new


def _session_without_arena(path: str):
    """The calibrator's session as ONNX Runtime makes it (no graph optimisation: every tensor it calibrates stays in
    the graph), with the CPU memory arena off, as vosrt's own sessions: the arena kept each graph's peak of buffers
    for good, beside the fp32 package's."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_cpu_mem_arena = False
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def record_calibration(package, frames: list[np.ndarray], first_mask: np.ndarray | None,
                       take: Callable[[str, dict[str, np.ndarray]], None], color: str = "bgr",
                       progress=None) -> Counter:
    """Stream ``frames`` through ``package`` (portable form, ONNX Runtime), handing each graph's feeds (the first
    ``MAX_SAMPLES``) to ``take(graph, feeds)`` as they are made; returns how many each graph gave.

    ``first_mask`` starts the tracking of semi-supervised families (given with the first frame). ``progress``: a
    :class:`vosrt.sdk.progress.Progress`, updated per frame and closed at the end."""
    from vosrt.sdk import open_session
    from vosrt.sdk.backends.onnxruntime import OnnxRuntimeBackend

    backend = RecordingBackend(OnnxRuntimeBackend(package, form="portable", device="cpu"), take)
    session = open_session(backend, package, color=color)
    try:
        for index, frame in enumerate(frames):
            if index == 0 and session.takes_mask:
                session.push(frame, mask=first_mask)
            else:
                session.push(frame)
            if progress is not None:
                progress.update()
        session.flush()
    finally:
        if progress is not None:
            progress.close()
    return backend.counts


def _d2conv3d_convs(model: onnx.ModelProto, depth: int = 8) -> list[str]:
    """Names of Conv nodes fed (within ``depth`` producers) by a GridSample: the D2Conv3D decomposition's."""
    producer = {out: node for node in model.graph.node for out in node.output}
    found = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        frontier, seen = [node.input[0]], set()
        for _ in range(depth):
            parents = [producer[v] for v in frontier if v in producer and v not in seen]
            seen.update(frontier)
            if any(p.op_type == "GridSample" for p in parents):
                found.append(node.name)
                break
            frontier = [i for p in parents for i in p.input if i]
    return found


class _Reader:
    """Feeds for ONNX Runtime's calibrator (its CalibrationDataReader protocol), restricted to the graph's inputs."""

    def __init__(self, samples: list[dict[str, np.ndarray]], names: set[str]):
        self._items = iter([{k: v for k, v in s.items() if k in names} for s in samples])

    def get_next(self):
        return next(self._items, None)

    def rewind(self):  # some ONNX Runtime versions call it between passes
        pass


def quantize_graph(src: Path, dst: Path, calibration_table: Path) -> dict:
    """Static QDQ INT8 quantization of the ONNX graph ``src`` into ``dst`` with the activation ranges of
    ``calibration_table`` (:meth:`RangeCalibration.write_table`; a plugin form takes its portable form's); returns
    what was done."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = _load_named(src)
    excluded = _fp32_convs(model)
    named = dst.with_suffix(".named.onnx")
    onnx.save(model, str(named))
    try:
        quantize_static(str(named), str(dst), None, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"],
                        nodes_to_exclude=excluded, calibrate_method=CalibrationMethod.MinMax,
                        calibration_cache_path=str(calibration_table))
    finally:
        named.unlink(missing_ok=True)
    convs = sum(n.op_type == "Conv" for n in model.graph.node)
    return {"convs": convs, "convs_int8": convs - len(excluded), "convs_fp32": len(excluded)}


def _read_graph(path, load_external_data: bool = True) -> onnx.ModelProto:
    """The ONNX model at ``path``; UserError naming the file when it cannot be read (cut short, not ONNX)."""
    try:
        return onnx.load(str(path), load_external_data=load_external_data)
    except Exception as err:   # protobuf's DecodeError, OSError, onnx's errors for missing external data
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"{path}: cannot read this ONNX graph file ({type(err).__name__}: {reason}); it is damaged "
                        f"or not ONNX: re-export the package with `vosrt export`, or copy the file again") from None


def _load_named(path, load_external_data: bool = True) -> onnx.ModelProto:
    """The ONNX model at ``path`` with every node named: the exporter leaves some unnamed, and the
    quantizer's exclusion list needs names."""
    model = _read_graph(path, load_external_data)
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}"
    return model


def _volume_convs(model: onnx.ModelProto) -> list[str]:
    """Names of the 3D (volume) Conv nodes: ONNX Runtime's INT8 3D convolution is slower on the CPU than
    its fp32 one (ONNX Runtime 1.32's profiler, 3dc-seg-lite, one 8×240×432 clip, 2 threads: QLinearConv
    512 ms against 454 ms for the same convolutions in fp32), so they stay fp32."""
    ranks = {i.name: len(i.dims) for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "Conv" and ranks.get(n.input[1], 4) == 5]


def _fp32_convs(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv nodes left fp32: D2Conv3D's decomposition and the 3D convolutions."""
    return sorted(set(_d2conv3d_convs(model)) | set(_volume_convs(model)))


def _uncalibrated_conv_tensors(graph: Path, calibration_table: Path) -> list[str]:
    """Activation tensors of ``graph``'s Conv nodes (inputs and outputs, weights aside) missing from the table."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    table = load_tensors_data(calibration_table)
    model = _read_graph(graph, load_external_data=False)
    constants = {i.name for i in model.graph.initializer}
    tensors = {name for node in model.graph.node if node.op_type == "Conv"
               for name in (node.input[0], *node.output) if name and name not in constants}
    return sorted(t for t in tensors if t not in table)


def quantize_package(src, frames: list[np.ndarray], first_mask: np.ndarray | None, out_dir: str | Path,
                     source_name: str = "", color: str = "bgr", mask_name: str = "",
                     progress: Callable[[str], None] | None = None) -> Path:
    """INT8 copy of package ``src`` (a loaded Package) in ``out_dir``, calibrated on ``frames``. The files are
    written aside and moved into ``out_dir`` at the end, the manifest last: a run that fails or is interrupted
    leaves an earlier package there as it was, and removes the folder when it created it."""
    # the folder the path names, as the system finds it once its folders exist: "missing/.." is the one holding
    # "missing" (an earlier package there is seen, and a stopped run removes only what it made)
    out_dir = output_folder(out_dir, "--out")
    if out_dir.resolve() == Path(src.path).resolve():
        raise UserError(f"--out {out_dir} is the source package; choose another folder")
    if out_dir.exists() and not out_dir.is_dir():   # said before calibrating, not after it
        raise UserError(f"--out {out_dir} is a file; give a folder for the INT8 package")
    held = held_manifest(out_dir)
    if held is not None and not held.get("quantization"):   # an fp32 package, or one that cannot be read
        refuse_replacing(out_dir, held, "writing the INT8 package")
    if held is None:   # a folder that is no package: the files the copy keeps would replace the user's own
        taken = [name for name in _copied_files(src) if (out_dir / name).exists() or (out_dir / name).is_symlink()]
        if taken:
            raise UserError(f"--out {out_dir} holds {' and '.join(taken)}, which the INT8 package would replace with "
                            f"the source package's; give another --out folder (created if missing), or move "
                            f"{'them' if len(taken) > 1 else 'it'} away")
    if not frames:
        raise UserError("the calibration source gave no frames")
    quantization = src.quantization
    if quantization is not None:   # quantized again, its QDQ nodes clash: ONNX Runtime cannot open the copy
        source = quantization.get("source_package")
        mask = f" --mask {shlex.quote(mask_name)}" if mask_name else ""   # a plain folder's, which stcn needs
        hint = (f"`vosrt quantize {shlex.quote(source)} --calibrate {shlex.quote(source_name or 'SRC')}{mask} "
                f"--out {shlex.quote(str(out_dir))}`" if source else "the fp32 package it was quantized from")
        raise UserError(f"{src.path} is already an INT8 package made by `vosrt quantize`; quantize the fp32 "
                        f"package instead: {hint}")
    no_portable = [graph for graph, forms in src.graphs.items() if "portable" not in forms]
    if no_portable:   # said before calibrating, which streams the frames through the portable form
        from vosrt.export.trt_build import reexport_with_both_forms

        raise UserError(f"{src.path} has no portable form of {', '.join(no_portable)}; `vosrt quantize` calibrates "
                        f"and quantizes that form: {reexport_with_both_forms(src)}")
    say = progress or (lambda text: None)
    planar = 0
    for graph, forms in src.graphs.items():
        if "portable" in forms:
            model = _load_named(forms["portable"], load_external_data=False)
            kept = set(_fp32_convs(model))
            planar += sum(n.op_type == "Conv" and n.name not in kept for n in model.graph.node)
        if "plugin" in forms:   # read after calibrating and quantizing the portable forms: said now, not then
            _read_graph(forms["plugin"], load_external_data=False)
    if planar == 0:
        raise UserError(f"{src.path} has only 3D convolutions, and ONNX Runtime's INT8 3D convolution runs slower "
                        "on the CPU than its fp32 one: an INT8 copy would be slower, so none is written; keep the "
                        "fp32 package")
    # the folder is made (and shown to take files) before calibrating: minutes for a full-size model, lost to an
    # --out that cannot be written
    made: list[Path] = []   # the folders this run makes (removed again if it fails): --out and its missing parents
    try:
        made = make_folders(out_dir)
        work = Path(tempfile.mkdtemp(prefix=".vosrt-quantize-", dir=out_dir))
    except OSError as err:
        remove_made(out_dir, made)
        raise UserError(f"--out {out_dir}: cannot create the folder ({err.strerror or err}); choose a writable "
                        "--out folder") from None
    try:
        say(f"calibrating on {len(frames)} frames")
        # streamed as `vosrt run` streams them: minutes for a full-size model, so a bar shows how far it is
        bar = Progress(len(frames), "frame", enabled=progress is not None, desc="calibrating")
        ranges = RangeCalibration(src, work / ".calibration")
        counts = record_calibration(src, frames, first_mask, ranges, color, progress=bar)
        # Every graph must have run before any is quantized: a graph found idle halfway would leave the others'
        # INT8 files behind in out_dir with no manifest.
        idle = [graph for graph in src.graphs if not counts.get(graph)]
        if idle:
            from vosrt.sdk import families

            why = ("the tracker segments from the second frame on (the first one carries the mask): calibrate on "
                   "2 or more frames" if families.get(src.family).takes_mask else "too few frames for a clip?")
            raise UserError(f"the {len(frames)} calibration frame(s) never ran graph(s) {', '.join(idle)}: {why}")
        calibration = {"source": source_name, "frames": len(frames), **({"mask": mask_name} if mask_name else {})}
        files, manifest = _write_int8_files(src, ranges, counts, calibration, work, say)
        # Everything is written aside (in ``work``) and moved into place at the end, the manifest last: a run that
        # fails or is interrupted leaves an earlier package in out_dir as it was, and no folder it created.
        from vosrt.export.package import _listed_files

        # an earlier INT8 package's files, by its manifest: its graphs and what it copied from its fp32 package
        earlier = _listed_files(out_dir, written=True) | _copied_by(out_dir)
        (out_dir / "manifest.json").unlink(missing_ok=True)   # never the old manifest over new graphs
        for name in files:
            (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(work / name, out_dir / name)
        write_manifest(out_dir, manifest)
        # its files the new package does not name (another family's graphs, its weights) would lie there unused
        for stale in sorted(earlier - set(files) - _listed_files(out_dir, written=False)):   # never one just written
            (out_dir / stale).unlink(missing_ok=True)
            say(f"removed {out_dir / stale} (of the INT8 package that was there)")
    except BaseException:
        remove_made(out_dir, made)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir


def _copied_files(src) -> list[str]:
    """The files of package ``src`` its INT8 copy keeps, relative to it: the torch backend's weights (the checkpoint
    the manifest records, when it lies in the package; one elsewhere is recorded by its absolute path) and the
    training record."""
    source_dir = Path(src.path).resolve()
    extras = {"weights.pt", "training.json"}
    if src.checkpoint is not None and src.checkpoint.resolve().is_relative_to(source_dir):
        extras.add(str(src.checkpoint.resolve().relative_to(source_dir)))
    # a link out of the package is not its file: copied, what it named (any file of the user's) went into the INT8
    # package, to be published with it
    return sorted(extra for extra in extras if (source_dir / extra).is_file()
                  and (source_dir / extra).resolve().is_relative_to(source_dir))


def _copied_by(out_dir: Path) -> set[str]:
    """The files an INT8 package at ``out_dir`` copied from its fp32 package (its manifest's ``copied``; before that
    was recorded, the extras a copy can hold), that lie inside it."""
    record = (held_manifest(out_dir) or {}).get("quantization")
    if not isinstance(record, dict):
        return set()
    copied = record.get("copied", ["weights.pt", "training.json", "checkpoint.pth"])
    if not isinstance(copied, list):
        return set()
    inside = Path(out_dir).resolve()
    return {name for name in copied if isinstance(name, str) and (out_dir / name).is_file()
            and (out_dir / name).resolve().is_relative_to(inside)}


def _write_int8_files(src, ranges: RangeCalibration, counts: Counter, calibration: dict, work: Path,
                      say: Callable[[str], None]) -> tuple[list[str], dict]:
    """Quantize every graph of ``src`` into the folder ``work`` and copy the files the INT8 package keeps
    beside them; returns (the files written, relative to ``work``; the new manifest, recording ``calibration``)."""
    manifest = json.loads((Path(src.path) / "manifest.json").read_text())
    report, files = {}, []
    for graph, forms in src.graphs.items():
        name = f"{graph}.int8.onnx"
        table = work / f"{graph}.calibration.json"
        say(f"quantizing {graph} ({counts[graph]} calibration inputs)")
        ranges.write_table(graph, table)
        report[graph] = {**quantize_graph(forms["portable"], work / name, table), "calibration_samples": counts[graph]}
        files.append(name)
        manifest["graphs"][graph] = {"portable": name}
        if "plugin" in forms and filecmp.cmp(forms["plugin"], forms["portable"], shallow=False):
            manifest["graphs"][graph]["plugin"] = name  # no custom operator in it: the same graph
        elif "plugin" in forms:
            missing = _uncalibrated_conv_tensors(forms["plugin"], table)
            if missing:
                say(f"{graph}: plugin form left out, its convolution tensors {missing[:3]} are not in the "
                    f"portable form's calibration")
            else:
                plugin_name = f"{graph}.int8.plugin.onnx"
                say(f"quantizing {graph}, plugin form (ranges of the portable form)")
                quantize_graph(forms["plugin"], work / plugin_name, table)
                files.append(plugin_name)
                manifest["graphs"][graph]["plugin"] = plugin_name
                report[graph]["plugin_form"] = True
        table.unlink()
    source_dir = Path(src.path).resolve()
    copied = _copied_files(src)
    for extra in copied:
        (work / extra).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source_dir / extra, work / extra)
        files.append(extra)
    manifest.pop("engines", None)
    from vosrt.sdk.package import file_sha256

    manifest["quantization"] = {"method": "onnxruntime static QDQ, int8 per-channel weights, uint8 activations",
                                "calibration": calibration,
                                "source_package": str(Path(src.path).resolve()),
                                # the fp32 graphs it was made from, by file and hash: vosrt check holds the INT8
                                # package to that package only while they are still there
                                "source_graphs": {f"{graph}.{form}": [str(Path(path).resolve().relative_to(source_dir)),
                                                                      file_sha256(path)]
                                                  for graph, forms in src.graphs.items()
                                                  for form, path in forms.items()},
                                "copied": copied,
                                "quantized_ops": ["Conv"], "fp32": "custom operators (readout, D2Conv3D)",
                                "graphs": report}
    return files, manifest
