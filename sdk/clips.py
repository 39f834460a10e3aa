"""3DC-Seg ``ClipSegmenter``: unsupervised VOS over a sliding window of clips.

    segmenter = vosrt.sdk.load("packages/3dc-seg-lite")          # overlap=3 default, 7 = "dense"
    for frame in frames:
        for done in segmenter.push(frame):
            use(done.index, done.labels, done.probability)
    for done in segmenter.flush():
        use(...)

Schedule, with clip length L (from the manifest) and overlap o (0 <= o < L), hop s = L - o:
clip k covers frames ``[k*s, k*s + L)`` and runs as soon as its last frame arrives. The frame
probabilities of overlapping clips are averaged. After clip k, frames below ``(k+1)*s`` are covered by
no later clip, so they are emitted then, in order, each exactly once. A frame therefore waits for
between ``o`` and ``L - 1`` later frames: :attr:`ClipSegmenter.latency` = ``L - 1`` frames (worst case).

``flush()`` ends the stream: if frames remain, one last clip over the final L frames (right-aligned; a
stream shorter than L is padded by repeating its last frame) is averaged in, and every remaining frame
is emitted. The segmenter is then ready for a new stream.

The clip window lives on the backend's device: each frame is uploaded once and copied into the
``[1, 3, L, H, W]`` clip buffer (allocated once) when a clip runs. Per clip the foreground
probabilities come back to the host, where the overlap average is a running sum per pending frame.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from vosrt.sdk.backends.base import Backend
from vosrt.sdk.errors import UserError
from vosrt.sdk.letterbox import Letterbox, check_color, check_image


@dataclass
class SegmentedFrame:
    """One finished frame: ``labels`` ``[H, W]`` uint8 (1 = foreground), ``probability`` ``[H, W]``
    float32 (foreground, averaged over the clips covering the frame), both at the frame's size."""

    index: int
    labels: np.ndarray
    probability: np.ndarray


class ClipSegmenter:
    """A 3DC-Seg session over one backend (see the module docstring).

    ``overlap`` defaults to the manifest's (3); ``threshold`` turns the averaged probability into labels.
    """

    def __init__(self, backend: Backend, package, overlap: int | None = None, threshold: float = 0.5,
                 color: str = "bgr"):
        self.backend = backend
        self.package = package
        self.color = check_color(color)
        self.clip_length = int(package.streaming["clip_length"])
        overlap = package.streaming.get("overlap", 3) if overlap is None else overlap
        if isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer)) or not 0 <= overlap < self.clip_length:
            raise UserError(f"overlap: expected an integer in 0..{self.clip_length - 1} (clip length "
                            f"{self.clip_length}), got {overlap!r}")
        if not 0.0 < float(threshold) < 1.0:
            raise UserError(f"threshold: expected a probability in (0, 1), got {threshold}")
        self.overlap = int(overlap)
        self.hop = self.clip_length - self.overlap
        self.threshold = float(threshold)
        self.size = (package.height, package.width)
        self.clip = backend.zeros((1, 3, self.clip_length, *self.size))  # [1, 3, L, H, W]
        self._letterboxes: dict[tuple[int, int], Letterbox] = {}
        self._reset_stream()

    @property
    def latency(self) -> int:
        """Worst-case frames a frame waits before it is emitted (``L - 1``; the last frame of each hop
        waits only ``overlap``)."""
        return self.clip_length - 1

    def _reset_stream(self) -> None:
        self.frames_in = 0                 # frames pushed in this stream
        self.next_emit = 0                 # index of the next frame to emit
        self.last_clip_start = None        # start of the last clip that ran
        self._window: deque = deque(maxlen=self.clip_length)   # (index, device frame [1,3,1,H,W])
        self._pending: dict[int, list] = {}  # index -> [prob sum [H, W], clip count, letterbox]

    # ------------------------------------------------------------------ public
    def push(self, image: np.ndarray) -> list[SegmentedFrame]:
        """Add the next frame; returns the frames finished by it (possibly none), in order."""
        image = check_image(image)
        box = self._letterbox(image.shape[:2])
        index = self.frames_in
        frame = self.backend.upload(box.image(image, self.color)[:, :, None])   # [1, 3, 1, H, W]
        self.frames_in += 1
        self._window.append((index, frame))
        self._pending[index] = [np.zeros(self.size, np.float32), 0, box]
        start = index - self.clip_length + 1
        if start >= 0 and start % self.hop == 0:
            self._run_clip(start)
            return self._emit(start + self.hop)
        return []

    def flush(self) -> list[SegmentedFrame]:
        """End the stream: segment what remains (see the module docstring) and emit every pending frame."""
        if self.frames_in == 0:
            return []
        if self.next_emit < self.frames_in:
            start = max(0, self.frames_in - self.clip_length)
            if start != self.last_clip_start:
                self._run_clip(start)
        out = self._emit(self.frames_in)
        self._reset_stream()
        return out

    def reset(self) -> None:
        """Drop the current stream without emitting anything."""
        self._reset_stream()

    # ------------------------------------------------------------------ internals
    def _letterbox(self, frame_shape) -> Letterbox:
        key = tuple(int(s) for s in frame_shape)
        if key not in self._letterboxes:
            self._letterboxes[key] = Letterbox(key, self.size)
        return self._letterboxes[key]

    def _run_clip(self, start: int) -> None:
        """Fill the clip buffer with frames ``start .. start+L-1`` (the last one repeated past the end of
        a short stream), run ``segment_clip`` and add its probabilities to the pending frames."""
        frames = dict(self._window)
        last = max(frames)
        for t in range(self.clip_length):
            self.backend.write(self.clip, 2, t, frames[min(start + t, last)])
        prob = self.backend.download(self.backend.run("segment_clip", {"clip": self.clip}, ["prob"])["prob"])
        for t in range(self.clip_length):  # prob [1, 1, L, H, W]
            index = start + t
            if index <= last and index in self._pending:
                entry = self._pending[index]
                entry[0] += prob[0, 0, t]
                entry[1] += 1
        self.last_clip_start = start

    def _emit(self, stop: int) -> list[SegmentedFrame]:
        out = []
        for index in range(self.next_emit, min(stop, self.frames_in)):
            total, count, box = self._pending.pop(index)
            prob = box.probabilities_back((total / max(count, 1))[None])[0]
            labels = (prob > self.threshold).astype(np.uint8)
            out.append(SegmentedFrame(index, labels, prob))
            self.next_emit = index + 1
        return out
