"""The live pipeline: one session, one live source, the shared :func:`~vosrt.sdk.streaming.stream`
loop, and the viewer's commands.

    pipeline = LivePipeline(session, LatestFrameSource(lambda: open_source(0)), png_dir="masks")
    pipeline.select_box((40, 30, 80, 60))      # from any thread: object 1 starts on the next frame
    stats = pipeline.run()                     # blocks until the source ends or stop() is called

Commands (:meth:`select_box`, :meth:`select_point`, :meth:`remove`, :meth:`reset`, :meth:`pause`,
:meth:`snapshot`, :meth:`start_recording` …) may come from any thread (the web server's); those that
touch the session are queued and applied by the inference thread just before the next push, through
``stream``'s ``masks`` hook, so the session is only ever used by one thread. A box becomes a mask on
the frame it is pushed with: the newest frame when the command arrives, or, while paused, the picture
on the screen, which is pushed once more for it (as after a removal). "Reset" ends the current
``stream`` call and starts another on a reset session; capture continues.

Figures for a viewer (:meth:`state`): frames processed, FPS over the last frames, end-to-end latency
(capture to finished label map) and dropped frames. :attr:`latencies` keeps the latencies of the last
100 000 frames for a final report (``p50``/``p95`` by :func:`percentiles`).
"""
from __future__ import annotations

import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np

from vosrt.sdk.errors import UserError
from vosrt.sdk.live.select import BoxSegmenter, box_around, clip_box, grabcut_box, masks_from_boxes
from vosrt.sdk.live.source import LatestFrameSource
from vosrt.sdk.masks import label_colours, write_label_png
from vosrt.sdk.package import replace_file
from vosrt.sdk.session import SegmentedFrame
from vosrt.sdk.streaming import StreamStats, close_all, stream
from vosrt.sdk.video import PngSink, ProcessedRateVideoSink, overlay


def percentiles(values, points=(50, 95)) -> list[float]:
    """The given percentiles of ``values`` (NaN when empty)."""
    if len(values) == 0:
        return [float("nan")] * len(points)
    return [float(v) for v in np.percentile(np.asarray(values, np.float64), points)]


def pixels_per_id(labels: np.ndarray) -> dict[int, int]:
    """``{id: pixels}`` of the non-zero ids of a label map. The work follows the pixels, not the largest id:
    a stem-seg stream's track ids count up for as long as it runs, and a count per possible id, walked in
    Python, made each frame slower and larger the longer the stream ran (0.2 s a frame at id 10⁶)."""
    labels = np.asarray(labels)
    if labels.size and int(labels.max()) <= 65535:     # stcn's uint8 ids, young tracks: one pass
        counts = np.bincount(labels.ravel())
        ids = np.flatnonzero(counts)
        counts = counts[ids]
    else:
        ids, counts = np.unique(labels, return_counts=True)
    return {int(i): int(n) for i, n in zip(ids, counts) if i > 0}


def _objects_with_colours(objects: dict[int, int]) -> list[dict]:
    """``[{"id", "pixels", "colour"}]``: the colour the overlay blends the object in (``label_colours``: the DAVIS
    palette to 255, hues beyond), so the page's swatches match the picture for track ids past 255 too."""
    ids = sorted(objects)
    colours = label_colours(np.array(ids, np.int64)) if ids else []
    return [{"id": i, "pixels": objects[i], "colour": "#%02x%02x%02x" % tuple(int(c) for c in colour)}
            for i, colour in zip(ids, colours)]


def _save_dir_error(problem: str) -> UserError:
    """The error of a snapshot or recording that cannot be written to ``--save-dir`` (shown on the page)."""
    return UserError(f"--save-dir: {problem}; restart vosrt live with a --save-dir it can write")


def _recording_problem(err: Exception) -> str:
    """What went wrong with a page recording, from its video sink's error, which names ``--video``: a flag the
    recording did not come from."""
    return str(err).removeprefix("--video: ")


