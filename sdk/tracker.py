"""STCN ``Tracker``: semi-supervised VOS driven frame by frame.

    tracker = vosrt.sdk.load("packages/stcn-lite")
    labels = tracker.step(frame0, mask=first_mask)       # objects = ids in the mask
    for frame in frames:
        labels = tracker.step(frame)                     # [H, W] uint8 object ids, frame size
    labels = tracker.step(frame, mask=new_mask, objects=[3])   # object 3 appears mid-stream
    tracker.remove_objects([1])

``step`` is the frame-in/labels-out convenience; :meth:`Tracker.push` is the same step in the session
protocol every family speaks (:mod:`vosrt.sdk.session`): it returns ``[SegmentedFrame(index, labels)]``
at once (``latency`` 0), so :func:`vosrt.sdk.streaming.stream` drives a tracker like any session.

Per frame: ``encode_key`` once (shared by all objects), one ``segment`` run reading the memory for all
objects with one affinity, soft aggregation and arg-max in the graph; every ``mem_every`` frames (and on
every annotated frame) ``encode_value`` writes the frame into the :class:`~vosrt.sdk.memory.MemoryBank`.
Only the image goes to the backend and the label map comes back, unless probabilities are requested.

Against STCN's own inference (hkchengrex/STCN inference_core.py, inference_core_yv.py, eval_davis.py): the
readout (top-k 20 of (2k·q − ‖k‖²)/sqrt(Ck), softmax over the k), the soft aggregation's formula, ImageNet
normalisation and mem_every 5 are STCN's; the aggregation is computed from the logits
(:mod:`vosrt.training.ops.aggregate`), where STCN takes the float32 sigmoid first, which rounds to 1 above a logit of
about 12 (two objects both that sure split 1/3 : 2/3 there, 0.46 : 0.54 here, for logits 15.41 and 15.57). A memory frame is written every ``mem_every`` frames counted from the last memory
frame, as inference_core_yv.py (``abs(ti - last_ti) >= mem_every``); inference_core.py's ``ti % mem_every == 0``
is the same when the mask is on frame 0. No temporary last-frame memory (``include_last``, off by default in
STCN's scripts). Deliberate differences: the bank has a fixed capacity (slot 0 permanent, FIFO ring) where STCN's
grows without bound; all objects share one bank, so an object added mid-stream reads zero values in the frames
written before it (:mod:`vosrt.sdk.memory`), where inference_core_yv.py keeps one bank per object, started at the
object's first mask; a mid-stream mask is not soft-aggregated again (:meth:`Tracker._apply_mask`); and labels are
arg-maxed at the package size and resized nearest-neighbour, where STCN resizes the probabilities bilinearly to
the output size first (the same at DAVIS 480p, where only padding is cropped). An exact tie between objects goes to
the one added first, where STCN's arg-max over ids takes the lower id (the same unless objects are added out of id
order).

Frames are ``[H, W, 3]`` uint8 or float (0..1); ``color="bgr"`` (the default) matches OpenCV's
``VideoCapture``/``imread``, ``color="rgb"`` PIL and imageio. Bad input raises ``UserError`` before any
state changes, so the tracker stays usable.
"""
from __future__ import annotations

import shlex
from collections.abc import Sequence, Set as AbstractSet
from pathlib import Path

import numpy as np

from vosrt.sdk.backends.base import Backend
from vosrt.sdk.errors import UserError, is_whole
from vosrt.sdk.letterbox import check_image, check_label_map
from vosrt.sdk.memory import MemoryBank
from vosrt.sdk.session import SegmentedFrame, Session, serialized

MAX_OBJECT_ID = 255   # a tracker's object ids are 1..255 (its label maps are uint8, 0 the background)


def _check_ids(objects, name: str = "objects") -> list[int]:
    """The ids of a list, tuple, 1-D array or set of object ids (a set's in ascending order), checked."""
    unordered = isinstance(objects, AbstractSet)
    if unordered:
        objects = list(objects)
    if isinstance(objects, (str, bytes)) or not hasattr(objects, "__iter__") or np.ndim(objects) != 1:
        one = isinstance(objects, (int, np.integer)) and not isinstance(objects, (bool, np.bool_))
        raise UserError(f"{name}: expected a list of object ids (integers 1..{MAX_OBJECT_ID}), got {objects!r}"
                        + (f"; for one object write {name}=[{int(objects)}]" if one else ""))
    ids = []
    for obj in objects:
        if isinstance(obj, (bool, np.bool_)) or not isinstance(obj, (int, np.integer)):
            raise UserError(f"{name}: object ids must be integers 1..{MAX_OBJECT_ID}, got {obj!r}")
        if not 1 <= int(obj) <= MAX_OBJECT_ID:
            raise UserError(f"{name}: object ids must be in 1..{MAX_OBJECT_ID} (0 is background), got {int(obj)}")
        ids.append(int(obj))
    if len(set(ids)) != len(ids):
        raise UserError(f"{name}: repeated object id in {ids}")
    return sorted(ids) if unordered else ids


