"""Segment whatever moves in a stream with a 3dc-seg (or stem-seg) package: no mask, no clicks.

    python samples/unsupervised_stream.py PKG --source 0 --video moving.mp4
    python samples/unsupervised_stream.py PKG --source clip.mp4 --out masks/

3dc-seg works on clips of 8 frames that overlap; a frame is finished once no later clip covers it, so
results arrive a few frames behind the camera (`session.latency`) and the end of the stream flushes
the rest. A stem-seg package (also mask-free, on clips) separates the moving objects into tracked
instances: each line then counts them. The loop is vosrt's `stream`, the same one `vosrt run` and `vosrt live` use.
A camera or live stream is read as they read it: capture in its own thread, each step taking the newest frame (those
captured while the model ran are dropped), and the overlay video plays at the rate frames were processed.
Ctrl-C, SIGTERM and SIGHUP stop it with the video finished (exit code 128 + signal).
"""
from __future__ import annotations

import argparse
import signal
import sys

import vosrt.sdk
from vosrt.sdk import UserError
from vosrt.sdk.streaming import stream
from vosrt.sdk.live.source import newest_frames
from vosrt.sdk.video import PngSink, open_source, overlay_video_for


class Stopped(KeyboardInterrupt):
    """SIGTERM (timeout, systemd, docker stop) or SIGHUP (a closed terminal), raised as Ctrl-C is so that the video
    is finished on the way out: they ended the process at once, and its --video had no index (unplayable)."""


def stop(signum, frame):
    raise Stopped(signum)


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
    if not opened.frames_read:   # a video without frames said "0 frames" with status 0, an empty --out folder left
        for sink in sinks:
            if isinstance(sink, PngSink):
                sink.discard()   # the folder it made, when it holds no PNG
        raise UserError(f"--source {args.source}: no frame could be read from it"
                        f"{f' ({source.problem})' if source.stopped_early else ''}; nothing was written")
    print(f"{stats.frames} frames, {stats.fps:.1f} FPS")
    # a truncated file or a dropped camera ended the run without a word; a file served over HTTP, read to the frame
    # count of its header, ends as a stream does and is whole
    whole = getattr(opened, "frame_count", None) and opened.frames_read + len(opened.skipped) >= opened.frame_count
    if source.stopped_early and not whole:
        print(f"warning: {source.problem}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    for signum in (signal.SIGTERM, getattr(signal, "SIGHUP", signal.SIGTERM)):   # (Windows has no SIGHUP)
        signal.signal(signum, stop)
    try:
        sys.exit(main())
    except UserError as err:        # bad input (a package, source, mask or box): one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Stopped as stopped:      # the video is finished: one line and 128 + the signal, as `vosrt run`
        print(f"unsupervised_stream.py: stopped by {signal.Signals(stopped.args[0]).name}", file=sys.stderr)
        sys.exit(128 + stopped.args[0])
    except KeyboardInterrupt:       # Ctrl-C: one line and status 130, not a traceback (the video is finished)
        print("unsupervised_stream.py: interrupted", file=sys.stderr)
        sys.exit(130)
