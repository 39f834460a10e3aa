"""FP16 variants of a package's graphs, for strongly typed TensorRT engines.

TensorRT 11 networks are strongly typed: an engine computes in the types written in the ONNX graph, so
reduced precision must be in the graph itself (and ``vosrt build`` builds TensorRT 10 engines the same
way, strongly typed, so both versions produce the same numerics). :func:`convert_to_fp16` casts weights
and activations to float16 everywhere except in the parts that are numerically sensitive, which stay in
float32 with Casts at their borders:

* ``input_head``: everything computed from a graph input before the first convolution (the
  ImageNet normalisation of images: small values divided by small std);
* ``output_tail``: everything between the last convolution and the graph outputs (the STCN soft
  aggregation -- products of (1 - p), clamping near 0 and 1, logit and softmax -- the 3DC-Seg sigmoid,
  the arg-max, and the upsampling that feeds them);
* ``sensitive_ops``: nodes of the types in :data:`FP32_OP_TYPES` (softmax and normalisation layers,
  whose reductions overflow or lose mass in float16);
* ``normalisation_statistics``: normalisation layers exported as elementary ops (the GroupNorm of
  3DC-Seg becomes ReduceMean / Sub / Mul / Add / Sqrt / Div): from every ``Sqrt``, the statistics ops it
  is computed from (reductions, centring, squaring, epsilon) and the division by it -- squares of
  activations overflow float16 (65504) long before the activations do;
* ``memory_readout``: the ``L2MemoryReadout`` node, when the memory bank stays float32 (no ``memory``
  tensors given): it takes one data type for all its inputs, so it then runs on float32;
* ``d2conv_sampling``: the nodes that predict a ``D2Conv3D``'s dilation and modulation, from the convolution
  that predicts them: a sample lies at dilation × tap, so a float16 prediction chain moved samples by a tenth of
  a voxel at dilations of 12 (the layer, one data type for all inputs, then takes them cast to float16).

**Memory in float16.** ``memory`` names the graph inputs and outputs that are memory-bank tensors (the
family table's ``GraphIO.memory``: STCN's ``key`` and ``value`` outputs and ``segment``'s ``mem_key``,
``mem_value`` and ``query_key`` inputs). Those are declared float16, so the session's bank holds float16
(half the device memory and half the bytes the readout streams), and the ``L2MemoryReadout`` node reads
and writes float16 with the shape-only nodes (Reshape, Flatten, Squeeze, Unsqueeze, Identity) between
it and those inputs; the kernel accumulates the affinity, the softmax and the weighted sum in float32.
In a portable graph the readout's standard ops stay float32 (the input head) behind Casts, so there only
the storage is float16.

All other graph inputs and outputs keep their types, so sessions feed and read the same arrays in either
precision (a session sizes its memory bank from the ``segment`` graph's ``mem_key`` type). The node-block
rules and what they matched are returned by :func:`convert_to_fp16` and recorded in the package manifest
by ``vosrt build``.
"""
from __future__ import annotations

from collections import defaultdict, deque
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vosrt.sdk.package import replace_file

PLUGIN_DOMAIN = "trt.plugins"
FP32_OP_TYPES = ("Softmax", "LogSoftmax", "GroupNormalization", "InstanceNormalization",
                 "LayerNormalization", "LpNormalization", "ReduceLogSumExp")
FP32_PLUGIN_OPS = ("L2MemoryReadout",)
# A convolution ends the normalisation head and starts the output tail.
_BOUNDARY_OPS = ("Conv", "ConvTranspose", "D2Conv3D")
# Inputs that ONNX requires to be float32 whatever the data type (Resize's roi and scales).
_FLOAT32_ONLY_INPUTS = {"Resize": (1, 2)}
_FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16)

