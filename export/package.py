"""Model packages: export a checkpoint's graphs to ONNX in both forms, write the manifest, check parity.

A package (docs/DESIGN.md, "Package folder") is a folder with ``manifest.json`` and one
``graph.form.onnx`` file per graph and form. Each graph is traced once with ``torch.export`` (with the
custom operators as single calls, ``vosrt.training.graphs.custom_ops``) and that one program is
translated twice: into the plugin form and into the portable form (``vosrt.export.onnx_ops``).
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import shlex
import time
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx
import torch

import vosrt
from vosrt.export import onnx_ops
from vosrt.sdk import families
from vosrt.sdk.backends.onnxruntime import session_options
from vosrt.sdk.errors import UserError
from vosrt.sdk.package import (FORMAT_VERSION, FORMS, compare_outputs, file_sha256, held_manifest, load_package,
                                 output_folder, refuse_replacing, remove_made, stage_file, writable_folder,
                                 write_manifest)
from vosrt.sdk.progress import Reporter as Progress
from vosrt.sdk.progress import say as _say
from vosrt.training import graphs as graph_modules
from vosrt.training.models import build_model, check_min_size, load_checkpoint, save_checkpoint

WEIGHTS_FILE = "weights.pt"  # written beside the graphs when exporting random weights


def _stride_of(model: torch.nn.Module) -> int:
    # A model may need sizes divisible by more than 16 (a deeper encoder); it says so in `size_multiple`.
    return int(getattr(model, "size_multiple", 16))


def check_size(height: int, width: int, multiple: int = 16, flag: str | None = None) -> None:
    """UserError unless height and width are positive multiples of ``multiple`` (naming the nearest valid sizes).
    ``flag``: the command-line option that gave them (``--size``), which the error then starts with."""
    said = f"{flag}: " if flag else ""
    for name, value in (("height", height), ("width", width)):
        if value <= 0:
            raise UserError(f"{said}{name} {value}: expected a positive multiple of {multiple} (e.g. {name} "
                            f"{480 if name == 'height' else 864})")
        if value % multiple:
            below = max(multiple, value // multiple * multiple)
            above = max(multiple, -(-value // multiple) * multiple)
            nearest = f"{below}" if below == above else f"{below} or {above}"
            raise UserError(f"{said}{name} {value} is not a multiple of {multiple}, which the graphs need "
                            f"(nearest valid {name}: {nearest})")


def check_streaming(family, streaming: dict | None) -> dict:
    """The streaming overrides of an export, checked before any work as ``load_package`` checks them in the
    manifest: settings of ``family`` only, whole numbers >= 0 where the default is whole (top_k 0 = all),
    finite numbers where it is real. UserError naming the setting otherwise."""
    streaming = dict(streaming or {})
    unknown = [key for key in streaming if key not in family.streaming]
    if unknown:
        raise UserError(f"streaming setting(s) {', '.join(unknown)} do not apply to {family.name} packages; "
                        f"its settings are {', '.join(family.streaming)}")
    for key, value in streaming.items():
        default = family.streaming[key]
        if isinstance(default, float):
            ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
            expected = "a finite number"
        else:
            ok = not isinstance(value, bool) and isinstance(value, int) and value >= 0
            expected = "a whole number >= 0" + (" (0 = all memory entries)" if key == "top_k" else "")
        if not ok:
            raise UserError(f"{key}: expected {expected}, got {value!r}")
    return streaming


def _check_top_k_fits_forms(streaming: dict, forms: list[str]) -> None:
    """UserError for a top_k the exported forms cannot read with: the plugin form's L2MemoryReadout (the TensorRT
    plugin and vosrt's CPU operators) reads at most MAX_TOP_K entries per query, or all of them (0); a larger
    top_k was exported and checked (on a memory smaller than it) and then failed at run time once the memory
    held more entries, and TensorRT refuses the node. The portable form's TopK takes any int64."""
    from vosrt.sdk.cpu_ops import MAX_TOP_K, reads_top_k

    top_k = streaming.get("top_k")
    if top_k is None:
        return
    if top_k >= 2**63:
        raise UserError(f"top_k (--top-k) {top_k}: too large for the graphs' int64; give at most {MAX_TOP_K}, "
                        f"or 0 to read all memory entries")
    if "plugin" in forms and not reads_top_k(top_k):
        raise UserError(f"top_k (--top-k) {top_k}: the plugin form's L2MemoryReadout (the TensorRT plugin and "
                        f"vosrt's CPU operators) reads at most {MAX_TOP_K} memory entries per query, or all of them "
                        f"with top_k 0; give --top-k {MAX_TOP_K} or less, --top-k 0 to read all, or export the "
                        f"portable form alone (--forms portable), whose TopK takes any top_k")


