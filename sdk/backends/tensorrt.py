"""TensorRT backend: a package's engines (from ``vosrt build``) with every tensor in device memory.

* Memory and streams come from cuda-python (``cuda.bindings.runtime``, or ``cuda.cudart`` on older
  releases). The memory bank and the clip window are :class:`DeviceTensor` allocations made once by the
  sessions (``zeros``) and bound straight to the engines with ``set_tensor_address``; graph outputs live
  in buffers allocated at the optimisation profile's largest shapes when the backend opens, and
  ``write`` / ``read`` are device-to-device copies. Per frame only the image goes in and what the session
  downloads (the label map) comes out: :meth:`upload` keeps a host copy that is copied straight into the
  engine's input buffer when a graph runs.
* ``run`` accepts, besides numpy arrays and this backend's tensors, any object exposing
  ``__cuda_array_interface__`` (CuPy, PyTorch CUDA tensors, Numba, pycuda ``GPUArray``), bound without a copy
  when contiguous and of the engine's data type; :class:`DeviceTensor` exposes the interface too. Streams as
  the interface's version 3 says: work queued on the stream an object names is waited for (on the device) before
  the engine reads it, and the backend's tensors name the backend's stream.
* ``stream``: run on an external CUDA stream (an int handle, or an object with ``cuda_stream``, ``ptr``
  or ``handle``, e.g. ``torch.cuda.current_stream()``); by default the backend creates its own.
* ``cuda_graphs=True`` captures each graph into a CUDA graph the second time it runs with the same shapes
  and buffer addresses (a warm-up run must precede capture) and replays it afterwards; up to 256 per graph
  are kept, the least recently used destroyed to make room. A graph whose capture fails runs without one
  from then on (a line on stderr says so).
* It refuses, saying what to do: a package without engines, engines missing on disk, a missing plugin
  library or one compiled for another TensorRT major, engines built by another TensorRT version or for
  another GPU.

TensorRT and cuda-python are imported when the backend opens, so this module imports (and its refusals
can be tested) without them.
"""
from __future__ import annotations

import contextlib
import functools
import mmap
import os
import re
import shlex
import sys
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from vosrt.sdk.backends.base import Backend, Tensor, flatten_to, refuse_unknown_options
from vosrt.sdk.errors import UserError, install_command

PLUGIN_LIBRARY_NAME = "libvosrt_plugins.so"
# TensorRT wants every I/O tensor address 256-byte aligned; cudaMalloc gives that, views may not.
BINDING_ALIGNMENT = 256
MAX_COPY_PITCH = 2**31 - 1   # the largest pitch cudaMemcpy2D takes (cudaDeviceProp::memPitch on current GPUs)
PLUGIN_LIBRARY_ENV = "VOSRT_PLUGIN_LIB"
_GRAPH_CACHE_LIMIT = 256  # CUDA graphs kept per graph (one per distinct shape/address set), least recently used out
_SEEN_LIMIT = 4 * _GRAPH_CACHE_LIMIT   # shape/address sets run once (captured on their second run), oldest out


# --------------------------------------------------------------------------------------------------
# cuda-python


def cudart():
    """The cuda-python runtime module (``cuda.bindings.runtime`` or the older ``cuda.cudart``)."""
    try:
        from cuda.bindings import runtime
        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart as runtime
        return runtime
    except ImportError:
        raise UserError("the TensorRT backend needs cuda-python for device memory and streams: "
                        f"{install_command('trt')} (or pip install cuda-python)") from None


def check_cuda(result, what: str):
    """Unpack a cuda-python ``(error, *values)`` tuple; raise RuntimeError naming ``what`` on failure (MemoryError
    when the device is out of memory)."""
    rt = cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != rt.cudaError_t.cudaSuccess:
        _, text = rt.cudaGetErrorString(err)
        message = f"CUDA error in {what}: {text.decode() if isinstance(text, bytes) else text}"
        if err == getattr(rt.cudaError_t, "cudaErrorMemoryAllocation", None):
            # out of device memory: a MemoryError, as on the other backends (the memory bank names memory_capacity)
            raise MemoryError(message)
        raise RuntimeError(message)
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def _driver():
    """cuda-python's driver API module, or None."""
    try:
        from cuda.bindings import driver
    except ImportError:
        try:
            from cuda import cuda as driver
        except ImportError:
            return None
    return driver


def _get_context():
    """The calling thread's current CUDA context (cuCtxGetCurrent: a null one where it has none), or None where the
    driver API cannot be asked."""
    driver = _driver()
    if driver is None:
        return None
    err, context = driver.cuCtxGetCurrent()
    return context if int(err) == 0 else None


def _set_context(context) -> None:
    _driver().cuCtxSetCurrent(context)


@contextlib.contextmanager
def device_current(device: int | None):
    """``device`` the calling thread's current CUDA device inside (None: as it is), and the thread's own context
    current again after: exactly the one it had (cuCtxSetCurrent), a context of its own or none at all; setting its
    device back instead (cudaSetDevice) would make a primary context there, hundreds of MB on a GPU the process may
    never have used, in place of a context of the caller's."""
    if device is None:
        yield
        return
    rt = cudart()
    before = check_cuda(rt.cudaGetDevice(), "cudaGetDevice")
    if before == device:
        yield
        return
    saved = _get_context()
    check_cuda(rt.cudaSetDevice(device), f"cudaSetDevice({device})")
    try:
        yield
    finally:
        if saved is not None:
            _set_context(saved)
        else:   # no driver API here: its device, as the runtime sees it
            rt.cudaSetDevice(before)


