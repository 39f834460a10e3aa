"""Small model packages for the TensorRT build/backend tests that run without TensorRT.

The graphs are tiny ONNX models with the input/output names and shapes of docs/DESIGN.md (symbolic
objects/memory axes); they are real files that vosrt.sdk.load_package and the profile logic read.
"""
from __future__ import annotations

import json
from pathlib import Path

import onnx
from onnx import TensorProto, helper

HEIGHT, WIDTH = 64, 96  # h, w = 4, 6 at stride 16
DIMS = {"key_dim": 16, "value_dim": 8, "f16_dim": 12, "f16_thin_dim": 8, "f8_dim": 8, "f4_dim": 4}


def _io(name, dims, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, dims)


def _save(path: Path, inputs, outputs, nodes, inits=()) -> None:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    onnx.save(model, str(path))


def write_stcn_package(root: Path, forms=("portable", "plugin"), io_axes: bool = True) -> Path:
    """An stcn package whose graphs pass tensors through (shapes only matter here)."""
    root.mkdir(parents=True, exist_ok=True)
    h, w, d = HEIGHT // 16, WIDTH // 16, DIMS
    graphs = {
        "encode_key": ([_io("image", [1, 3, HEIGHT, WIDTH])], [_io("key", [1, 3, HEIGHT, WIDTH])],
                       [helper.make_node("Identity", ["image"], ["key"])]),
        "encode_value": ([_io("image", [1, 3, HEIGHT, WIDTH]), _io("f16", [1, d["f16_dim"], h, w]),
                          _io("masks", ["objects", 1, HEIGHT, WIDTH])],
                         [_io("value", ["objects", 1, HEIGHT, WIDTH])],
                         [helper.make_node("Identity", ["masks"], ["value"])]),
        "segment": ([_io("mem_key", [1, d["key_dim"], "memory"]), _io("mem_value", ["objects", d["value_dim"], "memory"]),
                     _io("query_key", [1, d["key_dim"], h, w]), _io("f16_thin", [1, d["f16_thin_dim"], h, w]),
                     _io("f8", [1, d["f8_dim"], HEIGHT // 8, WIDTH // 8]), _io("f4", [1, d["f4_dim"], HEIGHT // 4, WIDTH // 4])],
                    [_io("prob", ["objects", d["value_dim"], "memory"])],
                    [helper.make_node("Identity", ["mem_value"], ["prob"])]),
    }
    files = {}
    for graph, (inputs, outputs, nodes) in graphs.items():
        files[graph] = {}
        for form in forms:
            name = f"{graph}.{form}.onnx"
            _save(root / name, inputs, outputs, nodes)
            files[graph][form] = name
    manifest = {
        "format_version": 1, "family": "stcn", "variant": "stcn-lite",
        "resolution": {"height": HEIGHT, "width": WIDTH, "stride": 16},
        "graphs": files, "dims": DIMS,
        "streaming": {"mem_every": 5, "top_k": 20, "memory_capacity": 6},
    }
    if io_axes:
        manifest["io"] = {
            "encode_value": {"dynamic_axes": {"masks": {"0": "objects"}, "value": {"0": "objects"}}},
            "segment": {"dynamic_axes": {"mem_key": {"2": "memory"}, "mem_value": {"0": "objects", "2": "memory"}}},
        }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return root


def add_engine_record(root: Path, precision: str = "fp32", tensorrt: str = "10.16.0", gpu=None,
                      write_files: bool = True, plugin_library: str | None = None) -> dict:
    """Record (and optionally write placeholder files for) engines in the manifest, as vosrt build does."""
    manifest = json.loads((root / "manifest.json").read_text())
    files = {g: f"engines/{g}.{precision}.engine" for g in manifest["graphs"]}
    if write_files:
        (root / "engines").mkdir(exist_ok=True)
        for name in files.values():
            (root / name).write_bytes(b"not an engine")
    entry = {"tensorrt": tensorrt, "gpu": gpu or {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"},
             "precision": precision, "files": files, "plugin_library": plugin_library}
    manifest.setdefault("engines", {})[precision] = entry
    manifest["engines"]["default"] = precision
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return entry



# ---- a stand-in for the TensorRT Python API that `vosrt build` calls, with the names and behaviour of the
# bindings at each supported tag (NVIDIA/TensorRT python/src/infer/pyCore.cpp, pyFoundationalTypes.cpp,
# parsers/pyOnnx.cpp, python/packaging/bindings_wheel/tensorrt/__init__.py at v10.16 and v11.1) ----

# NetworkDefinitionCreationFlag values of NvInfer.h: 10.16 has kEXPLICIT_BATCH = 0, kSTRONGLY_TYPED = 1;
# 11.1 has kSTRONGLY_TYPED = 0 (deprecated, always on), kPREFER_JIT_PYTHON_PLUGINS = 1, kPREFER_AOT_... = 2.
STRONGLY_TYPED_BIT = {"10.16.0": 1, "11.1.0": 0}


class FakeHostMemory:
    """IHostMemory: the buffer protocol (so bytes() works), ``nbytes`` and ``dtype``, and nothing else; in
    particular no ``__len__`` (pyFoundationalTypes.cpp binds none), so ``len()`` of one raises TypeError."""

    def __init__(self, data: bytes):
        self._data = bytes(data)

    def __bytes__(self) -> bytes:   # what the buffer protocol gives bytes() on the real object
        return self._data

    @property
    def nbytes(self) -> int:
        return len(self._data)

    dtype = "UINT8"


class _FakeTimingCache:
    def __init__(self, blob: bytes):
        self.blob = bytes(blob)

    def serialize(self) -> FakeHostMemory:
        return FakeHostMemory(b"timing-cache:" + self.blob)


class _FakeInput:
    def __init__(self, name):
        self.name = name


class _FakeNetwork:
    def __init__(self, flags):
        self.flags = flags
        self.inputs: list[_FakeInput] = []

    @property
    def num_inputs(self):
        return len(self.inputs)

    def get_input(self, index):
        return self.inputs[index]


class _FakeParser:
    def __init__(self, network, logger):
        self.network = network
        self.num_errors = 0

    def _read(self, model: onnx.ModelProto) -> bool:
        initializers = {i.name for i in model.graph.initializer}
        self.network.inputs = [_FakeInput(v.name) for v in model.graph.input if v.name not in initializers]
        return True

    def parse(self, model, path=None):
        return self._read(onnx.load_from_string(bytes(model)))

    def parse_from_file(self, model):
        return self._read(onnx.load(str(model)))

    def get_error(self, index):
        raise IndexError(index)


class _FakeProfile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, input, min, opt, max):   # noqa: A002 (the binding's argument names)
        self.shapes[input] = (list(min), list(opt), list(max))


class _FakeConfig:
    def __init__(self, trt):
        self._trt = trt
        # TensorRT's default: float32 layers may use TF32
        self.flags, self.pools, self.profiles, self.timing_cache = {trt.BuilderFlag.TF32}, {}, [], None
        self.plugins_to_serialize = []

    def create_timing_cache(self, serialized_timing_cache):
        return _FakeTimingCache(serialized_timing_cache)

    def set_timing_cache(self, cache, ignore_mismatch):
        self.timing_cache = cache
        return True

    def set_memory_pool_limit(self, pool, pool_size):
        self.pools[pool] = pool_size

    def set_flag(self, flag):
        self.flags.add(flag)

    def clear_flag(self, flag):
        self.flags.discard(flag)

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)
        return len(self.profiles) - 1


class _FakeRegistry:
    def __init__(self, parent=None):
        self.parent, self.creators = parent, set()

    def load_library(self, plugin_path):
        self.creators |= {"D2Conv3D", "L2MemoryReadout"}
        return object()

    def get_creator(self, type, version, plugin_namespace=""):   # noqa: A002
        if type in self.creators and version == "1" and plugin_namespace == "":
            return object()
        return self.parent.get_creator(type, version, plugin_namespace) if self.parent else None


class FakeTensorRT:
    """``import tensorrt`` as ``vosrt build`` uses it, at TensorRT ``version`` ("10.16.0" or "11.1.0"); every
    network, config and engine made is kept in ``built`` as ``(network, config, engine bytes)``."""

    def __init__(self, version: str = "10.16.0"):
        import enum

        self.__version__ = version
        flags = {"STRONGLY_TYPED": STRONGLY_TYPED_BIT[version]}
        if version.startswith("10."):
            flags["EXPLICIT_BATCH"] = 0
        self.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", flags)
        self.MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE")
        self.BuilderFlag = enum.Enum("BuilderFlag", "VERSION_COMPATIBLE EXCLUDE_LEAN_RUNTIME TF32")
        self.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda logger, min_severity=2: None})
        self.OnnxParser = _FakeParser
        self.global_registry = _FakeRegistry()
        self.built: list[tuple[_FakeNetwork, _FakeConfig, bytes]] = []
        trt = self

        class Builder:
            def __init__(self, logger):
                self.registry = _FakeRegistry(trt.global_registry)

            def get_plugin_registry(self):
                return self.registry

            def create_builder_config(self):
                return _FakeConfig(trt)

            def create_network(self, flags=0):
                return _FakeNetwork(flags)

            def create_optimization_profile(self):
                return _FakeProfile()

            def build_serialized_network(self, network, config):
                engine = b"engine:" + ",".join(i.name for i in network.inputs).encode()
                trt.built.append((network, config, engine))
                return FakeHostMemory(engine)

        self.Builder = Builder

    def get_plugin_registry(self):
        return self.global_registry




# Bounds of the TensorRT engine tests (tests/test_tensorrt.py). fp32 engines against ONNX Runtime: every
# float output within FP32_MAX_REL of its peak (a top_k of 15 instead of 20 moves stcn-lite's prob by
# 1.3e-3 relative, 19 instead of 20 by 5.9e-4, measured on the CPU by
# test_a_wrong_top_k_moves_stcn_outputs_beyond_the_fp32_bound), label maps equal on all but FP32_LABEL_MISMATCH
# of the pixels. fp16 engines: probabilities within FP16_MAX_ABS, and labels equal wherever the
# reference's top two probabilities differ by more than FP16_LABEL_MARGIN (random weights leave many
# pixels near a tie, where fp16 rounding may legitimately flip the arg-max).
FP32_MAX_REL = 1e-4
FP32_LABEL_MISMATCH = 1e-3
FP16_MAX_ABS = 2e-2
FP16_LABEL_MARGIN = 2e-2
