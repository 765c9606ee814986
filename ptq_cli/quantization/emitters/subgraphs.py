"""Quantizing inside If / Loop / Scan bodies.

Each body is quantized as a graph of its own: a standalone model whose inputs are the body's
inputs plus the outer-scope tensors it reads (typed from the enclosing scopes), planned and
emitted by the same code as the main graph (static QDQ, or dynamic), then written back into the
body with its own inputs. Nested bodies follow, with the enclosing bodies' tensors in scope.
Ranges of body tensors come from calibration/subgraphs.py.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx
from onnx import helper

from ptq_cli.model.graph import drop_unused_initializers
from ptq_cli.quantization.emitters.base import EmitResult
from ptq_cli.quantization.plan import SkipReason

_BODY_OPS = ("If", "Loop", "Scan")
# A standalone body in, the body emitted out (by the same emitter as the main graph).
EmitBody = Callable[[onnx.ModelProto], EmitResult]


def has_bodies(model: onnx.ModelProto) -> bool:
    return any(n.op_type in _BODY_OPS for n in model.graph.node)


def emit_bodies(outer: EmitResult, emit_body: EmitBody) -> EmitResult:
    """`outer` (the main graph as an emitter wrote it) with every If/Loop/Scan body emitted by
    `emit_body` as well: the nodes quantized in either, and the nodes left float.

    The bodies are written into `outer.model`, the emitter's own fresh copy that no other stage
    has seen yet (copying a large model again would cost its size for nothing). An If/Loop/Scan
    node whose bodies were quantized leaves the skipped list: the node has no integer form, but
    saying it "runs in float" would be wrong."""
    if not has_bodies(outer.model):
        return outer
    model = outer.model
    done: list[str] = []
    skipped: list[SkipReason] = []
    notes: list[str] = []
    weights = {t.name: t for t in model.graph.initializer}
    _visit(model, model.graph, _types(model.graph), weights, emit_body, done, skipped, notes)
    drop_unused_initializers(model.graph)  # weights now quantized inside the bodies
    owners = {n.name for n in model.graph.node if n.op_type in _BODY_OPS} if done else set()
    kept = tuple(s for s in outer.skipped if s.node not in owners)
    return EmitResult(model, outer.quantized + tuple(done), kept + tuple(skipped),
                      tuple(dict.fromkeys(outer.notes + tuple(notes))))


def _visit(model, graph, scope, weights, emit_body, done, skipped, notes) -> None:
    for node in graph.node:
        if node.op_type not in _BODY_OPS or node.domain not in ("", "ai.onnx"):
            continue
        for attr in node.attribute:
            if attr.type != onnx.AttributeProto.GRAPH:
                continue
            for i, inner in enumerate(attr.g.node):  # names for reports and --exclude
                if not inner.name:
                    inner.name = f"{node.name}/{attr.name}/{inner.op_type}_{i}"
            standalone = _standalone(model, attr.g, scope, weights)
            emitted = emit_body(standalone)
            quantized = emitted.model
            _write_back(attr.g, quantized, len(attr.g.input))
            _import_domains(model, quantized)  # e.g. com.microsoft for a DynamicQuantizeLSTM
            done += emitted.quantized
            skipped += emitted.skipped
            notes += emitted.notes
            inner = {**weights, **{t.name: t for t in attr.g.initializer}}
            _visit(model, attr.g, {**scope, **_types(quantized.graph)}, inner, emit_body, done, skipped, notes)


def _standalone(model: onnx.ModelProto, body: onnx.GraphProto, scope: dict[str, onnx.TypeProto],
                weights: dict[str, onnx.TensorProto]) -> onnx.ModelProto:
    """The body as a model: outer-scope weights copied in as its own initializers (so they are
    quantized as weights, inside the body), other outer-scope tensors as extra graph inputs."""
    graph = onnx.GraphProto()
    graph.CopyFrom(body)
    defined = _defined(body)
    for name in sorted(_read(body) - defined):
        if name in weights:
            graph.initializer.append(weights[name])
        elif name in scope and scope[name].HasField("tensor_type"):
            graph.input.append(helper.make_value_info(name, scope[name]))
    out = helper.make_model(graph, opset_imports=list(model.opset_import))
    out.ir_version = model.ir_version
    try:
        return onnx.shape_inference.infer_shapes(out, strict_mode=False)
    except Exception:  # inference is best effort; the plan skips tensors without a type
        return out


def _write_back(body: onnx.GraphProto, quantized: onnx.ModelProto, own_inputs: int) -> None:
    graph = quantized.graph
    outer = {v.name for v in graph.input[own_inputs:]}
    del body.node[:]
    body.node.extend(graph.node)
    del body.initializer[:]
    body.initializer.extend(graph.initializer)
    del body.value_info[:]
    body.value_info.extend(v for v in graph.value_info if v.name not in outer)
    del body.output[:]
    body.output.extend(graph.output)


def _import_domains(model: onnx.ModelProto, body: onnx.ModelProto) -> None:
    known = {o.domain for o in model.opset_import}
    model.opset_import.extend(o for o in body.opset_import if o.domain not in known)


def _defined(graph: onnx.GraphProto) -> set[str]:
    names = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(node.output)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                names |= _defined(attr.g)
    return names


def _read(graph: onnx.GraphProto) -> set[str]:
    names = set()
    for node in graph.node:
        names.update(n for n in node.input if n)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                names |= _read(attr.g)
    names.update(o.name for o in graph.output)
    return names


def _types(graph: onnx.GraphProto) -> dict[str, onnx.TypeProto]:
    types = {v.name: v.type for v in [*graph.input, *graph.value_info, *graph.output]}
    for t in graph.initializer:
        types[t.name] = helper.make_tensor_type_proto(t.data_type, list(t.dims))
    return types
