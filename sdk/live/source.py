"""A live source: capture in its own thread, inference takes the newest frame.

    source = LatestFrameSource(lambda: open_source(0))          # a camera: newest frame wins
    for frame in source:                                        # blocks until a newer frame exists
        session.push(frame)
    source.dropped                                              # frames captured but never taken

Capture runs apart from inference (ARCHITECTURE.md, "Streaming", live sources). With ``drop=True`` a
slot holds one frame; a frame that arrives before inference took the previous one replaces it, and
the replaced frame is counted in :attr:`LatestFrameSource.dropped`. So what inference takes is never
older than one capture interval plus one inference step, however slow the model is. With
``drop=False`` (a file processed frame by frame) a short queue blocks the capture thread instead, and
every frame is taken.

``pace`` plays a file or folder at that many frames per second, as a camera would deliver it. A source
that stops early (a camera unplugged, a stream cut, an unreadable image) is reopened after
``retry_seconds`` with ``opener`` when ``retry`` is on; :attr:`status` says what happened for a viewer
to show. A source that ends (a file's last frame) ends the iteration, or starts again with ``loop``
(a file standing in for a camera).

Iteration may be started again after :meth:`interrupt` (a viewer's "reset"): capture continues and
the new iteration takes the newest frame. :meth:`close` stops capture for good.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

import numpy as np

from vosrt.sdk.errors import UserError
from vosrt.sdk.video import FrameSource


class LatestFrameSource(FrameSource):
    """Frames of ``opener()`` captured in a thread (see the module docstring).

    ``opener``: returns a :class:`~vosrt.sdk.video.FrameSource`; called once here (so a source that
    cannot be opened raises ``UserError`` at once) and again for every retry. ``drop``: newest frame
    wins (live) or every frame is kept. ``pace``: frames per second to release frames at (None: as
    fast as the source reads). ``retry``/``retry_seconds``: reopen a source that stopped early.
    ``loop``: reopen a source that ended.
    """

    kind = "live"

    def __init__(self, opener: Callable[[], FrameSource], drop: bool = True, pace: float | None = None,
                 retry: bool = True, retry_seconds: float = 1.0, queue_size: int = 4, loop: bool = False):
        if pace is not None and not pace > 0:
            raise UserError(f"pace: expected frames per second > 0, got {pace}")
        self._opener = opener
        self._inner = opener()
        super().__init__(self._inner.name)
        self.kind = self._inner.kind
        self.fps = pace or self._inner.fps
        self.length = self._inner.length
        self.drop = drop
        self.pace = pace
        self.retry = retry
        self.retry_seconds = retry_seconds
        self.loop = loop
        self.captured = 0          # frames read from the source, over all connections
        self.dropped = 0           # captured frames inference never took (replaced by a newer one)
        self.retries = 0           # reopen attempts after the source stopped early
        self.status = f"{self.kind} {self.name}"
        self.ended = False         # the source ended (no retry); iteration stops once drained
        self._queue: deque = deque()                    # (frame, name, capture time)
        self._replays: deque = deque()                  # (frame, name) to yield again, paused or not
        self._queue_size = 1 if drop else max(1, queue_size)
        self._cond = threading.Condition()
        self._closing = False
        self._interrupted = False
        self._paused = False
        self._captured_at: dict[int, tuple[np.ndarray, float]] = {}   # id(frame) -> (frame, time)
        self._yielded: tuple[int, str] = (-1, "")
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ consumer side
    def __iter__(self) -> Iterator[np.ndarray]:
        self._start()
        position = 0
        while True:
            with self._cond:
                while (not self._closing and not self._interrupted and not self._replays
                       and (self._paused or not self._queue)):
                    if self.ended and not self._queue:
                        return
                    self._cond.wait(0.5)
                if self._closing or self._interrupted:
                    return
                if self._replays:
                    frame, name = self._replays.popleft()
                    captured_at = time.perf_counter()
                else:
                    frame, name, captured_at = self._queue.popleft()
                self._cond.notify_all()          # room in the queue for a capture thread that waits
                self._captured_at[id(frame)] = (frame, captured_at)
                while len(self._captured_at) > 256:   # frames the consumer never asked about
                    self._captured_at.pop(next(iter(self._captured_at)))
                self._yielded = (position, name)
            yield frame
            position += 1

    def frame_name(self, index: int) -> str:
        """The name of the frame yielded at ``index`` of the current iteration: the source's own frame
        name on the first connection (``00042`` for a file's frame 42, an image's stem), afterwards the
        running capture count. Valid for the frame just yielded (what :func:`stream` asks)."""
        position, name = self._yielded
        return name if position == index else f"{index:05d}"

    def capture_time(self, frame: np.ndarray) -> float | None:
        """``time.perf_counter()`` when ``frame`` (an array this source yielded) was captured; None if
        unknown. Each frame is answered once."""
        with self._cond:
            entry = self._captured_at.pop(id(frame), None)
        return entry[1] if entry is not None and entry[0] is frame else None

    def pause(self) -> None:
        """Hold the frames back (capture goes on; with ``drop`` newer frames replace older ones,
        uncounted: a paused viewer did not fall behind)."""
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def replay(self, frame: np.ndarray, name: str) -> None:
        """Yield ``frame`` (named ``name``) once more, next, even while paused: a viewer that picks an
        object on the paused picture gets the selection applied to exactly that picture."""
        with self._cond:
            self._replays.append((frame, name))
            self._cond.notify_all()

    @property
    def paused(self) -> bool:
        return self._paused

    def interrupt(self) -> None:
        """End the current iteration, and any started before :meth:`clear_interrupt` (capture goes on); after
        that a new ``iter()`` continues with newer frames. Cleared by the consumer, not by a new iteration: an
        interrupt landing just before an iteration starts would be undone by that start."""
        with self._cond:
            self._interrupted = True
            self._cond.notify_all()

    def clear_interrupt(self) -> None:
        with self._cond:
            self._interrupted = False

    def finish(self) -> None:
        """End this iteration and any later one, and stop capture, without waiting (:meth:`close` then
        releases the source). Unlike :meth:`interrupt` it holds for an iteration that has not started yet:
        one starting after it returns at once."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    def close(self) -> None:
        """Stop capture and release the source. A capture thread still inside a read after 5 s (a stream that
        stalled) releases the source itself once the read returns: released under a read, OpenCV's capture
        crashed the process (SIGSEGV)."""
        self.finish()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        if thread is None or not thread.is_alive():
            self._inner.close()

    @property
    def queued(self) -> int:
        """Frames captured and waiting for inference (at most 1 with ``drop``)."""
        return len(self._queue)

    # ------------------------------------------------------------------ capture thread
    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._capture, name=f"capture {self.name}", daemon=True)
            self._thread.start()

    def _put(self, frame: np.ndarray, name: str) -> bool:
        with self._cond:
            if self.drop:
                if self._queue:
                    self._queue.popleft()
                    if not self._paused:
                        self.dropped += 1
            else:
                while len(self._queue) >= self._queue_size and not self._closing:
                    self._cond.wait(0.5)
            if self._closing:
                return False
            self._queue.append((frame, name, time.perf_counter()))
            self.captured += 1
            self._cond.notify_all()
            return True

    def _capture(self) -> None:
        try:
            self._read_connections()
        finally:
            if self._closing:   # close() may have left the source to this thread (see close())
                self._inner.close()

    def _read_connections(self) -> None:
        connection = 0
        while not self._closing:
            connection += 1
            start, read = time.perf_counter(), 0
            for frame in self._inner:
                if self.pace:
                    wait = start + read / self.pace - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                name = self._inner.frame_name(read) if connection == 1 else f"{self.captured:05d}"
                read += 1
                if not self._put(frame, name):
                    return
            self._inner.close()
            if self._closing:
                return
            if self.loop and not self._inner.stopped_early:
                try:
                    self._inner = self._opener()
                    continue
                except UserError as err:
                    self._inner.stopped_early, self._inner.problem = True, str(err)
            if not self._inner.stopped_early or not self.retry:
                with self._cond:
                    self.ended = True
                    self.stopped_early = self._inner.stopped_early
                    self.problem = self._inner.problem
                    self.status = (f"{self.problem}" if self._inner.stopped_early
                                   else f"{self.kind} {self.name} ended after {self.captured} frames")
                    self._cond.notify_all()
                return
            self._reopen(self._inner.problem)

    def _reopen(self, problem: str | None) -> None:
        """Retry until the source opens again (or close() is called)."""
        while not self._closing:
            self.retries += 1
            self.status = f"{problem or 'source stopped'}; retrying in {self.retry_seconds:g} s (retry {self.retries})"
            with self._cond:
                self._cond.wait_for(lambda: self._closing, timeout=self.retry_seconds)
            if self._closing:
                return
            try:
                self._inner = self._opener()
            except UserError as err:
                problem = str(err)
                continue
            self.status = f"{self.kind} {self.name} reconnected (retry {self.retries})"
            return


def newest_frames(source: FrameSource) -> FrameSource:
    """``source`` read as ``vosrt run`` reads it: a live one (a camera, a live stream: ``source.live``) through a
    :class:`LatestFrameSource` whose steps take the newest frame, dropping those captured meanwhile, so that the
    results keep up with the scene however slow the model (ARCHITECTURE.md, Streaming); any other as it is."""
    return LatestFrameSource(lambda: source, drop=True, retry=False) if source.live else source
