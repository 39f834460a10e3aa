"""DAVIS metrics: region similarity J, boundary accuracy F, and J&F, per object and per sequence.

As the DAVIS 2017 protocol defines them (davis2017-evaluation):

* J is the IoU of an object's predicted and true masks; two empty masks give J = 1. A ground-truth pixel
  labelled 255 beside object ids (void) counts as background, as davis2017-evaluation reads
  annotations for the semi-supervised task (it sets 255 to 0 before scoring); :func:`region_similarity` and
  :func:`boundary_measure` leave void pixels out when given a mask of them, as the unsupervised task does
  (:func:`vosrt.sdk.instance_metrics.evaluate_unsupervised_sequence`). The exception is a sequence annotated with
  DAVIS 2016's 0/255 foreground masks (no other id in any frame, :func:`foreground_truth`): there 255 is
  the one object, scored as object 1 (``vosrt eval``, :func:`score_sequence`).
* F compares 1-pixel boundary maps. A mask's boundary is every pixel whose value differs from its right,
  bottom or bottom-right neighbour (pixels past the image count as background, except that the last row
  compares only to the right and the last column only downwards, the bottom-right pixel never). A
  boundary pixel is matched when the other boundary map, dilated by a disk of radius
  ``ceil(0.008 * image diagonal)`` pixels, covers it. Precision = matched predicted / predicted boundary
  pixels, recall = matched true / true boundary pixels, F = 2PR / (P + R) (0 when P + R = 0). Empty
  boundaries: none predicted but some true gives P = 1, R = 0; some predicted but none true P = 0,
  R = 1; both empty F = 1.
* A sequence's objects are ids 1..K, K the largest id of its first ground-truth frame; a predicted id
  outside 1..K is an error (the official evaluation stops on one too). In the semi-supervised protocol
  the first frame (given) and the last frame are not scored. J and F of an
  object are means over its scored frames; a dataset's J and F are means over all objects of all
  sequences, and J&F is their mean.
* Recall and decay (of J and of F; :func:`recall_and_decay`), per object over its scored frames: recall is
  the fraction of frames scoring above 0.5; decay is the mean of the first quarter of the frames less the
  mean of the last quarter, the quarters cut at ``round(linspace(1, n, 5)) - 1`` with each edge frame in both
  neighbouring bins. A dataset's are means over objects, as for J and F. (davis2017-evaluation stores the cuts
  as 8-bit numbers, which wrap past frame 255; here they do not, so sequences of more than 256 scored frames,
  none in DAVIS, get the decay these definitions give rather than the wrapped one.)
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

VOID = 255
BOUNDARY_TOLERANCE = 0.008  # fraction of the image diagonal


def region_similarity(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> float:
    """J: IoU of two binary masks ``[H, W]``, ignoring ``void`` pixels; 1.0 when both are empty."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    if void is not None:
        keep = ~void.astype(bool)
        pred, gt = pred & keep, gt & keep
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return 1.0
    return np.count_nonzero(pred & gt) / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """1-pixel boundary of a binary mask ``[H, W]`` (see the module docstring), bool."""
    seg = mask.astype(bool)
    right = np.zeros_like(seg)
    down = np.zeros_like(seg)
    diagonal = np.zeros_like(seg)
    right[:, :-1] = seg[:, 1:]
    down[:-1, :] = seg[1:, :]
    diagonal[:-1, :-1] = seg[1:, 1:]
    edge = (seg ^ right) | (seg ^ down) | (seg ^ diagonal)
    edge[-1, :] = seg[-1, :] ^ right[-1, :]
    edge[:, -1] = seg[:, -1] ^ down[:, -1]
    edge[-1, -1] = False
    return edge


def boundary_tolerance(shape: tuple[int, int], tolerance: float = BOUNDARY_TOLERANCE) -> int:
    """Matching radius in pixels: ``tolerance`` itself when >= 1, else ceil(tolerance * diagonal)."""
    if tolerance >= 1:
        return int(tolerance)
    return int(math.ceil(tolerance * math.hypot(shape[0], shape[1])))


def _disk(radius: int) -> np.ndarray:
    # All offsets (dy, dx) with dy² + dx² <= r², as a uint8 structuring element.
    r = int(radius)
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    return (y * y + x * x <= r * r).astype(np.uint8)


