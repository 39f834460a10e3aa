"""The STCN memory bank: fixed capacity, allocated once on the backend's device.

Layout, as the ``segment`` graph reads it: keys ``[1, Ck, capacity*h*w]``, values ``[O, Cv, capacity*h*w]``;
memory frame ``s`` occupies columns ``s*h*w : (s+1)*h*w`` (slot-major, pixel-minor) of every channel.

Policy:

* Slot 0 holds the first frame added after a reset (the first annotated frame) and is never evicted:
  it is the only frame whose mask is known to be right.
* Slots 1..capacity-1 are a FIFO ring over everything else: once full, a new memory frame replaces the
  oldest non-permanent one. The readout is a softmax over all memory positions, so the order of slots
  in the buffer does not matter and no data is shifted.
* Until the bank is full, the graph sees only the filled slots (a prefix of the columns).

Objects are a dynamic dimension. Changing the object set is the one event that reallocates (the value
buffer, to the new object count); kept objects keep their values. A new object's values for memory
frames written before it appeared are **zeros**: those frames' images are gone, and zero values read
as "no evidence of this object there", so the object is found from the frame where it was annotated
(and from the memory frames written after it). Keys are shared by all objects and never reallocated.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vosrt.sdk.backends.base import Backend, Tensor
from vosrt.sdk.errors import UserError

# Positions (frames × h × w) the readout indexes with int32.
MAX_POSITIONS = 2**31
_LOWER_CAPACITY = "lower memory_capacity (vosrt run --memory-capacity, or the package's streaming.memory_capacity)"


class MemoryBank:
    """Keys and values of up to ``capacity`` memory frames, each ``hw`` = h*w positions (see module doc)."""

    def __init__(self, backend: Backend, capacity: int, hw: int, dtype=np.float32):
        if int(capacity) < 2:
            # Slot 0 is the permanent first annotated frame; the ring needs at least one more slot, or
            # every later memory frame (and the mask of an object added later) would have nowhere to go.
            raise UserError(f"memory_capacity: expected at least 2 frames (slot 0 keeps the first annotated frame, "
                            f"the others the recent ones), got {capacity}")
        if int(capacity) * int(hw) >= MAX_POSITIONS:
            raise UserError(f"memory_capacity: {capacity} frames of {hw} positions exceed the {MAX_POSITIONS - 1} "
                            f"memory positions the readout indexes; {_LOWER_CAPACITY}")
        self.backend = backend
        self.dtype = np.dtype(dtype)  # what the segment graph reads: float16 for fp16 engines
        self.capacity = int(capacity)
        self.hw = int(hw)
        self.keys: Tensor | None = None    # [1, Ck, capacity*hw], allocated at the first add
        self.values: Tensor | None = None  # [O, Cv, capacity*hw]
        self.num_objects = 0
        self.frames = 0          # filled slots
        self._next = 1           # ring position of the next non-permanent write
        self.allocations = 0     # buffer allocations so far (tests check it stays constant)
        self.writes = 0          # memory frames added since the last reset
        # The frame the last add() overwrote in a full ring (slot, key, value, the value buffer written), copied into
        # the spare one-slot buffers: restore() puts it back (see snapshot()).
        self._evicted: tuple | None = None
        self._spare_key: Tensor | None = None     # [1, Ck, hw]
        self._spare_value: Tensor | None = None   # [O, Cv, hw]

    # ---------------------------------------------------------------- state
    @property
    def empty(self) -> bool:
        return self.frames == 0

    def reset(self) -> None:
        """Forget every memory frame (buffers are kept; the next frame added becomes permanent)."""
        self.frames, self._next, self.writes = 0, 1, 0

    def release(self) -> None:
        """Drop the key and value buffers (the session was closed): empty, no object; the next add would allocate."""
        self.keys = self.values = self._spare_key = self._spare_value = None
        self._evicted = None
        self.num_objects = 0
        self.reset()

    def nbytes(self) -> int:
        """Device bytes held by the key and value buffers."""
        return sum(self.backend.nbytes(t) for t in (self.keys, self.values) if t is not None)

    def snapshot(self) -> tuple:
        """The bank's bookkeeping (buffers by reference), for :meth:`restore` after a failed update. It starts the
        update: the frame an :meth:`add` evicts from a full ring after it is kept (one spare slot, allocated at the
        first eviction) until the next snapshot, so that restore() can put it back."""
        self._evicted = None
        return (self.keys, self.values, self.num_objects, self.frames, self._next, self.writes)

    def restore(self, saved: tuple) -> None:
        """Go back to a :meth:`snapshot`. Slots past the filled ones may hold new data; they are unread. A frame that
        an add() since the snapshot evicted from a full ring is written back: restored bookkeeping alone left the new
        frame in its slot, read as a memory frame by the next step (pushed again after Ctrl-C, the frame read itself,
        and the evicted frame was lost)."""
        self.keys, self.values, self.num_objects, self.frames, self._next, self.writes = saved
        if self._evicted is not None:
            slot, key, value, values = self._evicted
            self.backend.write(self.keys, 2, slot * self.hw, key)
            if self.values is values:   # else the add wrote a value buffer that the restore dropped
                self.backend.write(self.values, 2, slot * self.hw, value)
            self._evicted = None

    def _allocate(self, shape: tuple) -> Tensor:
        try:
            tensor = self.backend.zeros(shape, self.dtype)
        except MemoryError:
            size = int(np.prod(shape, dtype=np.float64) * self.dtype.itemsize)
            raise UserError(f"memory_capacity: a memory bank of {self.capacity} frames needs a {size / 2**30:.1f} GiB "
                            f"buffer {list(shape)}, which cannot be allocated; {_LOWER_CAPACITY}") from None
        self.allocations += 1
        return tensor

    # ---------------------------------------------------------------- writing
    def add(self, key: Tensor, value: Tensor) -> int:
        """Add one memory frame: ``key`` ``[1, Ck, h, w]``, ``value`` ``[O, Cv, h, w]`` (backend tensors).
        Returns the slot written."""
        backend = self.backend
        key_shape, value_shape = backend.shape(key), backend.shape(value)
        if value_shape[0] != self.num_objects:
            raise ValueError(f"value has {value_shape[0]} objects, the bank holds {self.num_objects}")
        if self.keys is None:
            self.keys = self._allocate((1, key_shape[1], self.capacity * self.hw))
        if self.values is None or backend.shape(self.values)[1] != value_shape[1]:
            self.values = self._allocate((self.num_objects, value_shape[1], self.capacity * self.hw))
        if self.frames == 0:
            slot = 0
        elif self.frames < self.capacity:
            slot = self.frames
        else:
            slot = self._next
        if slot != 0:
            self._next = slot + 1 if slot + 1 < self.capacity else 1
        if self.frames == self.capacity:
            self._keep_evicted(slot)
        backend.write(self.keys, 2, slot * self.hw, key)
        try:
            backend.write(self.values, 2, slot * self.hw, value)
        except BaseException:
            # Interrupted (Ctrl-C) between the two writes: in a full ring the slot would pair this frame's key
            # with the evicted frame's value, which the caller's restore() cannot undo. Finish the slot, so that
            # it holds one frame whole whatever is restored (a write that fails again raises with it).
            backend.write(self.values, 2, slot * self.hw, value)
            raise
        self.frames = min(self.frames + 1, self.capacity)
        self.writes += 1
        return slot

    def _keep_evicted(self, slot: int) -> None:
        """Copy full-ring slot ``slot`` into the spare slot buffers before an add overwrites it (see restore())."""
        backend, columns = self.backend, slot * self.hw
        key = backend.read(self.keys, 2, columns, columns + self.hw)
        value = backend.read(self.values, 2, columns, columns + self.hw)
        if self._spare_key is None or backend.shape(self._spare_key) != backend.shape(key):
            self._spare_key = backend.zeros(backend.shape(key), self.dtype)
        if self._spare_value is None or backend.shape(self._spare_value) != backend.shape(value):
            self._spare_value = backend.zeros(backend.shape(value), self.dtype)
        backend.write(self._spare_key, 2, 0, key)
        backend.write(self._spare_value, 2, 0, value)
        self._evicted = (slot, self._spare_key, self._spare_value, self.values)

    def set_objects(self, keep: Sequence[int], total: int) -> None:
        """Change the object set: new object ``i < len(keep)`` takes old object ``keep[i]``'s values, objects
        ``len(keep)..total-1`` are new (zero values for the frames already in memory)."""
        if list(keep) == list(range(self.num_objects)) and total == self.num_objects:
            return
        self.num_objects = int(total)
        if self.values is None:
            return
        backend = self.backend
        old = self.values
        channels, columns = backend.shape(old)[1:]
        self.values = backend.zeros((self.num_objects, channels, columns), self.dtype) if self.num_objects else None
        self.allocations += 1
        for new_index, old_index in enumerate(keep):
            backend.write(self.values, 0, new_index, backend.read(old, 0, old_index, old_index + 1))

    # ---------------------------------------------------------------- reading
    def read(self) -> tuple[Tensor, Tensor]:
        """(mem_key ``[1, Ck, N]``, mem_value ``[O, Cv, N]``) over the filled slots, N = frames*hw."""
        if self.frames == self.capacity:
            return self.keys, self.values
        stop = self.frames * self.hw
        return self.backend.read(self.keys, 2, 0, stop), self.backend.read(self.values, 2, 0, stop)