def fixed_top_k_message(package, backend: str, asked: int) -> str:
    """The refusal of a ``top_k`` that the segment graph of ``package`` on ``backend`` cannot take (it holds the
    package's top_k as a constant), with what the user can run instead: on TensorRT, ONNX Runtime (whose graphs
    take any top_k) or engines built from a package exported with that top_k; elsewhere that export."""
    fixed = package.streaming["top_k"]
    out = f"{Path(package.path).name}-top{asked}"   # in the working folder, not beside an installed package
    export = shlex.join(["vosrt", "export", package.family, "--checkpoint", str(package.checkpoint or "CK"), "--out",
                         out, "--size", str(package.height), str(package.width), "--top-k", str(asked)])
    asked_as = f"top_k={asked} (command line: --top-k {asked})"
    if backend == "tensorrt":
        return (f"{asked_as}: the TensorRT engines of {package.path} hold top_k fixed at {fixed}, the package's; "
                f"leave top_k at {fixed}, or run on ONNX Runtime, which takes any top_k (backend='onnxruntime', "
                f"command line: --backend onnxruntime), or export a package with top_k {asked} and build its engines: "
                f"`{export}`, then `vosrt build {shlex.quote(out)}`")
    return (f"{asked_as}: the segment graph of {package.path} holds top_k fixed at {fixed} on {backend} (it was "
            f"exported without a top_k input); leave top_k at {fixed}, or export the package again with top_k "
            f"{asked}: `{export}`")


