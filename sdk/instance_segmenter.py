"""STEm-Seg ``InstanceSegmenter``: video instance segmentation over a sliding window of clips.

    segmenter = vosrt.sdk.load("stem-seg-lite-package")           # overlap=4 of 8 by default
    for frame in frames:
        for done in segmenter.push(frame):
            use(done.index, done.labels, done.objects)             # labels: track ids, uint32
    for done in segmenter.flush():
        use(...)

The clip schedule (window, hop, right-aligned flush, ordered emission) is
:class:`vosrt.sdk.clips.ClipSession`'s. Per clip the graph's 1/4-scale maps come back to the host;
:func:`vosrt.sdk.instances.cluster` turns them into instances over the whole clip (padding frames of a
short stream excluded), and :class:`vosrt.sdk.instances.TrackLinker` links them to the previous clip's
tracks by mask IoU on the frames both clips cover. A frame takes its labels from the latest clip that
covers it: the one after which it is emitted.

A finished frame has ``labels`` ``[H, W]`` uint32 track ids (0 background; an id is never reused within
the session, across streams too) at the frame's size, each instance's 1/4-scale mask brought to the frame as the
published output generators bring it (bilinear, cropped, bilinear, above 0.5: :func:`upsample_tracks`), and
``objects`` ``{track id: {...}}`` for the tracks in that frame:

- ``score`` and ``category``: the instance's mean probability of its most probable category over its pixels in
  the clip, and that category (index into the model's categories, background = 0; class-agnostic models have
  the single category 1): a per-clip view, for display;
- ``area`` (its pixels on the frame's 1/4-scale map), ``log_prob_sum`` (per category but the background, the
  sum over those pixels of the category log-probabilities averaged over the clips covering the frame) and
  ``votes`` (per category but the background, how many of those pixels it is the most probable at): what the
  published outputs score and classify a track by over the whole video (:class:`VisWriter
  <vosrt.sdk.instance_metrics.VisWriter>`: pixels over the video for the score, the summed logits' argmax for
  the category; :class:`MotsWriter <vosrt.sdk.instance_metrics.MotsWriter>`: the majority vote). The graph
  gives probabilities; their logs differ from the logits by one constant per pixel, so every argmax of their
  sums is the logits' (probabilities below 1e-30, an fp32 softmax's zeros, count as 1e-30).

``probability`` is the foreground map ``[H, W]`` float32.

Memory is constant on endless streams: per pending frame one label map and one map of category log-probabilities
at 1/4 scale, plus the previous clip's track map.

Frames of different sizes may follow one another (each is letterboxed into the model's input on its own),
but a change of size or aspect ratio moves where the objects land in the model's input: tracks are linked
by mask overlap on the shared frames, so across such a change they may not match and restart under new
ids. Call :meth:`reset` where the source changes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vosrt.sdk.backends.base import Backend
from vosrt.sdk.clips import ClipSession
from vosrt.sdk.errors import UserError, is_number, is_whole
from vosrt.sdk.instances import TrackLinker, cluster
from vosrt.sdk.session import SegmentedFrame

GRAPH = "embed_clip"
OUTPUTS = ["embeddings", "bandwidths", "seediness", "foreground", "categories"]
LOG_FLOOR = np.float32(1e-30)   # probabilities below it (an fp32 softmax's zeros) count as it in the log


def _probability(name: str, value, hint: str = "") -> float:
    if not is_number(value) or not 0.0 <= value <= 1.0:
        raise UserError(f"{name}: expected a probability in [0, 1], got {value!r}{hint}")
    return float(value)


class InstanceSegmenter(ClipSession):
    """A STEm-Seg session over one backend (see the module docstring).

    Settings (defaults from the package manifest): ``overlap`` (frames shared by consecutive clips,
    0 .. L−1), ``min_seediness`` (a seed below it ends the clustering), ``foreground_threshold`` (pixels
    whose foreground probability is above it are clustered), ``max_instances`` (per clip),
    ``link_iou`` (least IoU on the shared frames for an instance to continue a track; 0.1 where the
    manifest has no ``streaming.link_iou``). Linking needs shared frames: with ``overlap=0`` every clip
    starts new tracks. A bad value taken from the manifest is refused naming the manifest's setting.
    """

    label_dtype = np.uint32
    pad_with_mean = True   # STEm-Seg pads the normalised images with zeros, right/bottom
    # (stemseg/structures/image_list.py, ImageList.from_image_sequence_list); vosrt centres the frame

    def __init__(self, backend: Backend, package, overlap: int | None = None, min_seediness: float | None = None,
                 foreground_threshold: float | None = None, max_instances: int | None = None,
                 link_iou: float | None = None, color: str = "bgr"):
        stream = package.streaming

        def setting(name: str, asked, default=None):
            """(name to refuse it by, value, hint): a value the caller did not give is the manifest's, and an
            error about it names the manifest's setting, not a keyword the caller never passed (as overlap's)."""
            if asked is not None:
                return name, asked, ""
            return (f"{Path(package.path) / 'manifest.json'}: streaming.{name}", stream.get(name, default),
                    f"; correct it there, or override it with {name}=")

        self.min_seediness = _probability(*setting("min_seediness", min_seediness))
        self.foreground_threshold = _probability(*setting("foreground_threshold", foreground_threshold))
        name, max_instances, hint = setting("max_instances", max_instances)
        if not is_whole(max_instances) or max_instances < 1:
            raise UserError(f"{name}: expected a positive integer, got {max_instances!r}{hint}")
        self.max_instances = int(max_instances)
        self.linker = TrackLinker(_probability(*setting("link_iou", link_iou, 0.1)))
        super().__init__(backend, package, overlap, color)

    def process_clip(self, start: int, last: int) -> None:
        out = self.backend.run(GRAPH, {"clip": self.clip}, OUTPUTS)
        embeddings, bandwidths, seediness, foreground, categories = (self.backend.download(out[n])[0]
                                                                      for n in OUTPUTS)
        frames = last - start + 1                      # frames past `last` repeat it: not clustered
        result = cluster(embeddings[:, :frames], bandwidths[:, :frames], seediness[0, :frames],
                         foreground[0, :frames] > self.foreground_threshold, self.min_seediness,
                         self.max_instances)
        shared = 0 if self._clip_stop is None else max(0, self._clip_stop - start)
        # Linking advances the linker; if anything after it fails (or Ctrl-C lands, even between the last two
        # lines), the session restores its _snapshot, linker included, so the push that runs this clip again
        # links it to the previous clip as the first try would have, not to itself.
        tracks = self.linker.link(result.labels, shared)
        lookup = np.zeros(result.count + 1, np.uint32)
        objects = {}
        for instance, track in tracks.items():
            lookup[instance] = track
            pixels = result.labels == instance                          # [T, h, w]
            means = categories[1:, :frames][:, pixels].mean(axis=1)     # per category, background excluded
            objects[track] = {"score": float(means.max()), "category": int(np.argmax(means)) + 1}
        track_maps = lookup[result.labels]                              # [T, h, w] uint32
        # the log-probabilities stand in for the category logits, which the published code averages over the
        # clips covering a frame: per pixel they differ by one constant over the categories, so every argmax
        # of their sums is the logits' (module docstring)
        log_probs = categories[:, :frames].astype(np.float32, copy=False)   # [C, T, h, w], in place: read above
        np.log(np.maximum(log_probs, LOG_FLOOR, out=log_probs), out=log_probs)
        finished = {}
        for t in range(max(0, self.schedule.next_emit - start), frames):   # frames already out stay out
            total, count = self._pending[start + t][3:] if start + t in self._pending else (0.0, 0)
            finished[start + t] = (track_maps[t], foreground[0, t], objects, total + log_probs[:, t], count + 1)
        self._pending.update(finished)
        self._clip_stop = last + 1

    def finish_frame(self, index: int, box) -> SegmentedFrame:
        tracks, foreground, objects, log_sum, count = self._pending.pop(index)
        height, width = self.size
        # The tracks of the frame's own labels: one in the letterbox padding, or too thin to survive the
        # resize to a frame smaller than the package, is in the 1/4-scale map but not in the frame.
        labels, present = upsample_tracks(tracks, (height, width), box.inner, box.src)
        prob = box.probabilities_back(_bilinear(foreground, height, width)[None])[0]
        details = {}
        if present:   # log_sum / count is the log-probabilities averaged over the clips (count > 0: same argmax)
            winners = np.argmax(log_sum, axis=0)
        for track in present:
            pixels = tracks == track
            details[track] = dict(objects[track], area=int(pixels.sum()),
                                  log_prob_sum=log_sum[1:, pixels].sum(axis=1, dtype=np.float64) / count,
                                  votes=np.bincount(winners[pixels], minlength=len(log_sum))[1:])
        return SegmentedFrame(index, labels, prob, details)

    def _reset_stream(self) -> None:
        super()._reset_stream()
        self._pending: dict[int, tuple] = {}
        self._clip_stop: int | None = None          # one past the last real frame of the previous clip
        if hasattr(self, "linker"):
            self.linker.new_stream()

    def _snapshot(self) -> tuple:
        # the pending entries are replaced, never changed in place; the linker's arrays likewise
        return super()._snapshot(), self.linker.snapshot(), dict(self._pending), self._clip_stop

    def _restore(self, saved: tuple) -> None:
        base, linker, pending, clip_stop = saved
        super()._restore(base)
        self.linker.restore(linker)
        self._pending, self._clip_stop = pending, clip_stop


def upsample_tracks(tracks: np.ndarray, size: tuple, inner: tuple, src: tuple) -> tuple[np.ndarray, list[int]]:
    """(labels, ids): a 1/4-scale track map ``[h, w]`` at the frame's size, as the published output generators
    bring each instance's mask back: its 0/1 map resized bilinearly to the model's input ``size``, cropped to the
    frame's ``inner`` box (top, left, height, width), resized bilinearly to ``src`` (height, width), kept above 0.5.
    Two disjoint masks never both pass 0.5, so the result is one id per pixel. (Nearest-neighbour resizes of the
    id map, as before, made thin instances blocky: IoU 0.74 with this at a radius of 0.8 map pixels.)
    ``ids``: the sorted ids that reach the frame.

    Each instance is resized over its own box only, the same pixel-centre sampling as resizes of the whole maps,
    with the same result (whole-frame resizes took 20 instances of a 720p frame 22 ms, this 2.3 ms): the map box
    with two pixels of 0 around it (whose resize is exactly the full map's there, and 0 at its edges), then the
    frame pixels that sample it (:func:`_resize_box`)."""
    import cv2

    labels = np.zeros(src, np.uint32)
    present = []
    top, left, h, w = inner
    th, tw = tracks.shape
    fy, fx = size[0] / th, size[1] / tw                   # 4: the map is the input at 1/4 scale
    whole = not (fy.is_integer() and fx.is_integer())
    for track in (int(i) for i in np.unique(tracks) if i):
        mask = tracks == track
        if whole:   # a size that is no whole multiple of the map: the whole map, as published
            r0, r1, c0, c1 = 0, th, 0, tw
        else:
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            r0, r1 = max(rows[0] - 2, 0), min(rows[-1] + 3, th)
            c0, c1 = max(cols[0] - 2, 0), min(cols[-1] + 3, tw)
        y0, y1, x0, x1 = round(r0 * fy), round(r1 * fy), round(c0 * fx), round(c1 * fx)
        part = cv2.resize(mask[r0:r1, c0:c1].astype(np.float32), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
        # the part inside the frame's box, in the box's coordinates
        a0, a1, b0, b1 = max(y0, top), min(y1, top + h), max(x0, left), min(x1, left + w)
        if a1 <= a0 or b1 <= b0:
            continue
        part = np.ascontiguousarray(part[a0 - y0:a1 - y0, b0 - x0:b1 - x0])
        if (h, w) == tuple(src):
            keep, (oy, ox) = part > 0.5, (a0 - top, b0 - left)
        else:
            keep, (oy, ox) = _resize_box(part, (a0 - top, b0 - left), (h, w), src)
        if keep.any():
            labels[oy:oy + keep.shape[0], ox:ox + keep.shape[1]][keep] = track
            present.append(track)
    return labels, present


def _resize_box(part: np.ndarray, origin: tuple, shape: tuple, src: tuple) -> tuple:
    """Of ``cv2.resize(mask, src) > 0.5`` for a ``shape`` mask that is ``part`` at ``origin`` and 0 elsewhere (each
    edge of ``part`` 0 or the mask's own edge): the frame pixels that sample ``part``, as (their 0/1 map, its
    top-left in the frame). A warpAffine of the same sampling grid over that window, clamped at ``part``'s edges
    as the resize clamps at the mask's; its fixed-point weights (1/32) move values by less than 1/64, so a pixel
    could flip only where the exact value lies that near 0.5."""
    import cv2

    (ph, pw), (oy, ox), (mh, mw), (sh, sw) = part.shape, origin, shape, src
    fy, fx = mh / sh, mw / sw                        # frame pixel Y samples mask row (Y + 0.5) * fy - 0.5
    r0 = max(int(np.floor((oy - 1 + 0.5) / fy - 0.5)), 0)
    r1 = min(int(np.ceil((oy + ph + 0.5) / fy - 0.5)) + 1, sh)
    c0 = max(int(np.floor((ox - 1 + 0.5) / fx - 0.5)), 0)
    c1 = min(int(np.ceil((ox + pw + 0.5) / fx - 0.5)) + 1, sw)
    if r1 <= r0 or c1 <= c0:
        return np.zeros((0, 0), bool), (0, 0)
    grid = np.array([[fx, 0.0, (c0 + 0.5) * fx - 0.5 - ox], [0.0, fy, (r0 + 0.5) * fy - 0.5 - oy]])
    window = cv2.warpAffine(part, grid, (c1 - c0, r1 - r0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_REPLICATE)
    return window > 0.5, (r0, c0)


def _bilinear(prob: np.ndarray, height: int, width: int) -> np.ndarray:
    import cv2

    return cv2.resize(np.ascontiguousarray(prob, np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
