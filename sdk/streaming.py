"""One streaming loop for every session and every front end (``vosrt run``, ``demo``, ``bench``, ``live``).

    from vosrt.sdk.streaming import stream
    stats = stream(session, source, sinks=[PngSink("out")], masks={0: first_mask})
    print(stats.frames, stats.fps)

:func:`stream` pushes each frame of ``source`` into ``session`` (the protocol of
:mod:`vosrt.sdk.session`), hands every finished frame to each sink together with the frame it came
from (frames wait in a buffer bounded by the session's latency), flushes at the end, and closes the
sinks and the source. Masks for semi-supervised sessions come from ``masks``: a mapping
``{frame index: label map}`` or a callable ``index, frame -> label map | None`` (a live viewer asks the
user). A mapping is keyed by the frames' positions in the source (a source's ``position(index)``, where it
has one: an image folder's or video's frame after a skipped one keeps its number), and a mask whose frame
the source skipped is an error. A source that stops early (a camera that disconnects) ends the stream with
what was done.

A frame the session refuses (:class:`~vosrt.sdk.errors.FrameError`: ``None`` from a failed
``cap.read()``, a grey-scale or BGRA image, NaN values...) is skipped with a warning on stderr and
counted in :attr:`StreamStats.refused` (the first ones listed in ``skipped``); the stream goes on.
A frame the source knows to be damaged (its ``damaged(index)``: an image folder's JPEG cut short) is segmented, but a
tracker (a session with ``forgets_frames``) keeps it out of its memory (``push(frame, remember=False)``), where it
would mislead every later frame; counted in :attr:`StreamStats.forgotten`.
Session indices (``SegmentedFrame.index``) count the frames the session took, so after a skipped frame
they run behind the source positions; sinks get the frame's name by its source position. A refused
frame that carries a mask is an error (its objects would be lost), and so are
:data:`MAX_REFUSED_IN_A_ROW` refused frames in a row (a source whose every frame is of the wrong kind).
"""
from __future__ import annotations

import contextlib
import itertools
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from vosrt.sdk.errors import FrameError, UserError, is_number, is_whole
from vosrt.sdk.session import SegmentedFrame

MAX_REFUSED_IN_A_ROW = 25   # refused frames in a row that end a stream (one second of 25 FPS video)
SKIPPED_KEPT = 100          # refused frames whose position and reason StreamStats.skipped keeps


@dataclass
class StreamStats:
    """What one :func:`stream` call did: ``frames`` finished, ``seconds`` from the first push to the
    end, ``seconds_after_first`` from the end of the first push (the first frame carries one-off
    costs: the first masks, lazy allocations), ``pushed`` frames the session took, ``refused`` frames the
    session refused (skipped), ``skipped`` the first :data:`SKIPPED_KEPT` of them as ``(source position,
    reason)`` (bounded: a camera stream may run for days), ``unapplied`` the frame positions of ``masks`` the
    stream ended before (the source was shorter, or ``max_frames`` stopped it; said in a warning too),
    ``forgotten`` the names of the frames the source said were damaged, which a tracker segmented but kept out of
    its memory (the first :data:`SKIPPED_KEPT`; a damaged frame carrying a mask is written, the mask its truth)."""

    frames: int = 0
    pushed: int = 0
    refused: int = 0
    forgotten: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    unapplied: list = field(default_factory=list)   # keys of ``masks`` whose frame the stream never reached
    seconds: float = 0.0
    seconds_after_first: float = 0.0
    results: list = field(default_factory=list)   # finished SegmentedFrames, when keep_results=True

    @property
    def fps(self) -> float:
        """Frames per second after the first frame (the steady-state rate)."""
        timed = self.pushed - 1
        if timed < 1 or self.seconds_after_first <= 0:
            return self.pushed / max(self.seconds, 1e-9)
        return timed / self.seconds_after_first


def _frame_name(source, index: int) -> str:
    name_of = getattr(source, "frame_name", None)
    return name_of(index) if name_of is not None else f"{index:05d}"


