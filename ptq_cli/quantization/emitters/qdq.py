"""Write a QuantPlan as QuantizeLinear/DequantizeLinear pairs around the float ops.

    activation T:  producer -> T -> QuantizeLinear -> T_quantized -> DequantizeLinear -> T_dequantized -> consumers
    weight W:      W_quantized (int8 initializer) -> DequantizeLinear -> consumer
    bias B:        B_quantized (int32, scale S_x·S_w, zero-point 0) -> DequantizeLinear -> consumer

Every consumer of a quantized activation reads the dequantized tensor, so that onnxruntime
sees the QuantizeLinear as the producer's only consumer and fuses both into one integer kernel.
A graph output keeps its name: the producer writes a renamed tensor and the DequantizeLinear
writes the output.

The exception is a Conv/ConvTranspose/Gemm left in float (excluded, or without a range): it reads
the float tensor. onnxruntime's WeightBiasQuantization (1.21+) quantizes the float weights of such
a node when it reads a DequantizeLinear and leads to a QuantizeLinear, which would silently undo
`--exclude`. Its producer then keeps a float output (it cannot fuse), the price of the exclusion.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ptq_cli.model.graph import GraphIndex, attribute, drop_unused_initializers
from ptq_cli.model.io import opset_version
from ptq_cli.model.prepare import QDQ_PER_AXIS_OPSET
from ptq_cli.quantization.emitters.base import EmitResult
from ptq_cli.quantization.emitters.emit import Emitter, typed_constant
from ptq_cli.quantization.placement.handlers import OutputRule, handler_for
from ptq_cli.quantization.plan import QuantPlan, WeightPlan
from ptq_cli.quantization.arithmetic.scheme import quantize_bias


def emit_qdq(model: onnx.ModelProto, plan: QuantPlan) -> EmitResult:
    """A copy of `model` (prepared) with the plan written as Q/DQ pairs."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    index = GraphIndex(graph)
    emit = Emitter(out)
    rename: dict[str, str] = {}  # activation -> its dequantized tensor, for consumers
    integer: dict[str, str] = {}  # activation -> its quantized (integer) tensor
    new_nodes: list[onnx.NodeProto] = []

    def qdq_after(tensor: str) -> None:
        qp = plan.activations[tensor]
        base = tensor
        quantized = emit.names.new(f"{base}_quantized")
        if tensor in index.outputs:
            # Keep the graph output's name on the DequantizeLinear; the producer writes a new name.
            source = emit.names.new(f"{base}_float")
            producer = next((n for n in new_nodes for i, o in enumerate(n.output) if o == tensor), None)
            if producer is not None:
                producer.output[list(producer.output).index(tensor)] = source
                new_nodes.append(emit.quantize(source, qp, quantized, base))
                new_nodes.append(emit.dequantize(quantized, qp, tensor, base))
                integer[tensor] = quantized
                return
        dequantized = emit.names.new(f"{base}_dequantized")
        new_nodes.append(emit.quantize(tensor, qp, quantized, base))
        new_nodes.append(emit.dequantize(quantized, qp, dequantized, base))
        rename[tensor] = dequantized
        integer[tensor] = quantized

    for value in graph.input:
        if value.name in plan.activations:
            qdq_after(value.name)
    weights_done: dict[tuple[str, bytes], str] = {}
    float_readers = _float_readers(graph, index, plan)
    for node in graph.node:
        if node.name in plan.weight_only:
            new_nodes.extend(_gathered_rows(emit, node, plan.weight_only[node.name], index))
            continue
        reads_float = node.name in float_readers
        for i, name in enumerate(node.input):
            weight = plan.weights.get((node.name, name))
            if weight is not None:
                node.input[i] = _weight_input(emit, new_nodes, weight, index, weights_done)
            elif node.name in plan.biases and plan.biases[node.name].tensor == name and i > 0:
                node.input[i] = _bias_input(emit, new_nodes, plan, node.name, index)
            elif name in rename and not reads_float:
                node.input[i] = rename[name]
        if reads_float and plan.dequantized_float_convs and node.name not in plan.quantized:
            _read_per_channel(node, emit, new_nodes, plan, index, integer, float_readers, opset_version(out))
        new_nodes.append(node)
        for tensor in node.output:
            if tensor in plan.activations:
                qdq_after(tensor)

    del graph.node[:]
    graph.node.extend(_without_unread_pairs(new_nodes, index.outputs, set(rename.values())))
    graph.initializer.extend(emit.initializers)
    drop_unused_initializers(graph)
    return EmitResult(out, plan.quantized, plan.skipped)


_REQUANTIZED_BY_ORT = ("Conv", "ConvTranspose", "Gemm")


