"""``vosrt run PKG --source SRC``: stream a camera, video, URL or folder through a model package.

STCN packages need the first frame's mask: ``--mask PNG`` (a palette PNG of object ids at the frame's
size), or the first annotation of a DAVIS sequence source. 3DC-Seg and STEm-Seg packages take no mask
(STEm-Seg PNGs hold track ids, kept exact beyond 255 as :mod:`vosrt.sdk.masks` describes). Results go
to ``--out DIR`` (one palette PNG per frame, named after the source's frames) and/or ``--video OUT``
(the frames with the masks blended in) and/or, for instance evaluation with ``vosrt eval``, ``--vis JSON
--videos valid.json`` or ``--video-id N`` (this video's YouTube-VIS / OVIS results entries, added to that
file) and ``--mots TXT``
(the sequence's KITTI-MOTS file). A source that stops early (a camera unplugged, a truncated
video) ends the run with what was written so far, a warning and exit code 1 (a file at a URL read to its
last frame is complete); an unreadable image of a
folder, or an undecodable frame of a video file with frames after it, is skipped with a warning (outputs
keep the source's frame names); a JPEG cut short is segmented as far as it decodes, with a warning naming it.
Frames of a folder are read in natural order (frame2 before frame10). A camera or live stream is captured in its
own thread and each step takes the newest frame (those captured while the model was busy are dropped and counted
at the end; PNGs are named by capture position), so results keep up with the scene; a file, local or served over
HTTP, has every frame segmented.
Objects first annotated on a later frame of a DAVIS sequence are tracked from that frame. A source with
no readable frame, outputs that would overwrite the source, a corrupt mask, and an overlay video that
the disk could not hold (checked when it is finished) are one-line errors.
Ctrl-C, SIGTERM and SIGHUP stop the run with its files finished (exit code 128 + signal).
"""
from __future__ import annotations

import sys
from pathlib import Path

from vosrt.sdk.errors import UserError, first_few


def add_arguments(parser) -> None:
    """Arguments of ``vosrt run``."""
    parser.add_argument("package",
                        help="model package folder (from `vosrt export`) or a shipped package's name (stcn-lite)")
    parser.add_argument("--source", required=True,
                        help="camera index, video file, stream URL, image folder or DAVIS sequence folder")
    parser.add_argument("--mask", default=None, help="first-frame mask PNG (stcn packages)")
    parser.add_argument("--out", default=None, help="folder for one palette PNG per frame")
    parser.add_argument("--video", default=None, help="overlay video to write (.mp4 or .avi); of a camera or live "
                        "stream, at the rate frames were processed")
    parser.add_argument("--vis", default=None, metavar="JSON",
                        help="YouTube-VIS / OVIS results file to add this video's tracks to (needs --videos or "
                             "--video-id)")
    parser.add_argument("--video-id", type=int, default=None,
                        help="--vis: the video's id in the dataset's JSON (its 'videos' entry)")
    parser.add_argument("--videos", default=None, metavar="JSON",
                        help="--vis: the dataset's JSON (YouTube-VIS / OVIS valid.json); the video is the one whose "
                             "frames lie in a folder named as --source, and its id and frame list come from there")
    parser.add_argument("--vis-categories", default=None, metavar="MAP",
                        help="--vis: the dataset's category id of the model's categories, e.g. 1=5,2=7 (model "
                             "category 1 is written as 5; categories not named keep their own number)")
    parser.add_argument("--vis-max-tracks", type=int, default=None, metavar="N",
                        help=f"--vis: write only the N tracks that live longest (stem-seg default {VIS_MAX_TRACKS}, as "
                             "the published STEm-Seg YouTube-VIS output; other families and 0: every track)")
    parser.add_argument("--mots", default=None, metavar="TXT", help="KITTI-MOTS txt file to write the tracks to")
    parser.add_argument("--mots-class", type=int, default=None, choices=(1, 2),
                        help="--mots: class of every track, 1 car or 2 pedestrian (default: the model's "
                             "category most of each track's pixels vote for, 1 where it has none)")
    parser.add_argument("--mots-filter", default=None, choices=("published", "none"),
                        help="--mots: 'published' leaves out small detections, ones filling little of their box, "
                             "and short or broken tracks, as STEm-Seg's KITTI-MOTS post-processing does (the stem-seg "
                             "default); 'none' writes every detection (the other families' default)")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    add_stream_timeout_argument(parser)
    add_session_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


