"""Metrics of video instance segmentation: DAVIS unsupervised J&F, YouTube-VIS AP, KITTI-MOTS HOTA.

* **DAVIS unsupervised** (:func:`evaluate_unsupervised_sequence`), as the DAVIS 2017/2019 unsupervised
  protocol as davis2017-evaluation computes it: per sequence the predicted ids 1..max are proposals (an id
  between them that never occurs is an empty proposal), padded with empty ones up to the number of
  objects (the official evaluation refuses more than ``max_proposals`` = 20; here the 20 covering the
  most pixels over the sequence are kept instead). The ground-truth objects are ids 1..K, K the largest id
  of the first ground-truth frame (255, void, is no object). Every object is scored against every
  proposal on every frame with J and F (:mod:`vosrt.sdk.metrics`), leaving out the frame's void pixels (255
  in its ground truth) as davis2017-evaluation does in this task (in the semi-supervised task it reads them
  as background); proposals and objects are matched one
  to one so as to maximise the sum of their mean (J + F) / 2 (Hungarian, empty proposals included). All
  frames count (the unsupervised protocol scores the first and last frames too).
* **YouTube-VIS** (:func:`vis_average_precision`): video AP, AP50, AP75, AR1, AR10 as the YouTube-VIS API
  defines them: COCO's matching and 101-point interpolated precision (pycocotools' ``COCOeval``, whose
  IoU is replaced by the spatio-temporal IoU ``Σ_t |P_t ∩ G_t| / Σ_t |P_t ∪ G_t|`` over all frames of the
  video), maximum detections 1/10/100 per video, an instance's area the mean of its non-empty frames.
* **KITTI-MOTS** (:func:`mots_metrics`): HOTA, DetA, AssA, sMOTSA, MOTSA, IDF1 by the ``trackeval`` package
  (its KittiMOTS dataset on files in the KITTI-MOTS txt format).

pycocotools and trackeval are optional (``pip install vosrt[eval]``) and imported only here, on use.
"""
from __future__ import annotations

import contextlib
import io
import math
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vosrt.sdk.errors import UserError, install_command, is_whole
from vosrt.sdk.instances import hungarian
from vosrt.sdk.metrics import (BOUNDARY_TOLERANCE, VOID, ObjectScore, boundary_measure, first_frame_objects,
                                region_similarity)
from vosrt.sdk.package import writable_folder

MAX_PROPOSALS = 20


def _require(module: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise UserError(f"this metric needs the '{module.split('.')[0]}' package: {install_command('eval')}") from None


# ------------------------------------------------------------------------------------ DAVIS unsupervised


def evaluate_unsupervised_sequence(preds: list[np.ndarray], gts: list[np.ndarray], name: str = "sequence",
                                   max_proposals: int = MAX_PROPOSALS, tolerance: float = BOUNDARY_TOLERANCE
                                   ) -> list[ObjectScore]:
    """Score one sequence by the unsupervised protocol (module docstring). ``preds``/``gts``: ``[H, W]``
    integer label maps per frame. Returns one :class:`ObjectScore` per ground-truth object (ids in
    increasing order), each with J and F per frame of its matched proposal."""
    if len(preds) != len(gts):
        raise ValueError(f"{name}: {len(preds)} predicted frames but {len(gts)} ground-truth frames")
    for t, (pred, gt) in enumerate(zip(preds, gts)):
        if pred.shape != gt.shape:
            raise ValueError(f"{name} frame {t}: prediction {pred.shape} and ground truth {gt.shape} differ in size")
    objects = list(range(1, first_frame_objects(gts[0]) + 1)) if gts else []
    if not objects:
        return []   # nothing to score (no annotated frame, or none on the first)
    areas: dict[int, int] = {}
    for pred in preds:
        ids, counts = np.unique(pred, return_counts=True)
        for i, n in zip(ids, counts):
            if i:
                areas[int(i)] = areas.get(int(i), 0) + int(n)
    if max(areas, default=0) <= max_proposals:
        proposals: list = list(range(1, max(areas, default=0) + 1))
    else:
        proposals = sorted(sorted(areas, key=lambda i: (-areas[i], i))[:max_proposals])
    proposals += [None] * max(0, len(objects) - len(proposals))          # None: an empty proposal
    # Per (proposal, object): per-frame J and F.
    j = np.zeros((len(proposals), len(objects), len(gts)))
    f = np.zeros_like(j)
    for t, (pred, gt) in enumerate(zip(preds, gts)):
        void = gt == VOID      # not scored: a proposal covering void pixels is neither right nor wrong there
        for o, obj in enumerate(objects):
            truth = gt == obj
            for p, proposal in enumerate(proposals):
                mask = pred == proposal if proposal is not None else np.zeros_like(truth)
                j[p, o, t] = region_similarity(mask, truth, void)
                f[p, o, t] = boundary_measure(mask, truth, void, tolerance)
    score = (j.mean(axis=2) + f.mean(axis=2)) / 2                         # [P, O], P >= O
    matched = {o: p for p, o in _assignment(-score)}
    return [ObjectScore(name, obj, list(j[matched[o], o]), list(f[matched[o], o])) for o, obj in enumerate(objects)]


def _assignment(cost: np.ndarray) -> list[tuple[int, int]]:
    """The (row, column) pairs of least total ``cost``: scipy's ``linear_sum_assignment`` where scipy is here, which
    davis2017-evaluation calls, so that exact ties (two proposals of the same J&F for an object, J and F apart) are
    broken as there and J and F come out as its; else vosrt's own Hungarian (the same total, ties another way)."""
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:
        return hungarian(cost)
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols)]


# ------------------------------------------------------------------------------------ YouTube-VIS