def on_device(method):
    """``method`` of the backend run with the backend's device current on the calling thread (:func:`device_current`).
    CUDA's current device is per host thread: a session opened on device 1 (``cudaSetDevice(1)`` or
    ``torch.cuda.set_device(1)`` first) and stepped from another thread (a capture or UI thread, the live viewer's
    inference thread, where it is device 0) put its copies on device 0 and enqueued device-1 engines from there."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        with device_current(self.device_index):
            return method(self, *args, **kwargs)
    return call


def current_gpu() -> dict:
    """Name and compute capability of the current CUDA device: ``{"name": ..., "compute_capability": "9.0"}``."""
    rt = cudart()
    device = check_cuda(rt.cudaGetDevice(), "cudaGetDevice")
    props = check_cuda(rt.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return {"name": name.rstrip("\x00").strip(), "compute_capability": f"{props.major}.{props.minor}"}


def device_memory_used() -> int:
    """Bytes in use on the current device (total - free), as the driver reports them."""
    free, total = check_cuda(cudart().cudaMemGetInfo(), "cudaMemGetInfo")
    return int(total) - int(free)


def _stream_handle(stream) -> int:
    if isinstance(stream, int):
        return stream
    for attribute in ("cuda_stream", "ptr", "handle"):
        value = getattr(stream, attribute, None)
        if value is not None:
            return int(value)
    try:
        return int(stream)
    except (TypeError, ValueError):
        raise UserError(f"stream: expected a CUDA stream handle (int) or an object with cuda_stream/ptr/handle, "
                        f"got {type(stream).__name__}") from None


class _Allocation:
    """One cudaMalloc'd block, freed when the last tensor viewing it goes away."""

    __slots__ = ("ptr", "nbytes", "_owner", "_device", "__weakref__")

    def __init__(self, nbytes: int, owner: "TensorRTBackend | None" = None):
        self.nbytes = max(int(nbytes), 1)
        self.ptr = int(check_cuda(cudart().cudaMalloc(self.nbytes), f"cudaMalloc({self.nbytes})"))
        self._owner = owner
        # freed on its device, whichever thread drops the last view (no context made on another device for it)
        self._device = getattr(owner, "device_index", None)
        if owner is not None:
            owner.allocated_bytes += self.nbytes

    def free(self) -> None:
        if self.ptr:
            try:
                with device_current(self._device):
                    cudart().cudaFree(self.ptr)
            finally:   # counted as freed even where the device could not be made current (as cudaFree's status)
                if self._owner is not None:
                    self._owner.allocated_bytes -= self.nbytes
                self.ptr = 0

    def __del__(self):
        try:
            self.free()
        except Exception:  # interpreter shutdown: the driver may be gone already
            pass


class DeviceTensor:
    """A dense, C-contiguous tensor in device memory (a view of an allocation at a byte offset).

    Exposes ``__cuda_array_interface__`` (version 3), so CuPy, PyTorch or Numba can wrap it without a copy.
    """

    __slots__ = ("allocation", "offset", "shape", "dtype", "scratch")

    def __init__(self, allocation: _Allocation | None, shape: Sequence[int], dtype, offset: int = 0,
                 external_ptr: int = 0):
        self.allocation = allocation
        self.offset = int(offset) if allocation is not None else int(external_ptr)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.scratch: DeviceTensor | None = None  # read() copies of strided slices land here

    @property
    def ptr(self) -> int:
        """Device address of the first element."""
        return (self.allocation.ptr + self.offset) if self.allocation is not None else self.offset

    @property
    def nbytes(self) -> int:
        """Bytes the tensor's elements occupy."""
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def __cuda_array_interface__(self) -> dict:
        interface = {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ptr, False), "version": 3,
                     "strides": None}
        owner = self.allocation._owner if self.allocation is not None else None
        if owner is not None:
            # The stream the backend wrote it on (version 3): a consumer on another stream (PyTorch, CuPy) waits
            # for that work before reading; without the key it may read an output the engine has not written yet.
            # 0 is not allowed there: the legacy default stream is 1.
            interface["stream"] = int(owner.stream) or 1
        return interface

    def view(self, shape: Sequence[int], offset_bytes: int = 0) -> "DeviceTensor":
        """A tensor of ``shape`` over the same memory, ``offset_bytes`` further in."""
        if self.allocation is None:
            return DeviceTensor(None, shape, self.dtype, external_ptr=self.ptr + offset_bytes)
        return DeviceTensor(self.allocation, shape, self.dtype, self.offset + offset_bytes)


class _HostTensor:
    """What :meth:`TensorRTBackend.upload` returns: a host copy, copied to the device where it is used."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray):
        self.array = array

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)


# --------------------------------------------------------------------------------------------------
# package checks (no TensorRT needed)


def find_plugin_library(explicit: str | os.PathLike | None = None, recorded: str | None = None,
                        flag: str | None = None) -> Path:
    """Locate ``libvosrt_plugins.so``: ``explicit``, else ``$VOSRT_PLUGIN_LIB``, else the path recorded at
    build time, else ``plugins/build/trt/`` of a source checkout. A library named explicitly (argument or
    environment) must exist. UserError saying how to build one otherwise. ``flag``: the command-line option
    ``explicit`` comes from, where a command has one (``vosrt build --plugin-lib``); the commands that run
    engines (run, bench, live, check) have none and take ``$VOSRT_PLUGIN_LIB``."""
    then = (f"pass {flag} PATH or set {PLUGIN_LIBRARY_ENV}=PATH" if flag else
            f"set {PLUGIN_LIBRARY_ENV}=PATH (in Python also vosrt.sdk.load(..., plugin_lib=PATH))")
    how = ("build it with `cmake -S plugins -B plugins/build -DTensorRT_ROOT=<TensorRT> && cmake --build "
           f"plugins/build -j`, then {then}")
    named = explicit or os.environ.get(PLUGIN_LIBRARY_ENV)
    if named:
        path = Path(named)
        if not path.is_file():
            source = (flag or "plugin_lib") if explicit else f"${PLUGIN_LIBRARY_ENV}"
            raise UserError(f"plugin library not found: {path} (from {source}); {how}")
        return path.resolve()
    checkout = Path(__file__).resolve().parents[2] / "plugins" / "build" / "trt" / PLUGIN_LIBRARY_NAME
    candidates = [Path(recorded)] if recorded else []
    candidates.append(checkout)
    for path in candidates:
        if path.is_file():
            return path.resolve()
    tried = ", ".join(str(p) for p in candidates)
    raise UserError(f"the vosrt TensorRT plugin library ({PLUGIN_LIBRARY_NAME}) was not found (looked at {tried}); "
                    f"{how}")



def rebuild_command(package_path, build: dict | None = None, changes: dict | None = None) -> str:
    """The `vosrt build` command that builds the engines at ``package_path`` again as ``build`` (an ``engines``
    entry of the manifest) records them: the flags that build was given (``build_flags``; for records written
    before those were kept, its precision, --workspace and --embed-plugins), with ``changes`` (``{flag: value}``,
    True for a flag without a value) over them, the path quoted for the shell. A hint that said only `vosrt build
    PKG --max-objects 16` rebuilt fp16 engines as fp32 ones (made the default) and dropped the build's other limits."""
    build = build if isinstance(build, dict) else {}
    flags = build.get("build_flags")
    if not isinstance(flags, dict):
        flags = {"--precision": build.get("precision"), "--workspace": build.get("workspace_mb"),
                 "--embed-plugins": bool(build.get("plugins_serialized"))}
    flags = {**flags, **(changes or {})}
    command = ["vosrt", "build", str(package_path)]
    for flag, value in flags.items():
        if value is True:
            command.append(flag)
        elif value is not None and value is not False:
            command += [flag, str(value)]
    return shlex.join(command)


