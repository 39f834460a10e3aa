"""Clip-based sessions: the clip schedule, shared by every family that segments overlapping clips.

Schedule, with clip length L (from the manifest) and overlap o (0 <= o < L), hop s = L - o:
clip k covers frames ``[k*s, k*s + L)`` and runs as soon as its last frame arrives. After clip k,
frames below ``(k+1)*s`` are covered by no later clip, so they are emitted then, in order, each
exactly once. A frame therefore waits for between ``o`` and ``L - 1`` later frames: ``latency`` =
``L - 1`` frames (worst case).

A push is all-or-nothing: bad input raises UserError before any state changes, and a backend that fails
while the clip runs (out of memory, a lost device), or Ctrl-C's KeyboardInterrupt landing anywhere in the
call (the clip's run, or while its finished frames are made), leaves the session as it was before the call,
so the same frame can be pushed again and the stream goes on as if the failure had not happened. A flush
that fails likewise leaves the stream as it was, so calling it again returns every pending frame.

``flush()`` ends the stream: if frames remain, one last clip over the final L frames (right-aligned; a
stream shorter than L is padded by repeating its last frame) runs, and every remaining frame is
emitted. The session is then ready for a new stream.

:class:`ClipScheduler` is that schedule alone (no tensors). :class:`ClipSession` runs it over a backend:
the clip window lives on the backend's device (each frame is uploaded once and copied into the
``[1, 3, L, H, W]`` clip buffer, allocated once, when a clip runs), and a family adds only what it does
with a clip's outputs (:meth:`ClipSession.process_clip`) and how a finished frame is made
(:meth:`ClipSession.finish_frame`): see :mod:`vosrt.sdk.clip_segmenter`.
"""
from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np

from vosrt.sdk.backends.base import Backend
from vosrt.sdk.errors import UserError, is_whole
from vosrt.sdk.letterbox import Letterbox, check_image
from vosrt.sdk.session import SegmentedFrame, Session, serialized


class ClipScheduler:
    """Which clip runs when and which frames are final (see the module docstring)."""

    def __init__(self, clip_length: int, overlap: int, name: str = "overlap", hint: str = ""):
        if not is_whole(overlap) or not 0 <= overlap < clip_length:
            raise UserError(f"{name}: expected an integer in 0..{clip_length - 1} (clip length "
                            f"{clip_length}), got {overlap!r}{hint}")
        self.clip_length = int(clip_length)
        self.overlap = int(overlap)
        self.hop = self.clip_length - self.overlap
        self.reset()

    @property
    def latency(self) -> int:
        """Worst-case frames a frame waits before it is emitted (``L - 1``)."""
        return self.clip_length - 1

    def reset(self) -> None:
        self.frames_in = 0            # frames added in this stream
        self.next_emit = 0            # index of the next frame to emit
        self.last_clip_start = None   # start of the last clip that ran

    def add(self) -> tuple[int, int | None]:
        """Count one more frame; returns (its index, the start of the clip to run now or None)."""
        index = self.frames_in
        self.frames_in += 1
        start = index - self.clip_length + 1
        return index, (start if start >= 0 and start % self.hop == 0 else None)

    def final_clip(self) -> int | None:
        """At the end of the stream: the start of the last (right-aligned) clip, or None when every
        frame is already covered."""
        if self.frames_in == 0 or self.next_emit >= self.frames_in:
            return None
        start = max(0, self.frames_in - self.clip_length)
        return None if start == self.last_clip_start else start

    def ran(self, start: int) -> range:
        """Record that clip ``start`` ran; returns the frames it made final."""
        self.last_clip_start = start
        return self.take(start + self.hop)

    def take(self, stop: int) -> range:
        """The frames not yet emitted below ``stop`` (at most the frames added), marked emitted."""
        done = range(self.next_emit, max(self.next_emit, min(stop, self.frames_in)))
        self.next_emit = done.stop
        return done