def _rles(segmentations: list, height: int, width: int, mask_utils) -> list:
    """Per-frame COCO RLEs (None where the instance is absent: null, or an empty list of polygons, as the
    YouTube-VIS API reads any empty entry) from RLEs (compressed or not) or polygons."""
    out = []
    for seg in segmentations:
        if seg is None or seg == []:
            out.append(None)
        elif isinstance(seg, list):                                   # polygons
            out.append(mask_utils.merge(mask_utils.frPyObjects(seg, height, width)))
        elif isinstance(seg.get("counts"), list):                     # uncompressed RLE
            out.append(mask_utils.frPyObjects(seg, height, width))
        else:
            rle = dict(seg)
            if isinstance(rle["counts"], str):
                rle["counts"] = rle["counts"].encode()
            out.append(rle)
    return out


def _mean_area(rles: list, mask_utils) -> float:
    areas = [float(mask_utils.area(r)) for r in rles if r is not None]
    areas = [a for a in areas if a > 0]
    return float(np.mean(areas)) if areas else 0.0


def spatio_temporal_iou(a: list, b: list, mask_utils) -> float:
    """``Σ_t |a_t ∩ b_t| / Σ_t |a_t ∪ b_t|`` of two per-frame RLE lists (None = empty frame)."""
    inter = union = 0.0
    for ra, rb in zip(a, b):
        area_a = float(mask_utils.area(ra)) if ra is not None else 0.0
        area_b = float(mask_utils.area(rb)) if rb is not None else 0.0
        both = float(mask_utils.area(mask_utils.merge([ra, rb], intersect=True))) if ra and rb else 0.0
        inter += both
        union += area_a + area_b - both
    return inter / union if union > 0 else 0.0


def rle_problem(counts, height: int, width: int) -> str | None:
    """What is wrong with the COCO RLE ``counts`` of a ``height`` x ``width`` mask (a compressed string or a
    list of run lengths), or None. pycocotools trusts the runs to cover the mask exactly: runs covering more
    pixels made its IoU loop without end (an eval that never returned), fewer were scored as some other mask.
    The compressed form: per run a little-endian series of 5-bit groups in characters '0' + value, bit 0x20
    continuing it, bit 0x10 of the last the sign; from the fourth run on, the value is added to the run two
    before."""
    pixels = height * width
    if isinstance(counts, list):
        if not all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
            return "uncompressed RLE 'counts' must be whole numbers"
        runs = np.asarray(counts, np.int64)
    else:
        if isinstance(counts, str):
            try:
                counts = counts.encode("ascii")
            except UnicodeEncodeError:
                return "an RLE string holds characters outside '0'..'o'"
        if not isinstance(counts, bytes):
            return f"RLE 'counts' must be a string (or a list of run lengths), got {type(counts).__name__}"
        codes = np.frombuffer(counts, np.uint8).astype(np.int64) - 48
        if codes.size == 0:
            return None if pixels == 0 else "empty RLE string"
        if codes.min() < 0 or codes.max() > 63:
            return "an RLE string holds characters outside '0'..'o'"
        ends = np.flatnonzero((codes & 0x20) == 0)        # the last character of each run's value
        if ends.size == 0 or ends[-1] != codes.size - 1:
            return "an RLE string ends inside a run length"
        starts = np.concatenate(([0], ends[:-1] + 1))
        lengths = ends - starts + 1
        if lengths.max() > 12:
            return "an RLE string has a run length too long to be one"
        shift = 5 * (np.arange(codes.size) - np.repeat(starts, lengths))
        runs = np.add.reduceat((codes & 0x1f) << shift, starts)
        runs -= np.where(codes[ends] & 0x10, np.int64(1) << (5 * lengths), 0)   # negative values
        for first in (1, 2):                              # from the fourth run: differences to the one two before
            if runs.size > first + 2:
                runs[first + 2::2] = np.cumsum(runs[first + 2::2]) + runs[first]
    if runs.size and runs.min() < 0:
        return "an RLE has a negative run length"
    total = int(runs.sum())
    if total != pixels:
        return (f"its RLE runs cover {total} pixels, but a mask of {width}x{height} has {pixels} (counts encoded "
                "from a mask of another size?)")
    return None


def _vis_frames(seg_lists: list, what: str, size: tuple[int, int], frames: int | None) -> int:
    """Check one instance's per-frame segmentations (``what`` names it in errors); returns their count."""
    if not isinstance(seg_lists, list):
        raise UserError(f"{what}: 'segmentations' must be a list with one entry per frame (an RLE, polygons or "
                        f"null), got {type(seg_lists).__name__}")
    if frames is not None and len(seg_lists) != frames:
        raise UserError(f"{what}: {len(seg_lists)} segmentations, but the video has {frames} frames (one entry per "
                        "frame, null where the instance is absent)")
    for t, seg in enumerate(seg_lists):
        if seg is None:
            continue
        if isinstance(seg, list):   # polygons [[x, y, x, y, ...], ...]
            _check_polygons(seg, size, f"{what}, frame {t}")
            continue
        if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
            raise UserError(f"{what}, frame {t}: expected an RLE ({{'size': [h, w], 'counts': ...}}), polygons or "
                            f"null, got {str(seg)[:60]}")
        try:
            height, width = (int(v) for v in seg["size"])
        except (TypeError, ValueError):
            raise UserError(f"{what}, frame {t}: an RLE's 'size' must be [height, width], got {seg['size']!r}") from None
        if (height, width) != tuple(size):
            raise UserError(f"{what}, frame {t}: a mask of {width}x{height} pixels, but the video is "
                            f"{size[1]}x{size[0]} (width x height); encode masks at the video's own resolution")
        problem = rle_problem(seg["counts"], height, width)
        if problem:
            raise UserError(f"{what}, frame {t}: {problem}")
    return len(seg_lists)


