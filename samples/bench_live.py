"""Figures of the live path on generated clips, with the shipped stcn-lite package on this machine's CPU:

1. GrabCut: IoU of the masks made from each object's bounding box against the true first-frame masks;
2. box selection: J&F when tracking starts from those boxes (the `vosrt live --select` path) against
   J&F when the true first-frame mask is given (the `vosrt run --mask` path), and their ratio;
3. bounded latency: a 300-frame video faster than the model, played with --realtime (newest frame
   wins): frames processed and dropped, end-to-end latency p50/p95; and the same file without
   --realtime, where every frame is processed and frames wait in the queue.

    python samples/bench_live.py [--clips 6] [--fps 100]

Timings depend on the machine and its load; they are reported, never asserted.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

import vosrt.sdk
from vosrt.sdk import UserError
from vosrt.sdk.live.pipeline import LivePipeline, percentiles
from vosrt.sdk.live.select import masks_from_boxes
from vosrt.sdk.live.source import LatestFrameSource
from vosrt.sdk.masks import read_label_png
from vosrt.sdk.metrics import evaluate_sequence, summarize
from vosrt.sdk.streaming import stream
from vosrt.sdk.synthetic import generate_sequence, write_video
from vosrt.sdk.video import MAX_MP4_FPS, open_source

PACKAGE = Path(vosrt.sdk.__file__).parent / "models" / "stcn-lite"


def boxes_of(labels: np.ndarray, pad: int = 3) -> list[tuple[int, tuple]]:
    boxes = []
    for object_id in [int(i) for i in np.unique(labels) if i]:
        ys, xs = np.nonzero(labels == object_id)
        x0, y0 = max(0, xs.min() - pad), max(0, ys.min() - pad)
        x1, y1 = min(labels.shape[1], xs.max() + 1 + pad), min(labels.shape[0], ys.max() + 1 + pad)
        boxes.append((object_id, (int(x0), int(y0), int(x1 - x0), int(y1 - y0))))
    return boxes


def run_pipeline(clip: Path, boxes, drop: bool, pace=None, png_dir=None):
    session = vosrt.sdk.load(PACKAGE, backend="onnxruntime")
    source = LatestFrameSource(lambda: open_source(str(clip)), drop=drop, pace=pace, retry=False)
    pipeline = LivePipeline(session, source, png_dir=png_dir)
    for object_id, box in boxes:
        pipeline.select_box(box, object_id)
    pipeline.run()
    session.close()
    return pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n    python")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=6, help="generated clips for figures 1 and 2")
    parser.add_argument("--frames", type=int, default=30, help="frames per clip for figure 2")
    parser.add_argument("--fps", type=float, default=100.0, help="frame rate of the figure-3 video")
    args = parser.parse_args()
    # one message per flag: all three were named with all three values, whichever was wrong
    for flag, value, low, what in (("--clips", args.clips, 1, "generated clips"),
                                   ("--frames", args.frames, 2, "frames per clip (the first carries the masks)")):
        if value < low:
            parser.error(f"{flag}: expected {what} >= {low}, got {value}")
    if not 0 < args.fps < float("inf"):   # the video is written at this rate and played back paced by it
        parser.error(f"--fps: expected a finite frame rate > 0, got {args.fps:g}")
    if args.fps > MAX_MP4_FPS:   # the figure-3 .mp4 failed to open at that rate, after minutes of figures 1 and 2
        parser.error(f"--fps: expected at most {MAX_MP4_FPS} (the figure-3 video is an .mp4, whose time base is "
                     f"1/fps), got {args.fps:g}")
    with tempfile.TemporaryDirectory(prefix="vosrt-bench-live-") as folder:
        measure(args, Path(folder))


def measure(args, work: Path) -> None:

    ious, with_boxes, with_truth = [], [], []
    for index in range(args.clips):
        seed = 4242 + index
        # progress on stderr: figures 1 and 2 are printed once every clip has run twice (tens of seconds)
        print(f"bench_live.py: clip {index + 1}/{args.clips} (seed {seed})", file=sys.stderr, flush=True)
        seq = generate_sequence(seed, num_frames=args.frames, num_objects=2)
        truth = seq.labels
        first = cv2.cvtColor(seq.frames[0], cv2.COLOR_RGB2BGR)
        boxes = boxes_of(truth[0])
        found = masks_from_boxes(first, boxes)
        ious += [float(((found == i) & (truth[0] == i)).sum() / ((found == i) | (truth[0] == i)).sum())
                 for i, _ in boxes]
        clip = write_video(work / f"{seed}.mp4", seq)
        pngs = work / f"{seed}-boxes"
        run_pipeline(clip, boxes, drop=False, png_dir=pngs)
        predicted = [read_label_png(p) for p in sorted(pngs.glob("*.png"))]
        with_boxes += evaluate_sequence(predicted, truth, name=str(seed))
        session = vosrt.sdk.load(PACKAGE, backend="onnxruntime")
        stats = stream(session, open_source(str(clip)), masks={0: truth[0]}, keep_results=True)
        session.close()
        with_truth += evaluate_sequence([d.labels for d in stats.results], truth, name=str(seed))
    boxes_jf, truth_jf = summarize(with_boxes)["J&F"], summarize(with_truth)["J&F"]
    print(f"1. GrabCut from bounding boxes: IoU mean {np.mean(ious):.3f}, min {np.min(ious):.3f} "
          f"over {len(ious)} objects of {args.clips} generated clips (seeds 4242..{4241 + args.clips})")
    print(f"2. J&F over the clips ({args.frames} frames): boxes {boxes_jf:.3f}, true first mask {truth_jf:.3f}, "
          f"ratio boxes / true mask {boxes_jf / truth_jf:.3f}")

    seq = generate_sequence(77, num_frames=300, num_objects=2)
    clip = write_video(work / "fast.mp4", seq, fps=args.fps)
    boxes = boxes_of(seq.labels[0])
    for name, drop, pace in (("--realtime", True, args.fps), ("every frame", False, None)):
        print(f"bench_live.py: figure 3, {name}", file=sys.stderr, flush=True)
        pipeline = run_pipeline(clip, boxes, drop=drop, pace=pace)
        p50, p95 = (1000 * v for v in percentiles(pipeline.latencies))
        print(f"3. {name:<11} 300 frames at {args.fps:g} FPS: {pipeline.frames} processed, "
              f"{pipeline.source.dropped} dropped, {pipeline.stats.fps:.1f} FPS model, "
              f"latency p50 {p50:.0f} ms, p95 {p95:.0f} ms")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:   # Ctrl-C: one line and status 130, not a traceback (the temporary folder is removed)
        print("bench_live.py: interrupted", file=sys.stderr)
        sys.exit(130)
    except UserError as err:    # a setting the SDK refused: one line, not a traceback blaming a temporary file
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