def _refuse_another_package(out_dir: Path, family) -> None:
    """UserError where ``out_dir`` holds a package that an export of a ``family`` model must not replace: one of
    another family, or an INT8 package (vosrt quantize). A package of the same family is replaced (re-exporting a
    package is how it gets new weights, another size or top_k), and so is one whose manifest cannot be read."""
    held = held_manifest(out_dir)
    if held and (held.get("quantization") or (isinstance(held.get("family"), str) and held["family"] != family.name)):
        refuse_replacing(out_dir, held, f"exporting a {family.name} model")


def resolve_model(name: str, checkpoint: str | Path | None, random_weights: bool = False):
    """(model, config) for ``name`` (a family or a variant) from ``checkpoint``, or random weights.

    A family name (``stcn``, ``3dc-seg``) accepts a checkpoint of any variant of that family; a variant
    name (``stcn-lite``) requires exactly that variant.
    """
    family = families.of_model(name)
    if checkpoint is None:
        if not random_weights:
            raise UserError("no checkpoint given: pass --checkpoint PATH (a vosrt checkpoint or a published "
                            ".pth of the family), or --random-weights to export an untrained model")
        torch.manual_seed(0)
        model = build_model(name).eval()
        return model, dict(model.config)
    try:   # read once (a published checkpoint is hundreds of MB); the family is checked below, with a hint
        model, config = load_checkpoint(checkpoint)
    except UserError as err:   # the file given: the error names the flag and what to pass
        raise UserError(f"--checkpoint: {err}; pass a checkpoint of a {name} model (vosrt train's RUN/last.pth, "
                        f"or a published .pth of the {family.name} family)") from None
    held = config.get("model")
    if held is not None and families.of_model(held).name != family.name:
        raise UserError(f"--checkpoint {checkpoint} holds a '{families.of_model(held).name}' model ({held}), but MODEL "
                        f"'{name}' was asked for; pass a checkpoint of a {name} model, or export this one with MODEL "
                        f"{held} (`vosrt export {held} --checkpoint {checkpoint} --out DIR --size H W`)")
    variant = config.get("model")
    if name != family.name and variant != name:
        # (the hint named `vosrt export stcn ...` twice for a full STCN checkpoint, and never the flags to keep)
        as_family = f" or {family.name}" if family.name != variant else ""
        raise UserError(f"--checkpoint {checkpoint} holds a '{variant}' model, but MODEL '{name}' was asked for; "
                        f"give MODEL {variant}{as_family} with the same --checkpoint, --out and --size "
                        f"(`vosrt export {variant} --checkpoint {checkpoint} --out DIR --size H W`)")
    return model.eval(), config


def _torch_dynamic_shapes(spec: graph_modules.GraphSpec, extra_inputs: Iterable[str]):
    dims: dict[str, torch.export.Dim] = {}
    shapes = {}
    for name in spec.input_names:
        axes = spec.dynamic_axes.get(name, {})
        shapes[name] = {axis: dims.setdefault(label, torch.export.Dim(label, min=1, max=1 << 20))
                        for axis, label in axes.items()} or None
    for name in extra_inputs:
        shapes[name] = None
    return shapes


def _portable_inputs(spec: graph_modules.GraphSpec, streaming: dict) -> dict[str, torch.Tensor]:
    # Inputs only the portable form exposes (the segment graph's top_k), with the streaming setting as
    # their value; the family table (GraphIO.portable_inputs) names them.
    return {name: torch.tensor([int(streaming[setting])], dtype=torch.int64)
            for name, setting in spec.portable_inputs.items()}


def _finish_model(model: onnx.ModelProto, form: str, defaults: dict[str, torch.Tensor]) -> onnx.ModelProto:
    model.ir_version = onnx_ops.IR_VERSION
    if form == "plugin" and not any(o.domain == onnx_ops.PLUGIN_DOMAIN for o in model.opset_import):
        if any(n.domain == onnx_ops.PLUGIN_DOMAIN for n in model.graph.node):
            model.opset_import.append(onnx.helper.make_opsetid(onnx_ops.PLUGIN_DOMAIN, 1))
    if form == "portable":
        # An initializer named like an input is that input's default value: sessions may override it.
        for name, value in defaults.items():
            model.graph.initializer.append(onnx.numpy_helper.from_array(value.numpy(), name))
    onnx.checker.check_model(model, full_check=True)
    return model


@contextlib.contextmanager
def _interrupts_pass_through():
    """Re-raise a Ctrl-C (or vosrt's SIGTERM/SIGHUP stop, a KeyboardInterrupt) that the exporter turned into an
    error of its own: one that lands inside torch's tracing can make a ``finally`` there fail, and torch.onnx
    wraps that failure into a ConversionError ("Create an issue in the PyTorch GitHub repository"), which
    `vosrt export` printed as a page of traceback with exit code 1 instead of 'interrupted'."""
    try:
        yield
    except Exception as err:
        seen, cause = set(), err
        while cause is not None and id(cause) not in seen:
            if isinstance(cause, KeyboardInterrupt):
                raise cause from None
            seen.add(id(cause))
            cause = cause.__cause__ or cause.__context__
        raise