def _check_polygons(polygons: list, size: tuple[int, int], what: str) -> None:
    """UserError unless ``polygons`` are lists of an even number (at least 6) of finite coordinates within the frame
    (a margin of its size on each side). pycocotools rasterises along the edges: a 117-byte results file with
    coordinates of 2e7 took 2.4 GB, one of 2e8 crashed the process."""
    height, width = size
    for polygon in polygons:
        if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in polygon):
            raise UserError(f"{what}: a polygon must be a list of x, y coordinates (at least 3 points), got "
                            f"{str(polygon)[:60]}")
        xs, ys = polygon[0::2], polygon[1::2]
        if min(xs) < -width or max(xs) > 2 * width or min(ys) < -height or max(ys) > 2 * height:
            raise UserError(f"{what}: a polygon reaches ({max(xs, key=abs):g}, {max(ys, key=abs):g}), far outside "
                            f"the {width}x{height} frame; give coordinates in the frame's pixels")


def check_vis_inputs(gt: dict, results: list, gt_name: str = "ground truth", results_name: str = "results") -> None:
    """UserError naming the entry unless ``gt`` and ``results`` are well-formed YouTube-VIS data: every result
    names a video of the ground truth, has a number ``score``, and one segmentation per frame of that video,
    each of the video's size. (Left unchecked, a short list was silently cut to its length by the
    spatio-temporal IoU, and a mask of another size silently met nothing.)"""
    try:
        sizes = {v["id"]: (int(v["height"]), int(v["width"])) for v in gt["videos"]}
        lengths = {v["id"]: int(v["length"]) for v in gt["videos"] if v.get("length") is not None}
        list(gt["categories"])
        annotations = list(gt["annotations"])
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{gt_name}: expected 'videos' with 'id', 'height' and 'width', and lists of 'categories' "
                        f"and 'annotations' (YouTube-VIS annotation file; {type(err).__name__}: {err})") from None
    for kind, name, entries, keys in (("annotation", gt_name, annotations, ("video_id", "category_id")),
                                      ("result", results_name, results, ("video_id", "category_id", "score"))):
        for k, entry in enumerate(entries):
            what = f"{name}: {kind} {k}"
            if not isinstance(entry, dict):
                raise UserError(f"{what}: expected an object with {', '.join(keys)} and segmentations, got "
                                f"{str(entry)[:60]}")
            missing = [key for key in keys + ("segmentations",) if key not in entry]
            if missing:
                raise UserError(f"{what} has no {', '.join(repr(m) for m in missing)}")
            video = entry["video_id"]
            if video not in sizes:
                raise UserError(f"{what}: video_id {video!r} is not a video of the ground truth")
            if isinstance(entry["category_id"], bool) or not isinstance(entry["category_id"], int):
                raise UserError(f"{what}: 'category_id' must be a whole number, got {entry['category_id']!r}")
            if kind == "result" and (isinstance(entry["score"], bool) or not isinstance(entry["score"], (int, float))):
                raise UserError(f"{what}: 'score' must be a number, got {entry['score']!r}")
            what = f"{what} (video_id {video!r})"
            # without a 'length', the video's first entry gives the number of frames
            lengths.setdefault(video, _vis_frames(entry["segmentations"], what, sizes[video], lengths.get(video)))


def vis_average_precision(gt: dict, results: list, checked: bool = False) -> dict:
    """YouTube-VIS video AP (module docstring).

    ``gt``: a YouTube-VIS annotation dict (``videos`` with ``id``/``height``/``width``, ``categories``,
    ``annotations`` with ``video_id``, ``category_id``, ``segmentations`` per frame, optional ``iscrowd``).
    ``results``: the submission format, a list of ``{"video_id", "category_id", "score", "segmentations"}``.
    Returns ``{"AP", "AP50", "AP75", "AR1", "AR10"}`` (−1 where no ground truth makes one defined).
    Malformed input is a UserError (:func:`check_vis_inputs`; ``checked=True``: the caller has run it).
    """
    if not checked:
        check_vis_inputs(gt, results)
    mask_utils = _require("pycocotools.mask")
    coco_module = _require("pycocotools.coco")
    cocoeval_module = _require("pycocotools.cocoeval")
    sizes = {v["id"]: (int(v["height"]), int(v["width"])) for v in gt["videos"]}

    def dataset(entries, with_score):
        annotations = []
        for k, entry in enumerate(entries, 1):
            rles = _rles(entry["segmentations"], *sizes[entry["video_id"]], mask_utils)
            ann = {"id": k, "image_id": entry["video_id"], "category_id": entry["category_id"],
                   "iscrowd": int(entry.get("iscrowd", 0)), "area": _mean_area(rles, mask_utils),
                   "bbox": [0, 0, 0, 0], "rles": rles}
            if with_score:
                ann["score"] = float(entry["score"])
            annotations.append(ann)
        coco = coco_module.COCO()
        coco.dataset = {"images": [{"id": i} for i in sizes], "categories": list(gt["categories"]),
                        "annotations": annotations}
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco

    class VideoEval(cocoeval_module.COCOeval):
        # COCO's matching with the video IoU; 'bbox' mode keeps _prepare from decoding segmentations.
        def computeIoU(self, imgId, catId):
            gts = self._gts[imgId, catId]
            dts = sorted(self._dts[imgId, catId], key=lambda d: -d["score"])[:self.params.maxDets[-1]]
            if not gts or not dts:
                return []
            return np.array([[spatio_temporal_iou(d["rles"], g["rles"], mask_utils) for g in gts] for d in dts])

    evaluator = VideoEval(dataset(gt["annotations"], False), dataset(results, True), "bbox")
    evaluator.params.imgIds = sorted(sizes)
    evaluator.params.maxDets = [1, 10, 100]
    evaluator.params.areaRng = [[0, 1e10], [0, 128 ** 2], [128 ** 2, 256 ** 2], [256 ** 2, 1e10]]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    return {"AP": float(stats[0]), "AP50": float(stats[1]), "AP75": float(stats[2]),
            "AR1": float(stats[6]), "AR10": float(stats[7])}


