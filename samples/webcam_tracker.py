"""Track an object from your webcam in an OpenCV window: draw a box around it, press Enter, watch.

    python samples/webcam_tracker.py                            # camera 0, the shipped stcn-lite model
    python samples/webcam_tracker.py --source clip.mp4 --package path/to/stcn-package
    python samples/webcam_tracker.py --source clip.mp4 --box 40,30,80,60 --no-window --video out.mp4

The window needs OpenCV with GUI support (`pip install opencv-python`; vosrt installs the headless
build). Without it, use `vosrt live`, which shows the same in a browser, or --box with --no-window.
The camera is read in its own thread and the model always takes the newest frame, so the picture stays
current even when the model is slower than the camera. Keys: q or Esc quits. Ctrl-C, SIGTERM and SIGHUP
stop it with the video finished (exit code 128 + signal).
"""
from __future__ import annotations

import argparse
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import cv2

import vosrt.sdk
from vosrt.sdk import UserError
from vosrt.sdk.live.select import grabcut_box, parse_box
from vosrt.sdk.live.source import LatestFrameSource
from vosrt.sdk.streaming import stream
from vosrt.sdk.video import open_source, overlay, overlay_video_for

SHIPPED = Path(vosrt.sdk.__file__).parent / "models" / "stcn-lite"
WINDOW = "vosrt webcam tracker"


class Stopped(KeyboardInterrupt):
    """SIGTERM (timeout, systemd, docker stop) or SIGHUP (a closed terminal), raised as Ctrl-C is so that the video
    is finished on the way out: they ended the process at once, and its --video had no index (unplayable)."""


def stop(signum, frame):
    raise Stopped(signum)


def missing_window_support() -> str | None:
    """Why no window can open here: "gui" (OpenCV's headless build), "display" (none, or one that cannot be reached:
    a DISPLAY=:99 left over), or None. Probed in a child: on Linux, Qt aborts a process whose window finds no display
    before Python can catch anything (a check that DISPLAY was set let a stale one through)."""
    probe = "import cv2\ntry:\n cv2.namedWindow('vosrt-probe'); cv2.destroyAllWindows()\nexcept cv2.error:\n exit(3)"
    try:
        code = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=30).returncode
    except subprocess.TimeoutExpired:   # a display across the network that never answers
        return "display"
    return None if code == 0 else "gui" if code == 3 else "display"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="0", help="camera index, URL or video file (default 0)")
    parser.add_argument("--package", default=str(SHIPPED), help="stcn model package (default: shipped stcn-lite)")
    parser.add_argument("--box", default=None, type=parse_box, help="X,Y,W,H of the object on the first frame (skips the picker)")
    parser.add_argument("--no-window", action="store_true", help="show nothing (with --box; e.g. over ssh)")
    parser.add_argument("--video", default=None, help="also write the overlay to this file")
    parser.add_argument("--frames", type=int, default=None, help="stop after this many frames")
    args = parser.parse_args()
    if args.frames is not None and args.frames < 1:
        parser.error(f"--frames: expected a whole number >= 1 (or no --frames: the whole source), got {args.frames}")

    show = not args.no_window
    # the browser viewer on this run's own package and source
    live = shlex.join(["vosrt", "live", "stcn-lite" if Path(args.package) == SHIPPED else args.package,
                       "--source", args.source])
    missing = missing_window_support() if show or args.box is None else None
    if missing:
        why = ("which needs OpenCV with GUI support, but only the headless\nbuild (opencv-python-headless) is "
               "installed. Either\n  pip uninstall -y opencv-python-headless && pip install opencv-python\nor use"
               if missing == "gui" else "but there is no display here that it can reach (DISPLAY is not set, or\n"
               "names one that does not answer: over ssh or in a container). Either use")
        print(f"This sample opens a window, {why} the browser viewer:  {live}\n"
              "or give the object without a window:  --box X,Y,W,H --no-window --video out.mp4", file=sys.stderr)
        return 2

    session = vosrt.sdk.load(args.package)
    if not session.takes_mask:
        session.close()   # an application copying this sample keeps running after the refusal
        raise UserError(f"{args.package} is a {session.package.family} package; this sample needs an stcn one")
    first = open_source(args.source)
    opened = [first]        # reopened by the capture thread if a camera drops

    def reopen():   # a live source that dropped, tried again every second: said (the picture froze without a word)
        print(f"warning: {source.status}", file=sys.stderr, flush=True)
        return open_source(args.source)

    # A camera or a live stream (no frame count) drops the frames captured while the model runs, and is reopened when
    # it stops; every URL was taken for one, so a video file served over HTTP played again at its end, for ever. A
    # file that stops early (truncated) ends the run: reopened, it played again from the start, for ever.
    source = LatestFrameSource(lambda: opened.pop() if opened else reopen(), drop=first.live, retry=first.live)
    sinks = [overlay_video_for(args.video, first)] if args.video else []   # a live source's at the processed rate

    def first_mask(index, frame):
        """The object on the first frame: from --box, or drawn with cv2.selectROI."""
        if index > 0:
            return None
        if args.box:
            box = args.box
        else:
            box = cv2.selectROI(WINDOW, frame, showCrosshair=True)
            if box[2] == 0 or box[3] == 0:
                source.interrupt()      # nothing picked: quit
                return None
        return grabcut_box(frame, box).astype("uint8")   # object id 1

    def show_frame(done, frame):
        area = int((done.labels > 0).sum())
        print(f"frame {done.index}: object 1 covers {area} px", flush=True)
        if show:
            cv2.imshow(WINDOW, overlay(frame, done.labels))
            if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                source.interrupt()

    try:
        stats = stream(session, source, sinks, masks=first_mask, max_frames=args.frames, on_result=show_frame)
    finally:
        session.close()
        if show:
            cv2.destroyAllWindows()
    if not source.captured:   # a video without frames said "0 frames" with status 0, its --video never written
        raise UserError(f"--source {args.source}: no frame could be read from it"
                        f"{f' ({source.problem})' if source.stopped_early else ''}; nothing was written")
    print(f"{stats.frames} frames, {stats.fps:.1f} FPS, {source.dropped} stale frames dropped")
    whole = getattr(first, "frame_count", None) and first.frames_read + len(first.skipped) >= first.frame_count
    if source.stopped_early and not whole:   # a file served over HTTP, read to its header's count, ends as streams do
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
        print(f"webcam_tracker.py: stopped by {signal.Signals(stopped.args[0]).name}", file=sys.stderr)
        sys.exit(128 + stopped.args[0])
    except KeyboardInterrupt:       # Ctrl-C: one line and status 130, not a traceback (the video is finished)
        print("webcam_tracker.py: interrupted", file=sys.stderr)
        sys.exit(130)
