"""The session protocol every family's streaming session speaks.

    session = vosrt.sdk.load(package)
    for frame in frames:
        for done in session.push(frame):          # stcn: push(frame, mask=..., objects=...) adds objects
            use(done.index, done.labels)          # finished frames, in order, each exactly once
    for done in session.flush():                  # end of the stream: what is still pending
        use(done.index, done.labels)

``push`` takes one frame (``[H, W, 3]`` uint8, or float in 0..1; ``color`` says BGR or RGB) and
returns the frames it finished: at once for per-frame families (``latency`` 0), up to ``latency``
frames later for clip families. ``flush`` ends the stream and returns the rest; ``reset`` drops the
stream without emitting; ``close`` releases the backend, after which ``push`` and ``flush`` raise
:class:`~vosrt.sdk.errors.UserError` (closing again does nothing). Bad input raises
:class:`~vosrt.sdk.errors.UserError` before any state changes, so the session stays usable.

A session may be called from several threads: its calls run one at a time (a ``remove_objects`` from a
UI thread waits for the frame in progress and applies between two frames; ``close`` waits for it too).
Which of two waiting calls runs first is not defined, so the frames of one stream should come from one
thread, which gives their order.

A finished frame is a :class:`SegmentedFrame`: its index in the stream and a ``[H, W]`` label map at
the frame's size whose dtype is the session's :attr:`Session.label_dtype`, wide enough for every id
the session can emit (uint8 for user-given ids 1..255, wider for track ids that never wrap).
"""
from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

import numpy as np

from vosrt.sdk import families
from vosrt.sdk.backends.base import Backend
from vosrt.sdk.errors import UserError
from vosrt.sdk.letterbox import Letterbox, check_color


_LETTERBOXES = 16   # frame sizes whose letterbox a session keeps (the oldest goes first)


