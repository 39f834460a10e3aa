"""vosrt's fast CPU operators (``plugins/cpu``) and the plugin-form graphs on ONNX Runtime.

``libvosrt_cpu_ops.so`` implements ``D2Conv3D`` and ``L2MemoryReadout`` on host threads behind the plain C
API of ``plugins/cpu/include/vosrt_cpu_ops.h`` (the readout fused, never materialising the N × M
affinity). ONNX Runtime's C/C++ headers are not shipped by PyPI or Debian, so no operator library
compiled against them could be built by ``pip install``; instead the plugin-form nodes run as
onnxruntime-extensions Python operators, which hand ONNX Runtime's tensors to this library as numpy
arrays through ctypes (onnxruntime-extensions copies each input and output once; the library reads and
writes those arrays in place).

The library is found, first hit wins, at:

1. ``$VOSRT_CPU_OPS_LIB`` (the file);
2. a CMake build of ``plugins/`` in the source tree (``plugins/build*/``): the newest, if it is newer than
   every source file (an older one is passed over);
3. the user cache (``$VOSRT_CACHE``, default ``~/.cache/vosrt``), compiled there on first use from the
   sources shipped in the package (``vosrt/sdk/cpu_ops_src``, or ``plugins/`` in a source tree) with
   the C++ compiler ``$CXX`` (default ``c++``); this takes about ten seconds and says so on stderr.

The cache key hashes the sources, the compiler and its flags, so an edited source or another machine
type builds anew; ``-march=native`` is used because the library is built on the machine that runs it.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.util
import mmap
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

from vosrt.sdk.errors import UserError
from vosrt.sdk.kernels import (D2Conv3DParams, KernelError, L2ReadoutParams, check_status, d2conv3d_params,
                               l2_readout_params)
from vosrt.sdk.native_callbacks import run_callback

LIBRARY = "libvosrt_cpu_ops.so"
ENV_LIB = "VOSRT_CPU_OPS_LIB"
ENV_CACHE = "VOSRT_CACHE"
# Domain of the rewritten plugin nodes the Python operators serve (see :func:`plugin_model_for_cpu`).
CPU_DOMAIN = "vosrt.cpu"
PLUGIN_DOMAIN = "trt.plugins"
TOP_K_INPUT = "top_k"  # the rewritten readout's top_k input, named as in the portable form
NODE_ATTRIBUTE = "vosrt_node"  # the rewritten node's name in the plugin-form graph, for error messages
FLAGS = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread", "-DNDEBUG"]

_SDK_DIR = Path(__file__).resolve().parent
_REPO_PLUGINS = _SDK_DIR.parent / "plugins"
_SHIPPED = _SDK_DIR / "cpu_ops_src"  # the installed package's copy of plugins/{cpu,kernels} (setup.py)


class CpuOpsUnavailable(RuntimeError):
    """The CPU operator library cannot be had here (no sources, no compiler, or the build failed)."""


def source_root() -> Path | None:
    """Folder holding ``cpu/`` and ``kernels/`` sources: the package's shipped copy or the repository's plugins/."""
    for root in (_SHIPPED, _REPO_PLUGINS):
        if (root / "cpu" / "src").is_dir() and (root / "kernels" / "src").is_dir():
            return root
    return None


def _sources(root: Path) -> list[Path]:
    return sorted((root / "cpu" / "src").glob("*.cpp"))


def _hashed_files(root: Path) -> list[Path]:
    files = [*_sources(root), *(root / "cpu" / "src").glob("*.h"), *(root / "cpu" / "include").glob("*.h"),
             *(root / "kernels" / "src").glob("*.h"), *(root / "kernels" / "include").glob("*.h")]
    return sorted(files)


def _compiler() -> str:
    return os.environ.get("CXX") or "c++"


def cache_dir() -> Path:
    """Root of vosrt's user cache (``$VOSRT_CACHE``, default ``~/.cache/vosrt``)."""
    env = os.environ.get(ENV_CACHE)
    return Path(env) if env else Path.home() / ".cache" / "vosrt"


def cached_library_path(root: Path) -> Path:
    """Where the library built from ``root``'s sources lives in the cache."""
    digest = hashlib.sha256()
    for path in _hashed_files(root):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    digest.update(" ".join([_compiler(), *FLAGS, platform.machine()]).encode())
    try:
        digest.update(Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].encode())
    except (OSError, IndexError):
        pass
    return cache_dir() / "cpu_ops" / digest.hexdigest()[:16] / LIBRARY