class LivePipeline:
    """Drives ``session`` over ``source`` (see the module docstring).

    ``png_dir``: write one palette PNG per processed frame (named by the source frame). ``video``:
    record the overlay from the start to this file. ``save_dir``: where :meth:`snapshot` and
    :meth:`start_recording` write (names chosen here, never by the caller). ``box_segmenter``: box ->
    mask (:mod:`vosrt.sdk.live.select`). ``max_frames``: stop after this many processed frames.
    ``render``: keep a JPEG of the latest overlay for a viewer (:attr:`latest_jpeg`).
    """

    def __init__(self, session, source: LatestFrameSource, png_dir: str | Path | None = None,
                 video: str | Path | None = None, save_dir: str | Path = "vosrt-live",
                 box_segmenter: BoxSegmenter = grabcut_box, max_frames: int | None = None,
                 render: bool = False, jpeg_quality: int = 80):
        self.session = session
        self.source = source
        self.takes_mask = bool(getattr(session, "takes_mask", False))
        self.can_remove = hasattr(session, "remove_objects")
        self.box_segmenter = box_segmenter
        self.max_frames = max_frames
        self.render = render
        self.jpeg_quality = jpeg_quality
        self.save_dir = Path(save_dir)
        self._outputs: list = []
        if png_dir is not None:
            self._outputs.append(PngSink(png_dir))
        if video is not None:
            self._outputs.append(self._new_recording(video))
        self._recording: ProcessedRateVideoSink | None = None
        # Held while a frame is written to the page's recording and while it is closed: the inference
        # thread writes, the server's thread stops, and a writer closed under a write crashes the process.
        self._recording_lock = threading.Lock()
        self.recordings = 0
        self.recorded: list[Path] = []

        self._lock = threading.Lock()
        self._boxes: list[tuple[int, tuple]] = []     # selections waiting for the next frame
        self._applying: set[int] = set()              # ids of selections being turned into masks now
        self._removals: list[int] = []
        self.objects: dict[int, int] = {}             # tracked or segmented id -> pixels on the latest frame
        self._next_id = 1
        self._stopping = False
        self._resetting = False
        self.frames = 0                               # frames processed over the whole run
        # seconds from capture to label map per processed frame: the last 100 000 for the final report
        # (a camera runs for days in constant memory), the last 30 for the page
        self.latencies: deque = deque(maxlen=100_000)
        self._recent_latencies: deque = deque(maxlen=30)
        self._recent: deque = deque(maxlen=30)        # finish times, for the FPS shown
        self.paused_seconds = 0.0                     # time the stream spent paused, left out of the final FPS
        self._paused_since: float | None = None
        # the final FPS once the stream was paused: results delivered while playing, over the time from the first
        # to the last of them less the pauses in between (a pause counts once a result follows it: one the run
        # stopped in lies outside); clip families deliver a clip's results together, which this takes as they come
        self._played: list = [None, None, 0]   # first and last result's time, results delivered while playing
        self._pauses_between = 0.0             # paused seconds between the first and the last result
        self._pause_pending = 0.0              # paused seconds since the first result, no result after them yet
        # capture time of each pushed frame by its session index, taken before the push: a clip session's
        # frames wait for their labels as copies (stream() keeps one), which the source does not know
        self._captured: dict[int, float | None] = {}
        self.latest_frame: np.ndarray | None = None
        self.latest_labels: np.ndarray | None = None
        self.latest_jpeg: bytes | None = None
        self.latest_index = -1
        self.latest_name = ""
        self.snapshots = 0
        self.resets = 0                                # resets applied (a viewer can wait for one)
        self.message = ""                              # last command's outcome, for the viewer
        self.listeners: list[Callable[[], None]] = []  # called (inference thread) after each frame
        self.stats = StreamStats()
        self.finished = False                          # run() returned: commands no longer apply
        self.error: str | None = None                  # why a run in its own thread stopped

    # ------------------------------------------------------------------ commands (any thread)
    def select_box(self, box, object_id: int | None = None) -> int:
        """Start tracking the object in ``box`` (x, y, w, h, frame pixels) from the next frame; returns
        its id (the next free one unless ``object_id`` is given)."""
        if not self.takes_mask:
            raise UserError(f"{self.session.package.family} packages segment automatically; there is "
                            f"nothing to select")
        if self.finished:
            raise UserError("the stream has ended; restart vosrt live (or use --loop) to select objects")
        if self.latest_frame is not None:
            # refused now, as a click outside the frame is: it was answered "ok" with an id never tracked, the reason
            # only in a later message (before the first frame, --select's boxes are checked on it)
            clip_box(box, self.latest_frame.shape)
        with self._lock:
            limit = getattr(self.session, "max_objects", None)
            claimed = len(set(self.objects) | self._applying | {i for i, _ in self._boxes})
            if limit is not None and claimed >= limit:
                raise UserError(self._over_limit(claimed, limit))
            object_id = self._claim_id(object_id)
            self._boxes.append((object_id, tuple(box)))
        self._replay_if_paused()
        return object_id

    def select_point(self, x: float, y: float, object_id: int | None = None) -> int:
        """Like :meth:`select_box` with a box centred on the click (see :func:`box_around`)."""
        shape = self.latest_frame.shape if self.latest_frame is not None else None
        if shape is None:
            raise UserError("no frame yet to click on; wait for the video")
        return self.select_box(box_around(x, y, shape), object_id)

    def remove(self, object_id: int) -> None:
        """Stop tracking ``object_id`` from the next frame."""
        if not self.can_remove:
            raise UserError(f"{self.session.package.family} sessions cannot remove objects; use reset")
        self._refuse_if_ended("nothing is tracked any more")
        with self._lock:
            if object_id not in self.objects and object_id not in self._applying and \
                    object_id not in [i for i, _ in self._boxes]:
                raise UserError(f"object {object_id} is not tracked (tracked: {sorted(self.objects)})")
            self._boxes = [(i, b) for i, b in self._boxes if i != object_id]
            self._removals.append(object_id)
        self._replay_if_paused()

    def reset(self) -> None:
        """Forget every object and the session's state; the stream continues with the next frame."""
        self._refuse_if_ended("there is nothing left to reset")
        with self._lock:   # the interrupt too: _apply_reset clears both at once, so neither outlives the other
            self._resetting = True
            self._boxes.clear()
            self._removals.clear()
            self.source.interrupt()

    def pause(self) -> None:
        self._refuse_if_ended("there is nothing left to pause")
        with self._lock:
            if self._paused_since is None:
                self._paused_since = time.perf_counter()
        self.source.pause()

    def resume(self) -> None:
        self._refuse_if_ended("there is nothing left to play")
        self._end_pause()
        self.source.resume()

    def _end_pause(self) -> None:
        with self._lock:
            if self._paused_since is not None:
                now = time.perf_counter()
                self.paused_seconds += now - self._paused_since
                if self._played[0] is not None:
                    self._pause_pending += now - max(self._paused_since, self._played[0])
                self._paused_since = None
                self._recent.clear()   # the FPS shown restarts: the pause is no gap between frames to average in

    def run_fps(self) -> float:
        """Frames per second over the run, the time it spent paused left out (the final report's rate): the
        stream's own rate where it was never paused, else the results delivered while playing over the time from
        the first to the last of them, less the pauses in between."""
        first, last, results = self._played
        if not self.paused_seconds or results < 2:
            return self.stats.fps
        seconds = last - first - self._pauses_between
        return (results - 1) / seconds if seconds > 0 else self.stats.fps

    def _refuse_if_ended(self, why: str) -> None:
        """A command that acts on the stream, once it has ended: answered ``ok`` and done nothing (a removed
        object stayed listed, "pause" turned the button to "resume"), so refused, saying why."""
        if self.finished:
            raise UserError(f"the stream has ended; {why} (restart vosrt live, or use --loop, to go on)")

    def stop(self) -> None:
        """End :meth:`run` after the frame in progress; outputs are finished (a recording stays playable)."""
        self._stopping = True
        # finish, not interrupt: an interrupt landing between run()'s check of _stopping and the start of
        # stream()'s iteration was undone by that start (a looping file then streamed on for ever)
        self.source.finish()

    def snapshot(self) -> list[str]:
        """Save the latest frame and its label map as PNGs in ``save_dir``; returns the file names."""
        with self._lock:
            frame, labels, index = self.latest_frame, self.latest_labels, self.latest_index
        if frame is None:
            raise UserError("no frame yet to save")
        folder = self._save_folder()
        self.snapshots += 1
        stem = f"snapshot-{datetime.now():%Y%m%d-%H%M%S}-{self.snapshots:03d}"
        def picture(tmp):
            if not cv2.imwrite(str(tmp), frame):   # OpenCV says only False
                raise OSError(f"OpenCV could not write {folder / f'{stem}.png'}")

        try:   # each written aside and renamed: a link planted at the (predictable) name was written through
            replace_file(folder / f"{stem}.png", picture)
            replace_file(folder / f"{stem}-mask.png", lambda tmp: write_label_png(tmp, labels))
        except OSError as err:
            raise _save_dir_error(f"cannot save the snapshot in {folder}: {err.strerror or err}") from None
        self.message = f"saved {stem}.png and {stem}-mask.png (frame {index})"
        return [f"{stem}.png", f"{stem}-mask.png"]

    def start_recording(self) -> str:
        """Record the overlay to a new ``save_dir/recording-<time>-<n>.mp4``; returns its name."""
        with self._recording_lock:   # run() marks the end under this lock, then finishes the recording
            if self.finished:
                raise UserError("the stream has ended; there is nothing left to record")
            if self._recording is not None:
                return self._recording.path.name
            folder = self._save_folder()
            self.recordings += 1
            path = folder / f"recording-{datetime.now():%Y%m%d-%H%M%S}-{self.recordings:03d}.mp4"
            try:
                self._recording = self._new_recording(path)
            except UserError as err:   # the video sink names --video, which this recording did not come from
                raise _save_dir_error(_recording_problem(err)) from None
            self.recorded.append(path)
        self.message = f"recording to {path.name}"
        return path.name

    def stop_recording(self) -> str | None:
        """Finish the recording (playable from now on); returns its name, None where no frame came while it was on
        (no file is written then)."""
        with self._recording_lock:   # never while the inference thread writes a frame to it
            recording, self._recording = self._recording, None
            if recording is None:
                return None
            try:
                recording.close()
            except UserError as err:   # shown on the page, and answered to the request that stopped it
                self._forget_recording(recording.path)   # not listed at exit as a recording made
                error = _save_dir_error(_recording_problem(err))
                self.message = str(error)
                raise error from None
        if not recording.written:   # it said "saved NAME (0 frames)" of a file that was never made
            self._forget_recording(recording.path)
            self.message = "nothing recorded: no frame came while the recording was on"
            return None
        self.message = f"saved {recording.path.name} ({recording.written} frames)"
        return recording.path.name

    def _forget_recording(self, path) -> None:
        if path in self.recorded:
            self.recorded.remove(path)

    def _save_folder(self) -> Path:
        """``save_dir``, made if need be. One that cannot be made is a UserError naming --save-dir, which the page
        shows; an OSError out of a command was a server error: the page said only "Internal Server Error"."""
        try:
            self.save_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise _save_dir_error(f"cannot make folder {self.save_dir}: {err.strerror or err}") from None
        return self.save_dir

    def _new_recording(self, path) -> ProcessedRateVideoSink:
        fixed = None if self.source.drop else (self.source.fps or 15.0)
        return ProcessedRateVideoSink(path, rate=self.fps, fixed=fixed)

    @property
    def recording(self) -> bool:
        return self._recording is not None

    # ------------------------------------------------------------------ figures
    def fps(self) -> float:
        """Frames processed per second over the last frames."""
        if len(self._recent) < 2:
            return 0.0
        return (len(self._recent) - 1) / max(self._recent[-1] - self._recent[0], 1e-9)

    def state(self) -> dict:
        """What a viewer shows (JSON-ready)."""
        p50, p95 = percentiles(list(self._recent_latencies))
        return {"frame": self.latest_index, "frames": self.frames, "fps": round(self.fps(), 2),
                "latency_ms": None if np.isnan(p50) else round(p50 * 1000, 1),
                "latency_p95_ms": None if np.isnan(p95) else round(p95 * 1000, 1),
                "dropped": self.source.dropped, "captured": self.source.captured,
                "objects": _objects_with_colours(self.objects),
                "takes_mask": self.takes_mask, "can_remove": self.can_remove,
                "paused": self.source.paused, "recording": self.recording,
                "status": self.error or self.source.status, "ended": self.finished,
                "retries": self.source.retries, "resets": self.resets, "message": self.message,
                "family": self.session.package.family}

    # ------------------------------------------------------------------ the inference thread
    def run(self) -> StreamStats:
        """Stream until the source ends, :meth:`stop` is called or ``max_frames`` are processed."""
        try:
            while not self._stopping:
                remaining = None if self.max_frames is None else self.max_frames - self.frames
                if remaining is not None and remaining <= 0:
                    break
                stats = stream(self.session, self.source, [self._deliver], masks=self._before_push,
                               max_frames=remaining, on_result=self._on_result, close=False)
                self.stats.pushed += stats.pushed
                self.stats.frames += stats.frames
                self.stats.seconds += stats.seconds
                self.stats.seconds_after_first += stats.seconds_after_first
                if not self._resetting:
                    break     # the source ended (or stop())
                self._apply_reset()
        finally:
            self._end_pause()            # a run stopped while paused: its pause ends here
            with self._recording_lock:   # a recording started from now on is refused, one started before is
                self.finished = True     # finished below
            try:
                self.source.close()
            finally:   # every output is finished even when one fails (a recording on a full disk)
                try:
                    self.stop_recording()
                finally:
                    close_all(self._outputs)
        return self.stats

    def start(self) -> threading.Thread:
        """Run in a thread of its own (the web server's way); returns the thread. An error ends the
        stream and is shown on the page (and printed)."""
        def run():
            try:
                self.run()
            except Exception as err:   # the page stays up and says why the video stopped
                self.error = f"inference stopped: {type(err).__name__}: {err}"
                traceback.print_exc()

        thread = threading.Thread(target=run, name="vosrt live inference", daemon=True)
        thread.start()
        return thread

    def _replay_if_paused(self) -> None:
        with self._lock:
            frame, name = self.latest_frame, self.latest_name
        if self.source.paused and frame is not None:
            self.source.replay(frame, name)

    def _claim_id(self, object_id: int | None) -> int:
        taken = set(self.objects) | self._applying | {i for i, _ in self._boxes}
        if object_id is None:
            # the next id after the last one given, wrapping past 255 to the lowest free one
            free = [i for i in (*range(self._next_id, 256), *range(1, self._next_id)) if i not in taken]
            if not free:
                raise UserError("all 255 object ids are in use; remove an object first")
            object_id = free[0]
        if not 1 <= object_id <= 255:
            raise UserError(f"object ids are 1..255; {object_id} is out of range (remove an object first)")
        if object_id in taken:
            raise UserError(f"object {object_id} is already tracked; remove it first or pick another id")
        self._next_id = object_id + 1 if object_id < 255 else 1
        return object_id

    @staticmethod
    def _over_limit(tracked: int, limit: int) -> str:
        return (f"{tracked} object{' is' if tracked == 1 else 's are'} tracked or being added, this session's limit "
                f"(max_objects {limit}); remove "
                f"one first, or restart vosrt live with --max-objects {limit + 1} or more")

    def _apply_reset(self) -> None:
        self.session.reset()
        self._captured.clear()      # the dropped frames' (indices start again at 0)
        with self._lock:
            self._resetting = False
            self.source.clear_interrupt()   # a reset after this one interrupts the next stream() (not undone)
            self.objects.clear()
            self._next_id = 1
            self.resets += 1
        self.message = "reset: every object forgotten"

    def _before_push(self, position: int, frame: np.ndarray) -> np.ndarray | None:
        """``stream``'s masks hook: apply queued commands to the session; the new objects' mask."""
        # the index this push gets (only this thread pushes); a refused frame's entry is overwritten by the next
        self._captured[self.session.frames_in] = self.source.capture_time(frame)
        with self._lock:
            boxes, self._boxes = self._boxes, []
            removals, self._removals = self._removals, []
            # claimed until they are objects (or given up): a select or remove meanwhile sees them
            self._applying = {i for i, _ in boxes}
        for object_id in removals:
            tracked = getattr(self.session, "objects", None)
            if tracked is None or object_id in tracked:
                self.session.remove_objects([object_id])
            self.objects.pop(object_id, None)
            self.message = f"removed object {object_id}"
        if not boxes:
            return None
        try:
            return self._masks_of(boxes, frame)
        finally:
            with self._lock:
                self._applying = set()

    def _masks_of(self, boxes: list, frame: np.ndarray) -> np.ndarray | None:
        # each box on its own: one outside the frame costs its object only, not the others selected with it
        inside, refused = [], []
        for object_id, box in boxes:
            try:
                inside.append((object_id, clip_box(box, frame.shape)))
            except UserError as err:
                refused.append(f"object {object_id}: {err}")
        if not inside:
            self.message = "; ".join(refused)
            return None
        labels = self._labels_of(inside, frame)
        if refused:
            self.message = "; ".join([self.message] + refused)
        return labels

    def _labels_of(self, boxes: list, frame: np.ndarray) -> np.ndarray | None:
        try:
            labels = masks_from_boxes(frame, boxes, self.box_segmenter)
        except UserError as err:
            self.message = str(err)
            return None
        except Exception as err:   # a box segmenter of the user's (--box-segmenter) that fails: not the stream
            self.message = f"the box segmenter failed: {type(err).__name__}: {err}"
            traceback.print_exc()
            return None
        present = [i for i, _ in boxes if (labels == i).any()]
        if not present:
            self.message = "the selection covered no pixel of the frame"
            return None
        # the session refuses a mask beyond its object limit, and a refused push would end the stream
        tracked = list(getattr(self.session, "objects", []))
        limit = getattr(self.session, "max_objects", None)
        if limit is not None and len(set(tracked) | set(present)) > limit:
            self.message = self._over_limit(len(tracked), limit)
            return None
        with self._lock:
            for object_id in present:
                self.objects.setdefault(object_id, 0)
        self.message = f"added object{'s' if len(present) > 1 else ''} {', '.join(map(str, present))}"
        return labels

    def _deliver(self, index: int, name: str, frame: np.ndarray, labels: np.ndarray) -> None:
        self.latest_name = name
        for output in self._outputs:
            output(index, name, frame, labels)
        with self._recording_lock:
            if self._recording is not None:
                try:
                    self._recording(index, name, frame, labels)
                except (OSError, UserError) as err:   # the page's recording ends, not the stream (a full disk,
                    self._abandon_recording(err)         # its folder gone)

    def _abandon_recording(self, err: Exception) -> None:
        """End the page's recording that failed to write (held under ``_recording_lock``); what it wrote stays."""
        recording, self._recording = self._recording, None
        try:
            recording.close()
        except (OSError, UserError):
            pass   # the file is as complete as it can be; the first error is the one to show
        reason = _recording_problem(err)
        self.message = f"recording {recording.path.name} stopped: {reason}"
        print(f"warning: {self.message}", file=sys.stderr)

    def _on_result(self, done: SegmentedFrame, frame: np.ndarray) -> None:
        now = time.perf_counter()
        captured = self._captured.pop(done.index, None)
        if captured is not None:
            self.latencies.append(now - captured)
            self._recent_latencies.append(now - captured)
        self._recent.append(now)
        present = pixels_per_id(done.labels)
        if self.takes_mask:
            self.objects = {i: present.get(i, 0) for i in self.objects}
        else:
            self.objects = present
        jpeg = None
        if self.render:
            ok, encoded = cv2.imencode(".jpg", overlay(frame, done.labels),
                                       [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            jpeg = encoded.tobytes() if ok else None
        with self._lock:   # counted with its picture: a reader that sees the count sees this frame
            if not self.source.paused:   # a paused picture shown again (a pick on it) is no frame of the run
                if self._played[0] is None:
                    self._played[0] = now
                self._pauses_between += self._pause_pending
                self._pause_pending = 0.0
                self._played[1] = now
                self._played[2] += 1
            self.latest_frame, self.latest_labels, self.latest_index = frame, done.labels, done.index
            if jpeg is not None:
                self.latest_jpeg = jpeg
            self.frames += 1
        if self.max_frames is not None and self.frames >= self.max_frames:
            self._stopping = True
        for listener in self.listeners:
            listener()