def stream(session, source: Iterable[np.ndarray], sinks: Iterable = (), masks: Mapping | Callable | None = None,
           max_frames: int | None = None, progress=None, flush: bool = True, keep_results: bool = False,
           on_result: Callable[[SegmentedFrame, np.ndarray], None] | None = None,
           close: bool = True) -> StreamStats:
    """Stream ``source`` through ``session`` into ``sinks``; returns :class:`StreamStats`.

    ``source``: an iterable of frames (a :class:`vosrt.sdk.video.FrameSource`, a list, a generator);
    ``frame_name(index)`` and ``close()`` are used when it has them. ``sinks``: callables
    ``sink(index, name, frame, labels)``, closed at the end when they have ``close()``; a sink whose
    ``takes_objects`` is true also gets ``objects=`` (the frame's ``SegmentedFrame.objects``).
    ``masks``: see the module docstring. ``max_frames``: stop after this many frames. ``progress``: a
    :class:`vosrt.sdk.progress.Progress` (updated per finished frame with the FPS). ``flush``: end the
    session's stream at the end (False keeps it open, e.g. between a warm-up and a timed run).
    ``keep_results``: collect the finished frames in ``stats.results``. ``on_result``: called with each
    finished frame and its source frame. ``close``: close the sinks and the source at the end.

    An exception from the source, a sink, ``on_result``, ``masks`` or the session (other than a skipped
    :class:`~vosrt.sdk.errors.FrameError`) ends the call: the sinks and the source are closed (``close``) and the
    exception propagates. With ``flush`` the session's stream is dropped too (``session.reset()``), so that the
    session starts the next stream at frame 0 as after a completed call; with ``flush=False`` it is left as it
    was, the frames pending in it included. A bad argument (``masks`` that is a label map rather than
    ``{0: label map}``, or whose keys are not frame positions, one sink not in a list, a ``max_frames`` that is not a whole number) raises UserError
    before anything is read, pushed or closed. A ``session.reset()`` from another thread (a viewer's "reset")
    starts a new stream at once: the frames pushed before it and not yet finished never come back
    (``stats.frames`` then counts fewer than ``stats.pushed``).
    """
    sinks = _check_arguments(source, sinks, masks, max_frames, on_result)
    stats = StreamStats()
    waiting: dict[int, tuple[str, np.ndarray]] = {}   # pushed, not yet finished: (name, frame)
    start = time.perf_counter()
    after_first = None

    def deliver(done_frames: list[SegmentedFrame]) -> None:
        for done in done_frames:
            if done.index not in waiting:
                continue   # pushed by an earlier call (e.g. a warm-up with flush=False)
            name, frame = waiting.pop(done.index)
            for sink in sinks:
                if getattr(sink, "takes_objects", False):
                    sink(done.index, name, frame, done.labels, objects=done.objects)
                else:
                    sink(done.index, name, frame, done.labels)
            if on_result is not None:
                on_result(done, frame)
            if keep_results:
                stats.results.append(done)
            stats.frames += 1
            if progress is not None:
                elapsed = time.perf_counter() - start
                progress.update(postfix=f"{stats.frames / max(elapsed, 1e-9):.1f} FPS")

    # Indices are the session's: a session that was fed before (a warm-up) continues its numbering, and one
    # that another thread resets (a UI's reset() between two frames) starts again at 0. Each frame's index is
    # read under the session's lock together with its push, so that no call from another thread comes between.
    lock = getattr(session, "_lock", None) or contextlib.nullcontext()
    # a mapping's masks are looked up by the frame's position in the source, which runs ahead of the frames
    # yielded once the source skipped one (an unreadable image); a mask whose frame was skipped is an error
    position_of = getattr(source, "position", None)
    # a frame the source knows to be damaged (a JPEG cut short) is segmented, but a tracker does not write it into
    # its memory: there it misled every later frame (a half-grey memory frame cost 0.06 J&F over 14 later frames)
    damaged = getattr(source, "damaged", None) if getattr(session, "forgets_frames", False) else None
    unreached = sorted(masks) if isinstance(masks, Mapping) else []
    refused_in_a_row = 0
    last_index = -1   # the index of the last frame the session took
    try:
        # Stop at max_frames without taking one more frame: a source read on by the next call (a camera after
        # a warm-up with flush=False) would lose it.
        for position, frame in enumerate(itertools.islice(source, max_frames)):
            mask = None
            name = _frame_name(source, position)
            if unreached:
                at = position_of(position) if position_of is not None else position
                if unreached[0] < at:
                    raise UserError(f"masks: frame {unreached[0]} of the source could not be read (skipped), so its "
                                    "mask cannot be applied and its objects would never be tracked; repair that "
                                    "frame, or key the mask by another frame showing the objects")
                if unreached[0] == at:
                    mask = masks[unreached.pop(0)]
            elif callable(masks):
                mask = masks(position, frame)
            try:
                with lock:
                    index = session.frames_in
                    if mask is not None:
                        done = session.push(frame, mask)
                    elif damaged is not None and damaged(position):
                        done = session.push(frame, remember=False)
                        if len(stats.forgotten) < SKIPPED_KEPT:
                            stats.forgotten.append(name)
                    else:
                        done = session.push(frame)
            except FrameError as err:
                # The session refused the frame before changing any state: skip it, unless its mask would
                # be lost with it or no frame of the source is of the kind the session takes.
                refused_in_a_row += 1
                if mask is not None:
                    raise UserError(f"frame {name} carries a mask but was refused: {err}") from err
                if refused_in_a_row >= MAX_REFUSED_IN_A_ROW:
                    raise UserError(f"{refused_in_a_row} frames in a row were refused (the last, {name}: {err}); "
                                    f"the source does not give frames the session takes") from err
                stats.refused += 1
                if len(stats.skipped) < SKIPPED_KEPT:
                    stats.skipped.append((position, str(err)))
                print(f"warning: frame {name} refused: {err}; frame skipped", file=sys.stderr, flush=True)
                continue
            refused_in_a_row = 0
            if index <= last_index:
                # The session started a new stream since the last push (a reset() from another thread): the frames
                # still waiting were dropped with the old one and will never finish. Kept, they piled up, up to
                # `latency` copies of full frames for every reset (a viewer's "reset" on a camera stream).
                waiting.clear()
            last_index = index
            # A frame waits for its labels up to the session's latency: a copy, since a source may fill one
            # buffer again and again (cap.read(buffer)), which would pair the labels with later pixels.
            waiting[index] = (name, frame.copy() if session.latency and isinstance(frame, np.ndarray) else frame)
            deliver(done)
            stats.pushed += 1
            if after_first is None:
                after_first = time.perf_counter()
        if flush:
            deliver(session.flush())
        if unreached:
            # their objects were never given: a tracker gave background for them, without a word
            stats.unapplied = list(unreached)
            shown = ", ".join(map(str, unreached[:5])) + (", ..." if len(unreached) > 5 else "")
            read = stats.pushed + stats.refused   # the source's frames the loop took
            why = f"max_frames {max_frames} stopped it" if max_frames is not None and read >= max_frames else \
                "the source ended"
            print(f"warning: masks: the stream ended before frame(s) {shown} ({why} after {read} frame(s)), so their "
                  f"masks were never applied", file=sys.stderr, flush=True)
    except BaseException:
        if flush:
            _drop_stream(session)
        _finish(stats, start, after_first, progress)
        if close:   # the error that ended the stream is the one raised; a sink's failing close() is only said
            try:
                close_all([*sinks, source])
            except Exception as err:
                print(f"warning: closing the outputs after the stream failed: {type(err).__name__}: {err}",
                      file=sys.stderr)
        raise
    _finish(stats, start, after_first, progress)
    if close:
        close_all([*sinks, source])
    return stats