RULES = {
    "input_head": ("nodes computed from graph inputs before the first convolution (the image normalisation; "
                   "in `segment`, also the memory read and the decoder-input preparation)"),
    "output_tail": "nodes between the last convolution and the graph outputs",
    "sensitive_ops": "op types " + ", ".join(FP32_OP_TYPES),
    "normalisation_statistics": ("decomposed normalisation: from each Sqrt, the ReduceMean/Sub/Mul/Add/Pow ops "
                                 "it is computed from and the Div by it"),
    "d2conv_sampling": ("the nodes that predict each D2Conv3D's dilation and modulation, from the convolution "
                        "that predicts them (a sampling position is the dilation times the tap: its float16 "
                        "rounding moves samples by a tenth of a voxel at dilations of 12)"),
    "memory_readout": ("the L2MemoryReadout plugin node when the memory bank stays float32; with a float16 bank "
                       "it reads and writes float16 and accumulates in float32"),
}
# Nodes that only move or reshape data: on the way from a float16 memory input to the readout they stay
# float16 rather than cast the whole bank to float32 and back.
_MOVE_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")
_STATISTICS_OPS = ("ReduceMean", "ReduceSum", "ReduceSumSquare", "Sub", "Mul", "Add", "Pow", "Sqrt", "Div")