def boundary_measure(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None,
                     tolerance: float = BOUNDARY_TOLERANCE) -> float:
    """F: boundary F-measure of two binary masks ``[H, W]`` (see the module docstring)."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    if void is not None:
        keep = ~void.astype(bool)
        pred, gt = pred & keep, gt & keep
    radius = boundary_tolerance(pred.shape, tolerance)
    pred_edge, gt_edge = boundary_map(pred), boundary_map(gt)
    disk = _disk(radius)
    pred_near = cv2.dilate(pred_edge.astype(np.uint8), disk).astype(bool)
    gt_near = cv2.dilate(gt_edge.astype(np.uint8), disk).astype(bool)
    n_pred, n_gt = np.count_nonzero(pred_edge), np.count_nonzero(gt_edge)
    if n_pred == 0 and n_gt == 0:
        return 1.0
    if n_pred == 0:
        precision, recall = 1.0, 0.0
    elif n_gt == 0:
        precision, recall = 0.0, 1.0
    else:
        precision = np.count_nonzero(pred_edge & gt_near) / n_pred
        recall = np.count_nonzero(gt_edge & pred_near) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def recall_and_decay(values: Sequence[float]) -> tuple[float, float]:
    """(recall, decay) of one object's per-frame J or F as the DAVIS evaluation reports them (module
    docstring); NaN without frames."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    recall = float(np.mean(values > 0.5))
    edges = (np.round(np.linspace(1, values.size, 5) + 1e-10) - 1).astype(np.int64)   # +1e-10: .5 rounds up
    first, last = values[edges[0]:edges[1] + 1], values[edges[3]:edges[4] + 1]
    return recall, float(first.mean() - last.mean())


@dataclass
class ObjectScore:
    """Per-frame J and F of one object of one sequence, and their means."""

    sequence: str
    object_id: int
    j: list[float] = field(default_factory=list)
    f: list[float] = field(default_factory=list)

    @property
    def j_mean(self) -> float:
        return float(np.mean(self.j)) if self.j else float("nan")

    @property
    def f_mean(self) -> float:
        return float(np.mean(self.f)) if self.f else float("nan")

    @property
    def jf(self) -> float:
        return (self.j_mean + self.f_mean) / 2

    @property
    def j_recall_decay(self) -> tuple[float, float]:
        return recall_and_decay(self.j)

    @property
    def f_recall_decay(self) -> tuple[float, float]:
        return recall_and_decay(self.f)


def evaluate_sequence(preds: list[np.ndarray], gts: list[np.ndarray], name: str = "sequence",
                      skip_first_last: bool = True, tolerance: float = BOUNDARY_TOLERANCE,
                      num_objects: int | None = None) -> list[ObjectScore]:
    """Score one sequence: ``preds`` and ``gts`` are lists of ``[H, W]`` label maps (same length and sizes).

    Objects are ids 1..K with K the largest id in the first ground-truth frame (or ``num_objects``: the foreground
    protocol's one object, whichever frame shows it first). ``skip_first_last`` (the DAVIS semi-supervised protocol)
    leaves out the first and last frames when there are more than two.
    """
    if len(preds) != len(gts):
        raise ValueError(f"{name}: {len(preds)} predicted frames but {len(gts)} ground-truth frames")
    if not gts:
        return []
    if num_objects is None:
        num_objects = first_frame_objects(gts[0])
    if num_objects == 0:
        return []     # nothing to score (the official evaluation leaves such a sequence out too)
    frames = range(len(gts))
    if skip_first_last and len(gts) > 2:
        frames = range(1, len(gts) - 1)
    scores = [ObjectScore(name, obj) for obj in range(1, num_objects + 1)]
    for t in frames:
        pred, gt = preds[t], gts[t]
        if pred.shape != gt.shape:
            raise ValueError(f"{name} frame {t}: prediction {pred.shape} and ground truth {gt.shape} differ in size")
        stray = [int(i) for i in np.unique(pred) if not 0 <= i <= num_objects]
        if stray:
            hint = (" (a binary mask saved as 0/255? save object ids: 0 background, 1 the object)"
                    if VOID in stray else "")
            raise UnknownObjectError(f"{name} frame {t}: the prediction has object id(s) "
                                     f"{', '.join(map(str, stray[:5]))}, but the ground truth has objects "
                                     f"1..{num_objects}{hint}")
        for score in scores:
            score.j.append(region_similarity(pred == score.object_id, gt == score.object_id))
            score.f.append(boundary_measure(pred == score.object_id, gt == score.object_id, None, tolerance))
    return scores


class UnknownObjectError(ValueError):
    """A prediction names an object the ground truth does not have."""