def _read_per_channel(node, emit: Emitter, nodes: list, plan: QuantPlan, index: GraphIndex,
                      integer: dict[str, str], float_readers: set[str], opset: int) -> None:
    """A float Conv whose input comes from an integer producer reads it through a per-channel
    DequantizeLinear (the same scale on every channel): the producer keeps its output
    QuantizeLinear and its integer kernel, and onnxruntime, which re-quantizes a float Conv
    behind a per-tensor DequantizeLinear, leaves this one float."""
    source = node.input[0] if node.op_type == "Conv" and node.input else ""
    producer = index.producer.get(source)
    weight = index.constant(node.input[1]) if len(node.input) > 1 else None
    if source not in integer or (producer is not None and producer.name in float_readers) or weight is None \
            or opset < QDQ_PER_AXIS_OPSET:
        return
    qp = plan.activations[source]
    if qp.per_channel or qp.qtype.bits != 8:
        return
    channels = weight.shape[1] * int(attribute(node, "group", 1))
    scale = emit.constant(np.full(channels, float(qp.scale), np.float32), f"{source}_channel_scale")
    zero = emit.constant(np.full(channels, qp.zero_point.reshape(-1)[0], qp.qtype.numpy_type),
                         f"{source}_channel_zero_point")
    dequantized = emit.names.new(f"{source}_per_channel_dequantized")
    nodes.append(helper.make_node("DequantizeLinear", [integer[source], scale, zero], [dequantized],
                                  name=emit.names.new(f"{source}_per_channel_DequantizeLinear"), axis=1))
    node.input[0] = dequantized


def _float_readers(graph: onnx.GraphProto, index: GraphIndex, plan: QuantPlan) -> set[str]:
    """Nodes that read float tensors rather than dequantized ones: the Conv/Gemm left in float,
    and the data-movement nodes that only feed them (onnxruntime moves a DequantizeLinear down
    through Reshape, MaxPool, ... and would then re-quantize the float node all the same)."""
    quantized = set(plan.quantized)
    readers = {n.name for n in graph.node if n.op_type in _REQUANTIZED_BY_ORT and n.name not in quantized}
    by_name = {n.name: n for n in graph.node}
    frontier = list(readers)
    while frontier:
        node = by_name[frontier.pop()]
        for name in node.input:
            producer = index.producer.get(name)
            if producer is None or producer.name in readers or handler_for(producer) is None or \
                    handler_for(producer).output is not OutputRule.PASSTHROUGH:
                continue
            users = [u for out in producer.output for u in index.consumers.get(out, [])]
            if all(u.name in readers for u in users) and not set(producer.output) & index.outputs:
                readers.add(producer.name)
                frontier.append(producer.name)
    return readers


def _without_unread_pairs(nodes: list[onnx.NodeProto], outputs: set[str], dequantized: set[str]) -> list:
    """Drop activation Q/DQ pairs that nothing reads any more (all readers stayed float)."""
    read = {name for node in nodes for name in node.input} | outputs
    unread_dq = {id(n) for n in nodes if n.op_type == "DequantizeLinear" and n.output[0] in dequantized
                 and n.output[0] not in read}
    kept = [n for n in nodes if id(n) not in unread_dq]
    read = {name for node in kept for name in node.input} | outputs
    return [n for n in kept if n.op_type != "QuantizeLinear" or n.output[0] in read]


def _gathered_rows(emit: Emitter, node: onnx.NodeProto, table: WeightPlan, index: GraphIndex) -> list:
    """Gather from the int8 table, then dequantize only the rows read (one scale per column, the
    last axis of the gathered rows): dequantizing the whole table would cost more than the lookup."""
    qp = table.params
    q_table = emit.names.new(f"{table.tensor}_quantized")
    emit.initializers.append(typed_constant(table.integers(index.constant(table.tensor)), qp, q_table))
    rows = emit.names.new(f"{node.output[0]}_quantized")
    gather = onnx.NodeProto()
    gather.CopyFrom(node)
    gather.input[0], gather.output[0] = q_table, rows
    scale, zero = emit.scale_and_zero(qp, table.tensor)
    attrs = {"axis": -1} if qp.per_channel else {}
    dequantize = helper.make_node("DequantizeLinear", [rows, scale, zero], [node.output[0]],
                                  name=emit.names.new(f"{node.name}_DequantizeLinear"), **attrs)
    return [gather, dequantize]


def _weight_input(emit: Emitter, nodes: list, weight: WeightPlan, index: GraphIndex, done: dict) -> str:
    qp = weight.params
    key = (weight.tensor, qp.scale.tobytes() + qp.zero_point.tobytes() + str(qp.axis).encode())
    if key not in done:
        q = weight.integers(index.constant(weight.tensor))
        q_name = emit.names.new(f"{weight.tensor}_quantized")
        emit.initializers.append(typed_constant(q, qp, q_name))
        dequantized = emit.names.new(f"{weight.tensor}_dequantized")
        nodes.append(emit.dequantize(q_name, qp, dequantized, weight.tensor))
        done[key] = dequantized
    return done[key]


def _bias_input(emit: Emitter, nodes: list, plan: QuantPlan, node_name: str, index: GraphIndex) -> str:
    bias = plan.biases[node_name]
    x_scale = plan.activations[bias.input_tensor].scale
    q, scale = quantize_bias(index.constant(bias.tensor), x_scale, bias.weight.params.scale)
    q_name = emit.constant(q, f"{bias.tensor}_quantized")
    scale_name = emit.constant(scale if bias.weight.params.per_channel else scale.reshape(-1)[:1].reshape(()),
                               f"{bias.tensor}_scale")
    zero_shape = scale.shape if bias.weight.params.per_channel else ()
    zero_name = emit.constant(np.zeros(zero_shape, np.int32), f"{bias.tensor}_zero_point")
    dequantized = emit.names.new(f"{bias.tensor}_dequantized")
    attrs = {"axis": 0} if bias.weight.params.per_channel else {}
    nodes.append(helper.make_node("DequantizeLinear", [q_name, scale_name, zero_name], [dequantized],
                                  name=emit.names.new(f"{bias.tensor}_DequantizeLinear"), **attrs))
    return dequantized