def serialized(method):
    """Run a session method holding the session's lock (see the module docstring): a call from another thread
    in the middle of a step would change the objects or the memory under it."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return locked


@dataclass
class SegmentedFrame:
    """One finished frame.

    ``labels``: ``[H, W]`` object (or track) ids, 0 background, at the frame's size.
    ``probability``: where the session computes one, e.g. the averaged foreground ``[H, W]`` float32
    of a clip family; ``None`` otherwise. ``objects``: per-object details where the family has them
    (``{id: {"score": ..., "category": ...}}``, with STEm-Seg's ``area``, ``log_prob_sum`` and ``votes``:
    :mod:`vosrt.sdk.instance_segmenter`); ``None`` otherwise.
    """

    index: int
    labels: np.ndarray
    probability: np.ndarray | None = None
    objects: dict | None = None


class Session:
    """Base of the streaming sessions (see the module docstring). Subclasses implement :meth:`push`,
    :meth:`flush` and :meth:`reset`, and set :attr:`latency` and :attr:`label_dtype`."""

    latency: int = 0          # most frames a frame waits before push/flush returns it
    frames_in: int = 0        # frames pushed in the current stream: the index the next frame gets
    label_dtype = np.uint8    # dtype of SegmentedFrame.labels
    takes_mask: bool = False  # push accepts masks (semi-supervised families)
    # Letterbox padding: False pads with black (3DC-Seg / D²Conv3D pad the [0, 255] image with 0), True with the
    # package's input mean, which the graph normalises to 0 (STCN's pad_divide_by and STEm-Seg's ImageList pad the
    # normalised image with zeros).
    pad_with_mean: bool = False

    def __init__(self, backend: Backend, package, color: str = "bgr"):
        self.backend = backend
        self.package = package
        self.color = check_color(color)
        self.size = (package.height, package.width)
        self.closed = False
        # One call at a time (serialized); reentrant, so that a serialized method may call another.
        self._lock = threading.RLock()
        self._letterboxes: dict[tuple[int, int], Letterbox] = {}
        self._check_graph_inputs()

    def push(self, frame: np.ndarray, mask: np.ndarray | None = None, objects=None) -> list[SegmentedFrame]:
        """Add the next frame (and, for families that take them, object masks); returns finished frames."""
        raise NotImplementedError

    @serialized
    def flush(self) -> list[SegmentedFrame]:
        """End the stream and return every frame still pending: none for per-frame families, whose stream is then
        dropped as by :meth:`reset`, so that the next frame starts a new one at index 0, as after a clip family's
        flush (a tracker that kept its objects and memory went on tracking the last video's objects into the
        next)."""
        self._check_open()
        self.reset()
        return []

    def reset(self) -> None:
        """Drop the stream's state (a new video); buffers stay allocated."""
        raise NotImplementedError

    @serialized
    def close(self) -> None:
        """Release the backend and the session's buffers (the memory bank, the clip window: device memory on GPU
        backends), which a closed session kept for as long as the object lived. Later calls of :meth:`push`,
        :meth:`flush` or :meth:`reset` raise UserError; closing again does nothing."""
        if not self.closed:
            self.closed = True
            self.backend.close()
            self._release()

    def _release(self) -> None:
        """Drop the buffers the session keeps between frames (after :meth:`close`; it is not used again)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_graph_inputs(self) -> None:
        # A graph file that is not the graph the manifest names (another graph, another family's), or one
        # exported at another resolution than the manifest says, would fail at the first frame with a
        # runtime error; say so when the session opens. So would a clip family's graph exported for clips of
        # another length than the manifest's streaming.clip_length, after the first clip's frames were pushed.
        family = families.get(self.package.family)
        clip_length = self.package.streaming.get("clip_length") if family.layout == "NCTHW" else None
        graphs = family.graphs
        for graph, io in graphs.items():
            takes = self.backend.input_names(graph)
            missing = [name for name in io.inputs if name not in takes]
            if missing:
                raise UserError(f"{self.package.path}: graph '{graph}' has no input(s) {', '.join(missing)}, which a "
                                f"{self.package.family} '{graph}' graph takes (its inputs: {', '.join(takes)}): the "
                                f"file is not that graph; re-export the package with `vosrt export`")
            # One taking more than the family's graph is given (encode_value's file as encode_key's: both take
            # 'image') is another graph too; inputs with a default (the portable form's top_k) are fed or not.
            extra = [name for name in takes if name not in io.inputs and name not in io.portable_inputs]
            if extra:
                raise UserError(f"{self.package.path}: graph '{graph}' also takes {', '.join(extra)}, which a "
                                f"{self.package.family} '{graph}' graph is not given (it is given "
                                f"{', '.join(io.inputs)}): the file is not that graph; re-export the package "
                                f"with `vosrt export`")
            for name, kind in io.inputs.items():
                if kind != families.IMAGE:
                    continue
                shape = self.backend.input_shape(graph, name)
                if clip_length is not None and shape is not None and len(shape) == 5 and isinstance(shape[2], int) \
                        and shape[2] != clip_length:
                    raise UserError(f"{self.package.path}: graph '{graph}' takes {name}s of {shape[2]} frames, but its "
                                    f"manifest.json says streaming.clip_length {clip_length}; set clip_length to "
                                    f"{shape[2]} there, or re-export the package")
                if shape is None or len(shape) < 2 or not all(isinstance(d, int) for d in shape[-2:]):
                    continue
                if tuple(shape[-2:]) != self.size:
                    raise UserError(f"{self.package.path}: graph '{graph}' takes {name}s of {shape[-2]}x{shape[-1]}, "
                                    f"but its manifest.json says resolution {self.size[0]}x{self.size[1]}; set the "
                                    f"resolution to {shape[-2]}x{shape[-1]} there, or re-export the package")

    def _check_open(self) -> None:
        if self.closed:
            raise UserError(f"this {self.package.family} session was closed (close(), or the end of its with "
                            f"block); open a new one with vosrt.sdk.load({str(self.package.path)!r})")

    def _refuse_mask(self, mask, objects) -> None:
        if mask is not None or objects is not None:
            given = "mask" if mask is not None else "objects"   # the argument the caller passed
            raise UserError(f"{given}: {self.package.family} sessions segment without masks or objects "
                            f"(unsupervised); call push(frame) alone")

    def _pad_fill(self) -> tuple[float, float, float]:
        """The letterbox padding colour (RGB in [0, 1]): see :attr:`pad_with_mean`."""
        if not self.pad_with_mean:
            return (0.0, 0.0, 0.0)
        mean = ((getattr(self.package, "manifest", None) or {}).get("input") or {}).get("mean")
        return tuple(float(v) for v in mean) if mean is not None else (0.0, 0.0, 0.0)   # checked by load_package

    def _letterbox(self, frame_shape) -> Letterbox:
        """The letterbox from frames of ``frame_shape`` to the package size (one per frame size)."""
        key = tuple(int(s) for s in frame_shape)
        if key not in self._letterboxes:
            if len(self._letterboxes) >= _LETTERBOXES:   # frames of ever new sizes (crops): constant memory
                del self._letterboxes[next(iter(self._letterboxes))]
            self._letterboxes[key] = Letterbox(key, self.size, self._pad_fill())
        return self._letterboxes[key]