def first_frame_objects(first: np.ndarray) -> int:
    """K of a sequence whose objects are 1..K: the largest id of its first ground-truth frame, void (255)
    read as background."""
    return int(np.max(np.where(first == VOID, 0, first), initial=0))


def foreground_truth(gts: Iterable[np.ndarray]) -> bool:
    """True for a sequence annotated with DAVIS 2016's 0/255 foreground masks: no id but 0 and 255 in any
    ground-truth frame, and 255 somewhere. Such a sequence has one object, 255 (beside other ids 255 is
    void, as above); the training samplers read it the same way (:mod:`vosrt.training.data.vos`)."""
    seen = False
    for gt in gts:
        ids = set(np.unique(gt).tolist())
        if not ids <= {0, VOID}:
            return False
        seen = seen or VOID in ids
    return seen


def one_object(labels: np.ndarray) -> np.ndarray:
    """``labels`` with 255 read as object 1 (a 0/255 foreground mask as the label map of one object)."""
    return np.where(labels == VOID, 1, labels).astype(labels.dtype)


def summarize(scores: list[ObjectScore], recall_decay: bool = False) -> dict[str, float]:
    """Dataset means over all objects: ``{"J": .., "F": .., "J&F": ..}``; with ``recall_decay`` also
    ``"J-Recall"``, ``"J-Decay"``, ``"F-Recall"``, ``"F-Decay"`` (means over objects)."""
    if not scores:
        out = {"J": float("nan"), "F": float("nan"), "J&F": float("nan")}
        return {**out, **dict.fromkeys(RECALL_DECAY, float("nan"))} if recall_decay else out
    j = float(np.mean([s.j_mean for s in scores]))
    f = float(np.mean([s.f_mean for s in scores]))
    out = {"J": j, "F": f, "J&F": (j + f) / 2}
    if recall_decay:
        per_object = np.array([s.j_recall_decay + s.f_recall_decay for s in scores])   # [objects, 4]
        out.update(zip(RECALL_DECAY, (float(v) for v in per_object.mean(axis=0))))
    return out


RECALL_DECAY = ("J-Recall", "J-Decay", "F-Recall", "F-Decay")


def evaluate_by_appearance(preds: list[np.ndarray], gts: list[np.ndarray | None], name: str = "sequence",
                           tolerance: float = BOUNDARY_TOLERANCE) -> list[ObjectScore]:
    """Score one sequence whose objects may enter after the first frame, as a tracker given each object on
    the first frame that annotates it (YouTube-VOS): the objects are every id annotated on any frame (255
    void), and each is scored on the annotated frames (``gts[t]`` not None) after the one it is given on. An
    object annotated on no later frame has nothing to score and is left out."""
    if len(preds) != len(gts):
        raise ValueError(f"{name}: {len(preds)} predicted frames but {len(gts)} ground-truth frames")
    first: dict[int, int] = {}
    for t, gt in enumerate(gts):
        for i in (np.unique(gt).tolist() if gt is not None else ()):
            if i and i != VOID:
                first.setdefault(int(i), t)
    scores = {obj: ObjectScore(name, obj) for obj in sorted(first)}
    for t, (pred, gt) in enumerate(zip(preds, gts)):
        if gt is None:
            continue
        if pred.shape != gt.shape:
            raise ValueError(f"{name} frame {t}: prediction {pred.shape} and ground truth {gt.shape} differ in size")
        stray = [int(i) for i in np.unique(pred) if i and int(i) not in first]
        if stray:
            raise UnknownObjectError(f"{name} frame {t}: the prediction has object id(s) "
                                     f"{', '.join(map(str, stray[:5]))}, which the ground truth never annotates")
        for obj, score in scores.items():
            if t > first[obj]:
                score.j.append(region_similarity(pred == obj, gt == obj))
                score.f.append(boundary_measure(pred == obj, gt == obj, None, tolerance))
    return [score for score in scores.values() if score.j]


class PackedFrames(Sequence):
    """A video's label maps (or None for a frame without one), appended in frame order and kept
    zlib-compressed; item ``t`` is decompressed when it is read. :func:`score_sequence` reads such a sequence
    a frame at a time, so a video's predictions and annotations scored this way take a few percent of their
    size instead of growing with the video's length (training validation)."""

    def __init__(self):
        self._items: list[tuple | None] = []

    def append(self, labels: np.ndarray | None) -> None:
        if labels is None:
            self._items.append(None)
        else:
            labels = np.ascontiguousarray(labels)
            self._items.append((zlib.compress(labels.tobytes(), 1), labels.shape, labels.dtype))

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, t):
        if isinstance(t, slice):
            return [self[i] for i in range(len(self))[t]]
        item = self._items[t]
        if item is None:
            return None
        data, shape, dtype = item
        return np.frombuffer(zlib.decompress(data), dtype).reshape(shape)