VIS_MAX_TRACKS = 10   # --vis: tracks written per video (stemseg/config/defaults.yaml, YouTube-VIS MAX_TRACKS)


def add_stream_timeout_argument(parser) -> None:
    """``--stream-timeout SECONDS`` of the commands that read a ``--source``."""
    from vosrt.sdk.video import STREAM_TIMEOUT

    parser.add_argument("--stream-timeout", type=float, default=STREAM_TIMEOUT, metavar="SECONDS",
                        help=f"a stream URL that sends nothing for this long, opening or between frames, has "
                             f"dropped (default {STREAM_TIMEOUT:g})")


def add_session_arguments(parser) -> None:
    """The session's flags, shared by ``vosrt run`` and ``vosrt live``: backend, device, checkpoint and the
    family settings of :data:`SETTINGS`."""
    parser.add_argument("--backend", default="auto", help="auto, onnxruntime, torch or tensorrt (default auto)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint for --backend torch (default: the package's)")
    parser.add_argument("--device", default=None, help="auto, cpu or cuda (backend default: auto)")
    parser.add_argument("--mem-every", type=int, default=None, help="stcn: memory frame every N frames")
    parser.add_argument("--top-k", type=int, default=None,
                        help="stcn: top-k of the memory read (0: every memory entry; default the package's)")
    parser.add_argument("--memory-capacity", type=int, default=None, help="stcn: memory bank size in frames")
    parser.add_argument("--max-objects", type=int, default=None,
                        help="stcn: most objects tracked at once (default: the package's, 32)")
    parser.add_argument("--overlap", type=int, default=None, help="clip families: clip overlap in frames (default the package's: 3dc-seg 3, stem-seg 4, "
                             "6 for 16-frame models; L-1 = dense; stem-seg "
                             "links tracks on these frames, so 0 links none)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="3dc-seg: averaged foreground probability above which a pixel is foreground (default 0.5)")
    parser.add_argument("--min-seediness", type=float, default=None,
                        help="stem-seg: a seed below this seediness ends a clip's clustering (default the package's)")
    parser.add_argument("--foreground-threshold", type=float, default=None,
                        help="stem-seg: foreground probability above which a pixel is clustered (default the package's)")
    parser.add_argument("--max-instances", type=int, default=None,
                        help="stem-seg: most instances per clip (default the package's, 20)")
    parser.add_argument("--link-iou", type=float, default=None,
                        help="stem-seg: least mask IoU on the shared frames for an instance to continue a track "
                             "(default the package's, 0.1)")


# session settings with flags above
SETTINGS = ("mem_every", "top_k", "memory_capacity", "max_objects", "overlap", "threshold", "min_seediness",
            "foreground_threshold", "max_instances", "link_iou")


def session_options(args, family, package=None, command: str = "run") -> dict:
    """``vosrt.sdk.load`` keywords from the flags of :func:`add_session_arguments` (settings the family does
    not have are refused, naming the flag). With ``package``, ``--checkpoint`` is refused unless the backend
    is torch (the only one that loads a checkpoint), with the ``vosrt COMMAND`` line that uses it."""
    options = {"backend": args.backend}
    if args.checkpoint and package is not None:
        _refuse_checkpoint_off_torch(args, package, command)
    if args.checkpoint:
        options["checkpoint"] = args.checkpoint
    if args.device:
        options["device"] = args.device
    settings = {k: getattr(args, k) for k in SETTINGS if getattr(args, k) is not None}
    family.check_settings(settings, flags=SETTINGS)
    options.update(settings)
    return options


def load_session(args, family, package, command: str = "run"):
    """``vosrt.sdk.load`` of ``package`` with :func:`session_options`; a setting the session refuses (``overlap:
    expected an integer in 0..7 ...``, said of the keyword) is said of its flag (``--overlap: ...``)."""
    import vosrt.sdk

    options = session_options(args, family, package, command)
    try:
        session = vosrt.sdk.load(package.path, **options)
    except UserError as err:
        text = str(err)
        for name in (*SETTINGS, "backend", "device"):
            if name in options and text.startswith(f"{name}:"):
                raise UserError(f"--{name.replace('_', '-')}{text[len(name):]}") from None
        raise
    if getattr(session, "linker", None) is not None and session.overlap == 0:
        # tracks are linked by their masks on the frames consecutive clips share; with none, every clip's
        # instances get new ids (documented on InstanceSegmenter, but a run gave no sign of it)
        given = "--overlap 0" if options.get("overlap") is not None else "the package's overlap 0"
        print(f"note: {given}: consecutive clips share no frame, so no track is linked across clips; every "
              f"{session.clip_length}-frame clip starts new track ids (--overlap 1 or more links them)",
              file=sys.stderr)
    return session


def _refuse_checkpoint_off_torch(args, package, command: str) -> None:
    import shlex

    from vosrt.sdk.backends import resolve_backend_name

    try:
        backend = resolve_backend_name(package, args.backend)
    except UserError as err:
        raise UserError(f"--backend: {str(err).removeprefix('backend: ')}") from None
    if backend == "torch":
        return
    chosen = f"--backend {args.backend}" + (f", which is {backend} here" if backend != args.backend else "")
    hint = shlex.join(["vosrt", command, str(args.package), "--source", str(args.source), "--backend", "torch",
                       "--checkpoint", str(args.checkpoint), *_kept_flags(args)])
    raise UserError(f"--checkpoint: only --backend torch loads a checkpoint, but this {command} uses {chosen}; run "
                    f"the checkpoint on torch: `{hint}`, or drop --checkpoint")


# Flags of vosrt run / live that the suggested torch command keeps, so that it does what the refused one asked
# (a run without --mask of a video, or without --out, would fail or discard its results).
_KEPT_FLAGS = ("--mask", "--out", "--video", "--vis", "--video-id", "--videos", "--vis-categories",
               "--vis-max-tracks", "--mots",
               "--mots-class", "--mots-filter", "--max-frames", "--frames", "--headless", "--select", "--device",
               "--no-progress",
               *(f"--{name.replace('_', '-')}" for name in SETTINGS))


def _kept_flags(args) -> list[str]:
    kept = []
    for flag in _KEPT_FLAGS:
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value is True:
            kept.append(flag)
        elif isinstance(value, list):
            kept += [part for item in value for part in (flag, str(item))]
        elif value is not None and value is not False:
            kept += [flag, str(value)]
    return kept


def _masks_of(source, first_mask, family, where: str = "--mask"):
    """``stream``'s masks hook of a session that takes masks: ``first_mask`` on the source's first frame;
    on later frames of a source with annotations (a DAVIS or YouTube-VOS style sequence) the objects that
    are annotated there for the first time, and only those (the others keep being tracked, not told)."""
    import numpy as np

    if first_mask is None:
        raise UserError(f"--mask: {family.name} packages need the first frame's mask (a palette PNG of object "
                        "ids); give --mask PNG or a DAVIS sequence folder with its annotations")
    seen: set[int] = set()
    # a sequence whose objects are all first annotated on later frames (its first annotation empty or absent):
    # the frames before them have no object, and every object is taken from its first annotation
    first_mask = first_mask if first_mask.any() else None

    def masks(position: int, frame):
        if position == 0 and first_mask is not None:
            if source.first_frame_skipped:
                raise UserError(f"--source {source.name}: its first frame cannot be read, and the first-frame "
                                "mask belongs to it; repair or remove that frame and give the mask of the new "
                                "first frame")
            if first_mask.shape[:2] != frame.shape[:2]:
                raise UserError(f"{where}: {first_mask.shape[1]}x{first_mask.shape[0]} pixels, but the frames of "
                                f"--source {source.name} are {frame.shape[1]}x{frame.shape[0]} (width x height); give "
                                "the first frame's mask at the frames' size")
            seen.update(int(i) for i in np.unique(first_mask) if i)
            return first_mask
        later = source.annotation(source.frame_name(position))
        if later is None:
            return None
        new = [int(i) for i in np.unique(later) if i and int(i) not in seen]
        if not new:
            return None
        if later.shape[:2] != frame.shape[:2]:
            raise UserError(f"--source {source.name}: the annotation of frame {source.frame_name(position)} is "
                            f"{later.shape[1]}x{later.shape[0]} pixels, but the frames are {frame.shape[1]}x"
                            f"{frame.shape[0]}; give the sequence's annotations at its frames' size")
        seen.update(new)
        print(f"note: object(s) {', '.join(map(str, new))} first annotated on frame {source.frame_name(position)}: "
              "tracked from there", file=sys.stderr)
        return np.where(np.isin(later, new), later, 0).astype(later.dtype)

    return masks


def _first_annotation(source):
    """The first frame's annotation of a sequence source; an empty label map when that frame has no object
    (annotation empty or absent) but a later frame's annotation has one, None when no annotation has any."""
    first = source.first_mask()
    if first is not None and first.any():
        return first
    for name in getattr(source, "all_names", None) or []:
        later = source.annotation(name)
        if later is not None and later.any():
            print(f"note: --source {source.name}: no object is annotated on its first frame; objects are tracked "
                  f"from the frame they are first annotated on ({name} for the first)", file=sys.stderr)
            return later * 0 if first is None else first
    return None


def _check_mask_ids(mask, where: str, family) -> None:
    """A first-frame mask with ids beyond 255 (e.g. a KITTI-MOTS instance PNG: class * 1000 + instance, 10000
    ignore) is refused naming where it came from and what the family takes."""
    import numpy as np

    if mask is None or not mask.size or int(mask.max()) <= 255:
        return
    big = [int(i) for i in np.unique(mask) if i > 255]
    shown = ", ".join(map(str, big[:5])) + (", ..." if len(big) > 5 else "")
    raise UserError(f"{where}: object ids {shown}, but {family.name} packages track ids 1..255 (0 background); "
                    "renumber the objects 1..K in the mask (a KITTI-MOTS instance PNG holds class * 1000 + "
                    "instance and 10000 for ignore regions, which is no object); with --mots, --mots-class 1|2 "
                    "sets the class of the tracks")


def _refuse_overwriting_the_source(args, opened) -> None:
    annotations = getattr(opened, "annotations", None)   # a DAVIS sequence's ground truth, read while --out is written
    if args.out and annotations is not None and Path(args.out).resolve() == Path(annotations).resolve():
        raise UserError(f"--out {args.out} is the ground truth of --source {args.source} ({annotations}): the masks "
                        "would replace the annotations the run reads and that vosrt eval scores against; give another "
                        "folder, e.g. --out masks/" + Path(annotations).name)
    source = Path(args.source)
    if not source.exists():
        return
    if args.out and Path(args.out).resolve() == source.resolve():
        raise UserError(f"--out {args.out} is the source folder: the masks would replace its frames; give "
                        "another folder")
    for flag, given in (("--video", args.video), ("--vis", args.vis), ("--mots", args.mots)):
        if given and Path(given).resolve() == source.resolve():
            kind = "video" if source.is_file() else "folder"
            raise UserError(f"{flag} {given} is the source {kind}: writing it would destroy what is being read; "
                            "give another file name")


def _check_result_flags(args) -> None:
    if args.vis and args.video_id is None and args.videos is None:
        raise UserError(f"--vis: needs the video's id in the dataset: --videos valid.json (the dataset's JSON, where "
                        f"it is looked up by the --source folder's name) or --video-id N, e.g. `--vis {args.vis} "
                        f"--video-id 1`")
    if args.video_id is not None and args.videos is not None:
        raise UserError("--video-id and --videos both name the video; give one of them")
    for flag, given in (("--video-id", args.video_id), ("--videos", args.videos)):
        if given is not None and not args.vis:
            raise UserError(f"{flag}: names the video's entries of a --vis results file; give --vis JSON too")
    if args.vis_categories is not None and not args.vis:
        raise UserError("--vis-categories: maps the categories of a --vis file's tracks; give --vis JSON too")
    args.vis_category_map = _category_map(args.vis_categories) if args.vis_categories is not None else None
    if args.vis_max_tracks is not None and not args.vis:
        raise UserError("--vis-max-tracks: limits the tracks of a --vis results file; give --vis JSON too")
    if args.vis_max_tracks is not None and args.vis_max_tracks < 0:
        raise UserError(f"--vis-max-tracks: expected a whole number >= 0 (0: every track), got {args.vis_max_tracks}")
    if args.mots_class is not None and not args.mots:
        raise UserError("--mots-class: sets the class of a --mots file's tracks; give --mots TXT too")
    if args.mots_filter is not None and not args.mots:
        raise UserError("--mots-filter: filters a --mots file's detections; give --mots TXT too")


def _category_map(text: str) -> dict[int, int]:
    """``--vis-categories 1=5,2=7``: {model category: dataset category id}."""
    mapping = {}
    for part in text.split(","):
        model, sep, dataset = part.strip().partition("=")
        try:
            pair = (int(model), int(dataset)) if sep else None
        except ValueError:
            pair = None
        if pair is None or min(pair) < 1:
            raise UserError(f"--vis-categories {text}: expected MODEL=DATASET pairs of category numbers >= 1 separated "
                            f"by commas (e.g. --vis-categories 1=5,2=7), got '{part.strip()}'")
        if pair[0] in mapping:
            raise UserError(f"--vis-categories {text}: model category {pair[0]} is mapped twice")
        mapping[pair[0]] = pair[1]
    return mapping


def _check_dataset_categories(args, dataset: dict) -> None:
    """--vis-categories with --videos: every id it writes is one of the dataset's categories."""
    listed = {c.get("id") for c in dataset.get("categories") or [] if isinstance(c, dict)}
    unknown = sorted(set(args.vis_category_map.values()) - listed) if listed else []
    if unknown:
        shown = ", ".join(map(str, sorted(listed)[:10])) + (", ..." if len(listed) > 10 else "")
        raise UserError(f"--vis-categories: category id(s) {', '.join(map(str, unknown))} are not among the "
                        f"categories of --videos {args.videos} ({shown})")


def _dataset_video(args, folder_names: list[str] | None) -> tuple[int, list[str]]:
    """--videos: the id and frame names (file stems, in the dataset's order) of the video of the --videos
    JSON whose frames lie in a folder named as the --source folder (or video file stem); a source folder
    with images the dataset does not list for it is refused (another video's frames)."""
    import json

    from vosrt.sdk.video import named_path

    source = named_path(args.source)   # `--source .` from within the video's folder is named by that folder
    wanted = source.name if source.is_dir() else source.stem
    try:
        dataset = json.loads(Path(args.videos).read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"--videos {args.videos}: expected the dataset's YouTube-VIS / OVIS JSON ({err})") from None
    videos = dataset.get("videos") if isinstance(dataset, dict) else None
    if not isinstance(videos, list) or not videos or not all(
            isinstance(v, dict) and "id" in v and isinstance(v.get("file_names"), list) and v["file_names"]
            for v in videos):
        raise UserError(f"--videos {args.videos}: expected the dataset's YouTube-VIS / OVIS JSON, whose 'videos' "
                        "entries have an 'id' and 'file_names'")
    found = [v for v in videos if Path(str(v["file_names"][0])).parent.name == wanted]
    if len(found) != 1:
        listed = ", ".join(Path(str(v["file_names"][0])).parent.name for v in videos[:3])
        what = (f"none of its {len(videos)} video(s) has its frames" if not found else
                f"{len(found)} of its {len(videos)} videos have their frames")
        raise UserError(f"--videos {args.videos}: {what} in a folder named '{wanted}' (the --source's name; it lists "
                        f"e.g. {listed}); give --source the video's frame folder, or its id with --video-id N instead "
                        "of --videos")
    if args.vis_category_map:
        _check_dataset_categories(args, dataset)
    video = found[0]
    names = [Path(str(f)).stem for f in video["file_names"]]
    if folder_names is not None:
        listed = set(names)
        strays = [n for n in folder_names if n not in listed]
        if strays:
            raise UserError(f"--videos {args.videos}: video {video['id']} ('{wanted}') lists {len(names)} frames, and "
                            f"--source {args.source} holds {len(strays)} image(s) it does not list "
                            f"({', '.join(strays[:3])}{', ...' if len(strays) > 3 else ''}): the folder is not that "
                            "video's frames")
    return int(video["id"]), names


def _result_writers(args, source, family=None) -> list:
    """The sinks of --vis and --mots (checked before the run: a bad file name, a --vis file that is not a
    results list, pycocotools missing). A folder's --vis entries have one slot per image, unreadable ones
    included (null), so that they line up with the dataset's frames; those after --max-frames too (null): a shorter
    list dropped the ground truth's later frames from the official API's video IoU (a zip), which scored it higher."""
    from vosrt.sdk.instance_metrics import KITTI_MOTS_FILTERS, MotsWriter, VisWriter

    writers = []
    if args.vis:
        folder_names = getattr(source, "all_names", None)
        names = folder_names
        if args.videos is not None:
            args.video_id, listed = _dataset_video(args, folder_names)
            # a folder's frames take their slots by name; a video file's frames by their order
            names = listed if folder_names is not None else [source.frame_name(i) for i in range(len(listed))]
        # the published limit is STEm-Seg's: another family's tracks are the objects asked for (or segmented)
        default = VIS_MAX_TRACKS if family is not None and family.name == "stem-seg" else 0
        limit = default if args.vis_max_tracks is None else args.vis_max_tracks
        writers.append(VisWriter(args.vis, args.video_id, categories=args.vis_category_map, frame_names=names,
                                 max_tracks=limit or None))
    if args.mots:
        published = (family is not None and family.name == "stem-seg" if args.mots_filter is None
                     else args.mots_filter == "published")
        writers.append(MotsWriter(args.mots, args.mots_class, filters=KITTI_MOTS_FILTERS if published else None))
    return writers


def _warn_about_earlier_pngs(out: Path) -> None:
    earlier = sum(1 for _ in out.glob("*.png")) if out.is_dir() else 0
    if earlier:
        print(f"note: --out {out} already holds {earlier} PNG(s); this run replaces those of the frames it "
              "writes and leaves the others", file=sys.stderr)


def run(args) -> int:
    """Entry point of ``vosrt run``."""
    from vosrt.sdk import families
    from vosrt.sdk.masks import read_label_png
    from vosrt.sdk.package import load_package
    from vosrt.sdk.progress import Progress
    from vosrt.sdk.streaming import stream
    from vosrt.sdk.live.source import newest_frames
    from vosrt.sdk.video import PngSink, check_stream_timeout, open_source, overlay_video_for

    _check_result_flags(args)
    if args.max_frames is not None and args.max_frames < 1:
        raise UserError(f"--max-frames: expected a positive number, got {args.max_frames}")
    check_stream_timeout(args.stream_timeout)
    package = load_package(args.package)
    family = families.get(package.family)
    if not family.takes_mask and args.mask:
        raise UserError(f"--mask: {family.name} packages segment without a mask (unsupervised); drop --mask")
    session = load_session(args, family, package, "run")
    source = None
    sinks = []

    def discard_empty_outputs():
        for sink in sinks:
            if isinstance(sink, PngSink):
                sink.discard()   # the --out folder it made for the PNGs, when it holds none

    try:
        opened = open_source(args.source, stream_timeout=args.stream_timeout)
        # a camera or live stream: capture runs apart from inference, which takes the newest frame (frames
        # captured meanwhile are dropped and counted); read in turn, each frame was older than the one before
        source = newest_frames(opened)
        if family.takes_mask:
            first = read_label_png(args.mask, "--mask") if args.mask else _first_annotation(source)
            if args.mask and not first.any():
                raise UserError(f"--mask {args.mask}: no object in it (every pixel is 0 = background); give the "
                                "first frame's mask with the objects to track as ids 1..255")
            where = f"--mask {args.mask}" if args.mask else f"--source {args.source}: its first annotation"
            _check_mask_ids(first, where, family)
            masks = _masks_of(source, first, family, where)
        else:
            masks = None
        _refuse_overwriting_the_source(args, opened)
        if args.out:
            _warn_about_earlier_pngs(Path(args.out))
            sinks.append(PngSink(args.out))
        if args.video:
            sinks.append(overlay_video_for(args.video, opened))
        sinks += _result_writers(args, source, family)
    except BaseException:
        discard_empty_outputs()   # a later output refused (--video, --vis) after --out made its folder
        session.close()
        if source is not None:
            source.close()
        raise

    if not sinks:   # said once the run starts, not before an error that ends it (a missing package)
        print("note: no --out, --video, --vis or --mots given; results are computed and discarded", file=sys.stderr)
    total = source.length if args.max_frames is None else min(args.max_frames, source.length or args.max_frames)
    latency = f"; latency {session.latency} frames" if session.latency else ""
    print(f"{package.variant} on {session.backend.describe()}; source: {source.kind} {source.name}{latency}",
          file=sys.stderr)
    try:
        stats = stream(session, source, sinks, masks=masks, max_frames=args.max_frames,
                       progress=Progress(total, "frame", enabled=not args.no_progress))
    except BaseException:
        # a run that fails before its first PNG (a mask of another size than the frames, an unreadable first
        # frame) leaves no empty --out folder behind either
        discard_empty_outputs()
        raise
    finally:
        session.close()
    done = stats.frames
    if done == 0:
        discard_empty_outputs()
        if not source.stopped_early:
            raise UserError(f"--source {args.source}: no frame could be read from it; nothing was written")
    # a source that stopped before its first frame (said below) has no PNGs or video to point to
    print(f"{done} frames in {stats.seconds:.2f} s ({done / max(stats.seconds, 1e-9):.1f} FPS)"
          + (f"; PNGs in {args.out}" if args.out and done else "") + (f"; video {args.video}" if args.video and done
                                                                      else "")
          + (f"; video {args.video_id}'s tracks in {args.vis}" if args.vis else "")
          + (f"; tracks in {args.mots}" if args.mots else ""))
    skipped = [getattr(p, "name", f"frame {p}") for p in getattr(source, "skipped", [])]
    if skipped:
        print(f"warning: {len(skipped)} unreadable frame(s) skipped: {first_few(skipped)}", file=sys.stderr)
    truncated = [p.name for p in getattr(source, "truncated", [])]
    if truncated:
        kept_out = f"; kept out of the tracker's memory: {first_few(stats.forgotten)}" if stats.forgotten else ""
        print(f"warning: {len(truncated)} JPEG(s) cut short, segmented as far as they decode (the rest of the image "
              f"grey): {first_few(truncated)}{kept_out}", file=sys.stderr)
    vis_writer = None
    if args.vis:
        from vosrt.sdk.instance_metrics import VisWriter
        vis_writer = next(sink for sink in sinks if isinstance(sink, VisWriter))
    if vis_writer is not None and vis_writer.unlisted:
        print(f"warning: --vis {args.vis}: {vis_writer.unlisted} frame(s) of --source {args.source} come after the "
              f"{vis_writer.slots - vis_writer.unlisted} that video {args.video_id} lists; their entries follow "
              "in its segmentations, which are then longer than the video (vosrt eval refuses that); run again "
              f"with --max-frames {vis_writer.slots - vis_writer.unlisted}", file=sys.stderr)
    if vis_writer is not None and (skipped or stats.refused or vis_writer.slots > done):
        if vis_writer.slots > done:
            # the frames after --max-frames are null too, but were not skipped
            missed = len(skipped) + stats.refused
            after = vis_writer.slots - done - missed
            why = ([f"{missed} skipped"] if missed or not args.max_frames else []) + \
                ([f"{after} after --max-frames"] if after > 0 and args.max_frames else [])
            print(f"note: --vis {args.vis}: the {vis_writer.slots - done} frame(s) without a prediction "
                  f"({', '.join(why)}) are null in video {args.video_id}'s segmentations, which keep one entry per "
                  "frame", file=sys.stderr)
        else:
            print(f"warning: --vis {args.vis}: the skipped frames have no slot in video {args.video_id}'s "
                  "segmentations, which are then shorter than the video (vosrt eval refuses that); repair those "
                  "frames and run again", file=sys.stderr)
    if getattr(source, "dropped", 0):
        print(f"note: {source.dropped} of the {source.captured} frames captured from {source.kind} {source.name} were "
              "dropped, captured while the model was busy (it takes the newest frame); the PNGs are named by capture "
              "position", file=sys.stderr)
    promised = getattr(source, "frame_count", None)   # a file served over a URL (a live stream's is unknown)
    if source.stopped_early and source.kind == "stream" and promised and \
            source.frames_read + len(source.skipped) >= promised:
        return 0   # read to its last frame: complete (the end of a stream counts as stopping early)
    if source.stopped_early:
        print(f"warning: {source.problem}; " + (f"the {done} frames before it were kept" if done else
                                                 "nothing was written"), file=sys.stderr)
        return 1
    return 0
