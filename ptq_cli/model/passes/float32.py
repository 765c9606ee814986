"""float16, bfloat16 and float64 models computed in float32 inside, with Casts at the edges.

onnxruntime's integer kernels (QLinearConv, QLinearMatMul, QGemm, MatMulInteger ...) take float32
scales and its QDQ fusions match float32 Q/DQ pairs, so a float16 or float64 graph would keep
every op in float. The graph is converted: every float tensor, weight and type attribute becomes
float32, and the graph's inputs and outputs keep their types through a Cast each, so callers feed
and read what they did before. The change is reported (the quantize summary says it), never silent.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ptq_cli.model.external import tensor_array
from ptq_cli.model.graph import NameAllocator
from ptq_cli.model.passes.base import Pass, PassResult

OTHER_FLOATS = {TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16", TensorProto.DOUBLE: "float64"}
# Attributes that name an element type (Cast's `to`, the generators' `dtype`).
_TYPE_ATTRIBUTES = {"to", "dtype"}


def float_kinds(model: onnx.ModelProto) -> set[int]:
    """The non-float32 float types of the main graph's inputs, outputs and weights."""
    graph = model.graph
    kinds = {t.data_type for t in graph.initializer}
    kinds |= {v.type.tensor_type.elem_type for v in [*graph.input, *graph.output] if v.type.HasField("tensor_type")}
    return kinds & set(OTHER_FLOATS)


class ToFloat32(Pass):
    name = "float32"

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        kinds = float_kinds(model)
        if not kinds:
            return PassResult(model, False)
        graph = model.graph
        edges = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output]
                 if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type in OTHER_FLOATS}
        for sub in list(_graphs(graph)):
            _convert_graph(sub)
        _cast_edges(graph, edges)
        names = ", ".join(OTHER_FLOATS[k] for k in sorted(kinds))
        return PassResult(model, True, (f"{names} model computed in float32 between Casts at its inputs and "
                                        "outputs (onnxruntime's integer kernels take float32 scales)",))


def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def _convert_graph(graph: onnx.GraphProto) -> None:
    for i, tensor in enumerate(graph.initializer):
        if tensor.data_type in OTHER_FLOATS:
            graph.initializer[i].CopyFrom(_as_float32(tensor))
    for value in [*graph.value_info, *graph.input, *graph.output]:
        _retype(value.type)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type in OTHER_FLOATS:
                attr.t.CopyFrom(_as_float32(attr.t))
            elif attr.type == onnx.AttributeProto.INT and attr.name in _TYPE_ATTRIBUTES and attr.i in OTHER_FLOATS:
                attr.i = TensorProto.FLOAT


def _retype(type_proto: onnx.TypeProto) -> None:
    kind = type_proto.WhichOneof("value")
    if kind == "tensor_type" and type_proto.tensor_type.elem_type in OTHER_FLOATS:
        type_proto.tensor_type.elem_type = TensorProto.FLOAT
    elif kind == "sequence_type":
        _retype(type_proto.sequence_type.elem_type)
    elif kind == "optional_type":
        _retype(type_proto.optional_type.elem_type)
    elif kind == "map_type":
        _retype(type_proto.map_type.value_type)


def _as_float32(tensor: onnx.TensorProto) -> onnx.TensorProto:
    array = tensor_array(tensor).astype(np.float32)  # external (lazy) weights too
    return numpy_helper.from_array(array, tensor.name)


def _cast_edges(graph: onnx.GraphProto, edges: dict[str, int]) -> None:
    """Inputs and outputs named in `edges` keep those types: a Cast to float32 after such an input
    (its readers read the cast), a Cast back to the type before such an output (its producer
    writes a float32 tensor under a new name, which the graph's other readers read)."""
    names = NameAllocator(graph)
    initializers = {t.name for t in graph.initializer}
    renamed: dict[str, str] = {}
    head, tail = [], []
    for value in graph.input:
        if value.name in edges and value.name not in initializers:
            inner = renamed[value.name] = names.new(f"{value.name}_float32")
            head.append(helper.make_node("Cast", [value.name], [inner], name=names.new(f"{value.name}_to_float32"),
                                         to=TensorProto.FLOAT))
            value.type.tensor_type.elem_type = edges[value.name]
    outputs = {v.name for v in graph.input}
    for value in graph.output:
        if value.name not in edges or value.name in outputs or value.name in initializers:
            continue
        inner = renamed.setdefault(value.name, names.new(f"{value.name}_float32"))
        tail.append(helper.make_node("Cast", [inner], [value.name], name=names.new(f"{value.name}_to_original"),
                                     to=edges[value.name]))
        value.type.tensor_type.elem_type = edges[value.name]
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
        for i, name in enumerate(node.output):
            if name in renamed:
                node.output[i] = renamed[name]
    for value in graph.value_info:
        if value.name in renamed:
            value.name = renamed[value.name]
    nodes = head + list(graph.node) + tail
    del graph.node[:]
    graph.node.extend(nodes)