def _check_arguments(source, sinks, masks, max_frames, on_result) -> list:
    """The sinks as a list; UserError naming the argument, what it takes and what arrived when one of
    :func:`stream`'s arguments is of the wrong kind. Checked before the first frame is read: left to the loop,
    masks=first_mask failed as "'numpy.ndarray' object has no attribute 'get'" with a frame already taken from
    the source, and a sink given alone as "'PngSink' object is not iterable"."""
    if source is None or isinstance(source, (str, bytes)) or not hasattr(source, "__iter__"):
        hint = " (a path or camera? open it with vosrt.sdk.video.open_source)" if isinstance(source, str) else ""
        raise UserError(f"source: expected an iterable of frames (a FrameSource, a list, a generator), got "
                        f"{type(source).__name__}{hint}")
    if callable(sinks) and not hasattr(sinks, "__iter__"):
        raise UserError(f"sinks: expected a list of sinks, got one {type(sinks).__name__}; write sinks=[sink]")
    if isinstance(sinks, (str, bytes)) or not hasattr(sinks, "__iter__"):
        raise UserError(f"sinks: expected a list of callables sink(index, name, frame, labels), got "
                        f"{type(sinks).__name__}" + (" (a folder? write sinks=[PngSink(folder)])"
                                                     if isinstance(sinks, str) else ""))
    sinks = list(sinks)
    for k, sink in enumerate(sinks):
        if not callable(sink):
            raise UserError(f"sinks[{k}]: expected a callable sink(index, name, frame, labels), got "
                            f"{type(sink).__name__}")
    if masks is not None and not isinstance(masks, Mapping) and not callable(masks):
        hint = "; for a mask of the first frame write masks={0: mask}" if isinstance(masks, np.ndarray) else ""
        raise UserError(f"masks: expected a mapping {{frame index: label map}} or a callable (index, frame) -> label "
                        f"map or None, got {type(masks).__name__}{hint}")
    if isinstance(masks, Mapping):
        # Looked up by source position: a key of another kind (a frame name such as "00000", a negative or
        # fractional index) matched no frame, and a tracker then gave background for the whole stream, silently.
        bad = [key for key in masks if not is_number(key) or not float(key).is_integer() or key < 0]
        if bad:
            names = ", ".join(repr(key) for key in bad[:3]) + (", ..." if len(bad) > 3 else "")
            hint = (" (a frame name? key the mask by the frame's position in the source: masks={0: mask} for the "
                    "first frame)") if any(isinstance(key, str) for key in bad) else ""
            raise UserError(f"masks: keys are frame indices, the frames' positions in the source (whole numbers "
                            f">= 0, 0 the first frame), got {names}{hint}")
    if max_frames is not None and (not is_whole(max_frames) or max_frames < 0):
        raise UserError(f"max_frames: expected a whole number of frames >= 0, or None for all, got {max_frames!r}")
    if on_result is not None and not callable(on_result):
        raise UserError(f"on_result: expected a callable (segmented frame, frame) or None, got "
                        f"{type(on_result).__name__}")
    return sinks


def _finish(stats: StreamStats, start: float, after_first: float | None, progress) -> None:
    end = time.perf_counter()
    stats.seconds = end - start
    stats.seconds_after_first = end - after_first if after_first is not None else 0.0
    if progress is not None:
        progress.close()


def _drop_stream(session) -> None:
    """After a stream that failed (a sink, a callback, the source or the session raised): drop the session's
    stream, as the flush at the end would have ended it. Its pending frames can no longer reach this call's
    sinks, and left in the session they went into the next video (a clip session's window, a tracker's objects
    and memory). A failure here is not raised over the one that ended the stream."""
    if getattr(session, "closed", False):
        return
    try:
        session.reset()
    except Exception:
        pass


def close_all(things) -> None:
    """Close each of ``things`` that has ``close()``, all of them even when one fails; then raise the first
    failure (a video sink that finds its file incomplete must not leave the source open)."""
    failure = None
    for thing in things:
        if hasattr(thing, "close"):
            try:
                thing.close()
            except Exception as err:
                failure = failure or err
    if failure is not None:
        raise failure