@contextlib.contextmanager
def _quiet_exporter():
    # The exporter logs and warns about things that do not concern a vosrt user (optional torchvision
    # ops, deprecations inside torch); real failures still raise.
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_graph(spec: graph_modules.GraphSpec, graph: str, height: int, width: int,
                 forms: Iterable[str] = FORMS, top_k: int = 20, streaming: dict | None = None
                 ) -> dict[str, onnx.ModelProto]:
    """Trace one graph once and translate it into each of ``forms``; returns {form: checked ModelProto}.
    ``streaming`` (with ``top_k``) gives the defaults of the inputs only the portable form exposes."""
    forms = list(forms)
    example = spec.example(height, width, generator=torch.Generator().manual_seed(0))
    extra = _portable_inputs(spec, {"top_k": top_k, **(streaming or {})})
    with _interrupts_pass_through(), graph_modules.custom_ops(), torch.no_grad(), _quiet_exporter():
        # A guard the tracer cannot prove over a dynamic axis's range becomes a run-time check instead of a
        # failed export: torch 2.11 cannot prove min(N, 128*N) == N (from reshaping mem_value [O, Cv, N])
        # and refused every STCN export ("Constraints violated (memory)"); 2.13 proves it.
        program = torch.export.export(spec.module.eval(), tuple(example) + tuple(extra.values()),
                                      dynamic_shapes=_torch_dynamic_shapes(spec, extra), strict=False,
                                      prefer_deferred_runtime_asserts_over_guards=True)
    _check_custom_op_calls(spec.module, program)
    # The forms' translation tables differ only in the custom operators: a graph that calls none (STCN's
    # encoders) translates once, and each form finishes its own copy.
    custom = any(node.target in (graph_modules.D2CONV3D_OP, graph_modules.L2_READOUT_OP)
                 for node in program.graph.nodes)
    translated = None
    models = {}
    for form in forms:
        # The plugin form carries top_k as the node attribute only, so its top_k input stays unused
        # and the exporter drops it.
        if translated is None or custom:
            with _interrupts_pass_through(), _quiet_exporter():
                onnx_program = torch.onnx.export(
                    program, (), dynamo=True, opset_version=onnx_ops.OPSET,
                    input_names=spec.input_names + list(extra), output_names=spec.output_names,
                    custom_translation_table=onnx_ops.translation_table(form), optimize=True, verbose=False)
            translated = onnx_program.model_proto
        model = translated
        if not custom and form != forms[-1]:  # another form finishes the same translation after this one
            model = onnx.ModelProto()
            model.CopyFrom(translated)
        if form == "plugin":
            _drop_unused_inputs(model)
        models[form] = _finish_model(model, form, extra)
    return models


def _check_custom_op_calls(module: torch.nn.Module, program) -> None:
    # Every D²Conv3D layer must reach the exporter as one custom-op call; a layer that bypassed it would
    # be traced into thousands of gathers and silently missing from the plugin form.
    layers = sum(1 for m in module.modules() if hasattr(m, "deform_params") and hasattr(m, "deform_conv"))
    calls = sum(1 for node in program.graph.nodes if node.target is graph_modules.D2CONV3D_OP)
    if calls != layers:
        raise RuntimeError(f"{layers} D²Conv3D layer(s) but {calls} vosrt::d2conv3d call(s) in the traced graph: "
                           f"a layer does not call vosrt.training.ops.d2conv3d.d2conv3d")


def _listed_files(out_dir: Path, written: bool) -> set[str]:
    """The files inside ``out_dir`` that its manifest names: with ``written``, only those vosrt wrote there
    (graphs, engines, and the random weights while they are still the ones recorded), else also the checkpoint
    it records; none without a readable manifest."""
    manifest = held_manifest(out_dir) or {}
    names = []
    for forms in (manifest.get("graphs") or {}).values():
        names += list(forms.values()) if isinstance(forms, dict) else []
    for build in (manifest.get("engines") or {}).values():
        files = build.get("files") if isinstance(build, dict) else None
        names += list(files.values()) if isinstance(files, dict) else []
    source = manifest.get("source") or {}
    checkpoint = source.get("checkpoint") if isinstance(source, dict) else None
    if not written:
        names.append(checkpoint)
    elif source.get("random_weights") and isinstance(checkpoint, str):
        # weights.pt as the export wrote it: a user's checkpoint, or weights written over it since, stay
        path = out_dir / checkpoint
        if path.is_file() and file_sha256(path) == source.get("sha256"):
            names.append(checkpoint)
    listed = set()
    for name in names:
        if isinstance(name, str) and name:
            relative = os.path.normpath(name)
            if os.path.isabs(relative) or relative.split(os.sep)[0] in ("..", "."):   # never a file outside it
                continue
            if (out_dir / relative).is_file() or (out_dir / relative).is_symlink():
                listed.add(relative)
    return listed


def _drop_unused_inputs(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input}
    used |= {o.name for o in model.graph.output}
    keep = [i for i in model.graph.input if i.name in used]
    del model.graph.input[:]
    model.graph.input.extend(keep)