def select_build(package, precision: str | None = None) -> tuple[str, dict]:
    """The ``engines`` entry of one precision: ``precision`` or the manifest's default (the last built).
    UserError when the package has no engines, lacks that precision, or its engine files are missing."""
    engines = package.engines or {}
    builds = {k: v for k, v in engines.items() if isinstance(v, dict) and "files" in v}
    quantization = getattr(package, "quantization", None)
    if not builds and isinstance(quantization, dict):   # `vosrt build` refuses it: its command would be no help
        source = quantization.get("source_package")
        build = (f"`vosrt build {shlex.quote(str(source))}`" if source
                 else "`vosrt build` on the fp32 package it was quantized from")
        raise UserError(f"package {package.path} is an INT8 package made by `vosrt quantize` for ONNX Runtime on the "
                        f"CPU, which has no TensorRT engines (TensorRT takes no uint8 activations): run it on ONNX "
                        f"Runtime (command line: --backend onnxruntime; Python: backend='onnxruntime'), or build "
                        f"engines from the fp32 package: {build}")
    if not builds:
        import importlib.util

        build = f"`vosrt build {shlex.quote(str(package.path))}`"
        # where TensorRT is not installed, that command fails too: said first, with what installs it
        # engines run on the GPU and TensorRT version they were built with: built elsewhere, they do not run here
        where = (f": build them on this machine with {build}" if importlib.util.find_spec("tensorrt") is not None
                 else f", and TensorRT is not installed here: the TensorRT backend needs TensorRT and an NVIDIA GPU on "
                      f"the machine that runs it ({install_command('trt')}), where {build} makes engines for its GPU")
        raise UserError(f"package {package.path} has no TensorRT engines{where}, or run the package on ONNX Runtime "
                        "(command line: --backend onnxruntime; Python: backend='onnxruntime')")
    precision = precision or engines.get("default") or next(iter(builds))
    if precision not in builds:
        raise UserError(f"package {package.path} has no {precision} engines (built: {', '.join(builds)}); "
                        f"run `{rebuild_command(package.path, changes={'--precision': precision})}`")
    build = builds[precision]
    for graph in package.graphs:
        name = build["files"].get(graph)
        if name is None or not (package.path / name).is_file():
            raise UserError(f"package {package.path}: the {precision} engine of graph '{graph}' "
                            f"({name or 'not listed'}) is missing; rebuild with "
                            f"`{rebuild_command(package.path, build, {'--precision': precision})}`")
    return precision, build


# What plugins/trt/src/plugin_library.cpp writes into the library: the TensorRT headers it was compiled against.
_BUILD_RECORD = re.compile(rb"vosrt-plugins-build-record: tensorrt=(\d+\.\d+\.\d+);")


def plugin_library_tensorrt_version(path: str | os.PathLike) -> str | None:
    """The TensorRT version whose headers the plugin library at ``path`` (``libvosrt_plugins.so`` or its
    embeddable variant) was compiled against, read from the file without loading it; None for a file that
    cannot be read or carries no build record."""
    try:
        with open(path, "rb") as file:
            if os.fstat(file.fileno()).st_size == 0:
                return None
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
                found = _BUILD_RECORD.search(data)
                return bytes(found.group(1)).decode() if found else None
    except OSError:
        return None


def check_plugin_library_version(path: str | os.PathLike, trt_version: str) -> str | None:
    """Refuse a plugin library compiled against another TensorRT major than ``trt_version``: the logger,
    registry and plugin interfaces it calls through differ between majors (10 and 11), so TensorRT would
    load it and then crash or misbehave. Returns the library's recorded version (None when it has none)."""
    built = plugin_library_tensorrt_version(path)
    b, r = _version(built or ""), _version(trt_version)
    if b is not None and r is not None and b[0] != r[0]:
        raise UserError(f"{path} was compiled against the headers of TensorRT {built}, but this is TensorRT "
                        f"{trt_version}: a plugin library works only with the TensorRT major it was built for. "
                        "Rebuild it against this TensorRT: `cmake -S plugins -B plugins/build "
                        "-DTensorRT_ROOT=<this TensorRT> && cmake --build plugins/build -j`")
    return built


def _version(text: str) -> tuple[int, ...] | None:
    parts = str(text).split(".")
    return tuple(int(p) for p in parts[:3]) if all(p.isdigit() for p in parts[:3]) and parts[0] else None


def version_compatible_runs(built: str, runtime: str) -> bool:
    """Whether a version-compatible engine (built by ``built``) that carries vosrt's plugin library runs on
    TensorRT ``runtime``: the same or a later version of its major. TensorRT itself runs 10's such engines
    on 11, but the carried library was compiled against 10's headers, and the logger and registry
    interfaces it calls changed their layout in 11."""
    b, r = _version(built), _version(runtime)
    return b is not None and r is not None and r >= b and r[0] == b[0]


def check_engine_compatibility(build: dict, trt_version: str, gpu: dict, package_path) -> None:
    """Refuse engines that this TensorRT or this GPU cannot run (serialised engines are tied to both; those
    built version-compatible, as --embed-plugins builds them, also run on later TensorRT versions)."""
    built_version = str(build.get("tensorrt", "unknown"))
    compatible = build.get("plugins_serialized") and version_compatible_runs(built_version, trt_version)
    if built_version != trt_version and not compatible:
        raise UserError(f"the engines in {package_path} were built by TensorRT {built_version}, but this is "
                        f"TensorRT {trt_version}; rebuild them here with `{rebuild_command(package_path, build)}` (or "
                        f"install TensorRT {built_version})")
    built_gpu = build.get("gpu") or {}
    if built_gpu.get("compute_capability") != gpu.get("compute_capability") or \
            built_gpu.get("name") != gpu.get("name"):
        raise UserError(f"the engines in {package_path} were built for {built_gpu.get('name', '?')} (compute "
                        f"capability {built_gpu.get('compute_capability', '?')}), but this GPU is {gpu.get('name')} "
                        f"(compute capability {gpu.get('compute_capability')}); rebuild them on this machine "
                        f"with `{rebuild_command(package_path, build)}`")


