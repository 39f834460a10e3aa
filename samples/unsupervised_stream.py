"""Segment whatever moves in a stream with a 3dc-seg (or stem-seg) package: no mask, no clicks.

    python samples/unsupervised_stream.py PKG --source 0 --video moving.mp4
    python samples/unsupervised_stream.py PKG --source clip.mp4 --out masks/

3dc-seg works on clips of 8 frames that overlap; a frame is finished once no later clip covers it, so
results arrive a few frames behind the camera (`session.latency`) and the end of the stream flushes
the rest. A stem-seg package (also mask-free, on clips) separates the moving objects into tracked
instances: each line then counts them. The loop is vosrt's `stream`, the same one `vosrt run` and `vosrt live` use.
A camera or live stream is read as they read it: capture in its own thread, each step taking the newest frame (those
captured while the model ran are dropped), and the overlay video plays at the rate frames were processed.
"""
from __future__ import annotations

import argparse
import sys

import vosrt.sdk
from vosrt.sdk import UserError
from vosrt.sdk.streaming import stream
from vosrt.sdk.live.source import newest_frames
from vosrt.sdk.video import PngSink, open_source, overlay_video_for


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", help="a mask-free model package: 3dc-seg (foreground) or stem-seg (instances)")
    parser.add_argument("--source", default="0", help="camera index, URL, video file or folder (default 0)")
    parser.add_argument("--video", default=None, help="write the frames with the moving objects blended in")
    parser.add_argument("--out", default=None, help="write one palette PNG per frame here")
    parser.add_argument("--frames", type=int, default=None, help="stop after this many frames")
    args = parser.parse_args()
    if args.frames is not None and args.frames < 1:
        parser.error(f"--frames: expected a whole number >= 1 (or no --frames: the whole source), got {args.frames}")

    session = vosrt.sdk.load(args.package)
    if session.takes_mask:
        session.close()
        raise UserError(f"{args.package} is a {session.package.family} package, which needs object masks; "
                        f"give a 3dc-seg or stem-seg package (or try samples/webcam_tracker.py)")
    opened = open_source(args.source)
    source = newest_frames(opened)   # a camera or live stream: the newest frame each step, or it falls ever behind
    sinks = ([overlay_video_for(args.video, opened)] if args.video else []) + ([PngSink(args.out)] if args.out else [])

    def report(done, frame):
        moving = (done.labels > 0).mean()
        instances = f", {len(done.objects)} instance(s)" if done.objects is not None else ""   # stem-seg's tracks
        print(f"frame {done.index}: {100 * moving:.1f}% of the picture is moving foreground{instances}", flush=True)

    print(f"{session.package.variant}: results trail the input by up to {session.latency} frames")
    with session:
        stats = stream(session, source, sinks, max_frames=args.frames, on_result=report)
    print(f"{stats.frames} frames, {stats.fps:.1f} FPS")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as err:        # bad input (a package, source, mask or box): one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