class Tracker(Session):
    """An STCN session over one backend (see the module docstring).

    ``mem_every``, ``top_k``, ``memory_capacity`` and ``max_objects`` (objects tracked at once, 32)
    default to the package manifest's ``streaming`` values; on TensorRT engines ``max_objects`` is at
    most the engines' profile maximum (``vosrt build --max-objects``), and ``memory_capacity`` at most their
    memory frames (``--max-memory-frames``; the package's default is lowered to it, a larger value asked for is
    refused). ``color`` is the channel order
    of the frames given to :meth:`step`. Speaks the session protocol (:mod:`vosrt.sdk.session`):
    :meth:`push` returns the frame at once (``latency`` 0).
    """

    latency = 0
    label_dtype = np.uint8
    takes_mask = True
    pad_with_mean = True   # STCN pads the normalised frame with zeros (util/tensor_util.py pad_divide_by)

    def __init__(self, backend: Backend, package, mem_every: int | None = None, top_k: int | None = None,
                 memory_capacity: int | None = None, color: str = "bgr", max_objects: int | None = None):
        super().__init__(backend, package, color)
        streaming = package.streaming
        self.max_objects = self._object_limit(max_objects)
        self.mem_every = self._whole("mem_every", mem_every, 1, "a positive whole number of frames")
        self.top_k = self._whole("top_k", top_k, 0, "0 (all) or a positive whole number")
        # Fed whenever the graph takes it (the portable form): the graph's own default is the export's top_k,
        # which a manifest edited since (streaming.top_k) no longer names.
        self._feed_top_k = "top_k" in backend.input_names("segment")
        if self.top_k != streaming["top_k"] and "top_k" not in backend.input_names("segment"):
            raise UserError(fixed_top_k_message(package, backend.name, self.top_k))
        capacity = self._memory_limit(memory_capacity)
        h, w = package.height // package.stride, package.width // package.stride
        fit_top_k = getattr(backend, "fit_top_k", None)   # ONNX Runtime's plugin form reads top_k <= 64 (or all)
        if self._feed_top_k and fit_top_k is not None:
            fit_top_k("segment", self.top_k, capacity * h * w)
        # The bank holds what the segment graph reads: float16 for an fp16 engine (vosrt.export.fp16).
        self.memory = MemoryBank(backend, capacity, h * w, backend.input_dtype("segment", "mem_key"))
        # k = min(top_k, N) in the graph, so a top_k beyond the bank's positions means "all" and is fed as their
        # number, which the int64 input always holds (any Python int is a whole number here).
        self._top_k_input = np.array([min(self.top_k, self.memory.capacity * self.memory.hw)], np.int64)
        self.objects: list[int] = []   # object ids, in the order of the graphs' object axis
        self.frame_index = -1
        self._since_memory = 0

    # ------------------------------------------------------------------ public
    @property
    def frames_in(self) -> int:
        """Frames stepped since the last reset (the index the next frame gets)."""
        return self.frame_index + 1

    #: ``push``/``step`` take ``remember=False`` (:func:`vosrt.sdk.streaming.stream` passes it for a damaged frame)
    forgets_frames = True

    @serialized
    def push(self, frame: np.ndarray, mask: np.ndarray | None = None, objects: Sequence[int] | None = None,
             remember: bool = True) -> list[SegmentedFrame]:
        """The session protocol's form of :meth:`step`: returns ``[SegmentedFrame(index, labels)]``."""
        labels = self._step(frame, mask, objects, False, "frame", remember)
        return [SegmentedFrame(self.frame_index, labels)]

    @serialized
    def step(self, image: np.ndarray, mask: np.ndarray | None = None, objects: Sequence[int] | None = None,
             return_probabilities: bool = False, remember: bool = True):
        """Segment one frame; returns its ``[H, W]`` uint8 label map (object ids, frame size).

        ``mask``: an optional ``[H, W]`` label map for this frame (integer ids, 0 background). Objects in
        ``objects`` (default: every id in the mask) take the mask as their truth on this frame; ids not
        yet tracked are added. Other tracked objects keep their prediction outside the given objects.
        Before any mask, frames give all-background maps.
        With ``return_probabilities=True`` returns ``(labels, prob)``, ``prob`` ``[1 + O, H, W]`` float32:
        background then each object in :attr:`objects` order.
        ``remember=False``: segment the frame but never write it into the memory (a frame known to be damaged,
        such as a JPEG cut short, would mislead every later frame reading it); when it was due, the next frame is
        written instead. Not with a mask: a mask's frame is always written.
        """
        return self._step(image, mask, objects, return_probabilities, "image", remember)

    def _step(self, image, mask, objects, return_probabilities: bool, argument: str, remember: bool = True):
        """:meth:`step`'s body; ``argument`` is the name the caller gave the frame (errors name it)."""
        self._check_open()
        if not isinstance(remember, (bool, np.bool_)):
            raise UserError(f"remember: expected True or False, got {remember!r}")
        if mask is not None and not remember:
            raise UserError("remember=False with a mask: a mask's frame is always written into the memory (it is "
                            "the objects' truth); give the mask on a frame that can be remembered")
        image = check_image(image, argument)
        frame_shape = image.shape[:2]
        given: list[int] = []
        if mask is not None:
            mask = check_label_map(mask, frame_shape)
            present = [int(i) for i in np.unique(mask) if i != 0]
            given = _check_ids(objects) if objects is not None else present
            if objects is not None and not given:
                raise UserError(f"objects: an empty list names no object of the mask (ids present: {present}); "
                                "name at least one, or leave objects out to take every id of the mask")
            if not given:
                raise UserError("mask: no object in it (every pixel is 0 = background); give a mask with "
                                "at least one object id, or call step(image) without a mask")
            missing = sorted(set(given) - set(present))
            if missing:
                raise UserError(f"objects {missing} are not in the mask (ids present: {present})")
        elif objects is not None:
            raise UserError("objects: given without a mask; objects name which ids of the mask to use")
        new_objects = self.objects + [obj for obj in given if obj not in self.objects]
        if len(new_objects) > self.max_objects:
            added = len(new_objects) - len(self.objects)
            raise UserError(f"mask: {added} new object(s) would make {len(new_objects)} tracked objects, more than "
                            f"this session's limit of {self.max_objects} (max_objects); "
                            + self._raise_limit_hint(len(new_objects)))
        box = self._letterbox(frame_shape)

        # The input is valid. Every backend run happens before any state changes, so a backend that
        # fails part-way (out of memory, a lost device) leaves the tracker as it was: a step is
        # all-or-nothing.
        backend = self.backend
        image_in = backend.upload(box.image(image, self.color))               # [1, 3, H, W]
        encoded = backend.run("encode_key", {"image": image_in})
        predicted = None
        if self.objects and not self.memory.empty:
            predicted = self._segment(encoded)

        value = None
        since_memory = self._since_memory
        if given:
            labels, prob_host = self._apply_mask(box.labels(mask), given, new_objects, predicted)
            value = self._encode_value(image_in, encoded, backend.upload(prob_host[1:, None]))  # masks [O, 1, H, W]
            probabilities = prob_host
        elif predicted is not None:
            labels = backend.download(predicted["labels"])[0]                 # [H, W] index 0..O
            since_memory += 1
            if since_memory >= self.mem_every and remember:
                masks = backend.read(predicted["prob"], 0, 1, len(self.objects) + 1)
                value = self._encode_value(image_in, encoded, masks)
            probabilities = None
        else:
            labels = np.zeros(self.size, np.uint8)
            probabilities = np.ones((1, *self.size), np.float32)
        if return_probabilities and probabilities is None:
            probabilities = backend.download(predicted["prob"])[:, 0]

        # The outputs are made before the state changes: made after it, Ctrl-C while the label map was resized to the
        # frame kept the frame in the stream (and memory) but returned nothing, and the same frame pushed again got the
        # next index and went into memory twice.
        ids = np.zeros(256, np.uint8)
        ids[1:len(new_objects) + 1] = new_objects
        out = box.labels_back(ids[labels])
        if given:
            # The user's mask is the truth at full resolution: no letterbox round trip for given objects.
            union = np.isin(mask, given)
            out = np.where(union, mask, np.where(np.isin(out, given), 0, out)).astype(np.uint8)
        if return_probabilities:
            out = out, box.probabilities_back(probabilities.astype(np.float32, copy=False))

        self._commit(new_objects, encoded["key"], value, since_memory)
        return out

    def add_objects(self, image: np.ndarray, mask: np.ndarray, objects: Sequence[int] | None = None,
                    return_probabilities: bool = False):
        """Start tracking the objects of ``mask`` (all its ids, or ``objects``) on this frame: the same as
        ``step(image, mask, objects)``, named for readability when objects appear mid-stream."""
        return self.step(image, mask, objects, return_probabilities)

    @serialized
    def remove_objects(self, objects: Sequence[int]) -> None:
        """Stop tracking ``objects`` (ids); unknown ids raise UserError. Removing the last object resets
        the memory, so the next mask given starts afresh (and becomes the permanent frame). All-or-nothing,
        like a step: if the backend fails while the memory's values are moved, the tracker is as it was."""
        self._check_open()
        ids = _check_ids(objects)
        unknown = sorted(set(ids) - set(self.objects))
        if unknown:
            raise UserError(f"remove_objects: {unknown} are not tracked (tracked: {self.objects})")
        keep = [i for i, obj in enumerate(self.objects) if obj not in ids]
        saved, objects = self.memory.snapshot(), self.objects
        try:
            self.memory.set_objects(keep, len(keep))
            # Inside the try: Ctrl-C right after the values moved, before the object list followed, left the bank
            # with the kept objects and the tracker with all of them; removing again then moved the wrong rows.
            self.objects = [objects[i] for i in keep]
            if not self.objects:
                self.memory.reset()
        except BaseException:
            self.memory.restore(saved)
            self.objects = objects
            raise

    @serialized
    def reset(self) -> None:
        """Forget all objects and memory (a new video). The key buffer stays allocated; the value buffer, sized by
        the objects, is made again for the objects of the next mask."""
        self._check_open()
        self.objects = []
        self.memory.set_objects([], 0)
        self.memory.reset()
        self.frame_index = -1
        self._since_memory = 0

    # ------------------------------------------------------------------ internals
    def _release(self) -> None:
        self.memory.release()

    def _segment(self, encoded: dict) -> dict:
        mem_key, mem_value = self.memory.read()
        inputs = {"mem_key": mem_key, "mem_value": mem_value, "query_key": encoded["key"],
                  "f16_thin": encoded["f16_thin"], "f8": encoded["f8"], "f4": encoded["f4"]}
        if self._feed_top_k:
            inputs["top_k"] = self._top_k_input.copy()
        return self.backend.run("segment", inputs)

    def _apply_mask(self, mask: np.ndarray, given: list[int], new_objects: list[int], predicted: dict | None):
        """Merge a user mask (package size) into the prediction, over the object order ``new_objects``
        (the tracked objects, then the new ones). Returns (index map ``[H, W]`` uint8, probabilities
        ``[1 + O, H, W]``). Changes no state.

        Deviation from STCN's ``interact`` (inference_core_yv.py), deliberate: STCN zeroes every object where the
        mask has a given object and sets the given objects from the mask as here, but then soft-aggregates the
        merged probabilities again (model/aggregate.py) and encodes the memory value from that, which moves the
        kept objects' already aggregated probabilities (0.8 against a background of 0.2 becomes 16/17). Here each
        kept object keeps its own prediction, given pixels are exactly 0/1 and the background is 1 − Σ objects
        (the arg-max differs only where the background and an object are close). A first mask (inference_core.py)
        gives the same either way."""
        union = np.isin(mask, given)                                          # [H, W]
        prob = np.zeros((len(new_objects), *self.size), np.float32)           # [O, H, W]
        old_prob = self.backend.download(predicted["prob"])[:, 0] if predicted is not None else None
        for k, obj in enumerate(new_objects):
            if obj in given:
                prob[k] = mask == obj
            elif old_prob is not None:
                prob[k] = old_prob[1 + self.objects.index(obj)] * ~union
        background = np.clip(1.0 - prob.sum(0, keepdims=True), 0.0, 1.0)
        prob = np.concatenate([background, prob])                             # [1 + O, H, W]
        return prob.argmax(0).astype(np.uint8), prob

    def _encode_value(self, image_in, encoded: dict, masks):
        return self.backend.run("encode_value", {"image": image_in, "f16": encoded["f16"], "masks": masks},
                                ["value"])["value"]                          # [O, Cv, h, w]

    def _commit(self, new_objects: list[int], key, value, since_memory: int) -> None:
        """Apply one step's results to the state: the object set, the memory frame (``value`` or None)
        and the counters. The bank's bookkeeping is restored if a write fails."""
        saved, state = self.memory.snapshot(), (self.objects, self._since_memory, self.frame_index)
        try:
            if new_objects != self.objects:
                self.memory.set_objects(list(range(len(self.objects))), len(new_objects))
            if value is not None:
                self.memory.add(key, value)
            # Inside the try: Ctrl-C right after the memory write, before the counters followed, kept the frame in
            # memory but not in the stream, and the same frame pushed again went into memory twice.
            self.objects = list(new_objects)
            self._since_memory = 0 if value is not None else since_memory
            self.frame_index = state[2] + 1
        except BaseException:
            self.memory.restore(saved)
            self.objects, self._since_memory, self.frame_index = state
            raise

    def _whole(self, name: str, asked, minimum: int, expected: str) -> int:
        """Setting ``name``: ``asked``, else the manifest's ``streaming`` value, as an int; UserError unless it is a
        whole number >= ``minimum`` (never truncated: 2.5 or "3" are refused, as for max_objects)."""
        value = asked if asked is not None else self.package.streaming[name]
        if not is_whole(value) or value < minimum:
            where = f" (from {self.package.path}/manifest.json, streaming.{name})" if asked is None else ""
            raise UserError(f"{name}: expected {expected}, got {value!r}{where}")
        return int(value)

    def _object_limit(self, asked) -> int:
        limit = self._whole("max_objects", asked, 1, "a positive whole number of objects")
        engine_limit = getattr(self.backend, "max_objects", None)
        if engine_limit is not None and limit > engine_limit:
            if asked is not None:
                raise UserError(f"max_objects={asked}: the TensorRT engines of {self.package.path} take at most "
                                f"{engine_limit} objects; rebuild them with "
                                f"{self._build_command('--max-objects', asked)}")
            limit = engine_limit
        return int(limit)

    def _memory_limit(self, asked) -> int:
        """The bank's capacity: ``asked`` or the package's, at most the frames the TensorRT engines were built
        for (``vosrt build --max-memory-frames``), whose profile refuses a longer memory once the bank fills."""
        capacity = self._whole("memory_capacity", asked, 2, "at least 2 frames, as a whole number (slot 0 keeps the "
                               "first annotated frame, the others the recent ones)")
        engine_limit = getattr(self.backend, "max_memory_frames", None)
        if engine_limit is None or capacity <= engine_limit:
            return capacity
        if asked is not None:
            raise UserError(f"memory_capacity={asked}: the TensorRT engines of {self.package.path} take at most "
                            f"{engine_limit} memory frames; rebuild them with "
                            f"{self._build_command('--max-memory-frames', asked)}, or ask for {engine_limit} or fewer")
        return engine_limit

    def _build_command(self, flag: str, value: int) -> str:
        """The `vosrt build` command that rebuilds this package's engines with ``flag value``, and otherwise as the
        engines the backend runs were built (their precision, other limits, --embed-plugins)."""
        from vosrt.sdk.backends.tensorrt import rebuild_command

        return f"`{rebuild_command(self.package.path, getattr(self.backend, 'build', None), {flag: value})}`"

    def _raise_limit_hint(self, wanted: int) -> str:
        engine_limit = getattr(self.backend, "max_objects", None)
        if engine_limit is not None and wanted > engine_limit:
            return (f"the TensorRT engines take at most {engine_limit} objects: rebuild them with "
                    f"{self._build_command('--max-objects', wanted)}, or remove objects first")
        return (f"raise it with vosrt.sdk.load(..., max_objects={wanted}) (vosrt run: "
                f"--max-objects {wanted}; each object costs memory and time on every frame), or remove objects "
                "first with remove_objects()")
