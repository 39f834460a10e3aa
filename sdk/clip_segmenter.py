"""3DC-Seg ``ClipSegmenter``: unsupervised VOS over a sliding window of clips.

    segmenter = vosrt.sdk.load("3dc-seg-lite-package")            # overlap=3 default, 7 = "dense"
    for frame in frames:
        for done in segmenter.push(frame):
            use(done.index, done.labels, done.probability)
    for done in segmenter.flush():
        use(...)

The clip schedule (window, hop, right-aligned flush, ordered emission) is
:class:`vosrt.sdk.clips.ClipSession`'s. What this family adds: per clip the foreground probabilities
come back to the host, where the overlap average is a running sum per pending frame; a finished frame's
labels are the averaged probability above ``threshold`` (1 = foreground).

Against the public inference code (sabarim/3DC-Seg inference_handlers/Engine.py, Schmiddo/d2conv3d
experiments/inference/handler.py and utils/video.py): clips of 8 every 5 frames (overlap 3; 3DC-Seg's
``EXHAUSTIVE`` is overlap 7), threshold 0.5, no flips or multi-scale testing (neither uses any). Differences:
overlapping clips are averaged as probabilities, as 3DC-Seg averages its softmax; D²Conv3D averages the logits
and thresholds their sigmoid, which can differ where the clips disagree. At the end of a stream one clip over
the last 8 frames runs (right-aligned, :mod:`vosrt.sdk.clips`); both public codes instead start a clip at every
multiple of 5 below the sequence length (3DC-Seg's ``EXHAUSTIVE``: every frame) and fill the short ones with
repeated frames (3DC-Seg the clip's first frame, at the clip's start; D²Conv3D its last), counting a repeated frame
once per copy in the average. The frames are letterboxed into the package's fixed size (``INTER_AREA``), where
3DC-Seg resizes each video's short edge to 480 (bilinear) and pads only to a multiple of 32; the averaged
probability comes back to the frame bilinearly and is thresholded there, where 3DC-Seg thresholds first and
resizes the labels nearest-neighbour (labels 1-2 % of pixels apart at a 2x resize on random weights; nothing is
resized for 480p DAVIS in a 480x864 package). Packages are multiples of 32, as 3DC-Seg pads.
"""
from __future__ import annotations

import numpy as np

from vosrt.sdk.backends.base import Backend
from vosrt.sdk.clips import ClipSession
from vosrt.sdk.errors import UserError, is_number
from vosrt.sdk.session import SegmentedFrame

GRAPH = "segment_clip"


class ClipSegmenter(ClipSession):
    """A 3DC-Seg session over one backend (see the module docstring).

    ``overlap`` defaults to the manifest's (3); ``threshold`` turns the averaged probability into labels.
    Finished frames carry ``labels`` ``[H, W]`` uint8 (1 = foreground) and ``probability`` ``[H, W]``
    float32 (foreground, averaged over the clips covering the frame), both at the frame's size.
    """

    label_dtype = np.uint8

    def __init__(self, backend: Backend, package, overlap: int | None = None, threshold: float = 0.5,
                 color: str = "bgr"):
        if not is_number(threshold) or not 0.0 < float(threshold) < 1.0:
            raise UserError(f"threshold: expected a probability in (0, 1), got {threshold!r}")
        self.threshold = float(threshold)
        super().__init__(backend, package, overlap, color)

    def begin_frame(self, index: int) -> None:
        self._sums[index] = [np.zeros(self.size, np.float32), 0]   # probability sum, clip count

    def process_clip(self, start: int, last: int) -> None:
        prob = self.backend.download(self.backend.run(GRAPH, {"clip": self.clip}, ["prob"])["prob"])
        # prob [1, 1, L, H, W]. The sums are replaced in one update: an interrupt while they are computed
        # leaves none of them counting this clip, so the push that runs it again counts it once.
        updated = {}
        for t in range(self.clip_length):
            index = start + t
            if index <= last and index in self._sums:
                total, count = self._sums[index]
                updated[index] = [total + prob[0, 0, t], count + 1]
        self._sums.update(updated)

    def finish_frame(self, index: int, box) -> SegmentedFrame:
        total, count = self._sums.pop(index)
        prob = box.probabilities_back((total / max(count, 1))[None])[0]
        return SegmentedFrame(index, (prob > self.threshold).astype(np.uint8), prob)

    def _reset_stream(self) -> None:
        super()._reset_stream()
        self._sums: dict[int, list] = {}

    def _snapshot(self) -> tuple:
        return super()._snapshot(), dict(self._sums)   # the sums' lists are replaced, never changed in place

    def _restore(self, saved: tuple) -> None:
        base, sums = saved
        super()._restore(base)
        self._sums = sums
