"""``vosrt demo``: segment a generated clip with a demo model shipped inside the package, on the CPU.

    vosrt demo                       # stcn-lite: track the objects given on the first frame
    vosrt demo --family 3dc-seg --package PKG    # segment the moving objects, no mask given
    vosrt demo --family stem-seg --package PKG   # find and track every object instance, no mask given
                                     # (--package: only stcn-lite is shipped, sdk/models/README.md says why)
    vosrt demo --heldout 20          # J&F over 20 held-out generated clips, and the copy-first-mask baseline

The clip comes from :mod:`vosrt.sdk.synthetic` with a seed that no training clip of the demo models
used (the training clips' seeds are recorded in ``sdk/models/<model>/training.json`` and checked by
the tests), so the score is on unseen data. Frames stream through the shipped package with ONNX Runtime on the CPU
(``vosrt.sdk.load``); the command writes ``OUT/overlay.mp4`` and one palette PNG per frame in
``OUT/masks/``, then prints J&F (DAVIS protocol, ``vosrt.sdk.metrics``) and the frames per second of
the streaming loop (model loading excluded).
"""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

from vosrt.sdk import families
from vosrt.sdk.errors import UserError
from vosrt.sdk.package import SHIPPED_DIR

DEMO_SEED = 90210          # the demo clip
HELDOUT_DATASET_SEED = 2026  # held-out evaluation clips: sequence_seed(HELDOUT_DATASET_SEED, i)
CLIP = dict(num_frames=60, height=240, width=432)
# The demo holds a clip whole (frames, truth and results: about FRAME_MB a frame at 240x432) to score it:
# MAX_FRAMES is about 1 GB; a longer stream is `vosrt run`'s job, which holds none of it.
FRAME_MB = 0.5
MAX_FRAMES = 2000


def add_arguments(parser) -> None:
    """Arguments of ``vosrt demo``."""
    demos = [f.name for f in families.all_families() if f.demo_model]
    parser.add_argument("--family", choices=demos, default=demos[0],
                        help=", ".join(f"{f.name}: {f.task.split(':')[0]}" for f in families.all_families()
                                       if f.demo_model) + f" (default {demos[0]})")
    parser.add_argument("--out", default="vosrt-demo", help="output folder (default ./vosrt-demo)")
    parser.add_argument("--seed", type=int, default=DEMO_SEED, help=f"clip seed (default {DEMO_SEED})")
    parser.add_argument("--frames", type=int, default=CLIP["num_frames"], help=f"clip length in frames, 2 to {MAX_FRAMES} (default {CLIP['num_frames']})")
    parser.add_argument("--package", default=None, help="a model package to use instead of the shipped one")
    parser.add_argument("--heldout", type=int, default=0, metavar="N",
                        help="instead of one clip, score N held-out generated clips and the copy-first-mask "
                             "baseline (no files written)")


def demo_package(family: str) -> Path:
    """Folder of the demo model package shipped for ``family`` (its row's ``demo_model``)."""
    model = families.get(family).demo_model
    path = SHIPPED_DIR / str(model)
    if model is None or not (path / "manifest.json").is_file():
        raise UserError(f"no {family} demo model ({model}) is shipped in this installation (looked in {path}; "
                        f"sdk/models/README.md says why); pass --package with a {family} package you exported")
    return path


def segment_sequence(session, frames: list[np.ndarray], first_labels: np.ndarray, progress=None):
    """Stream RGB ``frames`` through ``session`` (:func:`vosrt.sdk.streaming.stream`); returns (label maps,
    frames per second after the first frame). Sessions that take masks get ``first_labels`` on frame 0.
    ``progress``: a :class:`vosrt.sdk.progress.Progress` updated per frame."""
    from vosrt.sdk.streaming import stream

    masks = {0: first_labels} if session.takes_mask else None
    stats = stream(session, frames, masks=masks, keep_results=True, progress=progress)
    finished = {done.index: done.labels for done in stats.results}
    return [finished[i] for i in range(len(frames))], stats.fps


def score(family: str, predicted: list[np.ndarray], truth: list[np.ndarray], name: str):
    """ObjectScores of one clip by the family's protocol (:func:`vosrt.sdk.metrics.score_sequence`)."""
    from vosrt.sdk import metrics

    return metrics.score_sequence(family, predicted, truth, name)


