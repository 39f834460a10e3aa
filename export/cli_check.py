"""``vosrt check DIR``: compare a package's graphs with the PyTorch model on random inputs.

An INT8 package (``vosrt quantize``) is checked on video instead: it and its fp32 source package segment held-out
generated clips, and its labels must follow the fp32 package's or score as well against the clips' truth.

``--backend onnxruntime`` (default) runs the portable form on the CPU, and the plugin form of graphs with
custom operators on vosrt's CPU operators (what ONNX Runtime runs on the CPU by default); ``--backend tensorrt`` compares
the built engines with ONNX Runtime (needs ``vosrt build`` first, TensorRT and a GPU).
"""
from __future__ import annotations

import argparse
import importlib
import math
import shlex
import sys
from pathlib import Path

from vosrt.sdk.errors import UserError

TOLERANCE = 1e-3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``vosrt check``."""
    parser.add_argument("package", metavar="DIR",
                        help="model package folder (from vosrt export) or a shipped package's name (stcn-lite)")
    parser.add_argument("--backend", choices=("onnxruntime", "tensorrt"), default="onnxruntime",
                        help="onnxruntime: portable and plugin forms vs PyTorch; tensorrt: engines vs ONNX Runtime")
    parser.add_argument("--checkpoint", metavar="CK", default=None,
                        help="checkpoint to compare against (default: the one the manifest records)")
    parser.add_argument("--tolerance", type=float, default=None,
                        help=f"largest acceptable relative error max|a-e|/max|e| (default {TOLERANCE}; an INT8 "
                        f"package without one is checked on held-out generated clips beside its fp32 package)")


def print_report(report: dict, tolerance: float, advice=None, reference: str = "PyTorch") -> int:
    """Print a ``check_package`` report, one line per graph output; 1 if any relative error exceeds
    ``tolerance``, else 0. A failure ends with the outputs that exceed it (graph, form, output, error), the
    tolerance, and ``advice(tolerance)`` (what to do; given a --tolerance value that accepts the errors found, or
    None where none does) where given. ``reference``: what the outputs were compared with."""
    failed = []
    width = max((len(graph) for graph in report), default=14)   # GRAPH.plugin names line up with the others
    for graph, outputs in report.items():
        for name, result in outputs.items():
            if "max_abs" in result:
                bad = not result["max_rel"] <= tolerance
                if bad:
                    failed.append((result["max_rel"], graph, name))
                print(f"{graph:>{width}} {name:<10} max abs {result['max_abs']:.3e}  max rel {result['max_rel']:.3e}"
                      f"{'  MISMATCH' if bad else ''}")
            else:
                # a label may flip where the reference's probabilities of its label and of the one given are within
                # their error of each other; a flip where it prefers its own by more than twice the tolerance is wrong
                margin = result.get("flip_margin")
                bad = margin is not None and not margin <= 2 * tolerance
                if bad:
                    failed.append((margin / 2, graph, name))   # a --tolerance of half the margin accepts it
                shown = f" (the reference prefers its own label there by at most {margin:.1e})" if margin else ""
                print(f"{graph:>{width}} {name:<10} differing pixels {100 * result['mismatch_fraction']:.4f}%{shown}"
                      f"{'  MISMATCH' if bad else ''}")
    if not failed:
        print("check passed")
        return 0
    failed.sort(key=lambda item: -item[0] if item[0] == item[0] else -math.inf)
    shown = ", ".join(f"{graph} {name} {rel:.3e}" for rel, graph, name in failed[:4]) + (
        f", and {len(failed) - 4} more" if len(failed) > 4 else "")
    worst = failed[0][0]
    print(f"check failed: {len(failed)} output(s) differ from {reference} beyond the tolerance {tolerance:.3e} "
          f"(max relative error): {shown}" + (f"; {advice(_loose_tolerance(worst))}" if advice else ""))
    return 1


def _loose_tolerance(worst: float) -> str | None:
    """``worst`` rounded up to one significant digit (0.009688 -> "0.01"): a --tolerance that accepts it; None for
    an error no tolerance accepts (nan, inf)."""
    if not math.isfinite(worst) or worst <= 0:
        return None
    exponent = math.floor(math.log10(worst))
    return f"{math.ceil(worst / 10 ** exponent - 1e-9) * 10.0 ** exponent:.1g}"


def tolerance_hint(command: list[str], tolerance: str | None) -> str:
    """`` `vosrt check ... --tolerance T` `` accepting the errors found, or, for outputs that are not numbers (nan),
    that no tolerance accepts them."""
    if tolerance is None:
        return "no tolerance accepts outputs that are not numbers (nan or inf)"
    return (f"where errors of this size are acceptable, give a tolerance of your own: "
            f"`{shlex.join(command + ['--tolerance', tolerance])}`")


def _refuse_int8_without_tolerance(args: argparse.Namespace, package) -> None:
    """An INT8 package (``vosrt quantize``) differs from its PyTorch model by quantisation, far beyond the fp32
    tolerance, on random inputs most of all: compared with it, a working package reads "check failed"."""
    path, quantization = package.path, package.quantization
    if not isinstance(quantization, dict) or args.backend == "tensorrt":
        return   # engines: the TensorRT backend says an INT8 package has none, and which package to build
    judge = (f"`vosrt demo --family {package.family} --heldout 16 --package {shlex.quote(str(path))}` (J&F, to set "
             "against the fp32 package's)")
    if args.tolerance is not None:   # compared as asked; said what the figures cannot show
        print(f"note: {path} is an INT8 package: its errors on random inputs, which lie outside its calibrated "
              f"ranges, say little of its accuracy (a broken one can pass a tolerance a good one fails); judge it on "
              f"video: {judge}", file=sys.stderr)
        return
    source = quantization.get("source_package")
    fp32 = f"`vosrt check {shlex.quote(str(source))}`" if source else "vosrt check on the fp32 package it came from"
    gone = (f" Its fp32 package, recorded at {source}, is not there any more (moved or removed), so it cannot be "
            f"checked beside it on video (put it back there, or quantize it again where it is now)." if source else "")
    raise UserError(f"{path} is an INT8 package (vosrt quantize): its outputs differ from the PyTorch model by "
                    f"quantisation, beyond check's fp32 tolerance {TOLERANCE}.{gone} Check the fp32 package ({fp32}), and "
                    f"measure this one's accuracy where it matters, on segmenting video: {judge}. "
                    f"A --tolerance of your own prints its errors on random inputs, which say little of an INT8 "
                    f"package (a broken one can pass where a good one fails)")


def run(args: argparse.Namespace) -> int:
    """Run the comparison and print per-graph errors."""
    if args.tolerance is not None and not (math.isfinite(args.tolerance) and args.tolerance >= 0):
        # nan compares false with every error, so it passed any package; a negative one failed every package
        raise UserError(f"--tolerance: expected a finite relative error >= 0 (default {TOLERANCE}), "
                        f"got {args.tolerance}")
    from vosrt.sdk.package import load_package

    package = load_package(args.package)   # read once: the INT8 paths and the failure advice ask it
    int8_on_video = _int8_on_video(args, package)
    if int8_on_video is not None:
        return int8_on_video
    _refuse_int8_without_tolerance(args, package)
    tolerance = TOLERANCE if args.tolerance is None else args.tolerance
    if args.backend == "tensorrt":
        if args.checkpoint:   # it was silently ignored: engines are compared with ONNX Runtime, not PyTorch
            hint = shlex.join(["vosrt", "check", str(args.package), "--checkpoint", str(args.checkpoint)]
                              + (["--tolerance", str(args.tolerance)] if args.tolerance is not None else []))
            raise UserError(f"--checkpoint: --backend tensorrt compares the engines with ONNX Runtime and loads no "
                            f"checkpoint; compare the ONNX graphs with it: `{hint}`, or drop --checkpoint")
        try:
            trt_build = importlib.import_module("vosrt.export.trt_build")
        except ModuleNotFoundError as err:
            raise UserError(f"--backend tensorrt needs TensorRT support ({err.name} is not installed)") from None
        compare = getattr(trt_build, "compare_engines_with_onnxruntime", None)
        if compare is None:
            raise UserError("this vosrt build cannot compare TensorRT engines (no compare_engines_with_onnxruntime)")
        result = compare(args.package)
        if isinstance(result, dict):
            # the engines against ONNX Runtime's run of the portable graphs (not PyTorch, which the failure line
            # named), with the command that accepts errors of the size found (fp16 engines differ by about 1e-2)
            again = ["vosrt", "check", str(args.package), "--backend", "tensorrt"]
            return print_report(result, tolerance, lambda loose: tolerance_hint(again, loose),
                                reference="ONNX Runtime (the portable graphs)")
        return int(result or 0)
    from vosrt.export.package import check_package  # torch import: only when run

    def progress(line: str) -> None:   # one line per graph as it is checked, on stderr
        print(line, file=sys.stderr, flush=True)

    print(f"checking {args.package}: portable (and plugin) graphs on ONNX Runtime against PyTorch", file=sys.stderr, flush=True)
    report = check_package(args.package, checkpoint=args.checkpoint, progress=progress)
    from vosrt.export.trt_build import reexport_command

    again = ["vosrt", "check", str(args.package)] + (["--checkpoint", str(args.checkpoint)] if args.checkpoint else [])
    # the folder as the user spelled it; a shipped package's name is no folder `vosrt export --out` would write
    # the package into (it would make ./NAME, which then hides the shipped package), so that one by its path
    out = args.package if Path(args.package).exists() else package.path

    def advice(loose: str | None) -> str:
        if isinstance(package.quantization, dict):
            # export refuses to write over an INT8 package: its graphs are written again by quantize
            return (f"an INT8 package differs from its model by quantisation; where it differs more than you accept, "
                    f"quantize the fp32 package again: `{_requantize_command(package, out)}`; or, "
                    f"{tolerance_hint(again, loose)}")
        return (f"the graph files do not compute what the checkpoint's model computes (edited or damaged since the "
                f"export, or exported from other weights): write them again from the checkpoint with "
                f"`{reexport_command(package, out, args.checkpoint)}`; or, "
                f"{tolerance_hint(again, loose)}")
    return print_report(report, tolerance, advice)


INT8_CLIPS, INT8_FRAMES = 2, 30        # held-out generated clips an INT8 package is checked on, and their length
INT8_AGREEMENT = 0.9                    # J&F of its labels against the fp32 package's that passes it
INT8_LOSS = 0.02                        # or: the J&F against the clips' truth it may lose to the fp32 package,
INT8_MARGIN = 0.1                       # where that package beats copying the first frame's labels by this much


def _int8_on_video(args, package) -> int | None:
    """``vosrt check`` of an INT8 package, without --tolerance: it and its fp32 source package segment held-out
    generated clips (those of ``vosrt demo --heldout``) on ONNX Runtime. It passes where its labels agree with the fp32
    package's (J&F >= INT8_AGREEMENT), or where it loses at most INT8_LOSS of J&F against the clips' own truth; where
    the fp32 package segments them no better than copying the first frame's labels (untrained, or of another domain),
    neither says anything, and the check is inconclusive (1). Its errors on
    random inputs, elementwise, judged nothing: a package whose decoder weights were negated passed --tolerance 1.
    None where this does not apply (fp32 packages, a --tolerance given, TensorRT, a source package not found)."""
    quantization = package.quantization
    if args.tolerance is not None or not isinstance(quantization, dict) or args.backend == "tensorrt":
        return None
    source = quantization.get("source_package")
    if not source or not (Path(source) / "manifest.json").is_file():
        return None   # refused with how to judge it (_refuse_int8_without_tolerance)
    from vosrt.sdk.package import file_sha256

    changed = []
    recorded_graphs = quantization.get("source_graphs")
    for key, recorded in (recorded_graphs.items() if isinstance(recorded_graphs, dict) else ()):
        if not (isinstance(recorded, list) and len(recorded) == 2 and all(isinstance(v, str) for v in recorded)):
            changed.append(f"{key} (its record in the manifest is damaged)")
            continue
        graph = Path(source) / recorded[0]
        if not graph.is_file() or file_sha256(graph) != recorded[1]:
            changed.append(f"{key} ({recorded[0]})")
    if changed:   # another package at that path now (re-exported, other weights, another family): no reference
        raise UserError(f"{package.path} was quantized from the fp32 package at {source}, whose graphs have changed "
                        f"since ({', '.join(changed)}): it is no reference for this INT8 package any more; quantize "
                        f"that package again (`{_requantize_command(package, args.package)}`), or compare this one's "
                        f"graphs elementwise with --tolerance")
    if args.checkpoint:   # it would be ignored: the INT8 package is held to its fp32 package here, not to a model
        raise UserError(f"--checkpoint: {package.path} is an INT8 package, checked on video beside its fp32 package "
                        f"({source}) without a checkpoint; drop --checkpoint, or compare its graphs with the "
                        f"checkpoint's model elementwise by giving --tolerance too")
    import vosrt.sdk
    from vosrt.sdk import metrics
    from vosrt.sdk.cli_demo import CLIP, HELDOUT_DATASET_SEED, segment_sequence
    from vosrt.sdk.synthetic import generate_sequence, sequence_seed

    print(f"checking {package.path}: INT8 against its fp32 package {source} on {INT8_CLIPS} held-out generated "
          f"clips ({INT8_FRAMES} frames, {CLIP['height']}x{CLIP['width']}), ONNX Runtime", file=sys.stderr, flush=True)
    sessions = [vosrt.sdk.load(path, backend="onnxruntime", color="rgb") for path in (package.path, source)]
    agreement, int8_truth, fp32_truth, copied = [], [], [], []
    try:
        for index in range(INT8_CLIPS):
            seq = generate_sequence(sequence_seed(HELDOUT_DATASET_SEED, index), **dict(CLIP, num_frames=INT8_FRAMES))
            labels = []
            for session in sessions:
                session.reset()
                labels.append(segment_sequence(session, seq.frames, seq.labels[0])[0])
            int8, fp32 = labels
            name = f"heldout-{index}"
            # against the fp32 labels as truth: its first frame is the mask both were given (where one is given)
            reference = [seq.labels[0]] + fp32[1:] if sessions[0].takes_mask else fp32
            agreement += metrics.score_sequence(package.family, int8, reference, name)
            int8_truth += metrics.score_sequence(package.family, int8, seq.labels, name)
            fp32_truth += metrics.score_sequence(package.family, fp32, seq.labels, name)
            copied += metrics.score_sequence(package.family, [seq.labels[0]] * len(seq.labels), seq.labels, name)
    finally:
        for session in sessions:
            session.close()
    agree = metrics.summarize(agreement)["J&F"]
    if agree != agree:   # nan: no object in the fp32 package's labels to agree with
        agree = 0.0
    own, theirs = metrics.summarize(int8_truth)["J&F"], metrics.summarize(fp32_truth)["J&F"]
    baseline = metrics.summarize(copied)["J&F"]
    print(f"agreement with the fp32 package's labels   J&F {agree:.3f}  (passes at {INT8_AGREEMENT})")
    print(f"against the clips' truth                   J&F {own:.3f}  (fp32 package {theirs:.3f}; passes losing at "
          f"most {INT8_LOSS}; copying the first frame's labels {baseline:.3f})")
    if agree >= INT8_AGREEMENT:
        print("check passed")
        return 0
    if theirs < baseline + INT8_MARGIN:   # the fp32 package barely segments these clips: the loss says nothing here
        print(f"check inconclusive: the fp32 package itself barely segments these generated clips (J&F {theirs:.3f}, "
              f"copying the first frame's labels {baseline:.3f}), and the INT8 package does not follow it (J&F "
              f"{agree:.3f}); judge it on video of its own domain, beside the fp32 package: `vosrt eval` of both "
              f"packages' `vosrt run` outputs on annotated sequences")
        return 1
    if own >= theirs - INT8_LOSS:
        print("check passed")
        return 0
    print(f"check failed: the INT8 package neither follows its fp32 package (J&F {agree:.3f} of its labels) nor "
          f"segments the clips as well ({own:.3f} against {theirs:.3f}); quantize the fp32 package again: "
          f"`{_requantize_command(package, args.package)}`")
    return 1


def _requantize_command(package, out) -> str:
    """The `vosrt quantize` command that writes INT8 ``package`` (at ``out``) again, from the fp32 package and the
    calibration its manifest records (SRC where it records none)."""
    record = package.quantization
    calibration = record.get("calibration") if isinstance(record.get("calibration"), dict) else {}
    command = ["vosrt", "quantize", str(record.get("source_package") or "FP32_PACKAGE"), "--calibrate",
               str(calibration.get("source") or "SRC")]
    if calibration.get("mask"):
        command += ["--mask", str(calibration["mask"])]
    if isinstance(calibration.get("frames"), int):
        command += ["--frames", str(calibration["frames"])]
    return shlex.join(command + ["--out", str(out)])
