"""Ranges of tensors inside If / Loop / Scan bodies.

onnxruntime hands back only main-graph tensors, so each body reduces its own float tensors
(ReduceMin, ReduceMax, Size) and passes the scalars out: an If as extra outputs of both branches
(the branch not taken yields +inf, -inf and size 0, which change nothing), a Loop or Scan as extra
per-iteration scan outputs, reduced again after the node. Nested bodies pass theirs up the same way.
The main graph then fetches three scalars per body tensor (min, max, element count).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from ptq_cli.model.graph import NameAllocator

_OBSERVED = {TensorProto.FLOAT, TensorProto.DOUBLE}
_BODIES = {"If": ("then_branch", "else_branch"), "Loop": ("body",), "Scan": ("body",)}


@dataclass(frozen=True)
class SubProbe:
    """A body tensor and the main-graph outputs holding its min, max and element count."""

    name: str
    min: str
    max: str
    size: str


@dataclass(frozen=True)
class _Triple:
    tensor: str
    min: str
    max: str
    size: str
    elem: int


def has_bodies(model: onnx.ModelProto) -> bool:
    return any(node.op_type in _BODIES for node in model.graph.node)


def expose_bodies(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[SubProbe]]:
    """A copy of `model` whose main graph outputs the reductions of every float body tensor."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    types = _all_types(out)
    names = NameAllocator(out.graph)
    triples = _process(out.graph, True, types, names)
    for t in triples:
        out.graph.output.extend([helper.make_tensor_value_info(t.min, t.elem, []),
                                 helper.make_tensor_value_info(t.max, t.elem, []),
                                 helper.make_tensor_value_info(t.size, TensorProto.INT64, [])])
    return out, [SubProbe(t.tensor, t.min, t.max, t.size) for t in triples]


def _process(graph: onnx.GraphProto, main: bool, types: dict[str, int], names: NameAllocator) -> list[_Triple]:
    triples: list[_Triple] = []
    if not main:
        own = [v.name for v in graph.input] + [o for n in graph.node for o in n.output if o]
        for tensor in dict.fromkeys(own):
            if types.get(tensor) in _OBSERVED:
                triples.append(_reduce(graph, tensor, types[tensor], names))
    for node in list(graph.node):
        if node.op_type not in _BODIES or node.domain not in ("", "ai.onnx"):
            continue
        bodies = {a.name: a.g for a in node.attribute if a.name in _BODIES[node.op_type]}
        if node.op_type == "If":
            triples += _expose_if(graph, node, bodies["then_branch"], bodies["else_branch"], types, names)
        else:
            triples += _expose_loop(graph, node, bodies["body"], types, names)
    return triples


def _reduce(graph, tensor, elem, names) -> _Triple:
    mn, mx, size = (names.new(f"{tensor}/ptq_{k}") for k in ("min", "max", "size"))
    graph.node.extend([helper.make_node("ReduceMin", [tensor], [mn], keepdims=0),
                       helper.make_node("ReduceMax", [tensor], [mx], keepdims=0),
                       helper.make_node("Size", [tensor], [size])])
    return _Triple(tensor, mn, mx, size, elem)


def _expose_if(graph, node, then_g, else_g, types, names) -> list[_Triple]:
    found = [(then_g, _process(then_g, False, types, names)), (else_g, _process(else_g, False, types, names))]
    outer = []
    for branch, triples in found:
        for t in triples:
            for g in (then_g, else_g):
                names_in_g = (t.min, t.max, t.size)
                if g is not branch:  # the branch not taken: values that leave the statistics alone
                    names_in_g = tuple(names.new(f"{n}_idle") for n in names_in_g)
                    g.node.extend(_constant(n, elem, v) for n, elem, v in
                                  zip(names_in_g, (t.elem, t.elem, TensorProto.INT64), (np.inf, -np.inf, 0)))
                g.output.extend(_scalar_infos(names_in_g, t.elem))
            outs = tuple(names.new(f"{n}_if") for n in (t.min, t.max, t.size))
            node.output.extend(outs)
            outer.append(_Triple(t.tensor, *outs, t.elem))
    return outer


def _expose_loop(graph, node, body, types, names) -> list[_Triple]:
    triples = _process(body, False, types, names)
    outer = []
    for t in triples:
        body.output.extend(_scalar_infos((t.min, t.max, t.size), t.elem))
        steps = tuple(names.new(f"{n}_steps") for n in (t.min, t.max, t.size))
        node.output.extend(steps)
        reduced = tuple(names.new(f"{n}_all") for n in (t.min, t.max, t.size))
        graph.node.extend([helper.make_node("ReduceMin", [steps[0]], [reduced[0]], keepdims=0),
                           helper.make_node("ReduceMax", [steps[1]], [reduced[1]], keepdims=0),
                           helper.make_node("ReduceSum", [steps[2]], [reduced[2]], keepdims=0)])
        outer.append(_Triple(t.tensor, *reduced, t.elem))
    if node.op_type == "Scan" and triples:
        for attr in node.attribute:  # one axis / direction per scan output, when they are given
            if attr.name in ("scan_output_axes", "scan_output_directions"):
                attr.ints.extend([0] * 3 * len(triples))
    return outer


def _constant(name: str, elem: int, value) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, elem, [], [value]))


def _scalar_infos(names3, elem):
    return [helper.make_tensor_value_info(names3[0], elem, []), helper.make_tensor_value_info(names3[1], elem, []),
            helper.make_tensor_value_info(names3[2], TensorProto.INT64, [])]


def _all_types(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model) if model.ByteSize() < 2**31 - 1 else model
    except Exception:  # inference is best effort (custom ops)
        inferred = model
    types: dict[str, int] = {}

    def visit(graph: onnx.GraphProto) -> None:
        for v in [*graph.input, *graph.value_info, *graph.output]:
            if v.type.HasField("tensor_type"):
                types[v.name] = v.type.tensor_type.elem_type
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)

    visit(inferred.graph)
    return types
