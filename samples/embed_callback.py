"""Embed vosrt in your own capture loop: you read the frames, vosrt calls you back per segmented frame.

    python samples/embed_callback.py --source 0 --box 200,150,120,90     # camera 0, object in that box
    python samples/embed_callback.py --source clip.mp4 --mask first.png

The loop below is yours (here cv2.VideoCapture; it could be a GStreamer appsink, a ROS topic, frames
from a robot's SDK). Each frame goes to `session.push`; every finished frame comes back through
`on_segmented`, which here prints each object's centroid and area as CSV - replace it with your logic.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

import vosrt.sdk
from vosrt.sdk import UserError
from vosrt.sdk.live.select import grabcut_box, parse_box
from vosrt.sdk.masks import read_label_png

SHIPPED = Path(vosrt.sdk.__file__).parent / "models" / "stcn-lite"


def on_segmented(index: int, frame: np.ndarray, labels: np.ndarray) -> None:
    """Your per-frame callback: ``labels`` is ``[H, W]`` object ids (0 background) at the frame's size."""
    for object_id in np.unique(labels[labels > 0]):
        ys, xs = np.nonzero(labels == object_id)
        print(f"{index},{object_id},{xs.mean():.1f},{ys.mean():.1f},{len(xs)}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="0", help="camera index or video file/URL (default 0)")
    parser.add_argument("--package", default=str(SHIPPED), help="stcn model package (default: shipped stcn-lite)")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--box", type=parse_box, help="X,Y,W,H of the object on the first frame (GrabCut makes the mask)")
    group.add_argument("--mask", help="palette PNG of object ids for the first frame")
    parser.add_argument("--frames", type=int, default=None, help="stop after this many frames")
    args = parser.parse_args()
    if args.frames is not None and args.frames < 1:
        parser.error(f"--frames: expected a whole number >= 1 (or no --frames: the whole source), got {args.frames}")

    capture = cv2.VideoCapture(int(args.source) if args.source.isdigit() else args.source)
    if not capture.isOpened():
        raise UserError(f"--source: OpenCV cannot open {args.source} (a camera index, video file or URL)")
    given = read_label_png(args.mask, "--mask") if args.mask else None   # checked before the CSV starts
    with vosrt.sdk.load(args.package) as session:       # BGR frames, as OpenCV reads them
        if not session.takes_mask:
            raise UserError(f"{args.package} is a {session.package.family} package, which takes no mask; "
                            f"this sample needs an stcn one (samples/unsupervised_stream.py runs mask-free packages)")
        index = 0
        while args.frames is None or index < args.frames:
            ok, frame = capture.read()
            if not ok:
                break
            mask = None
            if index == 0:
                mask = given if given is not None else grabcut_box(frame, args.box).astype(np.uint8)
                print("frame,object,x,y,pixels")     # once there is a frame: a source without any has no CSV
            for done in session.push(frame, mask):
                on_segmented(done.index, frame, done.labels)     # per-frame families: the frame just pushed
            index += 1
        for done in session.flush():                            # nothing pending for stcn; clip families
            on_segmented(done.index, None, done.labels)         # would return their last frames here
    capture.release()
    if index == 0:   # a video without frames printed the CSV header alone, with status 0
        raise UserError(f"--source {args.source}: no frame could be read from it; nothing was written")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as err:        # bad input (a package, source, mask or box): one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:       # Ctrl-C: one line and status 130, not a traceback
        print("embed_callback.py: interrupted", file=sys.stderr)
        sys.exit(130)
