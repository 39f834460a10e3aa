"""``vosrt run PKG --source SRC``: stream a camera, video, URL or folder through a model package.

STCN packages need the first frame's mask: ``--mask PNG`` (a palette PNG of object ids at the frame's
size), or the first annotation of a DAVIS sequence source. 3DC-Seg packages take no mask. Results go
to ``--out DIR`` (one palette PNG per frame, named after the source's frames) and/or ``--video OUT``
(the frames with the masks blended in). A source that stops early ends the run cleanly with what was
written so far.
"""
from __future__ import annotations

import sys
import time

from vosrt.sdk.errors import UserError


def add_arguments(parser) -> None:
    """Arguments of ``vosrt run``."""
    parser.add_argument("package", help="model package folder (from `vosrt export`)")
    parser.add_argument("--source", required=True,
                        help="camera index, video file, stream URL, image folder or DAVIS sequence folder")
    parser.add_argument("--mask", default=None, help="first-frame mask PNG (stcn packages)")
    parser.add_argument("--out", default=None, help="folder for one palette PNG per frame")
    parser.add_argument("--video", default=None, help="overlay video to write (.mp4 or .avi)")
    parser.add_argument("--backend", default="auto", help="auto, onnxruntime, torch or tensorrt (default auto)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint for --backend torch (default: the package's)")
    parser.add_argument("--device", default=None, help="auto, cpu or cuda (backend default: auto)")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    parser.add_argument("--mem-every", type=int, default=None, help="stcn: memory frame every N frames")
    parser.add_argument("--top-k", type=int, default=None, help="stcn: top-k of the memory read")
    parser.add_argument("--memory-capacity", type=int, default=None, help="stcn: memory bank size in frames")
    parser.add_argument("--overlap", type=int, default=None, help="3dc-seg: clip overlap in frames (3; 7 = dense)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


class _Progress:
    """tqdm when installed, else a line every second on stderr."""

    def __init__(self, total, enabled: bool):
        self.bar = None
        self.count = 0
        self.enabled = enabled
        self.last = time.perf_counter()
        if enabled:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, unit="frame", file=sys.stderr)
            except ImportError:
                pass

    def update(self, fps: float) -> None:
        self.count += 1
        if self.bar is not None:
            self.bar.set_postfix_str(f"{fps:.1f} FPS", refresh=False)
            self.bar.update(1)
        elif self.enabled and time.perf_counter() - self.last >= 1.0:
            self.last = time.perf_counter()
            print(f"  {self.count} frames, {fps:.1f} FPS", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _session_options(args, family: str) -> dict:
    options = {"backend": args.backend}
    if args.checkpoint:
        options["checkpoint"] = args.checkpoint
    if args.device:
        options["device"] = args.device
    stcn = {"mem_every": args.mem_every, "top_k": args.top_k, "memory_capacity": args.memory_capacity}
    clip = {"overlap": args.overlap}
    own, other = (stcn, clip) if family == "stcn" else (clip, stcn)
    wrong = [f"--{k.replace('_', '-')}" for k, v in other.items() if v is not None]
    if wrong:
        raise UserError(f"{', '.join(wrong)}: not a setting of {family} packages")
    options.update({k: v for k, v in own.items() if v is not None})
    return options


def run(args) -> int:
    """Entry point of ``vosrt run``."""
    import vosrt.sdk
    from vosrt.sdk.masks import read_label_png
    from vosrt.sdk.package import load_package
    from vosrt.sdk.video import OverlayVideoSink, PngSink, open_source

    if not args.out and not args.video:
        print("note: neither --out nor --video given; results are computed and discarded", file=sys.stderr)
    if args.max_frames is not None and args.max_frames < 1:
        raise UserError(f"--max-frames: expected a positive number, got {args.max_frames}")
    package = load_package(args.package)
    if package.family != "stcn" and args.mask:
        raise UserError("--mask: 3dc-seg packages segment without a mask (unsupervised); drop --mask")
    session = vosrt.sdk.load(package.path, **_session_options(args, package.family))
    source = open_source(args.source)
    first_mask = None
    if package.family == "stcn":
        first_mask = read_label_png(args.mask) if args.mask else source.first_mask()
        if first_mask is None:
            raise UserError("--mask: stcn packages need the first frame's mask (a palette PNG of object ids); "
                            "give --mask PNG or a DAVIS sequence folder with its annotations")
    sinks = []
    if args.out:
        sinks.append(PngSink(args.out))
    if args.video:
        sinks.append(OverlayVideoSink(args.video, fps=source.fps))

    total = source.length if args.max_frames is None else min(args.max_frames, source.length or args.max_frames)
    progress = _Progress(total, enabled=not args.no_progress)
    latency = f"; latency {session.latency} frames" if package.family != "stcn" else ""
    print(f"{package.variant} on {session.backend.describe()}; source: {source.kind} {source.name}{latency}",
          file=sys.stderr)
    pending: dict[int, tuple] = {}   # 3dc-seg: frames waiting for their clip
    done = 0
    start = time.perf_counter()

    def emit(index, labels):
        nonlocal done
        name, frame = pending.pop(index)
        for sink in sinks:
            sink(index, name, frame, labels)
        done += 1
        progress.update(done / max(time.perf_counter() - start, 1e-9))

    try:
        for index, frame in enumerate(source):
            if args.max_frames is not None and index >= args.max_frames:
                break
            pending[index] = (source.frame_name(index), frame)
            if package.family == "stcn":
                emit(index, session.step(frame, first_mask if index == 0 else None))
            else:
                for finished in session.push(frame):
                    emit(finished.index, finished.labels)
        if package.family != "stcn":
            for finished in session.flush():
                emit(finished.index, finished.labels)
    finally:
        progress.close()
        for sink in sinks:
            sink.close()
        source.close()
    elapsed = time.perf_counter() - start
    print(f"{done} frames in {elapsed:.2f} s ({done / max(elapsed, 1e-9):.1f} FPS)"
          + (f"; PNGs in {args.out}" if args.out else "") + (f"; video {args.video}" if args.video else ""))
    if source.stopped_early:
        print(f"warning: {source.problem}; the {done} frames before it were kept", file=sys.stderr)
    return 0