def export_package(name: str, checkpoint: str | Path | None, out_dir: str | Path, height: int | None = None,
                   width: int | None = None, forms: Iterable[str] = FORMS, random_weights: bool = False,
                   streaming: dict | None = None, check: bool = False, progress: Progress = None,
                   size_flag: str | None = None) -> Path:
    """Export model ``name`` (a family or one of its models: ``vosrt.sdk.families.model_names()``) to a
    package folder.

    Args:
        name: family or variant; a family name takes whichever variant the checkpoint holds.
        checkpoint: a vosrt checkpoint or a published STCN ``.pth``; None with ``random_weights=True``
            exports an untrained model and saves its weights into the package (``weights.pt``) so the
            torch backend and :func:`check_package` can reproduce it.
        out_dir: package folder (created; existing graph files are replaced, and the files its earlier
            manifest listed that the new one does not, engines included, are removed). A package of another
            family, or an INT8 package, there is refused (UserError), never replaced.
        height, width: package resolution, multiples of 16 (32 for 3dc-seg: the model's ``size_multiple``;
            default: the family's, 480×864).
        forms: any of ``"plugin"``, ``"portable"``.
        streaming: overrides of the streaming defaults recorded in the manifest.
        check: run :func:`check_package` at the end (results under the manifest's ``check`` entry).
        progress: called with one line per step (e.g. ``print``).
        size_flag: the command-line option that gave height and width (``--size``); size errors name it, and
            say the size to give in its form.

    Returns the package folder. Errors in the arguments raise UserError.
    """
    forms = [forms] if isinstance(forms, str) else list(forms)
    unknown = [f for f in forms if f not in FORMS]
    if unknown or not forms:
        raise UserError(f"forms (--forms): expected some of {', '.join(FORMS)} (comma-separated), got "
                        f"{', '.join(forms) or 'none'}")
    family = families.of_model(name)
    default_h, default_w = family.default_resolution
    # Only None takes the default: a size of 0 is an error like any other size that is not a multiple.
    height = int(default_h if height is None else height)
    width = int(default_w if width is None else width)
    check_size(height, width, 16, size_flag)
    streaming = check_streaming(family, streaming)
    _check_top_k_fits_forms(streaming, forms)
    # the folder the path names, as the system finds it once its folders exist: "missing/.." is the one holding
    # "missing" (an earlier package there is seen, and a stopped export removes only what it made)
    out_dir = output_folder(out_dir, "--out")
    if checkpoint is not None and not Path(checkpoint).is_file():
        what = "is a folder, not a checkpoint file" if Path(checkpoint).is_dir() else "not found"
        raise UserError(f"checkpoint {what}: {checkpoint} (--checkpoint); pass the .pth file (vosrt train's "
                        f"RUN/last.pth, or a published checkpoint)")
    _refuse_another_package(out_dir, family)
    weights = out_dir / WEIGHTS_FILE
    if checkpoint is None and (weights.is_file() or weights.is_symlink()) \
            and WEIGHTS_FILE not in _listed_files(out_dir, written=True):
        # the random weights are written there: a file the user put there (or trained into) was replaced
        raise UserError(f"--out {out_dir} holds {WEIGHTS_FILE}, which is not the random weights of an earlier "
                        f"export there, and an export with --random-weights writes its weights to that name; export "
                        f"that file instead (`{shlex.join(['vosrt', 'export', name, '--checkpoint', str(weights), '--out', str(out_dir)])} "
                        f"--size {height} {width}`), or move it away, or give another --out folder")
    made = writable_folder(out_dir, "--out", "a folder you can write for the package (created if missing), or an "
                           "earlier package of this model")
    try:
        return _export_into(out_dir, name, family, checkpoint, height, width, forms, random_weights, streaming,
                            check, progress, size_flag)
    except BaseException:
        # A failed export leaves no half-written package behind: the folders it created are removed (by what the
        # path resolves to: "missing/.." is the folder holding it, which rmtree(out_dir) emptied)
        remove_made(out_dir, made)
        raise


def streaming_settings(family, model, streaming: dict | None = None) -> dict:
    """The ``streaming`` section of a package's manifest: the family's defaults, the model's own where it has them
    (a clip family's clip length; ``model.streaming_defaults()``, e.g. a STEm-Seg category head's foreground
    threshold), then the export's ``streaming`` overrides."""
    stream = dict(family.streaming)
    if "clip_length" in stream:  # clip families: the model's own clip length
        stream["clip_length"] = int(getattr(model, "clip_length", stream["clip_length"]))
    own = getattr(model, "streaming_defaults", None)
    if callable(own):
        stream.update({k: v for k, v in own().items() if k in stream})
    stream.update(streaming or {})
    return stream


