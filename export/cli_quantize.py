"""``vosrt quantize PKG --calibrate SRC --out PKG_INT8``: an INT8 copy of a model package.

ONNX Runtime static quantization (QDQ, per-channel int8 weights, uint8 activations) of the encoders'
and decoder's convolutions, calibrated on the frames of SRC (a video file, an image folder or a DAVIS
sequence folder) streamed through the fp32 package; the custom operators stay fp32
(:mod:`vosrt.export.quantize`). STCN packages need the first frame's mask, as for ``vosrt run``:
``--mask PNG`` or a DAVIS sequence folder's first annotation. Compare the result with
``vosrt demo --heldout 16 --package PKG_INT8`` (J&F) and ``vosrt bench`` (speed).
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time

from vosrt.sdk.errors import UserError


def add_arguments(parser) -> None:
    """Arguments of ``vosrt quantize``."""
    parser.add_argument("package",
                        help="fp32 model package folder (portable form) or a shipped package's name (stcn-lite)")
    parser.add_argument("--calibrate", required=True, metavar="SRC",
                        help="calibration frames: video file, image folder or DAVIS sequence folder")
    parser.add_argument("--out", required=True, help="folder of the INT8 package to write")
    parser.add_argument("--mask", default=None, help="first-frame mask PNG of the calibration source (stcn)")
    parser.add_argument("--frames", type=int, default=60, help="calibration frames to stream through the package (default 60); the ranges are taken from "
                             "the first 48 inputs of each graph")


def run(args) -> int:
    """Entry point of ``vosrt quantize``."""
    from vosrt.export.quantize import quantize_package
    from vosrt.sdk import families
    from vosrt.sdk.masks import read_label_png
    from vosrt.sdk.package import load_package
    from vosrt.sdk.video import open_source

    if args.frames < 1:
        raise UserError(f"--frames must be >= 1, got {args.frames}")
    package = load_package(args.package)
    if families.get(package.family).takes_mask and args.frames < 2:   # said before calibrating, not after
        raise UserError(f"--frames {args.frames}: a {package.family} package segments from the second frame on (the "
                        "first carries the mask), so calibrating needs 2 or more frames (default 60)")
    source = open_source(args.calibrate, flag="--calibrate")
    try:
        first_mask = None
        if families.get(package.family).takes_mask:
            first_mask = read_label_png(args.mask, "--mask") if args.mask else source.first_mask()
            if first_mask is None:
                raise UserError(f"--mask: {package.family} packages are calibrated by tracking objects, which needs the "
                                "first frame's mask; give --mask PNG or a DAVIS sequence folder with its annotations")
            if not first_mask.any():
                where = "--mask" if args.mask else f"--calibrate {args.calibrate}: its first annotation"
                raise UserError(f"{where}: no object in it (every pixel is 0, background); calibrating tracks the "
                                "objects of the first frame's mask, so give a mask with at least one object id"
                                + ("" if args.mask else " (--mask PNG, or a sequence annotated on its first frame)"))
        elif args.mask:
            raise UserError(f"--mask: {package.family} packages segment without a mask; drop --mask")
        frames = []
        for frame in source:
            if first_mask is not None and not frames and getattr(source, "first_frame_skipped", False):
                # the mask belongs to the frame that could not be read: on the next one it would mark other pixels
                raise UserError(f"--calibrate {args.calibrate}: its first frame cannot be read, and the first-frame "
                                "mask belongs to it; repair or remove that frame and give the mask of the new first "
                                "frame")
            frames.append(frame)
            if len(frames) >= args.frames:
                break
    finally:
        source.close()
    if not frames:
        skipped = len(getattr(source, "skipped", []))   # images that failed to decode, each said in a warning above
        why = (f"none of its {skipped} image(s) could be read (see the warnings above)" if skipped else
               "it gave no frame (a video with no frames, or one OpenCV cannot decode)")
        raise UserError(f"--calibrate {args.calibrate}: {why}; give a video file, an image folder or a DAVIS sequence "
                        "folder whose frames open")
    if first_mask is not None and first_mask.shape[:2] != frames[0].shape[:2]:   # said now, not after calibrating
        where = f"--mask {args.mask}" if args.mask else f"--calibrate {args.calibrate}: its first annotation"
        raise UserError(f"{where}: {first_mask.shape[1]}x{first_mask.shape[0]} pixels, but the frames of --calibrate "
                        f"{args.calibrate} are {frames[0].shape[1]}x{frames[0].shape[0]}; give the first frame's mask "
                        "at the frames' size")
    start = time.perf_counter()
    with _quiet_quantizer():
        out = quantize_package(package, frames, first_mask, args.out, source_name=str(args.calibrate),
                               mask_name=args.mask or "",
                               progress=lambda text: print(f"vosrt quantize: {text}", file=sys.stderr, flush=True))
    print(f"wrote {out} (INT8, {len(frames)} calibration frames, {time.perf_counter() - start:.0f} s)")
    return 0


class _PreprocessingAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Please consider")


@contextlib.contextmanager
def _quiet_quantizer():
    """Leave out, for this command's run, two notices its user can do nothing about: the quantizer's advice to
    run its pre-processing first (printed twice per graph; the graphs are quantized as exported) and ONNX
    Runtime's note that the portable form's ``top_k`` is an input with a default (it is, so that sessions can
    change it). Other warnings still show."""
    import onnxruntime

    advice = _PreprocessingAdvice()
    logging.getLogger().addFilter(advice)
    onnxruntime.set_default_logger_severity(3)   # errors only: this process is the command's own
    try:
        yield
    finally:
        onnxruntime.set_default_logger_severity(2)
        logging.getLogger().removeFilter(advice)