class ClipSession(Session):
    """A session over overlapping clips (see the module docstring). Subclasses implement
    :meth:`process_clip`, :meth:`finish_frame` and may extend :meth:`_reset_stream`."""

    def __init__(self, backend: Backend, package, overlap: int | None = None, color: str = "bgr"):
        super().__init__(backend, package, color)
        name, hint = "overlap", ""
        if overlap is None:   # the package's own: an error names the file, not a setting the caller never gave
            overlap = package.streaming.get("overlap", 0)
            name = f"{Path(package.path) / 'manifest.json'}: streaming.overlap"
            hint = "; correct it there, or override it with overlap= (vosrt run/live: --overlap)"
        self.schedule = ClipScheduler(int(package.streaming["clip_length"]), overlap, name, hint)
        self.clip = backend.zeros((1, 3, self.clip_length, *self.size))  # [1, 3, L, H, W]
        self._reset_stream()

    clip_length = property(lambda self: self.schedule.clip_length)
    overlap = property(lambda self: self.schedule.overlap)
    hop = property(lambda self: self.schedule.hop)
    frames_in = property(lambda self: self.schedule.frames_in)
    next_emit = property(lambda self: self.schedule.next_emit)
    last_clip_start = property(lambda self: self.schedule.last_clip_start)

    @property
    def latency(self) -> int:
        """Worst-case frames a frame waits before it is emitted (``L - 1``; the last frame of each hop
        waits only ``overlap``)."""
        return self.schedule.latency

    # ------------------------------------------------------------------ protocol
    @serialized
    def push(self, frame: np.ndarray, mask=None, objects=None) -> list[SegmentedFrame]:
        """Add the next frame; returns the frames finished by it (possibly none), in order."""
        self._check_open()
        self._refuse_mask(mask, objects)
        image = check_image(frame, "frame")
        box = self._letterbox(image.shape[:2])
        device_frame = self.backend.upload(box.image(image, self.color)[:, :, None])   # [1, 3, 1, H, W]
        # The frame is valid. If anything fails from here on (the clip's run, or a Ctrl-C while the finished
        # frames are made), the stream goes back to what it was: a failure must not shift later indices, leave
        # frames that no clip covered (they would come out as background) or lose frames already marked emitted.
        saved = self._snapshot()
        try:
            index, start = self.schedule.add()
            self._window.append((index, device_frame))
            self._boxes[index] = box
            self.begin_frame(index)
            if start is None:
                return []
            self._run(start)
            return self._emit(self.schedule.ran(start))
        except BaseException:
            self._restore(saved)
            raise

    @serialized
    def flush(self) -> list[SegmentedFrame]:
        """End the stream: segment what remains (see the module docstring) and emit every pending frame."""
        self._check_open()
        if self.schedule.frames_in == 0:
            return []
        saved = self._snapshot()
        try:
            start = self.schedule.final_clip()
            if start is not None:
                self._run(start)
                self.schedule.last_clip_start = start
            out = self._emit(self.schedule.take(self.schedule.frames_in))
            self._reset_stream()
            return out
        except BaseException:   # the pending frames stay pending: a flush called again returns them
            self._restore(saved)
            raise

    @serialized
    def reset(self) -> None:
        """Drop the current stream without emitting anything."""
        self._check_open()
        self._reset_stream()

    # ------------------------------------------------------------------ for subclasses
    def begin_frame(self, index: int) -> None:
        """A frame entered the window (set up its per-frame accumulators)."""

    def process_clip(self, start: int, last: int) -> None:
        """The clip buffer holds frames ``start .. start+L-1`` (frames past ``last``, the newest, repeat
        it): run the family's graph(s) and keep what the pending frames need. Every state this (or
        :meth:`begin_frame`, :meth:`finish_frame`) changes must be in :meth:`_snapshot`: if anything raises,
        Ctrl-C's KeyboardInterrupt included, the session restores it, and the same frame pushed again must
        count the clip once."""
        raise NotImplementedError

    def finish_frame(self, index: int, box: Letterbox) -> SegmentedFrame:
        """Frame ``index`` is covered by no later clip: make its result at the frame's size."""
        raise NotImplementedError

    def _reset_stream(self) -> None:
        self.schedule.reset()
        self._window: deque = deque(maxlen=self.clip_length)   # (index, device frame [1, 3, 1, H, W])
        self._boxes: dict[int, Letterbox] = {}

    def _snapshot(self) -> tuple:
        """The stream's state, for :meth:`_restore` after a push or flush that failed. Subclasses add theirs
        (containers are copied shallowly: their entries are replaced, never changed in place)."""
        schedule = self.schedule
        return (schedule.frames_in, schedule.next_emit, schedule.last_clip_start, tuple(self._window),
                dict(self._boxes))

    def _restore(self, saved: tuple) -> None:
        """Go back to a :meth:`_snapshot`."""
        frames_in, next_emit, last_clip_start, window, boxes = saved
        self.schedule.frames_in, self.schedule.next_emit, self.schedule.last_clip_start = \
            frames_in, next_emit, last_clip_start
        self._window = deque(window, maxlen=self.clip_length)
        self._boxes = boxes

    # ------------------------------------------------------------------ internals
    def _release(self) -> None:
        self._reset_stream()   # the pending frames on the device
        self.clip = None

    def _run(self, start: int) -> None:
        frames = dict(self._window)
        last = max(frames)
        for t in range(self.clip_length):
            self.backend.write(self.clip, 2, t, frames[min(start + t, last)])
        self.process_clip(start, last)

    def _emit(self, indices: range) -> list[SegmentedFrame]:
        return [self.finish_frame(index, self._boxes.pop(index)) for index in indices]


def __getattr__(name):
    # `from vosrt.sdk.clips import ClipSegmenter` keeps working: the 3DC-Seg session moved to its own module.
    if name == "ClipSegmenter":
        from vosrt.sdk.clip_segmenter import ClipSegmenter
        return ClipSegmenter
    raise AttributeError(f"module 'vosrt.sdk.clips' has no attribute '{name}'")