def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor name that shape inference (plus the plugin rule) can tell."""
    types: dict[str, int] = {}
    graph = model.graph
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    # ONNX cannot infer through the custom nodes; they output their first input's type. Propagate in
    # topological order, then let shape inference fill in the rest.
    for _ in range(2):
        for node in graph.node:
            if node.domain == PLUGIN_DOMAIN and node.input and node.input[0] in types:
                for out in node.output:
                    types[out] = types[node.input[0]]
        hinted = onnx.ModelProto()
        hinted.CopyFrom(model)
        del hinted.graph.value_info[:]
        for name, elem in types.items():
            if name not in {i.name for i in graph.input} | {o.name for o in graph.output}:
                hinted.graph.value_info.append(helper.make_tensor_value_info(name, elem, None))
        inferred = onnx.shape_inference.infer_shapes(hinted, strict_mode=False)
        for value in inferred.graph.value_info:
            if value.type.tensor_type.elem_type:
                types.setdefault(value.name, value.type.tensor_type.elem_type)
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def _head_nodes(graph: onnx.GraphProto, consumers) -> set[int]:
    """Indices of nodes reachable from graph inputs without passing through a convolution."""
    seen: set[int] = set()
    queue = deque(i.name for i in graph.input)
    while queue:
        name = queue.popleft()
        for index in consumers.get(name, ()):
            node = graph.node[index]
            if index in seen or node.op_type in _BOUNDARY_OPS:
                continue
            seen.add(index)
            queue.extend(node.output)
    return seen


def _tail_nodes(graph: onnx.GraphProto, producer) -> set[int]:
    """Indices of nodes that reach a graph output without passing through a convolution."""
    seen: set[int] = set()
    queue = deque(o.name for o in graph.output)
    while queue:
        name = queue.popleft()
        index = producer.get(name)
        if index is None or index in seen:
            continue
        node = graph.node[index]
        if node.op_type in _BOUNDARY_OPS:
            continue
        seen.add(index)
        queue.extend(node.input)
    return seen


def _sampling_nodes(graph: onnx.GraphProto, producer) -> set[int]:
    """Indices of the nodes that compute a ``D2Conv3D``'s dilation and modulation inputs, back to and including the
    convolution that predicts them (see ``d2conv_sampling`` in :data:`RULES`)."""
    found: set[int] = set()
    for node in graph.node:
        if node.domain != PLUGIN_DOMAIN or node.op_type != "D2Conv3D":
            continue
        queue = deque(name for name in node.input[1:3] if name)
        while queue:
            index = producer.get(queue.popleft())
            if index is None or index in found:
                continue
            found.add(index)
            if graph.node[index].op_type not in _BOUNDARY_OPS:
                queue.extend(graph.node[index].input)
    return found


def _normalisation_nodes(graph: onnx.GraphProto, producer, consumers) -> set[int]:
    """Indices of decomposed-normalisation nodes (see ``normalisation_statistics`` in :data:`RULES`)."""
    found: set[int] = set()
    for root, node in enumerate(graph.node):
        if node.op_type != "Sqrt":
            continue
        region = {root}
        queue = deque(node.input)
        while queue:
            index = producer.get(queue.popleft())
            if index is None or index in region or graph.node[index].op_type not in _STATISTICS_OPS:
                continue
            region.add(index)
            queue.extend(graph.node[index].input)
        if not any(graph.node[i].op_type.startswith("Reduce") for i in region):
            continue  # a square root that is not a standard deviation
        region |= {i for i in consumers.get(node.output[0], ()) if graph.node[i].op_type == "Div"}
        found |= region
    return found


def _memory_readouts(graph: onnx.GraphProto, producer, memory: set[str]) -> set[int]:
    """Indices of the readout nodes whose float inputs all come from ``memory`` graph inputs through
    :data:`_MOVE_OPS` only, plus those move nodes: the nodes that run on the float16 bank directly."""
    found: set[int] = set()
    for index, node in enumerate(graph.node):
        if node.domain != PLUGIN_DOMAIN or node.op_type not in FP32_PLUGIN_OPS:
            continue
        path, ok = {index}, True
        for name in node.input:
            while ok and name not in memory:
                moved = producer.get(name)
                if moved is None or graph.node[moved].op_type not in _MOVE_OPS:
                    ok = False
                else:
                    path.add(moved)
                    name = graph.node[moved].input[0]
        if ok:
            found |= path
    return found


def convert_to_fp16(model: onnx.ModelProto, memory: tuple | list | set = ()) -> tuple[onnx.ModelProto, dict]:
    """A float16 copy of ``model`` with the float32 blocks described in the module docstring.

    ``memory``: names of graph inputs and outputs that hold memory-bank tensors, declared float16 (see
    the module docstring); names the graph does not have are ignored, so one family-wide list serves
    every graph. Returns ``(model, report)``; ``report`` maps each rule of :data:`RULES` to the number of
    nodes it kept in float32 and gives the counts of float16 nodes and inserted casts, and ``memory``,
    the graph's inputs and outputs declared float16.
    """
    model_in = model
    model = onnx.ModelProto()
    model.CopyFrom(model_in)
    graph = model.graph
    types = _tensor_types(model)
    is_float = lambda name: types.get(name) in _FLOAT_TYPES  # noqa: E731
    boundary = {v.name for v in list(graph.input) + list(graph.output)}
    memory = {name for name in memory if name in boundary and is_float(name)}

    consumers: dict[str, list[int]] = defaultdict(list)
    producer: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for name in node.input:
            consumers[name].append(index)
        for name in node.output:
            producer[name] = index

    head = _head_nodes(graph, consumers)
    tail = _tail_nodes(graph, producer)
    sensitive = {i for i, n in enumerate(graph.node) if n.op_type in FP32_OP_TYPES}
    normalisation = _normalisation_nodes(graph, producer, consumers)
    sampling = _sampling_nodes(graph, producer)
    on_memory = _memory_readouts(graph, producer, memory)
    head -= on_memory
    readout = {i for i, n in enumerate(graph.node)
               if n.domain == PLUGIN_DOMAIN and n.op_type in FP32_PLUGIN_OPS and i not in on_memory}
    keep32 = head | tail | sensitive | normalisation | readout | sampling
    report = {"rules": dict(RULES), "fp32_nodes": {"input_head": len(head), "output_tail": len(tail),
                                                    "sensitive_ops": len(sensitive),
                                                    "normalisation_statistics": len(normalisation),
                                                    "memory_readout": len(readout),
                                                    "d2conv_sampling": len(sampling)}}

    # Nodes that compute on floats and are not kept in float32 become float16 nodes.
    def touches_float(node) -> bool:
        return any(is_float(n) for n in list(node.input) + list(node.output) if n)

    half = {i for i, n in enumerate(graph.node) if i not in keep32 and touches_float(n)
            and n.op_type not in ("Shape", "Size")}

    # Float initializers and Constant values: converted in place when only float16 nodes read them.
    initializers = {init.name: init for init in graph.initializer}
    float32_only = lambda index, slot: slot in _FLOAT32_ONLY_INPUTS.get(graph.node[index].op_type, ())  # noqa: E731
    dtype_of: dict[str, int] = {}  # final element type of each float tensor
    for name in list(initializers) + [n.output[0] for n in graph.node if n.op_type == "Constant"]:
        if not is_float(name):
            continue
        readers = [(i, slot) for i in consumers.get(name, ()) for slot, n in enumerate(graph.node[i].input)
                   if n == name]
        if readers and all(i in half and not float32_only(i, slot) for i, slot in readers):
            dtype_of[name] = TensorProto.FLOAT16
            _retype_constant(graph, initializers, name, TensorProto.FLOAT16)
        else:
            dtype_of[name] = types[name]

    for index, node in enumerate(graph.node):
        if index in half:
            for out in node.output:
                if is_float(out):
                    dtype_of[out] = TensorProto.FLOAT16
            if node.op_type == "Cast":
                to = next(a for a in node.attribute if a.name == "to")
                if to.i == TensorProto.FLOAT:
                    to.i = TensorProto.FLOAT16
            if node.op_type == "ConstantOfShape":
                for attr in node.attribute:
                    if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                        attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16),
                                                                attr.t.name))
        else:
            for out in node.output:
                if is_float(out) and out not in dtype_of:
                    dtype_of[out] = types[out]
    for value in list(graph.input) + list(graph.output):
        if value.name in memory:  # the bank's tensors: float16 at the graph boundary
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    for value in graph.input:
        if value.name in memory:
            dtype_of[value.name] = TensorProto.FLOAT16
        elif is_float(value.name):
            dtype_of.setdefault(value.name, value.type.tensor_type.elem_type)

    # Casts where a tensor's type differs from what its reader computes in.
    new_nodes = []
    casts: dict[tuple[str, int], str] = {}
    n_casts = 0
    for index, node in enumerate(graph.node):
        for slot, name in enumerate(node.input):
            if not name or not is_float(name) or node.op_type in ("Shape", "Size"):
                continue
            if index in half:
                want = TensorProto.FLOAT if float32_only(index, slot) else TensorProto.FLOAT16
            else:
                want = TensorProto.FLOAT if node.op_type != "Cast" else dtype_of.get(name, TensorProto.FLOAT)
            have = dtype_of.get(name, types[name])
            if have == want:
                continue
            key = (name, want)
            if key not in casts:
                casts[key] = f"{name}__to_{'fp16' if want == TensorProto.FLOAT16 else 'fp32'}"
                new_nodes.append(helper.make_node("Cast", [name], [casts[key]], to=want,
                                                  name=f"vosrt_fp16_cast_{n_casts}"))
                n_casts += 1
            node.input[slot] = casts[key]
        new_nodes.append(node)
    # Graph outputs keep their declared types.
    for value in graph.output:
        declared = value.type.tensor_type.elem_type
        if dtype_of.get(value.name, declared) != declared:
            inner = f"{value.name}__fp16"
            for node in new_nodes:
                for slot, out in enumerate(node.output):
                    if out == value.name:
                        node.output[slot] = inner
                for slot, inp in enumerate(node.input):
                    if inp == value.name:
                        node.input[slot] = inner
            new_nodes.append(helper.make_node("Cast", [inner], [value.name], to=declared,
                                              name=f"vosrt_fp16_cast_{n_casts}"))
            n_casts += 1
    _sort_topologically(graph, new_nodes)
    del graph.value_info[:]
    report["fp16_nodes"] = len(half)
    report["casts"] = n_casts
    report["memory"] = sorted(memory)
    return model, report


def _retype_constant(graph: onnx.GraphProto, initializers: dict, name: str, elem_type: int) -> None:
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
    if name in initializers:
        init = initializers[name]
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(dtype), name))
        return
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(dtype), attr.t.name))


def _sort_topologically(graph: onnx.GraphProto, nodes: list) -> None:
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(nodes)
    ordered = []
    while pending:
        progress = False
        rest = []
        for node in pending:
            if all(n in available for n in node.input):
                ordered.append(node)
                available.update(node.output)
                progress = True
            else:
                rest.append(node)
        if not progress:
            raise ValueError("fp16 conversion produced a cycle or a dangling input: "
                             + ", ".join(n for node in rest for n in node.input if n not in available)[:200])
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def convert_file(src: str | Path, dst: str | Path, memory: tuple | list | set = ()) -> dict:
    """Write the float16 variant of ONNX file ``src`` to ``dst`` (external data kept inline), with the
    ``memory`` tensors in float16; returns the conversion report."""
    model = onnx.load(str(src))
    converted, report = convert_to_fp16(model, memory)
    replace_file(dst, lambda tmp: onnx.save(converted, str(tmp)))
    return report
