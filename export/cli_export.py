"""``vosrt export MODEL --checkpoint CK --out DIR [--size H W]``: a checkpoint -> a model package (ONNX,
both forms).

Runs ``vosrt check`` on the result at the end (the portable form, and the plugin form of graphs with custom
operators on vosrt's CPU operators, in ONNX Runtime against PyTorch); a package without the portable form
is not checked, and says so.
"""
from __future__ import annotations

import argparse
import sys

from vosrt.export.cli_check import print_report, tolerance_hint
from vosrt.sdk import families
from vosrt.sdk.errors import UserError

CHOICES = tuple(families.model_names())
# Relative error above which the exported graphs are reported as not matching PyTorch.
CHECK_TOLERANCE = 1e-3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``vosrt export``."""
    parser.add_argument("family", metavar="MODEL",
                        help=f"model to export: one of {', '.join(CHOICES)} (a family name takes the "
                             f"variant the checkpoint holds)")
    parser.add_argument("--checkpoint", metavar="CK",
                        help="vosrt checkpoint (vosrt train) or a published STCN, D²Conv3D (3DC-Seg) or STEm-Seg .pth")
    parser.add_argument("--random-weights", action="store_true",
                        help="export an untrained model instead of a checkpoint (for testing; the weights "
                             "are saved into the package)")
    parser.add_argument("--out", metavar="DIR", required=True, help="package folder to write (created; an earlier package of the same family there is "
                             "replaced, one of another family or an INT8 package is refused)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="package resolution, multiples of 16 (32 for 3dc-seg; default 480 864)")
    parser.add_argument("--height", type=int, default=None, help="the H of --size (older spelling)")
    parser.add_argument("--width", type=int, default=None, help="the W of --size (older spelling)")
    parser.add_argument("--forms", default="plugin,portable",
                        help="comma-separated ONNX forms: plugin (TensorRT plugins), portable (standard ops) "
                             "(default plugin,portable)")
    parser.add_argument("--top-k", type=int, default=None, help="stcn: memory read top-k recorded as default (20)")
    parser.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime check at the end")


def resolution(args: argparse.Namespace) -> tuple[int | None, int | None]:
    """(height, width) from ``--size H W`` or the older ``--height``/``--width`` (None: the family's default);
    UserError when the two spellings disagree, or one of ``--height``/``--width`` comes alone."""
    height, width = args.height, args.width
    if args.size is not None:
        if (height is not None and height != args.size[0]) or (width is not None and width != args.size[1]):
            raise UserError(f"--size {args.size[0]} {args.size[1]} disagrees with --height/--width; give --size alone")
        height, width = args.size
    elif (height is None) != (width is None):
        # one of them alone took the family's default for the other without a word (--height 48: 48x864)
        given, missing = ("--height", "--width") if width is None else ("--width", "--height")
        raise UserError(f"{given} without {missing}: give both, or --size H W (e.g. --size "
                        f"{height if height is not None else 480} {width if width is not None else 864})")
    return height, width


def run(args: argparse.Namespace) -> int:
    """Export, then check the portable form. Returns 1 when the check finds a mismatch."""
    from vosrt.export.package import check_package, export_package  # torch import: only when run

    if args.family not in CHOICES:
        raise UserError(f"unknown model family '{args.family}': expected one of {', '.join(CHOICES)}")
    if args.checkpoint is None and not args.random_weights:
        raise UserError("--checkpoint is required (a vosrt checkpoint or a published .pth of the family); "
                        "use --random-weights to export an untrained model")
    if args.checkpoint is not None and args.random_weights:
        raise UserError("give either --checkpoint or --random-weights, not both")
    if args.top_k is not None:
        family = families.of_model(args.family)
        if "top_k" not in family.streaming:
            raise UserError(f"--top-k sets the stcn memory read; {family.name} packages have none: drop --top-k")
        if args.top_k < 0:
            raise UserError(f"--top-k: expected 0 (read all memory entries) or a positive number, got {args.top_k}")
    height, width = resolution(args)
    forms = [f.strip() for f in args.forms.replace(" ", ",").split(",") if f.strip()]
    streaming = {"top_k": args.top_k} if args.top_k is not None else None
    pkg = export_package(args.family, args.checkpoint, args.out, height, width, forms=forms,
                         random_weights=args.random_weights, streaming=streaming, progress=print, size_flag="--size")
    print(f"package written to {pkg}")
    if args.no_check:
        return 0
    if "portable" not in forms:
        print("note: not checked against PyTorch: the check runs the portable form, which --forms left out "
              "(export with --forms plugin,portable to have the package checked)", file=sys.stderr)
        return 0
    print(f"checking {pkg}: portable (and plugin) graphs on ONNX Runtime against PyTorch", file=sys.stderr, flush=True)
    report = check_package(pkg, progress=lambda line: print(line, file=sys.stderr, flush=True))
    return print_report(report, CHECK_TOLERANCE, lambda loose: (
        f"the package is written, but its graphs do not reproduce the PyTorch model within the tolerance: the "
        f"export of this model is at fault (please report it with this output); "
        f"{tolerance_hint(['vosrt', 'check', str(pkg)], loose)}"))