class _Frames(Sequence):
    """Items ``indices`` of ``base`` (all by default) through ``convert`` (None stays None), computed when
    read: :func:`score_sequence`'s per-frame conversions hold no frame but the one being scored."""

    def __init__(self, base: Sequence, convert=None, indices: Sequence[int] | None = None):
        self.base, self.convert = base, convert
        self.indices = range(len(base)) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, t):
        if isinstance(t, slice):
            return [self[i] for i in range(len(self))[t]]
        item = self.base[self.indices[t]]
        return item if item is None or self.convert is None else self.convert(item)


def _foreground(labels: np.ndarray) -> np.ndarray:
    return (labels > 0).astype(np.uint8)


def _foreground_without_void(labels: np.ndarray) -> np.ndarray:
    return ((labels > 0) & (labels != VOID)).astype(np.uint8)


def score_sequence(family: str, predicted: list[np.ndarray], truth: list[np.ndarray | None], name: str = "sequence"
                   ) -> list[ObjectScore]:
    """Scores of one clip by the protocol of ``family``'s task: per object for families given masks
    (DAVIS semi-supervised: the first and last frames skipped; where an object enters after the first frame
    or some frames are not annotated, :func:`evaluate_by_appearance`); for families whose sessions emit track
    ids (a label dtype wider than uint8: instance segmentation) the DAVIS unsupervised instance protocol
    (:func:`vosrt.sdk.instance_metrics.evaluate_unsupervised_sequence`, every frame scored); the foreground for the
    others (DAVIS 2016's protocol, which 3DC-Seg reports: the first and last annotated frames skipped, as DAVIS
    2016's evaluation does for every method and ``vosrt eval`` by default; 255 beside objects is background).
    ``truth[t]`` None: frame t is not annotated and not scored. A clip
    whose truth is a 0/255 foreground mask (DAVIS 2016, :func:`foreground_truth`) has 255 as its one object,
    scored as object 1 (a prediction's 255 read as 1). Used by ``vosrt demo`` and training validation alike."""
    from vosrt.sdk import families

    row = families.get(family)
    instances = not row.takes_mask and np.dtype(row.session_class().label_dtype).itemsize > 1
    # Frames are read one at a time (lists, or a PackedFrames that decompresses each when it is read): the
    # conversions below are lazy, so no step holds the whole video.
    kept = [t for t, labels in enumerate(truth) if labels is not None]
    only_void = foreground_truth(truth[t] for t in kept)   # DAVIS 2016's 0/255: 255 is the object, not void
    binary = (row.takes_mask or instances) and only_void
    if binary:   # DAVIS 2016's 0/255 masks: 255 is the one object (given as id 255 to families that take masks)
        truth = _Frames(truth, one_object)
        predicted = _Frames(predicted, one_object) if row.takes_mask else predicted
    annotated = _Frames(truth, indices=kept)
    if row.takes_mask:
        present = {int(i) for t in annotated for i in np.unique(t) if i and i != VOID}
        if len(annotated) < len(truth) or not present <= set(np.unique(truth[0]).tolist()):
            return evaluate_by_appearance(predicted, truth, name=name)
        return evaluate_sequence(predicted, truth, name=name)
    if len(predicted) != len(truth):
        raise ValueError(f"{name}: {len(predicted)} predicted frames but {len(truth)} ground-truth frames")
    predicted = _Frames(predicted, indices=kept)
    if instances:
        from vosrt.sdk.instance_metrics import evaluate_unsupervised_sequence
        return evaluate_unsupervised_sequence(predicted, annotated, name=name)
    # the foreground of the truth: beside objects 255 is void, background as the 3DC-Seg sampler trains it
    # (training.data.clips); in a 0/255 clip it is the object
    truth_foreground = _foreground if only_void else _foreground_without_void
    # one object, the foreground, wherever it first shows: a clip whose first annotated frame had none was left out of
    # the score without a word (DAVIS 2016's evaluation scores every frame between the first and the last)
    truth_frames = _Frames(annotated, truth_foreground)
    shown = int(any(frame.any() for frame in truth_frames))
    return evaluate_sequence(_Frames(predicted, _foreground), truth_frames, name=name, num_objects=shown)