def _export_into(out_dir: Path, name, family, checkpoint, height, width, forms, random_weights, streaming,
                 check, progress, size_flag=None) -> Path:
    _say(progress, f"loading {'random weights' if checkpoint is None else checkpoint}")
    model, config = resolve_model(name, checkpoint, random_weights)
    check_size(height, width, _stride_of(model), size_flag)
    check_min_size(height, width, int(getattr(model, "min_size", 0)), config.get("model", name),
                   size_flag or "height, width",
                   f"{size_flag} {{height}} {{width}}" if size_flag else "height={height}, width={width}")
    variant = config.get("model", name)
    stream = streaming_settings(family, model, streaming)

    # Every file is written under a temporary name first and moved into place at the end, the manifest last:
    # an export into an existing package that fails or is interrupted leaves that package as it was.
    staged: dict[Path, Path] = {}
    try:
        return _export_files(out_dir, model, config, family, variant, checkpoint, height, width, forms, stream,
                             check, progress, staged)
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)


def _export_files(out_dir: Path, model, config, family, variant, checkpoint, height, width, forms, stream, check,
                  progress, staged: dict[Path, Path]) -> Path:
    if checkpoint is None:
        weights = staged[out_dir / WEIGHTS_FILE] = stage_file(out_dir / WEIGHTS_FILE,
                                                               lambda tmp: save_checkpoint(tmp, model, config))
        source = {"checkpoint": WEIGHTS_FILE, "sha256": file_sha256(weights), "random_weights": True}
    else:
        # A checkpoint inside the package is recorded relative to it, so the package can move.
        resolved = Path(checkpoint).resolve()
        inside = resolved.is_relative_to(out_dir.resolve())
        source = {"checkpoint": str(resolved.relative_to(out_dir.resolve()) if inside else resolved),
                  "sha256": file_sha256(resolved)}

    specs = graph_modules.graphs_for(model, top_k=stream.get("top_k", graph_modules.DEFAULT_TOP_K))
    graph_files: dict[str, dict[str, str]] = {}
    for graph, spec in specs.items():
        start = time.perf_counter()
        _say(progress, f"exporting {graph} ({', '.join(forms)}) at {height}x{width}")
        models = export_graph(spec, graph, height, width, forms, streaming=stream)
        graph_files[graph] = {}
        for form, proto in models.items():
            filename = f"{graph}.{form}.onnx"
            staged[out_dir / filename] = stage_file(out_dir / filename, lambda tmp: onnx.save(proto, str(tmp)))
            graph_files[graph][form] = filename
        _say(progress, f"  {graph}: done in {time.perf_counter() - start:.1f} s")

    manifest = {
        "format_version": FORMAT_VERSION,
        "family": family.name,
        "variant": variant,
        "config": config,
        "resolution": {"height": height, "width": width, "stride": _stride_of(model)},
        "input": {"color": "RGB", "dtype": "float32", "range": [0, 1], "layout": family.layout,
                  "mean": list(model.input_mean), "std": list(model.input_std)},
        "in_graph": list(family.in_graph),
        "graphs": graph_files,
        "io": {g: {"inputs": s.input_names, "outputs": s.output_names,
                   "dynamic_axes": {k: {str(a): n for a, n in v.items()} for k, v in s.dynamic_axes.items()},
                   # inputs with a default value that only the portable form exposes
                   **({"portable_optional_inputs": {name: stream[setting] for name, setting in
                                                    s.portable_inputs.items()}} if s.portable_inputs else {})}
               for g, s in specs.items()},
        "dims": dict(getattr(model, "dims", {}) or {}),
        "streaming": stream,
        "versions": {"vosrt": vosrt.__version__, "torch": torch.__version__.split("+")[0],
                     "onnx": onnx.__version__, "opset": onnx_ops.OPSET, "ir_version": onnx_ops.IR_VERSION},
        "source": source,
    }
    if family.layout != "NCHW":
        manifest["layout"] = family.layout   # kept here too: earlier packages have the clip layout only here
    earlier = _listed_files(out_dir, written=True)
    for final in list(staged):
        os.replace(staged.pop(final), final)
    write_manifest(out_dir, manifest)
    _say(progress, f"wrote {out_dir / 'manifest.json'}")
    # An export into an existing package replaces its manifest: files the old one listed and the new one does
    # not (a form left out now, engines and weights of the replaced graphs) would lie there unused, and an
    # engine of the old graphs is wrong for the new ones.
    for stale in sorted(earlier - _listed_files(out_dir, written=False)):   # never what the new one names
        (out_dir / stale).unlink(missing_ok=True)
        _say(progress, f"removed {out_dir / stale} (of the package's earlier export)")
    if check and "portable" in forms:
        report = check_package(out_dir, progress=progress)
        manifest["check"] = report
        write_manifest(out_dir, manifest)
    return out_dir


