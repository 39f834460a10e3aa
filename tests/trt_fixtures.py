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
