"""Track an object from your webcam in an OpenCV window: draw a box around it, press Enter, watch.

    python samples/webcam_tracker.py                            # camera 0, the shipped stcn-lite model
    python samples/webcam_tracker.py --source clip.mp4 --package path/to/stcn-package
    python samples/webcam_tracker.py --source clip.mp4 --box 40,30,80,60 --no-window --video out.mp4

The window needs OpenCV with GUI support (`pip install opencv-python`; vosrt installs the headless
build). Without it, use `vosrt live`, which shows the same in a browser, or --box with --no-window.
The camera is read in its own thread and the model always takes the newest frame, so the picture stays
current even when the model is slower than the camera. Keys: q or Esc quits.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import cv2

import vosrt.sdk
from vosrt.sdk import UserError
from vosrt.sdk.live.select import grabcut_box, parse_box
from vosrt.sdk.live.source import LatestFrameSource
from vosrt.sdk.streaming import stream
from vosrt.sdk.video import OverlayVideoSink, ProcessedRateVideoSink, open_source, overlay

SHIPPED = Path(vosrt.sdk.__file__).parent / "models" / "stcn-lite"
WINDOW = "vosrt webcam tracker"


def has_display() -> bool:
    """False on Linux with neither an X nor a Wayland display (over ssh, in a container), where opening a
    window aborts the process inside Qt before Python can catch anything."""
    return (not sys.platform.startswith("linux") or "QT_QPA_PLATFORM" in os.environ
            or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")))


def has_gui() -> bool:
    """True when this OpenCV build can open windows (opencv-python, not opencv-python-headless)."""
    if not has_display():   # a probe window would abort the process: the build information says it
        return not any(line.split(":", 1)[1].strip() == "NONE" for line in cv2.getBuildInformation().splitlines()
                       if line.strip().startswith("GUI:"))
    try:
        cv2.namedWindow("vosrt-probe", cv2.WINDOW_AUTOSIZE)
        cv2.destroyWindow("vosrt-probe")
        return True
    except cv2.error:
        return False


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
    if (show or args.box is None) and not has_gui():
        print("This sample opens a window, which needs OpenCV with GUI support, but only the headless\n"
              "build (opencv-python-headless) is installed. Either\n"
              "  pip uninstall -y opencv-python-headless && pip install opencv-python\n"
              f"or use the browser viewer:  {live}\n"
              "or give the object without a window:  --box X,Y,W,H --no-window --video out.mp4",
              file=sys.stderr)
        return 2

    if (show or args.box is None) and not has_display():
        print("This sample opens a window, but there is no display here (DISPLAY is not set: over ssh or in a\n"
              f"container). Either use the browser viewer:  {live}\n"
              "or give the object without a window:  --box X,Y,W,H --no-window --video out.mp4",
              file=sys.stderr)
        return 2

    session = vosrt.sdk.load(args.package)
    if not session.takes_mask:
        session.close()   # an application copying this sample keeps running after the refusal
        raise UserError(f"{args.package} is a {session.package.family} package; this sample needs an stcn one")
    opened = [open_source(args.source)]        # reopened by the capture thread if a camera drops
    live = opened[0].kind not in ("video", "folder", "davis")
    # a file that stops early (truncated) ends the run: reopened, it played again from the start, for ever
    source = LatestFrameSource(lambda: opened.pop() if opened else open_source(args.source), drop=live, retry=live)
    # a camera drops the frames captured while the model runs: its overlay plays at the rate frames were processed
    sinks = [] if not args.video else [ProcessedRateVideoSink(args.video) if live else
                                       OverlayVideoSink(args.video, fps=source.fps)]

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
    print(f"{stats.frames} frames, {stats.fps:.1f} FPS, {source.dropped} stale frames dropped")
    if source.stopped_early:
        print(f"warning: {source.problem}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as err:        # bad input (a package, source, mask or box): one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