def _package_model(package, checkpoint: str | Path | None):
    """The model ``package`` was exported from: ``checkpoint`` (a path as given, relative to the working
    folder), else the manifest's ``source.checkpoint`` (relative to the package folder)."""
    ck = Path(checkpoint) if checkpoint else package.checkpoint
    if ck is None:
        raise UserError(f"{package.path}: the manifest records no checkpoint; pass the one it was exported from "
                        f"(`vosrt check {package.path} --checkpoint PATH`)")
    if not checkpoint and not ck.is_file():
        raise UserError(f"{package.path}: the manifest records checkpoint {ck} (source.checkpoint, the one it was "
                        f"exported from), which is not there (moved or deleted?); pass it where it is now "
                        f"(`vosrt check {package.path} --checkpoint PATH`)")
    hint = f"pass the checkpoint {package.path} was exported from with --checkpoint" + (
        f" (the manifest records {package.checkpoint})" if package.checkpoint else "")
    if checkpoint:   # the file given: errors name the flag and what to pass instead
        if not ck.is_file():
            raise UserError(f"--checkpoint {ck}: no such file; {hint}")
        try:
            model, config = load_checkpoint(ck, family=package.family)
        except UserError as err:
            raise UserError(f"--checkpoint: {err}; {hint}") from None
    else:
        model, config = load_checkpoint(ck, family=package.family)
    # The graphs were exported from the manifest's model: a checkpoint of another variant or other widths
    # gives tensors of other shapes, which is no parity result but a wrong file.
    held = package.other_network(model, config.get("model"))
    if held:
        raise UserError(f"{ck} holds {held}; {hint}")
    return model.eval(), config