def import_tensorrt(for_build: bool = False):
    """``import tensorrt``, or UserError saying how to install it (``for_build``: for ``vosrt build``)."""
    try:
        import tensorrt
    except ImportError:
        if for_build:
            raise UserError("`vosrt build` makes TensorRT engines and needs the tensorrt Python package and an "
                            f"NVIDIA GPU: {install_command('trt')}. A package runs without engines on ONNX "
                            "Runtime (vosrt run / vosrt bench --backend onnxruntime)") from None
        raise UserError("the TensorRT backend needs the tensorrt Python package and an NVIDIA GPU: "
                        f"{install_command('trt')}, or run the package on ONNX Runtime (command line: --backend "
                        "onnxruntime; Python: backend='onnxruntime')") from None
    return tensorrt


PLUGIN_NAMES = ("D2Conv3D", "L2MemoryReadout")
_loaded_plugin_libraries: dict[str, object] = {}


def load_plugin_library(path: Path, trt, registry=None) -> None:
    """Load ``libvosrt_plugins.so`` into TensorRT's global plugin registry once per process and check that
    both creators (version "1", namespace "") are found through ``registry`` (a builder's or a runtime's).

    Builders and runtimes have registries of their own that search the global one when a plugin is not in
    theirs (IPluginRegistry::isParentSearchEnabled, true by default): a library loaded into the first
    builder's registry only would be missing from every later builder and runtime of the process, and
    loading it into each would be refused (loadLibrary fails when a creator is already registered)."""
    key = str(path)
    if registry is None:
        registry = trt.get_plugin_registry()
    if key not in _loaded_plugin_libraries:
        check_plugin_library_version(path, trt.__version__)
        # TensorRT's documented dynamic path: the library's load-time registration is switched off for
        # this load, so that loadLibrary registers what getCreators() returns (and hands the library
        # TensorRT's logger). See plugins/trt/README.md, "Loading".
        previous = os.environ.get("VOSRT_PLUGINS_AUTO_REGISTER")
        os.environ["VOSRT_PLUGINS_AUTO_REGISTER"] = "0"
        try:
            handle = trt.get_plugin_registry().load_library(key)
        finally:
            if previous is None:
                del os.environ["VOSRT_PLUGINS_AUTO_REGISTER"]
            else:
                os.environ["VOSRT_PLUGINS_AUTO_REGISTER"] = previous
    else:
        handle = _loaded_plugin_libraries[key]
    missing = [name for name in PLUGIN_NAMES if registry.get_creator(name, "1", "") is None]
    # Remembered unless the load failed with the plugins missing: a library rebuilt at the same path is loaded
    # by the next try. (A load refused because another copy registered them already is remembered: tried once.)
    if handle is not None or not missing:
        _loaded_plugin_libraries[key] = handle
    if missing and handle is None:
        # (it said "did not register the plugins" and blamed the TensorRT version, for a library that a missing
        # dependency kept from loading at all)
        raise UserError(f"{path}: TensorRT could not load this plugin library (its error is above: a library it "
                        f"needs that is not found, or a CUDA runtime of another major?); see what is missing with "
                        f"`ldd {shlex.quote(str(path))}`, or rebuild it on this machine: `cmake -S plugins -B plugins/build "
                        f"-DTensorRT_ROOT=<this TensorRT> && cmake --build plugins/build -j`")
    if missing:
        raise UserError(f"{path} did not register the TensorRT plugin(s) {', '.join(missing)}: is it a "
                        f"libvosrt_plugins.so built for this TensorRT version? Rebuild it against this TensorRT")


# --------------------------------------------------------------------------------------------------
# the backend


class _Graph:
    """One engine with its execution context and its preallocated input/output buffers."""

    def __init__(self, trt, engine, backend: "TensorRTBackend"):
        self.engine = engine
        self.context = engine.create_execution_context()
        if self.context is None:
            raise UserError("TensorRT could not create an execution context (out of device memory?)")
        self.inputs: dict[str, np.dtype] = {}
        self.outputs: dict[str, np.dtype] = {}
        self.max_shapes: dict[str, tuple[int, ...]] = {}
        self.min_shapes: dict[str, tuple[int, ...]] = {}   # inputs only: the profile's smallest
        self.declared: dict[str, tuple] = {}   # input shapes as built: ints, "dynamic" where the profile sets it
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs[name] = dtype
                profile = engine.get_tensor_profile_shape(name, 0)
                self.min_shapes[name] = tuple(profile[0])
                self.max_shapes[name] = tuple(profile[2])
                self.declared[name] = tuple(int(d) if d >= 0 else "dynamic" for d in engine.get_tensor_shape(name))
            else:
                self.outputs[name] = dtype
        # Output buffers at the largest shapes of the profile: set every input to its maximum and ask.
        for name, shape in self.max_shapes.items():
            self.context.set_input_shape(name, shape)
        self.output_buffers: dict[str, _Allocation] = {}
        for name, dtype in self.outputs.items():
            shape = tuple(self.context.get_tensor_shape(name))
            self.max_shapes[name] = shape
            self.output_buffers[name] = _Allocation(int(np.prod(shape)) * dtype.itemsize, backend)
            self.context.set_tensor_address(name, self.output_buffers[name].ptr)
        # Host inputs are copied into these (allocated on first use, at the maximum shape).
        self.staging: dict[str, _Allocation] = {}
        # Both in least-recently-used order: a long session whose addresses keep changing (an STCN object added
        # or removed reallocates buffers) keeps capturing its current sets instead of filling up with stale ones.
        self.cuda_graphs: OrderedDict[tuple, object] = OrderedDict()
        self.seen: OrderedDict[tuple, None] = OrderedDict()

    # Set when a capture of this engine failed (an enqueue CUDA cannot capture, e.g. a synchronising call inside
    # it): from then on it runs plainly, as with cuda_graphs=False.
    capture_failed = False