def _rle_of(mask_utils, labels: np.ndarray, track: int) -> dict:
    rle = mask_utils.encode(np.asfortranarray((labels == track).astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    return rle


def _tracks(labels: np.ndarray) -> list[int]:
    return [int(i) for i in np.unique(labels) if i]


def _output_file(path, flag: str, suffix: str) -> Path:
    """``path`` checked as a results file to write: a ``suffix`` name, not a folder, its folder made."""
    path = Path(path)
    if path.suffix.lower() != suffix:
        raise UserError(f"{flag}: {path}: give a {suffix} file name")
    if path.is_dir():
        raise UserError(f"{flag}: {path} is a folder; give a {suffix} file name")
    # The file is written when the stream ends (one rename from a file beside it): a folder that takes no new
    # file is refused now, not after the whole run.
    writable_folder(path.parent, flag, f"a {suffix} file in a folder you can write")
    return path


def _write_output(path: Path, flag: str, text: str) -> None:
    """``text`` into ``path`` in one rename; a failure (a full disk, the folder gone) is a UserError naming
    ``flag``."""
    from vosrt.sdk.package import replace_file

    try:
        replace_file(path, lambda tmp: tmp.write_text(text))
    except OSError as err:
        raise UserError(f"{flag}: cannot write {path}: {err.strerror or err}") from None


class VisWriter:
    """A :func:`vosrt.sdk.streaming.stream` sink that collects one video's YouTube-VIS / OVIS submission
    entries (:meth:`results`): one per track, its ``segmentations`` one COCO RLE or ``None`` per finished
    frame in order. Score and category follow the published STEm-Seg YouTube-VIS output
    (stemseg/inference/output_utils/youtube_vis.py) where every frame's ``objects`` carry an InstanceSegmenter's
    evidence (``area``, ``log_prob_sum``): the score is the track's pixels over the video divided by the most
    any track has, the category the argmax of its summed category log-probabilities (which the logits' sums
    share); else the score is the mean of the per-frame scores (1.0 where a frame has none) and the category
    the most frequent one. ``categories`` maps the model's category index to the dataset's id. ``max_tracks``
    (the published 10 for YouTube-VIS; None: all): only the tracks that live longest (last frame minus first,
    ties to the older track) are written. ``frame_names``: the names of all the video's frames in order; each frame then takes the slot of
    its name, and a frame that never arrives (an unreadable image the source skipped) keeps a ``None``
    slot, so the list has one entry per frame of the video; a frame whose name is not among them (a video
    file longer than the dataset lists) takes a slot after theirs, counted in :attr:`unlisted`. With a
    ``path``, :meth:`close` writes them into that results JSON, replacing the entries an earlier run wrote
    for the same ``video_id`` and keeping the other videos' (one file for a dataset, written by one run per
    video), in one rename."""

    takes_objects = True

    def __init__(self, path, video_id: int, categories: dict | None = None, flag: str = "--vis",
                 frame_names: list | None = None, max_tracks: int | None = None):
        self._mask = _require("pycocotools.mask")
        if max_tracks is not None and (not is_whole(max_tracks) or max_tracks < 1):
            raise UserError(f"{flag}-max-tracks: expected a positive whole number, got {max_tracks!r}")
        self.max_tracks = max_tracks
        self._evidence = True   # every frame's objects carried area and log_prob_sum so far
        self.path = _output_file(path, flag, ".json") if path is not None else None
        self.video_id = int(video_id)
        self.categories = categories or {}
        self.flag = flag
        self._slots = {str(name): k for k, name in enumerate(frame_names)} if frame_names is not None else None
        self.frames = 0
        self.unlisted = 0   # frames whose name is not in frame_names
        # track: {"segs": {position: rle}, "scores": [...], "cats": [...], "area": int, "log_sum": array}
        self._tracks: dict[int, dict] = {}
        if self.path is not None:
            self._earlier()   # a file that is not a results list is refused now, not after the run

    def __call__(self, index: int, name: str, frame, labels: np.ndarray, objects: dict | None = None) -> None:
        if self._slots is None:
            position = self.frames
        elif str(name) in self._slots:
            position = self._slots[str(name)]
        else:   # after the named slots: a running count could land on one of them (after a skipped frame)
            position = len(self._slots) + self.unlisted
            self.unlisted += 1
        self.frames += 1
        for track in _tracks(labels):
            entry = self._tracks.setdefault(track, {"segs": {}, "scores": [], "cats": [], "area": 0, "log_sum": 0.0})
            entry["segs"][position] = _rle_of(self._mask, labels, track)
            info = (objects or {}).get(track, {})
            entry["scores"].append(float(info.get("score", 1.0)))
            entry["cats"].append(int(info.get("category", 1)))
            if "area" in info and "log_prob_sum" in info:
                entry["area"] += int(info["area"])
                entry["log_sum"] = entry["log_sum"] + np.asarray(info["log_prob_sum"], np.float64)
            else:
                self._evidence = False

    @property
    def slots(self) -> int:
        """Entries of each track's ``segmentations``: the frames named in ``frame_names`` and those received
        with another name, else those received."""
        return self.frames if self._slots is None else len(self._slots) + self.unlisted

    def results(self) -> list:
        tracks = sorted(self._tracks)
        if self.max_tracks is not None:
            def lifetime(track):
                positions = self._tracks[track]["segs"]
                return max(positions) - min(positions)
            tracks = sorted(sorted(tracks, key=lifetime, reverse=True)[:self.max_tracks])
        evidence = self._evidence and tracks
        most = max((self._tracks[t]["area"] for t in tracks), default=0) if evidence else 0
        out = []
        for track in tracks:
            entry = self._tracks[track]
            if evidence:
                category = int(np.argmax(entry["log_sum"])) + 1
                score = entry["area"] / most if most else 0.0
            else:
                cats = entry["cats"]
                category = max(sorted(set(cats)), key=cats.count)
                score = float(np.mean(entry["scores"]))
            out.append({"video_id": self.video_id, "category_id": self.categories.get(category, category),
                        "score": float(score), "segmentations": [entry["segs"].get(t) for t in range(self.slots)]})
        return out

    def _earlier(self) -> list:
        if not self.path.exists():
            return []
        import json

        try:
            earlier = json.loads(self.path.read_text())
        except (OSError, ValueError) as err:
            raise UserError(f"{self.flag}: {self.path} exists and is not a results JSON ({err}); give another "
                            "file name or remove it") from None
        if not isinstance(earlier, list) or not all(isinstance(e, dict) and "video_id" in e for e in earlier):
            raise UserError(f"{self.flag}: {self.path} exists and is not a list of results entries (each with a "
                            "video_id); give another file name or remove it")
        return earlier

    def close(self) -> None:
        """Write the entries into ``path`` (nothing without a path, or when no frame finished)."""
        if self.path is None or self.frames == 0:
            return
        import json

        kept = [e for e in self._earlier() if e["video_id"] != self.video_id]
        entries = kept + self.results()
        if self.max_tracks is not None and len(self._tracks) > self.max_tracks:
            print(f"note: {self.flag} {self.path}: video {self.video_id}: wrote the {self.max_tracks} tracks that live "
                  f"longest of {len(self._tracks)} (--vis-max-tracks 0 writes every one)", file=sys.stderr)
        if not entries:   # written all the same (vosrt eval scores it), but said: the official API cannot load it
            print(f"warning: {self.flag} {self.path}: no instance was found, so the results list is empty; the "
                  "official YouTube-VIS API (ytvos.py loadRes) fails on an empty list: add another video's results "
                  "before submitting", file=sys.stderr)
        _write_output(self.path, self.flag, json.dumps(entries))


def instances_to_vis_results(video_id: int, frames: list, categories: dict | None = None) -> list:
    """Submission entries for one video from a session's finished frames (``SegmentedFrame`` with track
    ``labels`` and ``objects``), as :class:`VisWriter` makes them."""
    writer = VisWriter(None, video_id, categories)
    for fr in frames:
        writer(fr.index, "", None, fr.labels, fr.objects)
    return writer.results()


# ------------------------------------------------------------------------------------ KITTI-MOTS

MOTS_FRAMES_PAST_TRUTH = 100_000   # predicted frames further past the truth's last are refused (a numbering error)


@dataclass(frozen=True)
class MotsFilter:
    """One KITTI-MOTS class's part of STEm-Seg's post-processing of its results (the published output generator
    runs stemseg/inference/output_utils/kitti_mots_postprocessing.py on them when it saves): a detection (a track
    on a frame) stays with at least ``min_area`` pixels filling more than ``min_fill`` of its box; then a track
    stays with time breaks (a gap between two of its frames) at most ``max_break_ratio`` of its detections and at
    least ``min_length`` detections."""

    min_area: int
    min_fill: float
    max_break_ratio: float
    min_length: int


# the published defaults, by class (1 car, 2 pedestrian); detections of any other class are left out
KITTI_MOTS_FILTERS = {1: MotsFilter(150, 0.35, 0.3, 3), 2: MotsFilter(250, 0.2, 0.5, 10)}


class MotsWriter:
    """A :func:`vosrt.sdk.streaming.stream` sink that writes one sequence's KITTI-MOTS txt file:
    ``frame track_id class_id height width rle`` per instance and finished frame. The frame number is the
    frame's name where that is a number (KITTI's ``000042.png``), else its stream index. The class is
    ``class_id`` (1 car, 2 pedestrian); where ``class_id`` is None, one class per track as the published
    STEm-Seg KITTI-MOTS output gives it (stemseg/inference/output_utils/kitti_mots.py): the category most of
    its pixels over the sequence vote for, where every frame's ``objects`` carry an InstanceSegmenter's
    ``votes`` (ties to the lower class); else each frame's ``objects`` category (1 without one), which could
    change within a track. Each frame's lines go to a hidden file beside ``path`` as the frame finishes (memory stays
    bounded on an endless source), which :meth:`close` renames onto ``path``: a stopped run leaves no half
    file under that name (a killed process leaves the hidden ``.NAME.partial-*.txt``).

    ``filters``: class -> :class:`MotsFilter`, applied to the whole sequence at :meth:`close`
    (:data:`KITTI_MOTS_FILTERS` is STEm-Seg's published post-processing); None writes every detection."""

    takes_objects = True

    def __init__(self, path, class_id: int | None = None, flag: str = "--mots", filters: dict | None = None):
        self._mask = _require("pycocotools.mask")
        self.path = _output_file(path, flag, ".txt")
        self.flag = flag
        self.class_id = class_id
        self.filters = filters
        self.dropped = (0, 0)   # (detections, of them) the filters left out, once closed
        self.frames = 0
        self._file = None       # the hidden file the lines go to, opened with the first frame
        self._partial: Path | None = None
        self._cleanup = None    # removes that file if the writer is dropped without close()
        self._done = False
        self._odd_class = False   # a class other than 1 and 2 was said
        self._votes: dict | None = {} if class_id is None else None   # track: votes per category (1, 2, ...)

    def __call__(self, index: int, name: str, frame, labels: np.ndarray, objects: dict | None = None) -> None:
        number = int(name) if str(name).isdigit() else index
        height, width = labels.shape
        lines = []
        for track in _tracks(labels):
            info = (objects or {}).get(track, {})
            cls = self.class_id if self.class_id is not None else info.get("category", 1)
            if self._votes is not None:
                if "votes" in info:
                    self._votes[track] = self._votes.get(track, 0) + np.asarray(info["votes"], np.int64)
                else:
                    self._votes = None   # a frame without votes: the per-frame categories stand
            if self._votes is None and cls not in (1, 2) and not self._odd_class:
                self._odd_class = True
                self._warn_odd_classes(f"category {cls} is")
            counts = _rle_of(self._mask, labels, track)["counts"]
            lines.append(f"{number} {track} {cls} {height} {width} {counts}\n")
        try:
            if self._file is None:
                self._open()
            self._file.writelines(lines)
        except OSError as err:
            self._discard()
            raise UserError(f"{self.flag}: cannot write {self.path}: {err.strerror or err}") from None
        self.frames += 1

    def _open(self) -> None:
        import os
        import weakref

        from vosrt.sdk.package import partial_file

        handle, self._partial = partial_file(self.path)
        self._file = os.fdopen(handle, "w")
        self._cleanup = weakref.finalize(self, _remove_partial, self._file, self._partial)

    def _discard(self) -> None:
        if self._cleanup is not None:
            self._cleanup()   # closes and removes the hidden file, once
        self._file = None
        self._done = True

    def close(self) -> None:
        """Write the file (also when no instance was found: an empty sequence is a result). Once; after a
        failed write nothing is written. An interrupt (Ctrl-C) while it writes leaves the hidden file as it was,
        for another ``close()`` to finish."""
        if self._done:
            return
        if self._file is None:   # no frame finished
            self._done = True
            _write_output(self.path, self.flag, "")
            return
        import os

        from vosrt.sdk.package import new_file_mode

        try:
            self._file.close()
            classes = self._voted_classes() if self._votes else None
            if classes is not None or self.filters is not None:
                self._rewrite(classes)
            os.chmod(self._partial, new_file_mode(self.path))
            os.replace(self._partial, self.path)
        except OSError as err:
            self._done = True
            self._cleanup()
            raise UserError(f"{self.flag}: cannot write {self.path}: {err.strerror or err}") from None
        self._done = True
        self._cleanup.detach()
        if self.dropped[0]:
            print(f"note: {self.flag} {self.path}: the KITTI-MOTS post-processing left out {self.dropped[0]} of "
                  f"{self.dropped[1]} detections (small, sparse in their box, of no KITTI-MOTS class, or of short or broken "
                  "tracks)",
                  file=sys.stderr)

    def _voted_classes(self) -> dict:
        """Each track's class by its pixels' votes; says where a class other than 1 and 2 won."""
        classes = {track: int(np.argmax(votes)) + 1 if np.any(votes) else 1 for track, votes in self._votes.items()}
        odd = sorted({c for c in classes.values() if c not in (1, 2)})
        if odd:
            self._warn_odd_classes(f"categories {odd} are")
        return classes

    def _kept(self, cls: int, height: str, width: str, counts: str) -> bool:
        """Whether a detection passes its class's filter (area, and area over its box's)."""
        rule = self.filters.get(cls)
        if rule is None:
            return False
        rle = {"size": [int(height), int(width)], "counts": counts.encode()}
        area = int(self._mask.area(rle))
        _, _, w, h = self._mask.toBbox(rle)
        return area >= rule.min_area and w * h > 0 and area / (w * h) > rule.min_fill

    def _rewrite(self, classes: dict | None) -> None:
        """Rewrite the hidden file: the class column with each track's voted class (``classes``), and without the
        detections and tracks :attr:`filters` leave out. Read and written a line at a time (the file may hold an
        endless stream's lines); the filters read it twice, the first time for each track's detections and breaks."""
        import os

        from vosrt.sdk.package import partial_file

        def lines():
            with open(self._partial) as file:
                for line in file:
                    number, track, cls, height, width, counts = line.split()
                    cls = classes[int(track)] if classes else int(cls)
                    yield int(number), int(track), cls, (height, width, counts)

        keep_track = None
        if self.filters is not None:
            seen: dict[int, list] = {}   # track: [class, detections kept, time breaks, last frame]
            for number, track, cls, rle in lines():
                if self._kept(cls, *rle):
                    entry = seen.setdefault(track, [cls, 0, 0, number])
                    entry[2] += number - entry[3] > 1
                    entry[1], entry[3] = entry[1] + 1, number
            keep_track = {track for track, (cls, length, breaks, _) in seen.items()
                          if breaks / length <= self.filters[cls].max_break_ratio
                          and length >= self.filters[cls].min_length}
        handle, rewritten = partial_file(self.path)
        written = total = 0
        try:
            with os.fdopen(handle, "w") as out:
                for number, track, cls, rle in lines():
                    total += 1
                    if keep_track is None or (track in keep_track and self._kept(cls, *rle)):
                        written += 1
                        out.write(f"{number} {track} {cls} {' '.join(rle)}\n")
            os.replace(rewritten, self._partial)
        except BaseException:   # the hidden file stays as it was (Ctrl-C: a later close() rewrites it again)
            Path(rewritten).unlink(missing_ok=True)
            raise
        self.dropped = (total - written, total)

    def _warn_odd_classes(self, said: str) -> None:
        # the official mots_tools loader stops at any class but 1, 2 and 10; trackeval drops such lines
        fate = ("the post-processing leaves them out" if self.filters is not None else
                "mots_tools refuses such lines and trackeval leaves them out")
        print(f"warning: {self.flag} {self.path}: the model's {said} no KITTI-MOTS class (1 car, 2 pedestrian): "
              f"{fate}; give --mots-class 1 or 2 for every track", file=sys.stderr)


def _remove_partial(file, partial: Path) -> None:
    try:
        file.close()
        partial.unlink(missing_ok=True)
    except OSError:
        pass


def write_kitti_mots(path: str | Path, frames: list, class_id: int = 1) -> None:
    """Write label maps (one per frame, track ids; or SegmentedFrames) in the KITTI-MOTS txt format, as
    :class:`MotsWriter` does, each frame numbered by its ``index`` (its position for bare label maps); a
    frame's ``objects`` category overrides ``class_id``."""
    writer = MotsWriter(path, None)
    for position, fr in enumerate(frames):
        labels = fr.labels if hasattr(fr, "labels") else fr
        given = getattr(fr, "objects", None) or {}
        objects = {track: {"category": class_id, **given.get(track, {})} for track in _tracks(labels)}
        writer(getattr(fr, "index", position), "", None, labels, objects)
    writer.close()


def _read_mots(path: Path, flag: str) -> list[list[str]]:
    """The non-blank lines of a KITTI-MOTS txt file, split into their six fields; UserError naming the file
    and line where one is not ``frame track_id class_id height width rle``."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 6 or not all(f.isdigit() for f in fields[:5]) or int(fields[3]) * int(fields[4]) == 0:
            raise UserError(f"{flag} {path}, line {number}: expected 'frame track_id class_id height width rle' "
                            f"(KITTI-MOTS: five whole numbers and a COCO RLE string), got '{line.strip()[:80]}'")
        problem = rle_problem(fields[5], int(fields[3]), int(fields[4]))
        if problem:
            raise UserError(f"{flag} {path}, line {number}: {problem}")
        rows.append(fields)
    return rows


MOTS_CLASS_IDS = {"1": "car", "2": "pedestrian"}   # the classes KITTI-MOTS scores (10, ignore, is for ground truth)


def _check_mots_classes(pred_folder: Path, predicted: dict) -> None:
    """trackeval scores only predictions of class 1 (car) and 2 (pedestrian) and drops the rest without a word:
    a warning on stderr names each file with other class ids, and predictions with none of a scored class are
    refused (every score would be 0, e.g. a tracker numbering classes from 0)."""
    others, scored = {}, 0
    for seq, rows in predicted.items():
        ids = [row[2].lstrip("0") or "0" for row in rows]
        scored += sum(i in MOTS_CLASS_IDS for i in ids)
        unscored = sorted({i for i in ids if i not in MOTS_CLASS_IDS}, key=int)
        if unscored:
            others[seq] = (unscored, sum(i not in MOTS_CLASS_IDS for i in ids))
    if not others:
        return
    where = "; ".join(f"{seq}.txt: class id(s) {', '.join(ids)} in {rows} row(s)" for seq, (ids, rows) in others.items())
    fix = ("write cars as class id 1 and pedestrians as 2 (a tracker numbering classes from 0 adds 1 to each)")
    if not scored:
        raise UserError(f"--pred {pred_folder}: no prediction has a class KITTI-MOTS scores (1 car, 2 pedestrian), "
                        f"so every score would be 0 ({where}); {fix}")
    for seq, (ids, rows) in others.items():
        print(f"warning: --pred {pred_folder / f'{seq}.txt'}: {rows} row(s) of class id(s) {', '.join(ids)} are not "
              f"scored (KITTI-MOTS scores class 1 car and 2 pedestrian); {fix}", file=sys.stderr, flush=True)


def mots_metrics(gt_folder: str | Path, pred_folder: str | Path, classes=("car", "pedestrian")) -> dict:
    """KITTI-MOTS metrics by trackeval: ``gt_folder`` holds one ``<sequence>.txt`` per sequence (or a
    ``label_02`` folder of them), ``pred_folder`` the tracker's ``<sequence>.txt`` files. Returns
    ``{class: {"HOTA", "DetA", "AssA", "sMOTSA", "MOTSA", "IDF1"}}`` over all sequences (class-combined
    results are not part of the KITTI-MOTS protocol); a class neither annotated nor predicted is left out.
    Predicted rows of class ids other than 1 and 2 are not scored: a warning on stderr names their files and
    classes, and predictions with no row of class 1 or 2 are refused."""
    trackeval = _require("trackeval")
    gt_folder, pred_folder = Path(gt_folder), Path(pred_folder)
    for flag, folder in (("--gt", gt_folder), ("--pred", pred_folder)):
        if folder.is_file():
            raise UserError(f"{flag} {folder} is a file: give the folder of the <sequence>.txt files ({folder.parent}),"
                            " which is scored sequence by sequence")
    labels = gt_folder / "label_02" if (gt_folder / "label_02").is_dir() else gt_folder
    seqs = sorted(p.stem for p in labels.glob("*.txt"))
    if not seqs:
        raise UserError(f"--gt {gt_folder}: no KITTI-MOTS <sequence>.txt files (the ground truth in the txt format: "
                        "KITTI-MOTS's instances_txt/ folder, or trackeval's label_02/; the instances/ PNGs are not read)")
    missing = [s for s in seqs if not (pred_folder / f"{s}.txt").is_file()]
    if missing:
        names = ", ".join(f"{s}.txt" for s in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise UserError(f"--pred {pred_folder}: no {names} ({len(missing)} of the {len(seqs)} sequences of --gt "
                        f"{labels}); write each with `vosrt run PKG --source <the sequence's frames> --mots "
                        f"{shlex.quote(str(pred_folder / (missing[0] + '.txt')))}`, or give --gt a folder holding only the sequences "
                        "to score (e.g. the validation split's)")
    predictions = {s: _read_mots(pred_folder / f"{s}.txt", "--pred") for s in seqs}
    _check_mots_classes(pred_folder, predictions)
    lengths = {}
    with tempfile.TemporaryDirectory() as scratch:
        tracker = Path(scratch) / "trackers" / "vosrt" / "data"
        tracker.mkdir(parents=True)
        truths = Path(scratch) / "gt"
        truths.mkdir()
        for s in seqs:
            truth = _read_mots(labels / f"{s}.txt", "--gt")
            predicted = predictions[s]
            sizes = {(row[3], row[4]) for row in truth}
            odd = next((row for row in predicted if sizes and (row[3], row[4]) not in sizes), None)
            if odd is not None:
                height, width = next(iter(sizes))
                raise UserError(f"--pred {pred_folder / f'{s}.txt'}: frame {odd[0]} has a mask of {odd[4]}x{odd[3]} "
                                f"pixels, but the ground truth's images are {width}x{height} (width x height); "
                                "encode masks at the images' own resolution")
            last = max((int(row[0]) for row in truth), default=-1)
            predicted_frames = {int(row[0]) for row in predicted}
            beyond = sorted(t for t in predicted_frames if t > last) if truth else []
            if beyond and beyond[-1] > last + MOTS_FRAMES_PAST_TRUTH:
                # trackeval keeps a list per frame up to the last: a 76-byte file naming frame 300000000 took 7 GB
                raise UserError(f"--pred {pred_folder / f'{s}.txt'}: frame {beyond[-1]} is more than "
                                f"{MOTS_FRAMES_PAST_TRUTH} frames past the ground truth's last annotated frame {last}; "
                                "check the file's frame numbers")
            lengths[s] = 1 + max([last, *predicted_frames])
            if beyond:   # scored as false positives without a word (the official tools take lengths from a seqmap)
                print(f"warning: --pred {pred_folder / f'{s}.txt'}: {len(beyond)} predicted frame(s) after the ground "
                      f"truth's last annotated frame {last} (up to {beyond[-1]}); they are scored as false "
                      "positives. Where the frames are numbered off by one (KITTI-MOTS counts from 0, MOTSChallenge "
                      "from 1), every frame is scored against the wrong truth", file=sys.stderr)
            # both files as _read_mots read them (blank lines left out, fields one space apart): trackeval reads
            # neither a blank line nor a tab, and refused a ground truth vosrt had taken
            (tracker / f"{s}.txt").write_text("".join(" ".join(row) + "\n" for row in predicted))
            (truths / f"{s}.txt").write_text("".join(" ".join(row) + "\n" for row in truth))
        dataset = trackeval.datasets.KittiMOTS({
            "GT_FOLDER": str(truths), "GT_LOC_FORMAT": "{gt_folder}/{seq}.txt",
            "TRACKERS_FOLDER": str(Path(scratch) / "trackers"), "OUTPUT_FOLDER": str(Path(scratch) / "out"),
            "TRACKERS_TO_EVAL": ["vosrt"], "CLASSES_TO_EVAL": list(classes), "PRINT_CONFIG": False,
            "SEQ_INFO": lengths})
        evaluator = trackeval.Evaluator({"USE_PARALLEL": False, "PRINT_RESULTS": False, "PRINT_CONFIG": False,
                                         "TIME_PROGRESS": False, "OUTPUT_SUMMARY": False, "OUTPUT_DETAILED": False,
                                         "PLOT_CURVES": False, "OUTPUT_EMPTY_CLASSES": False,
                                         "DISPLAY_LESS_PROGRESS": True, "BREAK_ON_ERROR": True,
                                         "LOG_ON_ERROR": None})
        metrics = [trackeval.metrics.HOTA(), trackeval.metrics.CLEAR({"PRINT_CONFIG": False}),
                   trackeval.metrics.Identity({"PRINT_CONFIG": False})]
        try:   # quiet: on an error trackeval prints its traceback to stderr before raising
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                results, messages = evaluator.evaluate([dataset], metrics)
        except trackeval.utils.TrackEvalException as err:    # e.g. overlapping masks in one frame
            raise UserError(f"--gt {gt_folder}, --pred {pred_folder}: trackeval cannot score them: "
                            f"{str(err).replace('Tracker: vosrt ', '')}") from None
    per_class = results["KittiMOTS"]["vosrt"]["COMBINED_SEQ"]
    out = {}
    for cls in classes:
        r = per_class[cls]
        clear = r["CLEAR"]
        if clear["CLR_TP"] + clear["CLR_FN"] + clear["CLR_FP"] == 0:
            continue   # neither annotated nor predicted anywhere: nothing to score (not a score of 0)
        out[cls] = {"HOTA": float(np.mean(r["HOTA"]["HOTA"])), "DetA": float(np.mean(r["HOTA"]["DetA"])),
                    "AssA": float(np.mean(r["HOTA"]["AssA"])), "sMOTSA": float(r["CLEAR"]["sMOTA"]),
                    "MOTSA": float(r["CLEAR"]["MOTA"]), "IDF1": float(r["Identity"]["IDF1"])}
    return out