def check_package(pkg: str | Path, checkpoint: str | Path | None = None, seed: int = 0, objects: int = 2,
                  memory_frames: int = 3, progress: Progress = None) -> dict:
    """Run the portable form of every graph in ONNX Runtime (CPU) against the PyTorch graph modules on
    random inputs, and the plugin form of every graph too (under ``GRAPH.plugin``; custom operators on
    vosrt's CPU operators, where they can be had). First the package is opened as ``vosrt run`` opens it, and
    every graph file must be the graph it is fed as: UserError naming the file otherwise. Returns ``{graph: {output: {"max_abs", "max_rel"} |
    {"mismatch_fraction"}}}``
    (uint8 label maps report the fraction of differing pixels; arg-max flips only where two
    probabilities tie to rounding)."""
    package = load_package(pkg)
    _refuse_missing_graph_files(package)
    model, _ = _package_model(package, checkpoint)
    stream = package.streaming
    specs = graph_modules.graphs_for(model, top_k=stream.get("top_k", graph_modules.DEFAULT_TOP_K))
    options = session_options(threads=min(os.cpu_count() or 1, 4))
    for graph in specs:
        if "portable" not in package.graphs.get(graph, {}):
            raise UserError(f"{package.path}: graph '{graph}' has no portable form to check")
    _opens_for_streaming(package)
    stride = _stride_of(model)
    if package.height % stride or package.width % stride:
        # exported before the model said so (3dc-seg took multiples of 16): it runs, but not as published
        _say(progress, f"note: {package.path}: {package.height}x{package.width} is not a multiple of {stride}, which "
                       f"{package.family} packages are now (the published code pads every input to it); the graphs "
                       f"are checked as they are, but compute another network than the published one on the padded "
                       f"frame; export it again with --size {-(-package.height // stride) * stride} "
                       f"{-(-package.width // stride) * stride}")
    files = _graph_files(package)   # each file parsed once for the two checks on its nodes
    _check_graph_format(package, files)
    _check_plugin_top_k(package, files)
    report = {}
    for graph, spec in specs.items():
        generator = torch.Generator().manual_seed(seed)
        inputs = spec.example(package.height, package.width, objects=objects, memory_frames=memory_frames,
                              generator=generator)
        path = package.graphs[graph]["portable"]
        session = _open_graph(package, graph, path, path, options, spec, inputs)
        feed = {n: t.numpy() for n, t in zip(spec.input_names, inputs)}
        takes = {i.name for i in [*session.get_inputs(), *session.get_overridable_initializers()]}
        if "top_k" in takes and "top_k" not in feed:
            # fed the manifest's top_k, as the tracker feeds it: the graph's default is the export's, which a
            # manifest edited since no longer names (the module reads with the manifest's)
            feed["top_k"] = np.array([int(stream.get("top_k", graph_modules.DEFAULT_TOP_K))], np.int64)
        outputs = session.run(spec.output_names, feed)
        with torch.no_grad():
            expected = spec.module(*inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        for name, out, ref in zip(spec.output_names, outputs, expected):
            if tuple(out.shape) != tuple(ref.shape):
                raise UserError(f"{package.path}: {graph} output '{name}' has shape {tuple(out.shape)} in the "
                                f"package but {tuple(ref.shape)} in the checkpoint's model: the graphs were "
                                f"exported from another model; pass the checkpoint they came from with --checkpoint")
        expected = [ref.numpy() for ref in expected]
        report[graph] = compare_outputs(spec.output_names, outputs, expected)
        # The plugin form is what ONNX Runtime runs on the CPU by default (vosrt's CPU operators): check it too.
        plugin = _run_plugin_form(package, graph, options, spec, inputs, progress)
        if plugin is not None:
            report[f"{graph}.plugin"] = compare_outputs(spec.output_names, plugin, expected)
        for key in (graph, f"{graph}.plugin"):
            if key in report:
                _say(progress, f"check {key}: " + ", ".join(
                    f"{name} " + " ".join(f"{k}={v:.2e}" for k, v in r.items()) for name, r in report[key].items()))
    return report


def _refuse_missing_graph_files(package) -> None:
    """UserError naming the graph files the manifest lists that are not in the package: loading skips a form
    whose file is gone (a session runs the other), so the check would compare what is left and pass a package
    whose plugin form, the one ONNX Runtime runs on the CPU and TensorRT builds from, was lost."""
    missing = [package.path / name for graph, forms in package.manifest["graphs"].items()
               if graph in package.graphs and isinstance(forms, dict)
               for form, name in forms.items() if form not in package.graphs[graph]]
    if missing:
        raise UserError(f"{package.path}: the manifest lists {', '.join(map(str, missing))}, which "
                        f"{'is' if len(missing) == 1 else 'are'} not there (deleted, or left out of a copy?); copy "
                        f"the package again, or re-export it with vosrt export")


def _graph_files(package) -> list[tuple[str, str, Path, onnx.ModelProto]]:
    """``(graph, form, path, model)`` of every graph file of ``package`` that parses (weights left on disk); an
    unreadable file is left out: the runs of the check name it."""
    files = []
    for graph, forms in package.graphs.items():
        for form, path in forms.items():
            try:
                files.append((graph, form, path, onnx.load(str(path), load_external_data=False)))
            except Exception:
                continue
    return files


def _check_graph_format(package, files) -> None:
    """UserError naming the graph file (of :func:`_graph_files`) that breaks the ONNX form of the contract
    (ARCHITECTURE.md): IR version 10, default-domain opset 20 or newer, and custom nodes of ``trt.plugins`` version 1
    with ``plugin_version`` "1" and ``plugin_namespace`` "" (TensorRT looks the plugin up by them; vosrt's CPU
    operators ran the nodes whatever they said, so such a file passed the check)."""
    from vosrt.export.onnx_ops import PLUGIN_VERSION
    from vosrt.sdk.cpu_ops import PLUGIN_DOMAIN

    for graph, form, path, model in files:
        opsets = {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}
        wrong = []
        if model.ir_version != onnx_ops.IR_VERSION:
            wrong.append(f"IR version {model.ir_version} (vosrt writes {onnx_ops.IR_VERSION})")
        if opsets.get("ai.onnx", 0) < onnx_ops.OPSET:
            wrong.append(f"opset {opsets.get('ai.onnx', 'none')} (the contract needs {onnx_ops.OPSET} or newer)")
        if PLUGIN_DOMAIN in opsets and opsets[PLUGIN_DOMAIN] != 1:
            wrong.append(f"{PLUGIN_DOMAIN} domain version {opsets[PLUGIN_DOMAIN]} (1)")
        for node in model.graph.node:
            if node.domain != PLUGIN_DOMAIN:
                continue
            attrs = {a.name: a.s.decode(errors="replace") for a in node.attribute
                     if a.name in ("plugin_version", "plugin_namespace")}
            for name, want in (("plugin_version", PLUGIN_VERSION), ("plugin_namespace", "")):
                if attrs.get(name, want) != want:
                    wrong.append(f"{node.op_type} node '{node.name}' {name} {attrs[name]!r} ({want!r})")
        if wrong:
            raise UserError(f"{path}: the {form} form of '{graph}' has {'; '.join(wrong[:3])}"
                            f"{f' and {len(wrong) - 3} more' if len(wrong) > 3 else ''}: TensorRT and ONNX Runtime "
                            f"may refuse it or run other operators than vosrt exported; {_redo(package)}")


def _check_plugin_top_k(package, files) -> None:
    """UserError where a plugin-form graph's (of :func:`_graph_files`) ``L2MemoryReadout`` holds another top_k than
    the manifest's ``streaming.top_k`` (a manifest edited after the export): that form reads with its own, on ONNX
    Runtime and in TensorRT engines alike, whatever the manifest says (the portable form takes the manifest's as an
    input)."""
    want = package.streaming.get("top_k")
    if want is None:
        return
    for _, form, path, model in files:
        if form != "plugin":
            continue
        held = sorted({attr.i for node in model.graph.node if node.op_type == "L2MemoryReadout"
                       for attr in node.attribute if attr.name == "top_k"})
        if held and held != [int(want)]:
            raise UserError(f"{path}: its L2MemoryReadout reads with top_k {', '.join(map(str, held))}, but the "
                            f"manifest says streaming.top_k {want}: the plugin form (and engines built from it) "
                            f"would read with {held[0]}; set streaming.top_k back to {held[0]} in "
                            f"{Path(package.path) / 'manifest.json'}, or re-export the package with --top-k {want}")


def _opens_for_streaming(package) -> None:
    """UserError unless ``package`` opens for streaming as ``vosrt run`` opens it on ONNX Runtime (portable form):
    the checks made there (graphs' inputs and image sizes against the manifest's resolution and clip length,
    the streaming settings) hold for a package that passes ``vosrt check``."""
    from vosrt.sdk import load

    try:
        load(package.path, backend="onnxruntime", form="portable", threads=1).close()
    except UserError as err:   # a damaged graph file said only what ONNX Runtime said
        if not str(err).startswith("ONNX Runtime cannot open"):
            raise
        raise UserError(f"{err}; the file is damaged or not a graph: {_redo(package)}") from None


def _redo(package) -> str:
    """How to write ``package``'s graph files again: the `vosrt export` command, from the checkpoint it records."""
    from vosrt.export.trt_build import reexport_command

    return f"write the graphs again with `{reexport_command(package)}`"


def _open_graph(package, graph: str, path, model_path, options, spec, inputs):
    """An ONNX Runtime session of ``graph``'s file ``path`` (``model_path``: the file opened, the CPU operators'
    rewrite of a plugin-form file), UserError naming the file when it cannot be opened, or when it is not the
    graph the check feeds: inputs that differ, or fixed sizes other than the manifest's."""
    import onnxruntime as ort

    redo = _redo(package)
    try:
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own exception types (InvalidProtobuf, Fail, ...)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: ONNX Runtime cannot open this graph file of '{graph}' ({first}); {redo}") from None
    given = dict(zip(spec.input_names, inputs))
    takes = [i.name for i in session.get_inputs()]
    optional = {i.name for i in session.get_overridable_initializers()}
    extra = [n for n in takes if n not in given and n not in optional and n not in spec.portable_inputs]
    if extra:
        raise UserError(f"{path}: takes input(s) {', '.join(extra)}, which a {package.family} '{graph}' graph is not "
                        f"given (it is given {', '.join(given)}): the file is not that graph; {redo}")
    for meta in session.get_inputs():
        if meta.name not in given:
            continue
        want = tuple(given[meta.name].shape)
        fixed = [(axis, size) for axis, size in enumerate(meta.shape) if isinstance(size, int)]
        if len(meta.shape) != len(want) or any(want[axis] != size for axis, size in fixed):
            shape = "x".join(str(d) if isinstance(d, int) else "?" for d in meta.shape)
            raise UserError(f"{path}: input '{meta.name}' of '{graph}' has shape {shape}, but the package's manifest "
                            f"(resolution {package.height}x{package.width}) and model give "
                            f"{'x'.join(map(str, want))}: the file was exported for another package; {redo}")
    return session


def _run_plugin_form(package, graph: str, options, spec, inputs, progress: Progress):
    """Outputs of ``graph``'s plugin form on ONNX Runtime: with vosrt's CPU operators where it has custom
    operators, as it is where it has none (the file TensorRT builds from, which the ONNX Runtime backend
    leaves for the portable one). None where the package has no plugin form of ``graph``, or the CPU operators
    cannot be had (said on ``progress``)."""
    from vosrt.sdk import cpu_ops, native_callbacks

    path = package.graphs[graph].get("plugin")
    if path is None:
        return None
    if not cpu_ops.has_plugin_nodes(path):
        session = _open_graph(package, graph, path, path, options, spec, inputs)
        return session.run(spec.output_names, _plugin_feeds(session, spec, inputs))
    try:
        library = cpu_ops.register_onnxruntime_ops(cpu_ops.load_cpu_ops())
    except (ImportError, OSError, RuntimeError) as err:
        _say(progress, f"check {graph}: plugin form not checked, vosrt's CPU operators are unavailable "
                       f"({str(err).strip().splitlines()[0]})")
        return None
    threads = options.intra_op_num_threads
    options = session_options(threads=threads)
    options.register_custom_ops_library(library)
    try:
        rewritten = cpu_ops.cpu_graph_for(path)
    except Exception as err:  # a file that does not parse as ONNX (truncated, not a graph)
        raise UserError(f"{path}: this plugin-form file of '{graph}' cannot be read as an ONNX graph "
                        f"({type(err).__name__}: {str(err).strip()[:200]}); re-export the package with `vosrt export`"
                        ) from None
    session = _open_graph(package, graph, path, rewritten, options, spec, inputs)
    # As the ONNX Runtime backend runs it: the operators on this check's threads, and an operator's error
    # (kept while ONNX Runtime runs, its output a placeholder) raised here rather than at a later run.
    try:
        with native_callbacks.holding(), cpu_ops.operator_threads(threads):
            return session.run(spec.output_names, _plugin_feeds(session, spec, inputs))
    finally:
        native_callbacks.release()


def _plugin_feeds(session, spec, inputs) -> dict:
    """The inputs a plugin-form session takes: it carries top_k as a node attribute, and the exporter dropped
    the portable form's top_k input."""
    names = {i.name for i in session.get_inputs()}
    return {n: t.numpy() for n, t in zip(spec.input_names, inputs) if n in names}


def worst_error(report: dict) -> float:
    """The largest ``max_abs`` over all float outputs of a :func:`check_package` report."""
    return max((r["max_abs"] for graph in report.values() for r in graph.values() if "max_abs" in r),
               default=math.nan)