def build_library(root: Path, out: Path, verbose: bool = True) -> Path:
    """Compile the library from ``root``'s sources into ``out`` (atomically); progress on stderr."""
    compiler = shutil.which(_compiler())
    if compiler is None:
        raise CpuOpsUnavailable(f"no C++ compiler '{_compiler()}' on PATH (set $CXX or install g++)")
    out.parent.mkdir(parents=True, exist_ok=True)
    includes = [f"-I{root / 'cpu' / 'include'}", f"-I{root / 'kernels' / 'include'}", f"-I{root / 'kernels' / 'src'}"]
    # Linked to a new name in a private folder, so the linker creates the file with the umask's mode (one
    # made beforehand by tempfile is 0600, and the linker kept that: 0711, a library that other users of a
    # shared $VOSRT_CACHE cannot load), then moved into place atomically.
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=".build-"))
    partial = work / LIBRARY
    command = [compiler, *FLAGS, *includes, *map(str, _sources(root)), "-o", str(partial)]
    if verbose:
        print(f"vosrt: compiling the CPU operator library once into {out.parent} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise CpuOpsUnavailable(f"compiling {LIBRARY} failed:\n{result.stderr.strip()[-2000:]}")
        os.replace(partial, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if verbose:
        print(f"vosrt: CPU operator library built in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return out


def _cmake_builds() -> list[Path]:
    return [p for d in _REPO_PLUGINS.glob("build*") for p in d.glob(f"**/{LIBRARY}")]


def find_library(build: bool = True) -> Path:
    """Path of the library (see the module docstring for the order), building it into the cache if needed."""
    env = os.environ.get(ENV_LIB)
    if env:
        if not Path(env).is_file():
            raise CpuOpsUnavailable(f"${ENV_LIB} names {env}, which is not a file")
        return Path(env)
    built = _cmake_builds()
    root = source_root()
    if built and root is not None:
        newest = max(built, key=lambda p: p.stat().st_mtime)
        if newest.stat().st_mtime >= max(p.stat().st_mtime for p in _hashed_files(root)):
            return newest  # a CMake build newer than every source
    if root is None:
        raise CpuOpsUnavailable("the CPU operator sources are not part of this installation")
    cached = cached_library_path(root)
    if cached.is_file():
        return cached
    if not build:
        raise CpuOpsUnavailable(f"{LIBRARY} is not built yet (it would be built into {cached.parent})")
    return build_library(root, cached)


_VP = ctypes.c_void_p
_INT = ctypes.c_int


class CpuOps:
    """numpy front of ``libvosrt_cpu_ops.so``: float32 arrays in, float32 arrays out."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        d2c, l2r = ctypes.POINTER(D2Conv3DParams), ctypes.POINTER(L2ReadoutParams)
        try:  # a file that is no library (truncated, corrupt) or lacks a function cannot serve
            self.lib = ctypes.CDLL(str(self.path))
            for symbol, argtypes in {
                "vosrtCpuOpsVersion": [],
                "vosrtCpuOpsD2Conv3DOutputShape": [d2c, ctypes.POINTER(_INT)],
                "vosrtCpuOpsD2Conv3DForward": [d2c, _VP, _VP, _VP, _VP, _VP, _VP, _INT],
                "vosrtCpuOpsL2ReadoutForward": [l2r, _VP, _VP, _VP, _VP, _INT],
            }.items():
                fn = getattr(self.lib, symbol)
                fn.restype, fn.argtypes = _INT, argtypes
        except (OSError, AttributeError) as err:
            raise CpuOpsUnavailable(f"{self.path} cannot be loaded: {err}") from None
        self.threads = 0  # 0: every hardware thread (calls under operator_threads() use theirs instead)

    def d2conv3d(self, x, dilation, modulation, weight, bias=None, stride=(1, 1, 1), padding=(0, 0, 0),
                 dilation_base=(1, 1, 1), groups=1, kernel_shape=None, where: str = "D2Conv3D") -> np.ndarray:
        """Y ``[N, Cout, To, Ho, Wo]`` of D2Conv3D (arguments as in ``vosrt.training.ops.d2conv3d``).

        Shapes that do not fit together (:func:`check_d2conv3d`) raise UserError naming ``where``: the
        library reads its inputs by the shapes of X and Wt alone. A batch or Cout of 0 gives an empty Y."""
        x, dilation, modulation, weight, bias = (_f32(a) for a in (x, dilation, modulation, weight, bias))
        out_thw = check_d2conv3d(x.shape, dilation.shape, None if modulation is None else modulation.shape,
                                 weight.shape, None if bias is None else bias.shape, stride, padding, dilation_base,
                                 groups, kernel_shape, where)
        y = np.empty((x.shape[0], weight.shape[0], *out_thw), dtype=np.float32)
        if y.size == 0:
            return y
        params = d2conv3d_params(x.shape, weight.shape, stride, padding, dilation_base, groups,
                                 modulation is not None, bias is not None)
        check_status(self.lib.vosrtCpuOpsD2Conv3DForward(
            ctypes.byref(params), _ptr(x), _ptr(dilation), _ptr(modulation), _ptr(weight), _ptr(bias), _ptr(y),
            self._threads()), "vosrtCpuOpsD2Conv3DForward")
        return y

    def l2_memory_readout(self, mem_key, query_key, mem_value, top_k=20, scale=0.0,
                          where: str = "L2MemoryReadout") -> np.ndarray:
        """out ``[B, V, M]`` from mem_key ``[B, Ck, N]``, query_key ``[B, Ck, M]``, mem_value ``[B, V, N]``;
        top_k 0 reads all N; scale <= 0 means 1/sqrt(Ck). Shapes that do not fit together, an empty memory
        or a negative top_k raise UserError naming ``where`` (:func:`check_l2_readout`); B, M or V of 0
        gives an empty output."""
        mem_key, query_key, mem_value = (_f32(a) for a in (mem_key, query_key, mem_value))
        check_l2_readout(mem_key.shape, query_key.shape, mem_value.shape, top_k, scale, where)
        out = np.empty((mem_key.shape[0], mem_value.shape[1], query_key.shape[2]), dtype=np.float32)
        if out.size == 0:
            return out
        if not reads_top_k(top_k, mem_key.shape[2]):
            raise KernelError(f"{where}: top_k {top_k} is not supported: at most {MAX_TOP_K}, or 0 (or >= N = "
                              f"{mem_key.shape[2]}) for all memory entries")
        params = l2_readout_params(mem_key.shape, query_key.shape[2], mem_value.shape[1], top_k, scale)
        check_status(self.lib.vosrtCpuOpsL2ReadoutForward(ctypes.byref(params), _ptr(mem_key), _ptr(query_key),
                                                          _ptr(mem_value), _ptr(out), self._threads()),
                     "vosrtCpuOpsL2ReadoutForward")
        return out

    def _threads(self) -> int:
        chosen = getattr(_run_threads, "value", None)
        return self.threads if chosen is None else chosen


# ---------------------------------------------------------------------------------------------------
# Checks of the operators' inputs. The C library takes only the sizes of X and Wt (mem_key, query_key and
# mem_value's V): a D, M, B, Ck or N that disagrees with them would be read out of bounds, so every shape
# is checked here first, as the TensorRT plugins do (plugins/trt/src/vosrt_trt_translate.cpp).

INT_MAX = 2**31 - 1
MAX_TOP_K = 64  # VOSRT_L2_READOUT_MAX_TOP_K (plugins/kernels/include/vosrt_kernels.h)


def reads_top_k(top_k: int, entries: int | None = None) -> bool:
    """Whether the plugin form's L2MemoryReadout (vosrt's CPU operators, the kernels, the TensorRT plugin) reads
    with ``top_k``: at most MAX_TOP_K entries per query, or all of them (top_k 0, or a top_k of at least the
    ``entries`` the memory holds, where that is known). The one rule vosrt export, the ONNX Runtime backend (a
    package's top_k and a session's) and the operators apply."""
    return top_k <= MAX_TOP_K or (entries is not None and top_k >= entries)
_AXES = ("t", "h", "w")


def _fail(where: str, message: str):
    raise UserError(f"{where}: {message}")


def _check_rank(where: str, name: str, shape, layout: str) -> tuple[int, ...]:
    shape = tuple(int(d) for d in shape)
    rank = layout.count(",") + 1
    if len(shape) != rank:
        _fail(where, f"{name} must have rank {rank} ({layout}), got shape {list(shape)}")
    if any(d > INT_MAX for d in shape):
        _fail(where, f"{name} {list(shape)} has a dimension above {INT_MAX}, which the operator does not support")
    return shape


def check_d2conv3d_attributes(kernel_shape, strides, pads, dilations, group, where: str = "D2Conv3D") -> None:
    """UserError unless kernel_shape (or None: taken from Wt), strides and dilations are 3 ints >= 1, pads 3
    ints >= 0 (symmetric, one per axis t, h, w) and group an int >= 1."""
    for name, values, low in (("kernel_shape", kernel_shape, 1), ("strides", strides, 1), ("pads", pads, 0),
                              ("dilations", dilations, 1)):
        if values is None and name == "kernel_shape":
            continue
        values = list(values)
        if len(values) != 3 or any(int(v) != v or v < low for v in values):
            _fail(where, f"{name} must be 3 integers >= {low} (t, h, w{', symmetric' if name == 'pads' else ''}), "
                         f"got {values}")
    if int(group) != group or group < 1:
        _fail(where, f"group must be an integer >= 1, got {group}")


def check_d2conv3d(x, dilation, modulation, weight, bias, strides, pads, dilations, group, kernel_shape=None,
                   where: str = "D2Conv3D") -> tuple[int, int, int]:
    """The output's (To, Ho, Wo) for inputs of these shapes (modulation, bias: None when absent), or
    UserError naming ``where``, the input and the shape it must have (ARCHITECTURE.md, operator 1)."""
    check_d2conv3d_attributes(kernel_shape, strides, pads, dilations, group, where)
    x = _check_rank(where, "X", x, "[N, C, T, H, W]")
    weight = _check_rank(where, "Wt", weight, "[Cout, C/group, kt, kh, kw]")
    n, c, cout, kernel = x[0], x[1], weight[0], weight[2:]
    if kernel_shape is not None and tuple(int(k) for k in kernel_shape) != kernel:
        _fail(where, f"Wt {list(weight)} has kernel {list(kernel)} but kernel_shape is {list(kernel_shape)}")
    if min(x[1:]) < 1 or min(kernel) < 1:
        _fail(where, f"X [N, C, T, H, W] = {list(x)} and Wt's kernel {list(kernel)} must have sizes >= 1 "
                     "(but N)")
    if c % group or cout % group:
        _fail(where, f"C ({c}) and Cout ({cout}) must both be divisible by group {group}")
    if weight[1] != c // group:
        _fail(where, f"Wt [Cout, C/group, kt, kh, kw] must have C/group = {c // group} in dim 1, got {list(weight)}")
    out = []
    for a in range(3):
        size, k, s, p, d = x[2 + a], kernel[a], int(strides[a]), int(pads[a]), int(dilations[a])
        span = size + 2 * p - d * (k - 1) - 1
        if span < 0:
            _fail(where, f"output {_AXES[a]} size would be < 1: input {size}, kernel {k}, stride {s}, pad {p}, "
                         f"dilation {d}")
        out.append(span // s + 1)
    expect_d = (n, 3, *out)
    if _check_rank(where, "D", dilation, "[N, 3, To, Ho, Wo]") != expect_d:
        _fail(where, f"D must be [N, 3, To, Ho, Wo] = {list(expect_d)}, got {list(dilation)}")
    if modulation is not None:
        expect_m = (n, kernel[0] * kernel[1] * kernel[2], *out)
        if _check_rank(where, "M", modulation, "[N, kt*kh*kw, To, Ho, Wo]") != expect_m:
            _fail(where, f"M must be [N, kt*kh*kw, To, Ho, Wo] = {list(expect_m)}, got {list(modulation)}")
    if bias is not None and _check_rank(where, "B", bias, "[Cout]") != (cout,):
        _fail(where, f"B must be [Cout] = [{cout}], got {list(bias)}")
    return tuple(out)


def check_l2_readout(mem_key, query_key, mem_value, top_k, scale, where: str = "L2MemoryReadout") -> None:
    """UserError naming ``where`` unless mem_key ``[B, Ck, N]``, query_key ``[B, Ck, M]`` and mem_value
    ``[B, V, N]`` fit together, Ck >= 1, the memory is not empty (N >= 1, where there is anything to
    read), top_k >= 0 and scale is finite (ARCHITECTURE.md, operator 2)."""
    mk = _check_rank(where, "mem_key", mem_key, "[B, Ck, N]")
    qk = _check_rank(where, "query_key", query_key, "[B, Ck, M]")
    mv = _check_rank(where, "mem_value", mem_value, "[B, V, N]")
    if not mk[0] == qk[0] == mv[0]:
        _fail(where, f"batch differs: mem_key {list(mk)}, query_key {list(qk)}, mem_value {list(mv)}")
    if mk[1] != qk[1]:
        _fail(where, f"key channels differ: mem_key [B, Ck, N] = {list(mk)}, query_key [B, Ck, M] = {list(qk)}")
    if mk[2] != mv[2]:
        _fail(where, f"memory length differs: mem_key [B, Ck, N] = {list(mk)}, mem_value [B, V, N] = {list(mv)}")
    if mk[1] < 1:
        _fail(where, "the keys have no channels (Ck = 0)")
    if int(top_k) != top_k or top_k < 0:
        _fail(where, f"top_k must be an integer >= 0 (0 = all memory entries), got {top_k}")
    if not np.isfinite(scale):
        _fail(where, f"scale must be finite (<= 0 for 1/sqrt(Ck)), got {scale}")
    if mk[2] == 0 and mk[0] * qk[2] * mv[1] > 0:
        _fail(where, "the memory is empty (N = 0): there is nothing to read")


# The thread count of the operators that run on this thread: set by operator_threads(), so that each
# ONNX Runtime backend's sessions run the operators on its own `threads` (the library is shared).
_run_threads = threading.local()


@contextlib.contextmanager
def operator_threads(threads: int | None):
    """Within the block, the CPU operators called on this thread (directly, or by an ONNX Runtime session's
    run, whose Python operators run on the calling thread) use ``threads`` host threads (0: every hardware
    thread); None leaves the library's own ``threads`` setting in force."""
    previous = getattr(_run_threads, "value", None)
    _run_threads.value = None if threads is None else int(threads)
    try:
        yield
    finally:
        _run_threads.value = previous


def _f32(array):
    return None if array is None else np.ascontiguousarray(array, dtype=np.float32)


def _ptr(array):
    return None if array is None else array.ctypes.data


@lru_cache(maxsize=None)
def _load(path: str) -> CpuOps:
    return CpuOps(path)


def load_cpu_ops(path: str | os.PathLike | None = None, build: bool = True) -> CpuOps:
    """The CPU operator library (cached per path); builds it on first use. Raises CpuOpsUnavailable.

    A library in the user cache that cannot be loaded (a truncated or corrupt file) is built again in
    its place, with a notice on stderr, rather than refused on every later use."""
    if path:
        return _load(str(path))
    found = find_library(build=build)
    try:
        return _load(str(found))
    except CpuOpsUnavailable as err:
        root = source_root()
        if not build or root is None or found != cached_library_path(root):
            raise
        print(f"vosrt: {err}; building it again", file=sys.stderr, flush=True)
        # Replaced atomically, never removed first: another process may be loading its own rebuild.
        return _load(str(build_library(root, found)))


# ---------------------------------------------------------------------------------------------------
# ONNX Runtime: the plugin-form nodes as onnxruntime-extensions Python operators

# (op type in CPU_DOMAIN, has modulation, has bias): D2Conv3D's optional inputs are left out of the
# plugin node, and a Python operator has a fixed input list, so each combination is its own type.
D2CONV3D_VARIANTS = {(True, True): "D2Conv3D", (False, True): "D2Conv3DNoModulation",
                     (True, False): "D2Conv3DNoBias", (False, False): "D2Conv3DNoModulationNoBias"}
_registered = threading.Lock()
_state: dict[str, object] = {}


def _geometry(text: str) -> tuple[tuple[int, ...], ...]:
    # "stride;pad;dilation;groups;kernel", each a comma-separated triple except groups
    parts = [tuple(int(v) for v in p.split(",")) for p in text.split(";")]
    return parts[0], parts[1], parts[2], parts[3][0], parts[4]


def _extensions_module():
    """onnxruntime-extensions' native module alone: the package's ``__init__`` imports torch and onnx
    (seconds, and about 200 MB of memory) for converters the Python operators do not need."""
    name = "onnxruntime_extensions._extensions_pydll"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("onnxruntime_extensions")
    if spec is None or spec.origin is None:
        raise ImportError("onnxruntime-extensions is not installed (pip install onnxruntime-extensions)")
    found = sorted(Path(spec.origin).parent.glob("_extensions_pydll*"))
    if not found:
        raise ImportError(f"onnxruntime-extensions at {Path(spec.origin).parent} has no native module")
    native = importlib.util.spec_from_file_location(name, found[0])
    module = importlib.util.module_from_spec(native)
    native.loader.exec_module(module)
    sys.modules[name] = module
    return module


def _node(op_type: str, attributes) -> str:
    """How errors name the node a Python operator runs: its op type and name in the plugin-form graph."""
    return f"{op_type} node '{attributes.get(NODE_ATTRIBUTE, '')}'"


def _named(where: str, call):
    # A library status names the C call only; say which node of the graph made it.
    try:
        return call()
    except KernelError as err:
        if str(err).startswith(where):
            raise
        raise KernelError(f"{where}: {err}") from None


def _d2conv3d_op(has_mod: bool, has_bias: bool):
    def run(tensors, attributes):
        x, dilation, *rest = tensors
        modulation = rest.pop(0) if has_mod else None
        weight = rest.pop(0)
        bias = rest.pop(0) if has_bias else None
        stride, pad, dil, groups, kernel = _geometry(attributes["vosrt_geometry"])
        where = _node("D2Conv3D", attributes)
        return _named(where, lambda: _state["ops"].d2conv3d(x, dilation, modulation, weight, bias, stride, pad, dil,
                                                            groups, kernel, where))
    return run


def _readout_op(tensors, attributes):
    mem_key, query_key, mem_value, top_k = tensors
    where = _node("L2MemoryReadout", attributes)
    if top_k.size != 1:
        raise UserError(f"{where}: top_k must hold one integer, got shape {list(top_k.shape)}")
    return _named(where, lambda: _state["ops"].l2_memory_readout(mem_key, query_key, mem_value, int(top_k.reshape(-1)[0]),
                                                                 float(attributes["scale"]), where))


def _invoke(op_id, feed, attributes):
    # Called by onnxruntime-extensions for every Python-operator node: the inputs arrive as numpy arrays
    # (copies), the result goes back as (id, shape, flat array); a flat numpy view is accepted and copied
    # once by the caller.
    # Nothing may be raised from here (sdk/native_callbacks.py): an error in the body is raised again when
    # the session's run returns, and the placeholder it returns meanwhile never reaches a caller.
    result = run_callback(lambda: _state["bodies"][op_id](feed, attributes),
                          lambda: np.full(1, np.nan, np.float32))
    return (op_id, result.shape, np.ascontiguousarray(result).reshape(-1))


def register_onnxruntime_ops(ops: CpuOps) -> str:
    """Register the Python operators (once per process) and return the onnxruntime-extensions library path
    to pass to ``SessionOptions.register_custom_ops_library``."""
    with _registered:
        _state["ops"] = ops
        if "library" in _state:
            return _state["library"]
        native = _extensions_module()
        Def = native.PyCustomOpDef
        bodies, definitions = {}, []
        kinds = [(f"{op_type}", [Def.dt_float] * (3 + mod + bias),
                  {"vosrt_geometry": Def.dt_string, NODE_ATTRIBUTE: Def.dt_string},
                  _d2conv3d_op(mod, bias)) for (mod, bias), op_type in D2CONV3D_VARIANTS.items()]
        kinds.append(("L2MemoryReadout", [Def.dt_float] * 3 + [Def.dt_int64],
                      {"scale": Def.dt_float, NODE_ATTRIBUTE: Def.dt_string}, _readout_op))
        for index, (op_type, inputs, attrs, body) in enumerate(kinds):
            definition = Def()
            definition.op_type = f"{CPU_DOMAIN}::{op_type}"
            definition.obj_id = 0x766F7300 + index  # ids of these operators in the hook's calls
            definition.input_types = inputs
            definition.output_types = [Def.dt_float]
            definition.attrs = attrs
            native.add_custom_op(definition)
            bodies[definition.obj_id] = body
            definitions.append(definition)
        _state["bodies"] = bodies
        _state["definitions"] = definitions  # the native side keeps pointers to them: they must live on
        Def.install_hooker(_invoke)
        _state["library"] = native.__file__
        return _state["library"]


def has_plugin_nodes(path: str | os.PathLike) -> bool:
    """Whether the ONNX graph at ``path`` has ``trt.plugins`` nodes (custom operators).

    The file is searched for the domain's name rather than parsed: a graph imports the domain only when
    a node uses it, and parsing a large graph leaves its size in freed but unreturned memory."""
    if os.path.getsize(path) == 0:  # not a graph at all; opening it will say so
        return False
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return data.find(PLUGIN_DOMAIN.encode()) >= 0


# Bump when plugin_model_for_cpu writes something different, so cached rewrites are redone.
REWRITE_VERSION = 3


def cpu_graph_for(path: str | os.PathLike) -> Path:
    """Path of the plugin-form graph at ``path`` rewritten for the CPU operators (:func:`plugin_model_for_cpu`),
    made once into the user cache and reused while the source file is unchanged. ONNX Runtime opens it
    by path: a session made from bytes kept about a graph's size more memory."""
    source = Path(path).resolve()
    stat = source.stat()
    place = hashlib.sha256(str(source).encode()).hexdigest()[:8]
    version = hashlib.sha256(f"{stat.st_size}|{stat.st_mtime_ns}|{REWRITE_VERSION}".encode()).hexdigest()[:8]
    folder = cache_dir() / "cpu_graphs"
    target = folder / f"{source.stem}.{place}{version}.onnx"
    if target.is_file():
        target.touch()  # in use: kept by the pruning below
    else:
        data = plugin_model_for_cpu(source)  # before the file is made: a failure leaves nothing behind
        folder.mkdir(parents=True, exist_ok=True)
        _prune_cpu_graphs(folder, stale_prefix=f"{source.stem}.{place}")
        with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".onnx", delete=False) as tmp:
            try:
                tmp.write(data)
            except BaseException:
                tmp.close()
                os.unlink(tmp.name)
                raise
        os.replace(tmp.name, target)
    return target


# Rewritten graphs not opened for this long are removed (their sources are often temporary exports).
CPU_GRAPH_MAX_AGE_S = 30 * 24 * 3600


def _prune_cpu_graphs(folder: Path, stale_prefix: str) -> None:
    """Remove the rewrites of earlier versions of the same source (``stale_prefix``: stem and path hash)
    and those not used for :data:`CPU_GRAPH_MAX_AGE_S`, so the cache does not grow with every export."""
    now = time.time()
    for entry in folder.glob("*.onnx"):
        try:
            if entry.name.startswith(stale_prefix) or now - entry.stat().st_mtime > CPU_GRAPH_MAX_AGE_S:
                entry.unlink()
        except OSError:  # another process removed or is replacing it
            pass


def _known_ranks(graph) -> dict[str, int]:
    """Ranks of the tensors the graph states without shape inference: initializers, Constant nodes, and
    graph inputs and value_info entries with a shape."""
    ranks = {i.name: len(i.dims) for i in graph.initializer}
    for info in [*graph.input, *graph.value_info]:
        tensor = info.type.tensor_type
        if info.type.HasField("tensor_type") and tensor.HasField("shape"):
            ranks.setdefault(info.name, len(tensor.shape.dim))
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
            for a in node.attribute:
                if a.name == "value":
                    ranks.setdefault(node.output[0], len(a.t.dims))
    return ranks


def _d2conv3d_inputs(node, ranks: dict[str, int], where: str) -> tuple[tuple[bool, bool], list[str]]:
    """(has modulation, has bias) and the given inputs of a plugin-form D2Conv3D node: X, D, [M], Wt, [B].

    An absent optional input is either left out (the exporter's form, 3 or 4 inputs: with 4, input 3 is Wt
    after M when it has rank 5, B after Wt when it has rank 1) or given as an empty name (ONNX's form)."""
    names = list(node.input)
    if not 3 <= len(names) <= 5:
        raise UserError(f"{where}: expected 3 to 5 inputs (X, D, [M], Wt, [B]), got {len(names)}")
    if "" in names:  # by position: X, D, M, Wt, B
        slots = names + [""] * (5 - len(names))
        if not (slots[0] and slots[1] and slots[3]):
            raise UserError(f"{where}: inputs X, D and Wt (0, 1 and 3 when empty names mark absent inputs) "
                            f"are required, got {names}")
        return (bool(slots[2]), bool(slots[4])), [n for n in slots if n]
    if len(names) == 5:
        return (True, True), names
    if len(names) == 3:
        return (False, False), names
    rank = ranks.get(names[3])
    if rank not in (1, 5):
        raise UserError(f"{where}: with 4 inputs, input 3 ('{names[3]}') must be Wt after M (rank 5) or B after Wt "
                        f"(rank 1), and its rank is {'not stated in the graph' if rank is None else rank}; "
                        "give it a shape or write the absent input as an empty name")
    return ((True, False) if rank == 5 else (False, True)), names


def plugin_model_for_cpu(path: str | os.PathLike) -> bytes:
    """The plugin-form graph at ``path`` with its ``trt.plugins`` nodes moved to the CPU operators.

    Each ``D2Conv3D`` node gets the variant type for its inputs and its integer-list attributes packed
    into one string attribute (onnxruntime-extensions operators read scalar attributes only); each
    ``L2MemoryReadout`` node keeps its attributes. Attributes are checked as TensorRT's plugins check
    them (UserError naming the node). The file on disk is not changed.
    """
    import onnx

    model = onnx.load(str(path))
    ranks = _known_ranks(model.graph)
    top_k_inputs: dict[int, str] = {}  # top_k attribute -> the input that carries it
    for index, node in enumerate(model.graph.node):
        if node.domain != PLUGIN_DOMAIN:
            continue
        name = node.name or f"#{index}"
        where = f"{path}: {node.op_type} node '{name}'"
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "D2Conv3D":
            variant, inputs = _d2conv3d_inputs(node, ranks, where)
            if "kernel_shape" not in attrs:
                raise UserError(f"{where}: the kernel_shape attribute (3 ints, t h w) is required")
            geometry = {"strides": [1, 1, 1], "pads": [0, 0, 0], "dilations": [1, 1, 1], "group": 1}
            geometry.update({k: v for k, v in attrs.items() if k in geometry})
            check_d2conv3d_attributes(attrs["kernel_shape"], geometry["strides"], geometry["pads"],
                                      geometry["dilations"], geometry["group"], where)
            packed = ";".join(",".join(str(int(v)) for v in geometry[k]) for k in ("strides", "pads", "dilations"))
            packed += f";{int(geometry['group'])};" + ",".join(str(int(v)) for v in attrs["kernel_shape"])
            node.op_type = D2CONV3D_VARIANTS[variant]
            del node.input[:]
            node.input.extend(inputs)
            del node.attribute[:]
            node.attribute.append(onnx.helper.make_attribute("vosrt_geometry", packed))
        elif node.op_type == "L2MemoryReadout":
            if len(node.input) != 3 or not all(node.input):
                raise UserError(f"{where}: expected 3 inputs (mem_key, query_key, mem_value), got {list(node.input)}")
            top_k, scale = attrs.get("top_k", 20), attrs.get("scale", 0.0)
            if not isinstance(top_k, int) or top_k < 0:
                raise UserError(f"{where}: top_k must be an integer >= 0 (0 = all memory entries), got {top_k!r}")
            if not isinstance(scale, float) or not np.isfinite(scale):
                raise UserError(f"{where}: scale must be a finite float (<= 0 for 1/sqrt(Ck)), got {scale!r}")
            # top_k becomes an input with the attribute as its default, as in the portable form, so a
            # session can change it without re-exporting; a node with another top_k gets its own input.
            if top_k not in top_k_inputs:
                top_k_inputs[top_k] = TOP_K_INPUT if not top_k_inputs else f"{TOP_K_INPUT}_{top_k}"
                default = np.array([top_k], np.int64)
                model.graph.initializer.append(onnx.numpy_helper.from_array(default, top_k_inputs[top_k]))
                model.graph.input.append(onnx.helper.make_tensor_value_info(top_k_inputs[top_k],
                                                                            onnx.TensorProto.INT64, [1]))
            node.input.append(top_k_inputs[top_k])
            del node.attribute[:]
            node.attribute.append(onnx.helper.make_attribute("scale", float(scale)))
        else:
            raise UserError(f"{path}: plugin operator {node.op_type} has no CPU implementation")
        node.attribute.append(onnx.helper.make_attribute(NODE_ATTRIBUTE, name))
        node.domain = CPU_DOMAIN
    imports = [o for o in model.opset_import if o.domain != PLUGIN_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend([*imports, onnx.helper.make_opsetid(CPU_DOMAIN, 1)])
    data = model.SerializeToString()
    del model
    release_freed_memory()
    return data


def release_freed_memory() -> None:
    """Hand memory freed by the parsed graph back to the OS (glibc keeps it otherwise: hundreds of MB
    of peak RSS for a 480p STCN graph). No-op where glibc's malloc_trim is absent."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):
        pass