class TensorRTBackend(Backend):
    """Runs a package's TensorRT engines (see the module docstring).

    Options: ``precision`` (``"fp32"`` / ``"fp16"``; default the manifest's default build), ``plugin_lib``
    (path of libvosrt_plugins.so; default ``$VOSRT_PLUGIN_LIB`` or the path recorded by ``vosrt build``),
    ``stream`` (external CUDA stream), ``cuda_graphs`` (capture and replay; default False; not on the legacy
    default stream 0, which CUDA cannot capture), ``device``
    (only ``"cuda"``/``"auto"``).
    """

    name = "tensorrt"
    _producer_event = None   # the event foreign producers' streams are waited for through, made at first use
    device_index = None      # the CUDA device the backend opened on (current then), made current for each call
    device = "cuda"
    devices = ("auto", "cuda")

    def __init__(self, package, precision: str | None = None, plugin_lib=None, stream=None,
                 cuda_graphs: bool = False, device: str = "auto", **unused):
        self.check_options(package, precision=precision, plugin_lib=plugin_lib, stream=stream, cuda_graphs=cuda_graphs,
                           device=device, **unused)
        self.package = package
        self.allocated_bytes = 0
        self._graphs: dict[str, _Graph] = {}
        self._own_stream = None
        self.precision, build = select_build(package, precision)
        self.build = build   # the manifest's record of these engines (rebuild_command reads it)
        # Engines that carry their plugin library (vosrt build --embed-plugins) need none installed; one
        # named explicitly (plugin_lib or $VOSRT_PLUGIN_LIB) is still loaded. Native code is loaded only
        # from a path the caller names or from inside the package: a library path a manifest records
        # elsewhere is not followed.
        named = plugin_lib or os.environ.get(PLUGIN_LIBRARY_ENV)
        carried = build.get("plugins_serialized") and not named
        recorded = build.get("plugin_library")
        if recorded:  # a path relative to the package, or absolute; followed only when it lies inside it
            recorded = (package.path / str(recorded)).resolve()
            recorded = str(recorded) if recorded.is_relative_to(package.path) else None
        # A library the caller names must exist (said first); one searched for is looked for once TensorRT is
        # known to be here: without TensorRT, building the library (against its headers) cannot help.
        self.plugin_library = find_plugin_library(plugin_lib, recorded) if named else None   # checked above
        trt = import_tensorrt()
        if not carried and self.plugin_library is None:
            self.plugin_library = find_plugin_library(plugin_lib, recorded)
        rt = cudart()
        self.device_index = int(check_cuda(rt.cudaGetDevice(), "cudaGetDevice"))
        check_engine_compatibility(build, trt.__version__, current_gpu(), package.path)
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        # Engines that carry their plugin library each get a runtime of their own: each plan registers its
        # copy of the library in its runtime's registry, and a second copy in the same registry is refused.
        self._runtimes = []
        self._carried = bool(build.get("plugins_serialized"))
        if self.plugin_library is not None:
            load_plugin_library(self.plugin_library, trt, self._runtime_for_next_engine().get_plugin_registry())
        if stream is None:
            self._own_stream = check_cuda(rt.cudaStreamCreate(), "cudaStreamCreate")
            self.stream = int(self._own_stream)
        else:
            self.stream = _stream_handle(stream)
        self.cuda_graphs = bool(cuda_graphs)
        self._trt_version = trt.__version__
        try:
            for graph in package.graphs:
                path = package.path / build["files"][graph]
                engine = self._runtime_for_next_engine().deserialize_cuda_engine(path.read_bytes())
                if engine is None:
                    raise UserError(f"TensorRT could not load {path} (see the messages above); rebuild it with "
                                    f"`{rebuild_command(package.path, build, {'--precision': self.precision})}`")
                self._graphs[graph] = _Graph(trt, engine, self)
        except BaseException:
            self.close()
            raise
        self.max_objects, self.max_memory_frames = self._limits(build)

    def _limits(self, build: dict) -> tuple[int | None, int | None]:
        """The most objects and memory frames the engines take: the build's record (``vosrt build
        --max-objects / --max-memory-frames``), else, for manifests written before it recorded them, the
        smallest maximum of the engines' profiles over every axis the package labels ``objects`` or
        ``memory`` (a memory axis counts frames of the key map, ``(H/stride)*(W/stride)`` entries each)."""
        cells = (self.package.height // self.package.stride) * (self.package.width // self.package.stride)
        found: dict[str, list[int]] = {"objects": [], "memory": []}
        for graph_name, graph in self._graphs.items():
            for name, declared in graph.declared.items():   # the inputs
                for axis, dim in enumerate(declared):
                    label = self.package.axis_label(graph_name, name, axis) if dim == "dynamic" else None
                    if label in found:
                        found[label].append(int(graph.max_shapes[name][axis]) // (cells if label == "memory" else 1))
        objects = build.get("max_objects") or min(found["objects"], default=None)
        frames = build.get("max_memory_frames") or min(found["memory"], default=None)
        return objects, frames

    @classmethod
    def check_options(cls, package, precision: str | None = None, plugin_lib=None, stream=None,
                      cuda_graphs: bool = False, device: str = "auto", **unused) -> None:
        refuse_unknown_options(cls.name, unused)
        if device not in cls.devices:
            raise UserError(f"tensorrt backend: device must be 'cuda' (or 'auto'), got '{device}'")
        if cuda_graphs and stream is not None and _stream_handle(stream) in (0, 1):
            # CUDA cannot capture work on the legacy default stream (0, or cudaStreamLegacy): the second run,
            # where capture begins, failed with cudaErrorStreamCaptureUnsupported
            raise UserError("tensorrt backend: cuda_graphs=True needs a stream that can be captured, but stream is the "
                            "legacy default stream (handle 0); pass a stream of your own (cudaStreamCreate, "
                            "torch.cuda.Stream()) or leave stream unset, and the backend makes one")
        select_build(package, precision)
        if plugin_lib or os.environ.get(PLUGIN_LIBRARY_ENV):   # a library named must exist, said before TensorRT
            find_plugin_library(plugin_lib)
        import_tensorrt()

    def _runtime_for_next_engine(self):
        """The runtime that deserialises the next engine: one for all, or with engines that carry their
        plugin library a new one per engine (kept as long as the backend)."""
        if not self._runtimes or (self._carried and len(self._runtimes) == len(self._graphs)):
            runtime = self._trt.Runtime(self._logger)
            if self._carried:
                runtime.engine_host_code_allowed = True
            self._runtimes.append(runtime)
        return self._runtimes[-1]

    # ------------------------------------------------------------------ graphs
    def input_names(self, graph: str) -> list[str]:
        return list(self._graphs[graph].inputs)

    def input_dtype(self, graph: str, name: str) -> np.dtype:
        return self._graphs[graph].inputs[name]

    def input_shape(self, graph: str, name: str) -> tuple | None:
        # The engine's own input shape (-1 on dynamic axes, given as "dynamic"): a session opened over engines
        # built at another resolution than the manifest says is refused at open, as on ONNX Runtime.
        return self._graphs[graph].declared.get(name)

    def output_names(self, graph: str) -> list[str]:
        """Names of ``graph``'s outputs."""
        return list(self._graphs[graph].outputs)

    @on_device
    def run(self, graph: str, inputs: Mapping[str, Tensor], outputs: Sequence[str] | None = None
            ) -> dict[str, Tensor]:
        if not self._graphs:
            raise UserError(f"tensorrt backend ({self.package.path}) was closed; open a new one")
        g = self._graphs[graph]
        unknown = set(inputs) - set(g.inputs)
        if unknown:
            raise ValueError(f"graph '{graph}' has no input(s) {sorted(unknown)}; it takes {sorted(g.inputs)}")
        missing = set(g.inputs) - set(inputs)
        if missing:
            raise ValueError(f"graph '{graph}' needs input(s) {sorted(missing)}")
        key = [graph]
        for name, value in inputs.items():
            # checked before a host array is staged: the staging buffer refused a larger one first, in words
            # without the rebuild the profile's limits call for
            refusal = self._profile_refusal(graph, g, name, self.shape(value))
            if refusal is not None:
                raise ValueError(refusal)
            tensor = self._bindable(g, name, value)
            if not g.context.set_input_shape(name, tensor.shape):
                raise ValueError(f"graph '{graph}': TensorRT refused input '{name}' of shape {tensor.shape} (the "
                                 f"engine's profile takes {g.min_shapes.get(name)} to {g.max_shapes[name]})")
            g.context.set_tensor_address(name, tensor.ptr)
            key.append((name, tensor.shape, tensor.ptr))
        self._execute(g, tuple(key))
        names = list(outputs) if outputs is not None else list(g.outputs)
        result = {}
        for name in names:
            shape = tuple(g.context.get_tensor_shape(name))
            result[name] = DeviceTensor(g.output_buffers[name], shape, g.outputs[name])
        return result

    def _profile_refusal(self, graph: str, g: _Graph, name: str, shape) -> str | None:
        """Why input ``name`` of ``shape`` is outside the engine's optimisation profile, with what to do: for an
        objects or memory axis beyond the profile, the `vosrt build` command whose engines take it; None when
        the profile takes the shape."""
        shape = tuple(int(d) for d in shape)
        high = tuple(g.max_shapes[name])
        low = tuple(g.min_shapes.get(name, high))
        where = f"graph '{graph}': input '{name}' shape {shape} is outside the engine's profile"
        if len(shape) != len(high):
            return f"{where} (the engine takes {len(high)} dimensions: {low} to {high})"
        for axis, (size, least, most) in enumerate(zip(shape, low, high)):
            if least <= size <= most:
                continue
            text = f"{where} (axis {axis} is {size}; the engine takes {least}" + \
                (")" if least == most else f" to {most})")
            label = self.package.axis_label(graph, name, axis) if least != most else None
            if size > most and label in ("objects", "memory"):
                cells = (self.package.height // self.package.stride) * (self.package.width // self.package.stride)
                flag, value = (("--max-objects", size) if label == "objects" else
                               ("--max-memory-frames", -(-size // max(cells, 1))))
                text += (f"; engines that take it are built with "
                         f"`{rebuild_command(self.package.path, getattr(self, 'build', None), {flag: value})}`")
            return text
        return None

    def _execute(self, g: _Graph, key: tuple) -> None:
        if not self.cuda_graphs or g.capture_failed:
            if not g.context.execute_async_v3(self.stream):
                raise RuntimeError("TensorRT enqueue failed (see the messages above)")
            return
        rt = cudart()
        exec_graph = g.cuda_graphs.get(key)
        if exec_graph is not None:
            g.cuda_graphs.move_to_end(key)
            check_cuda(rt.cudaGraphLaunch(exec_graph, self.stream), "cudaGraphLaunch")
            return
        if not g.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT enqueue failed (see the messages above)")
        if key not in g.seen:  # TensorRT needs one plain run per shape before capture
            g.seen[key] = None
            if len(g.seen) > _SEEN_LIMIT:
                g.seen.popitem(last=False)
            return
        g.seen.pop(key)   # captured now: the graph cache holds it from here on
        if len(g.cuda_graphs) >= _GRAPH_CACHE_LIMIT:
            # the least recently used graph makes room; its last launch may still be running on the stream
            _, evicted = g.cuda_graphs.popitem(last=False)
            check_cuda(rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
            rt.cudaGraphExecDestroy(evicted)
        # This run's results came from the plain run above; the capture only records it for replay. A capture that
        # fails leaves them as they are: the engine runs plainly from then on (said once), where every second run
        # of a shape set failed with the capture's CUDA error, and an exception inside the capture left the stream
        # capturing, which failed all later work on it.
        mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        check_cuda(rt.cudaStreamBeginCapture(self.stream, mode), "cudaStreamBeginCapture")
        captured = None
        try:
            try:
                ok = g.context.execute_async_v3(self.stream)
            finally:
                ended = rt.cudaStreamEndCapture(self.stream)   # always: a stream left capturing takes no other work
            captured = check_cuda(ended, "cudaStreamEndCapture")
            if not ok:
                raise RuntimeError("TensorRT enqueue failed while it was being captured")
            g.cuda_graphs[key] = check_cuda(rt.cudaGraphInstantiate(captured, 0), "cudaGraphInstantiate")
        except RuntimeError as err:
            rt.cudaGetLastError()   # an invalidated capture's error is not left for the next CUDA call to report
            g.capture_failed = True
            print(f"vosrt: tensorrt backend: graph '{key[0]}' cannot be captured into a CUDA graph ({err}); it runs "
                  f"without one from here on (cuda_graphs=False gives the same)", file=sys.stderr)
        finally:
            if captured is not None:
                rt.cudaGraphDestroy(captured)

    def _bindable(self, g: _Graph, name: str, value) -> DeviceTensor:
        """``value`` as device memory the engine can read: device tensors as they are, host arrays copied
        into the input's staging buffer."""
        want = g.inputs[name]
        if isinstance(value, DeviceTensor):
            if value.dtype != want:
                raise ValueError(f"input '{name}': engine expects {want}, got a device tensor of {value.dtype}")
            return self._aligned(g, name, value)
        if isinstance(value, _HostTensor):
            value = value.array
        if hasattr(value, "__cuda_array_interface__") and not isinstance(value, np.ndarray):
            return self._aligned(g, name, self.wrap(value, expected_dtype=want, what=f"input '{name}'"))
        array = np.ascontiguousarray(value, dtype=want)
        staging = self._staging(g, name, array.shape, array.nbytes)
        self._copy_h2d(staging.ptr, array)
        return DeviceTensor(staging, array.shape, want)

    def _staging(self, g: _Graph, name: str, shape, nbytes: int) -> _Allocation:
        """The input's own buffer (cudaMalloc'd, so 256-byte aligned), allocated once at the maximum shape."""
        if name not in g.staging:
            g.staging[name] = _Allocation(int(np.prod(g.max_shapes[name])) * g.inputs[name].itemsize, self)
        if nbytes > g.staging[name].nbytes:
            raise ValueError(f"input '{name}' shape {tuple(shape)} exceeds the engine's largest {g.max_shapes[name]}")
        return g.staging[name]

    def _aligned(self, g: _Graph, name: str, tensor: DeviceTensor) -> DeviceTensor:
        """``tensor`` itself when its address is BINDING_ALIGNMENT-aligned (TensorRT requires it of every
        bound address), else a device-to-device copy of it in the input's staging buffer. Views at an offset
        (a row range of a bank, a frame of a clip) are the usual unaligned case."""
        if tensor.ptr % BINDING_ALIGNMENT == 0:
            return tensor
        staging = self._staging(g, name, tensor.shape, tensor.nbytes)
        rt = cudart()
        check_cuda(rt.cudaMemcpyAsync(staging.ptr, tensor.ptr, tensor.nbytes,
                                      rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, self.stream),
                   "cudaMemcpyAsync D2D (alignment copy)")
        return DeviceTensor(staging, tensor.shape, tensor.dtype)

    @on_device
    def wrap(self, value, expected_dtype=None, what: str = "array") -> DeviceTensor:
        """A :class:`DeviceTensor` over an object's ``__cuda_array_interface__`` (no copy; the object must
        stay alive while the tensor is used). Requires C-contiguous data."""
        interface = value.__cuda_array_interface__
        shape = tuple(interface["shape"])
        dtype = np.dtype(interface["typestr"])
        strides = interface.get("strides")
        if strides is not None and tuple(strides) != tuple(np.empty(shape, dtype).strides):
            raise UserError(f"{what}: device array must be C-contiguous (strides {strides}); make a contiguous copy")
        if expected_dtype is not None and dtype != np.dtype(expected_dtype):
            raise UserError(f"{what}: expected {np.dtype(expected_dtype)} device data, got {dtype}")
        self._wait_for_producer(interface.get("stream"))
        return DeviceTensor(None, shape, dtype, external_ptr=int(interface["data"][0]))

    def _wait_for_producer(self, stream) -> None:
        """Make the backend's stream wait for the work queued so far on ``stream``, the producer's stream that a
        version-3 ``__cuda_array_interface__`` names (None or absent: nothing to wait for): a PyTorch tensor still
        being computed on PyTorch's stream was read by the engine on this one before it was written."""
        if stream is None or int(stream) == (int(self.stream) or 1):
            return
        rt = cudart()
        if self._producer_event is None:
            self._producer_event = check_cuda(rt.cudaEventCreateWithFlags(rt.cudaEventDisableTiming),
                                              "cudaEventCreateWithFlags")
        check_cuda(rt.cudaEventRecord(self._producer_event, int(stream)), "cudaEventRecord (producer's stream)")
        check_cuda(rt.cudaStreamWaitEvent(self.stream, self._producer_event, 0), "cudaStreamWaitEvent")

    # ------------------------------------------------------------------ data
    def _copy_h2d(self, dst_ptr: int, array: np.ndarray) -> None:
        rt = cudart()
        check_cuda(rt.cudaMemcpyAsync(dst_ptr, array.ctypes.data, array.nbytes,
                                      rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream), "cudaMemcpyAsync H2D")
        # The host array may be freed by the caller once we return; pageable copies are staged by the
        # driver, but synchronising keeps that true for every allocation kind.
        check_cuda(rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def upload(self, array: np.ndarray) -> Tensor:   # a host copy: no CUDA call, no device to make current
        return _HostTensor(np.array(array, copy=True, order="C"))

    @on_device
    def download(self, tensor: Tensor) -> np.ndarray:
        if isinstance(tensor, _HostTensor):
            return tensor.array.copy()
        if not isinstance(tensor, DeviceTensor):
            if hasattr(tensor, "__cuda_array_interface__"):
                tensor = self.wrap(tensor)
            else:
                return np.array(tensor, copy=True)
        self._check_open()
        rt = cudart()
        out = np.empty(tensor.shape, tensor.dtype)
        check_cuda(rt.cudaMemcpyAsync(out.ctypes.data, tensor.ptr, out.nbytes,
                                      rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream), "cudaMemcpyAsync D2H")
        check_cuda(rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return out

    @on_device
    def zeros(self, shape: Sequence[int], dtype: type = np.float32) -> Tensor:
        self._check_open()
        shape = tuple(int(s) for s in shape)
        dtype = np.dtype(dtype)
        allocation = _Allocation(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, self)
        check_cuda(cudart().cudaMemsetAsync(allocation.ptr, 0, allocation.nbytes, self.stream), "cudaMemsetAsync")
        return DeviceTensor(allocation, shape, dtype)

    def shape(self, tensor: Tensor) -> tuple[int, ...]:
        if isinstance(tensor, (DeviceTensor, _HostTensor)):
            return tensor.shape
        if hasattr(tensor, "__cuda_array_interface__"):
            return tuple(tensor.__cuda_array_interface__["shape"])
        return tuple(np.shape(tensor))

    def nbytes(self, tensor: Tensor) -> int:
        if isinstance(tensor, DeviceTensor):
            return tensor.nbytes + (tensor.scratch.nbytes if tensor.scratch is not None else 0)
        if isinstance(tensor, _HostTensor):
            return int(tensor.array.nbytes)
        return int(np.asarray(tensor).nbytes)

    @on_device
    def write(self, dst: Tensor, axis: int, start: int, src: Tensor) -> None:
        self._check_open()
        if not isinstance(dst, DeviceTensor):
            raise ValueError("write() needs a destination allocated with zeros()")
        rt = cudart()
        host = None
        if isinstance(src, _HostTensor):
            host = np.ascontiguousarray(src.array, dtype=dst.dtype)
        elif not isinstance(src, DeviceTensor):
            if hasattr(src, "__cuda_array_interface__") and not isinstance(src, np.ndarray):
                src = self.wrap(src, expected_dtype=dst.dtype)
            else:
                host = np.ascontiguousarray(src, dtype=dst.dtype)
        src_shape = flatten_to(host.shape if host is not None else src.shape, len(dst.shape))
        if host is None and src.dtype != dst.dtype:
            raise ValueError(f"write(): source {src.dtype} into destination {dst.dtype}")
        count = src_shape[axis]
        if start < 0 or start + count > dst.shape[axis] or src_shape[:axis] != dst.shape[:axis] or \
                src_shape[axis + 1:] != dst.shape[axis + 1:]:
            raise ValueError(f"write(): source {src_shape} does not fit destination {dst.shape} at axis {axis}, "
                             f"start {start}")
        item = dst.dtype.itemsize
        rows = int(np.prod(dst.shape[:axis], dtype=np.int64))
        inner = int(np.prod(dst.shape[axis + 1:], dtype=np.int64)) * item
        width = count * inner
        dst_pitch = dst.shape[axis] * inner
        dst_ptr = dst.ptr + start * inner
        kind = rt.cudaMemcpyKind.cudaMemcpyHostToDevice if host is not None else \
            rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        src_ptr = host.ctypes.data if host is not None else src.ptr
        # [rows, dst.shape[axis] * inner] destination, rows of `width` bytes from a dense source
        self._copy_rows(dst_ptr, dst_pitch, src_ptr, width, width, rows, kind)
        if host is not None:
            check_cuda(rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    @on_device
    def read(self, src: Tensor, axis: int, start: int, stop: int) -> Tensor:
        self._check_open()
        if isinstance(src, _HostTensor):
            index = (slice(None),) * axis + (slice(start, stop),)
            return _HostTensor(np.ascontiguousarray(src.array[index]))
        if not isinstance(src, DeviceTensor):
            src = self.wrap(src)
        if not 0 <= start <= stop <= src.shape[axis]:
            raise ValueError(f"read(): [{start}, {stop}) outside axis {axis} of {src.shape}")
        shape = src.shape[:axis] + (stop - start,) + src.shape[axis + 1:]
        item = src.dtype.itemsize
        rows = int(np.prod(src.shape[:axis], dtype=np.int64))
        inner = int(np.prod(src.shape[axis + 1:], dtype=np.int64)) * item
        if rows == 1 or stop - start == src.shape[axis]:
            return src.view(shape, start * inner)  # contiguous: bind in place
        # A column range of a [rows, columns] layout (the memory bank's first N of capacity columns) is
        # strided: copy it into scratch space sized for the whole source, allocated once per source.
        if src.scratch is None:
            src.scratch = DeviceTensor(_Allocation(src.nbytes, self), src.shape, src.dtype)
        rt = cudart()
        width = (stop - start) * inner
        self._copy_rows(src.scratch.ptr, width, src.ptr + start * inner, src.shape[axis] * inner, width, rows,
                        rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice)
        return src.scratch.view(shape)

    def _copy_rows(self, dst: int, dst_pitch: int, src: int, src_pitch: int, width: int, rows: int, kind) -> None:
        """``rows`` rows of ``width`` bytes on the stream: one cudaMemcpy2DAsync, or, where a pitch is beyond what it
        takes (cudaDeviceProp::memPitch, 2**31 - 1 bytes: cudaErrorInvalidPitchValue), or there is one row, one
        cudaMemcpyAsync per row. A write along the objects axis of STCN's value bank at 480p is one row of a pitch
        of the whole bank, 2.19 GB from 33 objects on: adding or removing an object failed."""
        rt = cudart()
        if rows > 1 and max(dst_pitch, src_pitch) <= MAX_COPY_PITCH:
            check_cuda(rt.cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, width, rows, kind, self.stream),
                       "cudaMemcpy2DAsync")
            return
        for row in range(rows):
            check_cuda(rt.cudaMemcpyAsync(dst + row * dst_pitch, src + row * src_pitch, width, kind, self.stream),
                       "cudaMemcpyAsync")

    @on_device
    def synchronize(self) -> None:
        check_cuda(cudart().cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    @on_device
    def close(self) -> None:
        rt = cudart()
        if self._graphs:
            rt.cudaStreamSynchronize(self.stream)
        for g in self._graphs.values():
            for exec_graph in g.cuda_graphs.values():
                rt.cudaGraphExecDestroy(exec_graph)
            g.cuda_graphs.clear()
            for allocation in list(g.output_buffers.values()) + list(g.staging.values()):
                allocation.free()
            del g.context
            del g.engine
        self._graphs.clear()
        self._runtimes.clear()   # after the engines they deserialised
        if self._producer_event is not None:
            rt.cudaEventDestroy(self._producer_event)
            self._producer_event = None
        if self._own_stream is not None:
            rt.cudaStreamDestroy(self._own_stream)
            self._own_stream = None
        self._closed = True

    def _check_open(self) -> None:
        """UserError once closed: the device tensors' copies went on the destroyed stream (an invalid handle)."""
        if getattr(self, "_closed", False):
            raise UserError(f"tensorrt backend ({self.package.path}) was closed; open a new one")

    def describe(self) -> str:
        graphs = " + CUDA graphs" if self.cuda_graphs else ""
        return f"tensorrt {self._trt_version} (cuda, {self.precision} engines{graphs})"
