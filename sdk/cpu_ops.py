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
2. a CMake build of ``plugins/`` in the source tree (``plugins/build*/``), newest first;
3. the user cache (``$VOSRT_CACHE``, default ``~/.cache/vosrt``), compiled there on first use from the
   sources shipped in the package (``vosrt/sdk/cpu_ops_src``, or ``plugins/`` in a source tree) with
   the C++ compiler ``$CXX`` (default ``c++``); this takes about ten seconds and says so on stderr.

The cache key hashes the sources, the compiler and its flags, so an edited source or another machine
type builds anew; ``-march=native`` is used because the library is built on the machine that runs it.
"""
from __future__ import annotations

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
from vosrt.sdk.kernels import D2Conv3DParams, L2ReadoutParams, check_status, d2conv3d_params, l2_readout_params
from vosrt.sdk.native_callbacks import run_callback

LIBRARY = "libvosrt_cpu_ops.so"
ENV_LIB = "VOSRT_CPU_OPS_LIB"
ENV_CACHE = "VOSRT_CACHE"
# Domain of the rewritten plugin nodes the Python operators serve (see :func:`plugin_model_for_cpu`).
CPU_DOMAIN = "vosrt.cpu"
PLUGIN_DOMAIN = "trt.plugins"
TOP_K_INPUT = "top_k"  # the rewritten readout's top_k input, named as in the portable form
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
    with tempfile.NamedTemporaryFile(dir=out.parent, suffix=".so", delete=False) as tmp:
        partial = Path(tmp.name)
    command = [compiler, *FLAGS, *includes, *map(str, _sources(root)), "-o", str(partial)]
    if verbose:
        print(f"vosrt: compiling the CPU operator library once into {out.parent} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise CpuOpsUnavailable(f"compiling {LIBRARY} failed:\n{result.stderr.strip()[-2000:]}")
    os.replace(partial, out)
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
        self.lib = ctypes.CDLL(str(self.path))
        d2c, l2r = ctypes.POINTER(D2Conv3DParams), ctypes.POINTER(L2ReadoutParams)
        for symbol, argtypes in {
            "vosrtCpuOpsVersion": [],
            "vosrtCpuOpsD2Conv3DOutputShape": [d2c, ctypes.POINTER(_INT)],
            "vosrtCpuOpsD2Conv3DForward": [d2c, _VP, _VP, _VP, _VP, _VP, _VP, _INT],
            "vosrtCpuOpsL2ReadoutForward": [l2r, _VP, _VP, _VP, _VP, _INT],
        }.items():
            fn = getattr(self.lib, symbol)
            fn.restype, fn.argtypes = _INT, argtypes
        self.threads = 0  # 0: every hardware thread

    def d2conv3d(self, x, dilation, modulation, weight, bias=None, stride=(1, 1, 1), padding=(0, 0, 0),
                 dilation_base=(1, 1, 1), groups=1) -> np.ndarray:
        """Y ``[N, Cout, To, Ho, Wo]`` of D2Conv3D (arguments as in ``vosrt.training.ops.d2conv3d``)."""
        x, dilation, modulation, weight, bias = (_f32(a) for a in (x, dilation, modulation, weight, bias))
        params = d2conv3d_params(x.shape, weight.shape, stride, padding, dilation_base, groups,
                                 modulation is not None, bias is not None)
        out_thw = (_INT * 3)()
        check_status(self.lib.vosrtCpuOpsD2Conv3DOutputShape(ctypes.byref(params), out_thw),
                     "vosrtCpuOpsD2Conv3DOutputShape")
        y = np.empty((x.shape[0], weight.shape[0], *out_thw), dtype=np.float32)
        check_status(self.lib.vosrtCpuOpsD2Conv3DForward(
            ctypes.byref(params), _ptr(x), _ptr(dilation), _ptr(modulation), _ptr(weight), _ptr(bias), _ptr(y),
            self.threads), "vosrtCpuOpsD2Conv3DForward")
        return y

    def l2_memory_readout(self, mem_key, query_key, mem_value, top_k=20, scale=0.0) -> np.ndarray:
        """out ``[B, V, M]`` from mem_key ``[B, Ck, N]``, query_key ``[B, Ck, M]``, mem_value ``[B, V, N]``;
        top_k 0 reads all N; scale <= 0 means 1/sqrt(Ck)."""
        mem_key, query_key, mem_value = (_f32(a) for a in (mem_key, query_key, mem_value))
        params = l2_readout_params(mem_key.shape, query_key.shape[2], mem_value.shape[1], top_k, scale)
        out = np.empty((mem_key.shape[0], mem_value.shape[1], query_key.shape[2]), dtype=np.float32)
        check_status(self.lib.vosrtCpuOpsL2ReadoutForward(ctypes.byref(params), _ptr(mem_key), _ptr(query_key),
                                                          _ptr(mem_value), _ptr(out), self.threads),
                     "vosrtCpuOpsL2ReadoutForward")
        return out


def _f32(array):
    return None if array is None else np.ascontiguousarray(array, dtype=np.float32)


def _ptr(array):
    return None if array is None else array.ctypes.data


@lru_cache(maxsize=None)
def _load(path: str) -> CpuOps:
    return CpuOps(path)


def load_cpu_ops(path: str | os.PathLike | None = None, build: bool = True) -> CpuOps:
    """The CPU operator library (cached per path); builds it on first use. Raises CpuOpsUnavailable."""
    return _load(str(path) if path else str(find_library(build=build)))


# ---------------------------------------------------------------------------------------------------
# ONNX Runtime: the plugin-form nodes as onnxruntime-extensions Python operators

# (op type in CPU_DOMAIN, has modulation, has bias): D2Conv3D's optional inputs are left out of the
# plugin node, and a Python operator has a fixed input list, so each combination is its own type.
D2CONV3D_VARIANTS = {(True, True): "D2Conv3D", (False, True): "D2Conv3DNoModulation",
                     (True, False): "D2Conv3DNoBias", (False, False): "D2Conv3DNoModulationNoBias"}
_registered = threading.Lock()
_state: dict[str, object] = {}


def _geometry(text: str) -> tuple[tuple[int, ...], ...]:
    # "stride;pad;dilation;groups", each a comma-separated triple except groups
    parts = [tuple(int(v) for v in p.split(",")) for p in text.split(";")]
    return parts[0], parts[1], parts[2], parts[3][0]


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


def _d2conv3d_op(has_mod: bool, has_bias: bool):
    def run(tensors, attributes):
        x, dilation, *rest = tensors
        modulation = rest.pop(0) if has_mod else None
        weight = rest.pop(0)
        bias = rest.pop(0) if has_bias else None
        stride, pad, dil, groups = _geometry(attributes["vosrt_geometry"])
        return _state["ops"].d2conv3d(x, dilation, modulation, weight, bias, stride, pad, dil, groups)
    return run


def _readout_op(tensors, attributes):
    mem_key, query_key, mem_value, top_k = tensors
    return _state["ops"].l2_memory_readout(mem_key, query_key, mem_value, max(int(top_k.reshape(-1)[0]), 0),
                                           float(attributes["scale"]))


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
        kinds = [(f"{op_type}", [Def.dt_float] * (3 + mod + bias), {"vosrt_geometry": Def.dt_string},
                  _d2conv3d_op(mod, bias)) for (mod, bias), op_type in D2CONV3D_VARIANTS.items()]
        kinds.append(("L2MemoryReadout", [Def.dt_float] * 3 + [Def.dt_int64], {"scale": Def.dt_float}, _readout_op))
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
REWRITE_VERSION = 1


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


def plugin_model_for_cpu(path: str | os.PathLike) -> bytes:
    """The plugin-form graph at ``path`` with its ``trt.plugins`` nodes moved to the CPU operators.

    Each ``D2Conv3D`` node gets the variant type for its inputs and its integer-list attributes packed
    into one string attribute (onnxruntime-extensions operators read scalar attributes only); each
    ``L2MemoryReadout`` node keeps its attributes. The file on disk is not changed.
    """
    import onnx

    model = onnx.load(str(path))
    initializer_ranks = {i.name: len(i.dims) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.domain != PLUGIN_DOMAIN:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "D2Conv3D":
            count = len(node.input)
            if count == 5:
                variant = (True, True)
            elif count == 3:
                variant = (False, False)
            else:  # X, D, then either M, Wt or Wt, B: B is the only 1-D one
                variant = (False, True) if initializer_ranks.get(node.input[3]) == 1 else (True, False)
            geometry = ";".join(",".join(str(int(v)) for v in attrs[name]) for name in ("strides", "pads", "dilations"))
            geometry += f";{int(attrs.get('group', 1))}"
            node.op_type = D2CONV3D_VARIANTS[variant]
            del node.attribute[:]
            node.attribute.append(onnx.helper.make_attribute("vosrt_geometry", geometry))
        elif node.op_type == "L2MemoryReadout":
            # top_k becomes an input with the attribute as its default, as in the portable form, so a
            # session can change it without re-exporting.
            if TOP_K_INPUT not in initializer_ranks:
                default = np.array([int(attrs.get("top_k", 20))], np.int64)
                model.graph.initializer.append(onnx.numpy_helper.from_array(default, TOP_K_INPUT))
                model.graph.input.append(onnx.helper.make_tensor_value_info(TOP_K_INPUT, onnx.TensorProto.INT64, [1]))
                initializer_ranks[TOP_K_INPUT] = 1
            node.input.append(TOP_K_INPUT)
            del node.attribute[:]
            node.attribute.append(onnx.helper.make_attribute("scale", float(attrs.get("scale", 0.0))))
        else:
            raise UserError(f"{path}: plugin operator {node.op_type} has no CPU implementation")
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
