"""Instances from STEm-Seg embeddings, and tracks across clips: host code, numpy only.

**Clustering** (:func:`cluster`), the STEm-Seg inference rule. Only foreground pixels of the clip take
part (all frames at once, so an instance is consistent over the clip). Repeatedly:

1. the seed is the unassigned pixel with the highest seediness (ties: the first in (t, y, x) order);
   if its seediness is below ``min_seediness``, or ``max_instances`` instances exist, stop;
2. the seed's embedding ``c`` and bandwidth ``b`` (one per dimension: 1 / variance) define a Gaussian
   around ``c``; an unassigned pixel with embedding ``e`` has distance ``d = sqrt(Σ b·(e − c)²)`` and
   probability ``p = exp(−d / 2)`` (the published inference's form, looser than the training loss's
   ``exp(−d² / 2)``);
3. unassigned pixels with ``p > primary_threshold`` (0.5) form the instance (the seed always does).

Then every pixel still unassigned joins the instance it is most probable under if that probability
exceeds ``secondary_threshold`` (0.3); the rest stay background. The result depends only on the
input: no randomness, and ties resolve by pixel order.

**Linking** (:class:`TrackLinker`): instances of consecutive clips are matched by mask IoU over the
frames the two clips share (Hungarian matching, :func:`hungarian`, maximising the total IoU); a match
needs IoU ≥ ``link_iou``. A matched instance continues the earlier instance's track; every other
instance starts a new track with a fresh id. Ids count up from 1 and are never reused.

Against the public code (sabarim/STEm-Seg stemseg/inference/clusterers.py SequentialClustering, online_chainer.py,
main.py): seeds, ``exp(−d / 2)``, the thresholds 0.5 / 0.3, min seediness 0.8 and 20 instances per clip are its
defaults (its KITTI-MOTS config raises min seediness to 0.95). Differences:

- secondary assignment: the public code takes ``label_distances.max(dim=1)`` (named ``min_distance``), i.e. the
  *farthest* cluster, and (when the loop stops at max_instances) applies the step to the pixels the last seed
  took as well; here the most probable (nearest) cluster, for the pixels left unassigned;
- linking: the public chainer associates every pair of the Hungarian assignment on cost 1 − IoU, even at IoU 0;
  here a pair needs IoU ≥ ``link_iou`` (0.1);
- the shared frames keep the earlier clip's labels there (``if t in overlapping_frames: continue``); here a frame
  takes the labels of the latest clip covering it (:mod:`vosrt.sdk.instance_segmenter`);
- the foreground to cluster is, there, the average over every clip covering a frame (later ones included) of the
  category head's foreground (> 0.5) or of the seediness (> 0.25); a stream cannot wait for the later clips, so
  here each clip's own foreground is thresholded;
- a stream shorter than one clip is padded with its last frame at the end; the public code repeats frame 0 at the
  front (the network sees other frames; neither clusters the copies);
- the public outputs keep per video only the tracks that live longest (10 for YouTube-VIS, 20 for DAVIS, renumbered
  1..N); ``vosrt run --vis`` keeps the 10 (``--vis-max-tracks``), the others write every track, and KITTI-MOTS
  track ids are the stream's, not ``class * 1000 + id``.

Equal to the public outputs (stemseg/inference/output_utils): a YouTube-VIS track's score (its pixels over the
video, over the most any track has) and category (its summed category logits' argmax), a KITTI-MOTS track's
class (its pixels' majority vote) and post-processing (least area, pixel/box ratio, time breaks, track length;
``vosrt run --mots-filter``), and the masks' way back to the frame (bilinear, cropped, bilinear, > 0.5):
:mod:`vosrt.sdk.instance_segmenter` and :mod:`vosrt.sdk.instance_metrics`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PRIMARY_THRESHOLD = 0.5
SECONDARY_THRESHOLD = 0.3


@dataclass
class Clustering:
    """Output of :func:`cluster`: ``labels`` ``[T, h, w]`` int32 (0 background, 1..K instances in the
    order they were seeded), and per instance its ``centers`` ``[K, E]``, ``bandwidths`` ``[K, E]`` and
    ``seediness`` ``[K]`` (the seed's)."""

    labels: np.ndarray
    centers: np.ndarray
    bandwidths: np.ndarray
    seediness: np.ndarray

    @property
    def count(self) -> int:
        return len(self.centers)


def cluster(embeddings: np.ndarray, bandwidths: np.ndarray, seediness: np.ndarray, foreground: np.ndarray,
            min_seediness: float = 0.8, max_instances: int = 20, primary_threshold: float = PRIMARY_THRESHOLD,
            secondary_threshold: float = SECONDARY_THRESHOLD) -> Clustering:
    """Cluster one clip (module docstring).

    Args:
        embeddings: ``[E, T, h, w]``. bandwidths: ``[E, T, h, w]`` (1 / variance, per dimension).
        seediness: ``[T, h, w]`` or ``[1, T, h, w]``. foreground: bool ``[T, h, w]`` (pixels to cluster).
    """
    embeddings = np.asarray(embeddings, np.float32)
    dims = embeddings.shape[0]
    shape = embeddings.shape[1:]
    seediness = np.asarray(seediness, np.float32).reshape(shape)
    foreground = np.asarray(foreground, bool).reshape(shape)
    where = np.flatnonzero(foreground)                                   # pixel order (t, y, x)
    points = embeddings.reshape(dims, -1)[:, where].T                    # [P, E]
    point_bandwidths = np.asarray(bandwidths, np.float32).reshape(dims, -1)[:, where].T
    point_seediness = seediness.reshape(-1)[where]
    assigned = np.zeros(len(where), np.int32)                            # 0 = unassigned
    probabilities = []                                                   # [P] per instance
    centers, widths, seeds = [], [], []
    while len(centers) < max_instances:
        free = np.flatnonzero(assigned == 0)
        if free.size == 0:
            break
        seed = free[np.argmax(point_seediness[free])]                    # argmax: first of equals
        if point_seediness[seed] < min_seediness:
            break
        center, width = points[seed], point_bandwidths[seed]
        prob = np.exp(-0.5 * np.sqrt(((points - center) ** 2 * width).sum(axis=1)))
        members = (assigned == 0) & (prob > primary_threshold)
        members[seed] = True
        assigned[members] = len(centers) + 1
        probabilities.append(np.where(assigned == 0, prob, 0.0))
        centers.append(center)
        widths.append(width)
        seeds.append(point_seediness[seed])
    if probabilities and np.any(assigned == 0):
        stacked = np.stack(probabilities)                                # [K, P]
        best = np.argmax(stacked, axis=0)
        late = (assigned == 0) & (stacked[best, np.arange(len(where))] > secondary_threshold)
        assigned[late] = best[late] + 1
    labels = np.zeros(int(np.prod(shape)), np.int32)
    labels[where] = assigned
    return Clustering(labels.reshape(shape), np.array(centers, np.float32).reshape(-1, dims),
                      np.array(widths, np.float32).reshape(-1, dims), np.array(seeds, np.float32))


def hungarian(cost: np.ndarray) -> list[tuple[int, int]]:
    """Minimum-cost one-to-one assignment of the rows and columns of ``cost`` ``[R, C]`` (rectangular
    allowed; min(R, C) pairs). Shortest augmenting paths with potentials, O(n³); returns sorted (row, col)."""
    cost = np.asarray(cost, np.float64)
    transposed = cost.shape[0] > cost.shape[1]
    if transposed:
        cost = cost.T
    rows, cols = cost.shape
    if rows == 0:
        return []
    u, v = np.zeros(rows + 1), np.zeros(cols + 1)
    owner = np.zeros(cols + 1, int)            # owner[j]: 1-based row matched to column j (0: none)
    for row in range(1, rows + 1):
        owner[0] = row
        column = 0
        reach = np.full(cols + 1, np.inf)
        previous = np.zeros(cols + 1, int)
        used = np.zeros(cols + 1, bool)
        while True:
            used[column] = True
            current = owner[column]
            candidate = cost[current - 1] - u[current] - v[1:]
            better = ~used[1:] & (candidate < reach[1:])
            reach[1:][better] = candidate[better]
            previous[1:][better] = column
            open_cols = np.flatnonzero(~used[1:]) + 1
            nxt = open_cols[np.argmin(reach[open_cols])]
            delta = reach[nxt]
            u[owner[used]] += delta
            v[used] -= delta
            reach[~used] -= delta
            column = nxt
            if owner[column] == 0:
                break
        while column:
            back = previous[column]
            owner[column] = owner[back]
            column = back
    pairs = [(owner[j] - 1, j - 1) for j in range(1, cols + 1) if owner[j]]
    if transposed:
        pairs = [(c, r) for r, c in pairs]
    return sorted(pairs)


def mask_ious(labels_a: np.ndarray, ids_a, labels_b: np.ndarray, ids_b) -> np.ndarray:
    """IoU ``[len(ids_a), len(ids_b)]`` of each id's pixels in ``labels_a`` with each id's in ``labels_b``
    (same shape; pixels over all frames together)."""
    a = np.asarray(labels_a).reshape(-1)
    b = np.asarray(labels_b).reshape(-1)
    ious = np.zeros((len(ids_a), len(ids_b)))
    if not len(ids_a) or not len(ids_b):
        return ious
    index_a = {int(i): k for k, i in enumerate(ids_a)}
    index_b = {int(i): k for k, i in enumerate(ids_b)}
    area_a = np.array([np.count_nonzero(a == i) for i in ids_a], np.float64)
    area_b = np.array([np.count_nonzero(b == i) for i in ids_b], np.float64)
    both = (a > 0) & (b > 0)
    pairs, counts = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
    for (i, j), n in zip(pairs.T, counts):
        if int(i) in index_a and int(j) in index_b:
            ka, kb = index_a[int(i)], index_b[int(j)]
            ious[ka, kb] = n / (area_a[ka] + area_b[kb] - n)
    return ious


class TrackLinker:
    """Gives the instances of each clip track ids that persist across clips (module docstring).

    ``link(labels, shared)``: ``labels`` ``[T, h, w]`` are one clip's instance labels (1..K); ``shared``
    is how many of its first frames are the previous clip's last frames. Returns ``{instance: track id}``.
    The linker keeps only the previous clip's track map of its last frames (constant memory).
    """

    def __init__(self, link_iou: float = 0.1):
        if not 0.0 <= float(link_iou) <= 1.0:
            raise ValueError(f"link_iou: expected a value in [0, 1], got {link_iou}")
        self.link_iou = float(link_iou)
        self.next_id = 1
        self._previous: np.ndarray | None = None   # track ids of the previous clip's frames [T, h, w]

    def new_stream(self) -> None:
        """Forget the previous clip (a new video); ids keep counting up, so none is ever reused."""
        self._previous = None

    def snapshot(self) -> tuple:
        """What :meth:`link` changes, for :meth:`restore` (as :meth:`MemoryBank.snapshot
        <vosrt.sdk.memory.MemoryBank.snapshot>`; the arrays are replaced, never written in place)."""
        return self.next_id, self._previous

    def restore(self, saved: tuple) -> None:
        """Go back to a :meth:`snapshot` (a clip whose results were not kept)."""
        self.next_id, self._previous = saved

    def link(self, labels: np.ndarray, shared: int) -> dict[int, int]:
        labels = np.asarray(labels)
        instances = [int(i) for i in np.unique(labels) if i > 0]
        mapping: dict[int, int] = {}
        if self._previous is not None and shared > 0:
            before = self._previous[-shared:]
            now = labels[:shared]
            tracks = [int(i) for i in np.unique(before) if i > 0]
            ious = mask_ious(before, tracks, now, instances)
            for r, c in hungarian(-ious):
                if ious[r, c] >= self.link_iou and ious[r, c] > 0:
                    mapping[instances[c]] = tracks[r]
        for instance in instances:
            if instance not in mapping:
                mapping[instance] = self.next_id
                self.next_id += 1
        lookup = np.zeros(max(instances, default=0) + 1, np.uint32)
        for instance, track in mapping.items():
            lookup[instance] = track
        self._previous = lookup[labels]
        return mapping