def run(args) -> int:
    """Generate, segment, write, report."""
    import vosrt.sdk
    from vosrt.sdk import metrics
    from vosrt.sdk.masks import write_label_png
    from vosrt.sdk.synthetic import generate_sequence, sequence_seed
    from vosrt.sdk.video import overlay

    if not 2 <= args.frames <= MAX_FRAMES:
        raise UserError(f"--frames: expected 2 to {MAX_FRAMES} frames, got {args.frames}" + (
            f" (the demo keeps the whole clip in memory to score it, about {FRAME_MB} MB a frame: {args.frames} would "
            f"take about {args.frames * FRAME_MB / 1000:.0f} GB; a long stream is for `vosrt run`, which keeps no clip)"
            if args.frames > MAX_FRAMES else ""))
    if args.seed < 0:
        raise UserError(f"--seed: expected a whole number >= 0, got {args.seed}")
    if args.heldout < 0:
        raise UserError(f"--heldout: expected a number of clips >= 0, got {args.heldout}")
    package = Path(args.package) if args.package else demo_package(args.family)
    options = {"color": "rgb"}
    session = vosrt.sdk.load(package, backend="onnxruntime", **options)
    if session.package.family != args.family:
        raise UserError(f"--package {package} holds a {session.package.family} model, not {args.family}: "
                        f"add --family {session.package.family}")
    clip = dict(CLIP, num_frames=args.frames)
    name = session.package.manifest.get("variant", args.family)
    if session.package.quantization is not None:   # an INT8 package's scores read as its fp32 source's
        name += " INT8"

    if args.heldout:
        from vosrt.sdk.progress import Progress

        ignored = [flag for flag, given in (("--seed", args.seed != DEMO_SEED), ("--out", args.out != "vosrt-demo"))
                   if given]
        if ignored:   # the held-out clips have their own seeds, and nothing is written
            print(f"note: {' and '.join(ignored)} {'is' if len(ignored) == 1 else 'are'} not used with --heldout (its "
                  f"clips come from dataset seed {HELDOUT_DATASET_SEED}, and no files are written)", file=sys.stderr)
        model_scores, baseline_scores, rates = [], [], []
        bar = Progress(args.heldout, "clip", desc="held-out clips")
        for index in range(args.heldout):
            seq = generate_sequence(sequence_seed(HELDOUT_DATASET_SEED, index), **clip)
            session.reset()
            predicted, fps = segment_sequence(session, seq.frames, seq.labels[0])
            rates.append(fps)
            model_scores += score(args.family, predicted, seq.labels, f"heldout-{index}")
            baseline_scores += score(args.family, [seq.labels[0]] * len(seq), seq.labels, f"heldout-{index}")
            bar.update(postfix=f"{fps:.1f} FPS")
        bar.close()
        result, baseline = metrics.summarize(model_scores), metrics.summarize(baseline_scores)
        print(f"{name}: {args.heldout} held-out generated clips ({clip['num_frames']} frames, "
              f"{clip['height']}×{clip['width']}, dataset seed {HELDOUT_DATASET_SEED}), ONNX Runtime CPU")
        print(f"  model          J&F {result['J&F']:.3f}  (J {result['J']:.3f}, F {result['F']:.3f})")
        print(f"  copy frame 0   J&F {baseline['J&F']:.3f}  (J {baseline['J']:.3f}, F {baseline['F']:.3f})")
        print(f"  {len(rates) / sum(1 / max(r, 1e-9) for r in rates):.1f} FPS")
        return 0

    from vosrt.sdk.progress import Progress

    out = Path(args.out)
    try:   # before the clip is segmented: an --out that cannot be written failed only after the whole clip ran
        (out / "masks").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out: cannot create {out / 'masks'}: {err}") from None
    seq = generate_sequence(args.seed, num_objects=3, **clip)
    # a bar on stderr: --frames 600 took half a minute without a word
    predicted, fps = segment_sequence(session, seq.frames, seq.labels[0], progress=Progress(len(seq), "frame"))
    result = metrics.summarize(score(args.family, predicted, seq.labels, "demo"))

    written = {f"{index:05d}.png" for index in range(len(predicted))}
    earlier = sum(1 for png in (out / "masks").glob("*.png") if png.name not in written)
    if earlier:   # as `vosrt run` says: a longer earlier clip's PNGs stay beside this one's
        print(f"note: {out / 'masks'} already holds {earlier} other PNG(s), of an earlier run; this run replaces "
              f"the PNGs of its {len(predicted)} frames and leaves those", file=sys.stderr)
    writer = cv2.VideoWriter(str(out / "overlay.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 15.0,
                             (clip["width"], clip["height"]))
    if not writer.isOpened():
        raise UserError(f"--out: OpenCV cannot write {out / 'overlay.mp4'}")
    try:
        for index, (frame, labels) in enumerate(zip(seq.frames, predicted)):
            png = out / "masks" / f"{index:05d}.png"
            try:   # a read-only folder, a full disk, a folder of that name: a traceback, as `vosrt run` says it
                write_label_png(png, labels)
            except OSError as err:
                raise UserError(f"--out: cannot write {png}: {err.strerror or err}") from None
            writer.write(overlay(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), labels))
    finally:
        writer.release()

    takes_mask = families.get(args.family).takes_mask
    task = "tracking the 3 objects given on frame 0" if takes_mask else "segmenting the moving objects"
    if np.dtype(families.get(args.family).session_class().label_dtype).itemsize > 1:
        task = "finding and tracking the object instances"
    print(f"{name}: {task} in a generated {len(seq)}-frame clip ({clip['height']}×{clip['width']}, seed {args.seed}), "
          f"ONNX Runtime CPU")
    print(f"  J&F {result['J&F']:.3f}  (J {result['J']:.3f}, F {result['F']:.3f})")
    if takes_mask:
        baseline = metrics.summarize(score(args.family, [seq.labels[0]] * len(seq), seq.labels, "demo"))
        print(f"  copying the frame-0 mask to every frame: J&F {baseline['J&F']:.3f}")
    print(f"  {fps:.1f} FPS ({1000 / max(fps, 1e-9):.1f} ms per frame)")
    print(f"  wrote {out / 'overlay.mp4'} and {len(predicted)} PNGs in {out / 'masks'}")
    return 0
