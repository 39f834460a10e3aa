"""fp16 engines hold the STCN memory bank in float16 (``vosrt.export.fp16``, the family table's
``GraphIO.memory``): the graphs declare the bank's tensors float16, the ``L2MemoryReadout`` node reads and
writes float16 (its kernel accumulates in float32), and the tracker sizes its bank from the ``segment``
graph's ``mem_key`` type. TensorRT is not needed to check the graphs, and the portable form of the same
conversion runs in ONNX Runtime, so the tracker's float16 bank is exercised on a real runtime."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from vosrt.export.fp16 import convert_file, convert_to_fp16
from vosrt.sdk import families
from vosrt.sdk.backends.onnxruntime import OnnxRuntimeBackend
from vosrt.sdk.cli_demo import demo_package
from vosrt.sdk.package import load_package
from vosrt.sdk.synthetic import generate_sequence
from vosrt.sdk.tracker import Tracker

MEMORY = {graph: io.memory for graph, io in families.get("stcn").graphs.items()}


def _elem_types(model) -> dict[str, int]:
    return {v.name: v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)}


def test_the_family_table_names_the_bank_tensors():
    assert MEMORY == {"encode_key": ("key",), "encode_value": ("value",),
                      "segment": ("mem_key", "mem_value", "query_key")}


def test_fp16_plugin_segment_reads_the_float16_bank_without_casting_it():
    package = demo_package("stcn")
    model = onnx.load(str(package / "segment.plugin.onnx"))
    converted, report = convert_to_fp16(model, MEMORY["segment"])
    types = _elem_types(converted)
    assert {n: types[n] for n in MEMORY["segment"]} == {n: TensorProto.FLOAT16 for n in MEMORY["segment"]}
    assert types["f16_thin"] == types["f8"] == types["f4"] == TensorProto.FLOAT  # not memory: unchanged
    assert types["prob"] == TensorProto.FLOAT and types["labels"] == TensorProto.UINT8
    assert report["memory"] == sorted(MEMORY["segment"]) and report["fp32_nodes"]["memory_readout"] == 0
    producer = {o: n for n in converted.graph.node for o in n.output}
    (readout,) = [n for n in converted.graph.node if n.op_type == "L2MemoryReadout"]
    for name in readout.input:  # straight from the graph inputs: shape-only nodes, no Cast
        while name not in MEMORY["segment"]:
            node = producer[name]
            assert node.op_type in ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"), node.op_type
            name = node.input[0]
    consumers = [n for n in converted.graph.node if readout.output[0] in n.input]
    # Its float16 output goes on into the decoder; a cast, if any, only widens it for fp32 nodes.
    for node in consumers:
        if node.op_type == "Cast":
            assert next(a.i for a in node.attribute if a.name == "to") == TensorProto.FLOAT
    # Without memory tensors the readout and the bank stay float32, as before.
    plain, plain_report = convert_to_fp16(model)
    assert _elem_types(plain)["mem_key"] == TensorProto.FLOAT
    assert plain_report["fp32_nodes"]["memory_readout"] == 1 and plain_report["memory"] == []


def test_fp16_encoders_write_float16_memory_and_keep_their_other_outputs():
    package = demo_package("stcn")
    key_graph, _ = convert_to_fp16(onnx.load(str(package / "encode_key.plugin.onnx")), MEMORY["encode_key"])
    types = _elem_types(key_graph)
    assert types["key"] == TensorProto.FLOAT16
    assert all(types[n] == TensorProto.FLOAT for n in ("image", "f16_thin", "f16", "f8", "f4"))
    value_graph, _ = convert_to_fp16(onnx.load(str(package / "encode_value.plugin.onnx")), MEMORY["encode_value"])
    types = _elem_types(value_graph)
    assert types["value"] == TensorProto.FLOAT16 and types["masks"] == TensorProto.FLOAT


@pytest.fixture(scope="module")
def fp16_memory_package(tmp_path_factory):
    """The demo package with its portable graphs converted to fp16 with a float16 memory bank."""
    src = demo_package("stcn")
    out = tmp_path_factory.mktemp("fp16mem") / "stcn-lite-fp16"
    out.mkdir()
    manifest = json.loads((src / "manifest.json").read_text())
    for graph, forms in manifest["graphs"].items():
        convert_file(src / forms["portable"], out / forms["portable"], memory=MEMORY[graph])
        manifest["graphs"][graph] = {"portable": forms["portable"]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    shutil.copy2(src / "checkpoint.pth", out / "checkpoint.pth")
    return out


def test_tracker_keeps_a_float16_bank_for_float16_graphs_and_tracks_like_fp32(fp16_memory_package):
    sequence = generate_sequence(31, num_frames=12, height=128, width=224, num_objects=2)
    results = {}
    for name, path in (("fp32", demo_package("stcn")), ("fp16", fp16_memory_package)):
        package = load_package(path)
        tracker = Tracker(OnnxRuntimeBackend(package, form="portable", device="cpu"), package, color="rgb",
                          mem_every=2)
        labels = [tracker.step(f, sequence.labels[0] if t == 0 else None) for t, f in enumerate(sequence.frames)]
        results[name] = (tracker, labels)
    fp32, fp16 = results["fp32"][0].memory, results["fp16"][0].memory
    assert fp32.dtype == np.float32 and fp16.dtype == np.float16
    assert fp16.keys.dtype == fp16.values.dtype == np.float16 and fp32.keys.dtype == np.float32
    assert fp16.frames == fp32.frames > 2
    assert fp16.nbytes() * 2 == fp32.nbytes()  # half the bank
    agree = np.mean([np.mean(a == b) for a, b in zip(results["fp32"][1], results["fp16"][1])])
    print(f"label agreement fp16 bank vs fp32: {agree:.4f}")
    assert agree > 0.98
