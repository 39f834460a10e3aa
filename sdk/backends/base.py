"""The backend interface: what a session needs from an inference runtime.

A backend opens the graphs of one model package and runs them by name with named inputs. It also owns
the few long-lived buffers a session keeps between frames (the STCN memory bank, the 3DC-Seg clip
window), so that on a GPU backend they are allocated once in device memory and never cross the bus:
per frame only the image goes in and the label map comes out.

Tensors handed around are *backend tensors*: whatever the backend runs on (a numpy array for the CPU
backends, an ``OrtValue`` on the ONNX Runtime CUDA backend, a ``torch.Tensor`` for the torch backend,
a device pointer wrapper for TensorRT). Sessions never look inside them; they pass them back to the
same backend, and call :meth:`Backend.download` only for what the user asked to see.

Writing a backend (e.g. TensorRT) means subclassing :class:`Backend` and implementing the abstract
methods below; sessions need nothing else. Every method's contract is stated on it:

=====================  ==========================================================================
``run``                run one graph; inputs by name (host numpy arrays or backend tensors)
``upload``             numpy -> backend tensor (the per-frame image, user masks)
``download``           backend tensor -> numpy (labels, probabilities on request)
``zeros``              allocate a zero-filled backend tensor once (memory bank, clip window)
``write``              copy a tensor into a region of a preallocated one along one axis (in place)
``read``               a region of a tensor along one axis, usable as a graph input
``shape``              shape of a backend tensor
=====================  ==========================================================================

``write`` and ``read`` are the only data movement sessions do on the device. On strided layouts (the
memory bank is ``[B, C, N]`` and a memory frame is ``h*w`` columns of every channel) ``write`` is a
2-D strided copy (``cudaMemcpy2D``-shaped: ``prod(shape[:axis])`` rows); ``read`` may return a view
where the backend can bind one, or a copy into scratch space.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from vosrt.sdk.errors import UserError, is_whole

# A backend's own tensor type (numpy.ndarray, onnxruntime.OrtValue, torch.Tensor, ...).
Tensor = Any


class Backend(ABC):
    """Runs the graphs of one model package (see the module docstring for the contract).

    Subclasses set :attr:`name` (what ``vosrt.sdk.load(..., backend=NAME)`` accepts), take the
    :class:`vosrt.sdk.package.Package` as first constructor argument plus keyword options, and set
    :attr:`device` (``"cpu"`` or ``"cuda"``) so that sessions and ``vosrt bench`` can report it.
    """

    name: ClassVar[str] = "abstract"
    device: str = "cpu"
    # The values the ``device`` option takes.
    devices: ClassVar[tuple[str, ...]] = ("auto", "cpu", "cuda")
    # Most objects the graphs accept at once (an engine's optimisation profile); None: no limit.
    max_objects: int | None = None
    # Most STCN memory frames the graphs accept (vosrt build --max-memory-frames); None: no limit.
    max_memory_frames: int | None = None

    @classmethod
    def check_options(cls, package, **options) -> None:
        """Refuse, without opening anything, what the constructor would refuse of ``options`` before it loads
        a graph or an engine: unknown names, bad values, a device or runtime this host lacks, files the
        options or the package name that are missing. ``vosrt bench`` checks both of its backends with it
        before timing either; constructors call it first. This default refuses nothing."""

    # ----------------------------------------------------------------------------- graphs
    @abstractmethod
    def run(self, graph: str, inputs: Mapping[str, Tensor], outputs: Sequence[str] | None = None
            ) -> dict[str, Tensor]:
        """Run graph ``graph`` (a key of the manifest's ``graphs``) on named inputs.

        ``inputs`` values are numpy arrays or tensors this backend returned earlier. ``outputs`` names
        the outputs wanted (default: all the graph's outputs). Returns backend tensors by output name;
        they stay valid until the same graph runs again (a backend may reuse output buffers), so a
        session that keeps one across runs must ``write`` it into its own buffer.
        """

    def input_names(self, graph: str) -> list[str]:
        """Names of ``graph``'s inputs. Optional inputs such as ``top_k`` may be absent."""
        raise NotImplementedError

    def input_shape(self, graph: str, name: str) -> tuple | None:
        """Shape of input ``name`` of ``graph`` as the graph declares it (ints, or strings for dynamic
        axes), or None where the backend cannot tell. Sessions check image sizes with it at open."""
        return None

    def input_dtype(self, graph: str, name: str) -> np.dtype:
        """Element type ``graph`` takes for input ``name``: float32 unless the backend tells otherwise (an
        fp16 engine's memory-bank inputs are float16, and the STCN tracker sizes its bank from it)."""
        return np.dtype(np.float32)

    # ----------------------------------------------------------------------------- data
    @abstractmethod
    def upload(self, array: np.ndarray) -> Tensor:
        """A backend tensor holding a copy of ``array`` (C-contiguous numpy)."""

    @abstractmethod
    def download(self, tensor: Tensor) -> np.ndarray:
        """A numpy copy of ``tensor`` (synchronises with the device if needed)."""

    @abstractmethod
    def zeros(self, shape: Sequence[int], dtype: type = np.float32) -> Tensor:
        """A new zero-filled tensor, allocated once by the caller and written in place afterwards."""

    @abstractmethod
    def write(self, dst: Tensor, axis: int, start: int, src: Tensor) -> None:
        """In place: ``dst[(:,)*axis, start:start+n] = src`` where ``n = src.shape[axis]``.

        ``src`` has ``dst``'s shape except along ``axis`` (trailing axes may be given flattened:
        a ``[1, 64, h, w]`` key can be written into a ``[1, 64, N]`` bank, the last two axes counted
        as one). ``src`` may be a numpy array or a backend tensor. ``dst`` keeps its allocation.
        """

    @abstractmethod
    def read(self, src: Tensor, axis: int, start: int, stop: int) -> Tensor:
        """``src[(:,)*axis, start:stop]`` as a tensor a graph can take as input.

        A view where the backend can bind one, else a copy; valid until ``src`` is written again.
        """

    @abstractmethod
    def shape(self, tensor: Tensor) -> tuple[int, ...]:
        """Shape of a backend tensor."""

    def nbytes(self, tensor: Tensor) -> int:
        """Bytes held by ``tensor`` on its device (memory accounting in tests and ``vosrt bench``)."""
        return int(np.prod(self.shape(tensor))) * 4

    def synchronize(self) -> None:
        """Wait for queued device work (timing). CPU backends return at once."""

    def close(self) -> None:
        """Release sessions and device buffers. The backend must not be used afterwards."""

    def describe(self) -> str:
        """One line for logs and ``vosrt bench``: backend name, device, form or engine precision."""
        return f"{self.name} ({self.device})"


def flatten_to(src_shape: Sequence[int], dst_ndim: int) -> tuple[int, ...]:
    """``src_shape`` with its trailing axes merged so that it has ``dst_ndim`` axes.

    ``[1, 64, h, w]`` -> ``[1, 64, h*w]`` for a ``[1, 64, N]`` memory bank. Shared by backends so that
    they agree on what :meth:`Backend.write` accepts.
    """
    src_shape = tuple(int(s) for s in src_shape)
    if len(src_shape) <= dst_ndim:
        return src_shape
    head = src_shape[:dst_ndim - 1]
    return (*head, int(np.prod(src_shape[dst_ndim - 1:])))


def check_threads(threads) -> int:
    """The ``threads`` option of a CPU backend as an int (0: the runtime's own choice, as for None); UserError
    for anything but a whole number >= 0, so that every backend refuses the same values the same way."""
    if threads is None:
        return 0
    if not is_whole(threads) or threads < 0:
        raise UserError(f"threads: expected a whole number of threads >= 0 (0 or None: the runtime's default), "
                        f"got {threads!r}")
    return int(threads)


def check_input(backend: str, graph: str, name: str, declared: tuple | None, dtype: np.dtype, got_shape,
                got_dtype) -> None:
    """UserError unless an input of ``got_shape`` and ``got_dtype`` fits input ``name`` of ``graph`` as declared:
    ``dtype`` and the rank and static dimensions of ``declared`` (ints; strings are dynamic axes; None: not
    known, only the dtype is checked). For backends whose runtime does not check inputs itself (torch), so that
    they refuse what ONNX Runtime refuses."""
    got_shape = tuple(int(d) for d in got_shape)
    fits = np.dtype(got_dtype) == np.dtype(dtype) if isinstance(got_dtype, np.dtype) else False
    if declared is not None:
        fits = fits and len(got_shape) == len(declared) and all(
            not isinstance(want, (int, np.integer)) or want == have for want, have in zip(declared, got_shape))
    if not fits:
        want = "[" + ", ".join(str(d) for d in declared) + "]" if declared is not None else "any shape"
        raise UserError(f"{backend} backend: input '{name}' of graph '{graph}': expected {np.dtype(dtype)} {want} "
                        f"(names are dynamic axes), got {got_dtype} [{', '.join(map(str, got_shape))}]; feed it "
                        "what the graph takes (sessions letterbox frames to the package resolution)")


# Keyword options of one backend only, by the backend that takes them: an option given to another backend is
# refused naming the backend it belongs to (load(pkg, checkpoint=...) on ONNX Runtime is a torch option).
BACKEND_OPTIONS = {
    "checkpoint": "torch", "model": "torch",
    "form": "onnxruntime", "io_binding": "onnxruntime", "providers": "onnxruntime", "memory_arena": "onnxruntime",
    "precision": "tensorrt", "plugin_lib": "tensorrt", "stream": "tensorrt", "cuda_graphs": "tensorrt",
}
# Options of more than one backend: device (all three) and threads (onnxruntime and torch).
COMMON_OPTIONS = ("device", "threads")
# The command-line flag of an option, where vosrt run / live / bench have one.
_OPTION_FLAGS = {"checkpoint": "--checkpoint CK"}


def refuse_unknown_options(backend: str, unused) -> None:
    """UserError for keyword options that backend ``backend`` does not take, naming the backend each one belongs
    to (with its command-line flags where the CLI has them); nothing when ``unused`` is empty."""
    if not unused:
        return
    names = sorted(unused)
    belongs = [f"{name} is an option of backend='{BACKEND_OPTIONS[name]}'"
               + (f" (command line: --backend {BACKEND_OPTIONS[name]} {_OPTION_FLAGS[name]})"
                  if name in _OPTION_FLAGS else "")
               for name in names if BACKEND_OPTIONS.get(name, backend) != backend]
    raise UserError(f"{backend} backend: unknown option(s) {', '.join(names)}"
                    + (f"; {'; '.join(belongs)}" if belongs else ""))


class DelegatingBackend(Backend):
    """A backend that passes every call to ``inner``: subclass it to observe one part (``vosrt bench``
    times ``run``, ``vosrt quantize`` records ``run``'s inputs) without restating the rest."""

    def __init__(self, inner: Backend):
        self.inner = inner
        self.name = inner.name
        self.device = inner.device

    @property
    def max_objects(self) -> int | None:
        # A class attribute of Backend, so __getattr__ below would never be asked for it: read it here, or a
        # wrapped TensorRT backend (vosrt bench, vosrt quantize) would hide its engines' object limit.
        return self.inner.max_objects

    @property
    def max_memory_frames(self) -> int | None:
        return self.inner.max_memory_frames

    def run(self, graph, inputs, outputs=None):
        return self.inner.run(graph, inputs, outputs)

    def input_names(self, graph):
        return self.inner.input_names(graph)

    def input_shape(self, graph, name):
        return self.inner.input_shape(graph, name)

    def input_dtype(self, graph, name):
        return self.inner.input_dtype(graph, name)

    def upload(self, array):
        return self.inner.upload(array)

    def download(self, tensor):
        return self.inner.download(tensor)

    def zeros(self, shape, dtype=np.float32):
        return self.inner.zeros(shape, dtype)

    def write(self, dst, axis, start, src):
        self.inner.write(dst, axis, start, src)

    def read(self, src, axis, start, stop):
        return self.inner.read(src, axis, start, stop)

    def shape(self, tensor):
        return self.inner.shape(tensor)

    def nbytes(self, tensor):
        return self.inner.nbytes(tensor)

    def synchronize(self):
        self.inner.synchronize()

    def close(self):
        self.inner.close()

    def describe(self):
        return self.inner.describe()

    def __getattr__(self, name):
        # backend-specific attributes (form, max_objects, ...) read through the wrapper
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
