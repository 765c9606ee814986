"""Float prefixes: leave the stem and the first layers in FP32, start the integer region later.

The layers that lose in INT8 on a CPU are at the start of a CNN: the stem Conv (3 input
channels) and depthwise Convs with few channels miss onnxruntime's fast integer paths, and
the network input must be quantized and transposed to NHWC. A prefix of k compute nodes (every
quantized compute node up to the k-th in graph order) runs in float; the integer region starts
at the tensors that cross from it. A candidate is estimated from the two per-node profiles:

    INT8 time - sum over the prefix (INT8 - FP32 per node) + crossings at the new boundary
              - crossings at the network input (which the full INT8 model paid)

A boundary right after a MaxPool is refused: onnxruntime moves the QuantizeLinear above the
pool, which then runs as an NCHW uint8 MaxPool, 10-100x slower than the float one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import onnx

from ptq_cli.model.graph import GraphIndex
from ptq_cli.quantization.placement.handlers import FUSED_ACTIVATIONS, OutputRule, activation_inputs, handler_for
from ptq_cli.quantization.placement.latency.cost import CrossingCost


@dataclass(frozen=True)
class Candidate:
    """Compute nodes left in float (graph order), the tensors where INT8 starts, the estimate."""

    float_nodes: tuple[str, ...]
    boundary: tuple[str, ...]
    estimate_us: float


@dataclass(frozen=True)
class Costs:
    """Per-node µs of the float graph's compute nodes, in FP32 and in the full INT8 model."""

    fp32: Mapping[str, float]
    int8: Mapping[str, float]
    int8_total_us: float
    elements: Mapping[str, int]
    crossing: CrossingCost = CrossingCost()


def prefix_candidates(model: onnx.ModelProto, quantized: Sequence[str], costs: Costs,
                      max_fraction: float = 0.5) -> list[Candidate]:
    """Every float prefix up to `max_fraction` of the compute nodes, best estimate first.

    `model` is the prepared float graph; `quantized` the nodes the full INT8 plan quantizes."""
    index = GraphIndex(model.graph)
    order = {n.name: i for i, n in enumerate(model.graph.node)}
    nodes = {n.name: n for n in model.graph.node}
    # Nodes inside If/Loop/Scan bodies are not prefix candidates: only main-graph nodes are.
    compute = [name for name in quantized if name in nodes and _is_compute(nodes[name])]
    entry = _crossing_us(_boundary(set(), compute, nodes, index), costs)
    out = [Candidate((), _boundary(set(), compute, nodes, index), costs.int8_total_us)]
    for k in range(1, int(len(compute) * max_fraction) + 1):
        last = order[compute[k - 1]]
        prefix = tuple(name for name in compute if order[name] <= last)
        boundary = _boundary(set(prefix), compute, nodes, index)
        if any(_after_max_pool(t, index) for t in boundary):
            continue
        saved = sum(costs.int8.get(n, 0.0) - costs.fp32.get(n, 0.0) for n in prefix)
        out.append(Candidate(prefix, boundary, costs.int8_total_us - saved + _crossing_us(boundary, costs) - entry))
    return sorted(out, key=lambda c: (c.estimate_us, len(c.float_nodes)))


def slower_nodes_candidate(model: onnx.ModelProto, quantized: Sequence[str], costs: Costs,
                           margin: float = 0.1) -> Candidate | None:
    """Every compute node that the profiles show slower in INT8 than in FP32 (by more than
    `margin`), left in float wherever it is: not a prefix, islands included. Depthwise Convs
    between pointwise ones, a Softmax over thousands of classes, a Conv already surrounded by float
    code (a written-out hard-swish) lose in INT8 anywhere in a network. The estimate leaves the
    crossings out (some are added, some removed): the search times this candidate end to end."""
    nodes = {n.name: n for n in model.graph.node}
    slower = tuple(name for name in quantized if name in nodes and _is_compute(nodes[name])
                   and costs.fp32.get(name, 0.0) > 0.0
                   and costs.int8.get(name, 0.0) > (1.0 + margin) * costs.fp32[name])
    if not slower:
        return None
    saved = sum(costs.int8[n] - costs.fp32[n] for n in slower)
    return Candidate(slower, (), costs.int8_total_us - saved)


def _is_compute(node: onnx.NodeProto) -> bool:
    handler = handler_for(node)
    return handler is not None and handler.output is not OutputRule.PASSTHROUGH


def _boundary(prefix: set[str], compute: Sequence[str], nodes, index: GraphIndex) -> tuple[str, ...]:
    """Float tensors read by the integer region: activation inputs of quantized compute nodes
    outside the prefix whose value comes from the prefix or from a graph input."""
    found: list[str] = []
    for name in compute:
        if name in prefix:
            continue
        node = nodes[name]
        for i in activation_inputs(node, handler_for(node)):
            tensor = node.input[i]
            if tensor in index.initializers or tensor in found:
                continue
            source = _source(tensor, index)
            if source is None or source.name in prefix:
                found.append(tensor)
    return tuple(found)


def _source(tensor: str, index: GraphIndex) -> onnx.NodeProto | None:
    """The compute node a tensor's value comes from, through data movement and fused ReLUs
    (None: a graph input)."""
    node = index.producer.get(tensor)
    while node is not None and node.input and (node.op_type in FUSED_ACTIVATIONS or (
            handler_for(node) is not None and handler_for(node).output is OutputRule.PASSTHROUGH)):
        node = index.producer.get(node.input[0])
    return node


def _after_max_pool(tensor: str, index: GraphIndex) -> bool:
    node = index.producer.get(tensor)
    while node is not None and node.op_type != "MaxPool" and node.input and (
            handler_for(node) is not None and handler_for(node).output is OutputRule.PASSTHROUGH):
        node = index.producer.get(node.input[0])
    return node is not None and node.op_type == "MaxPool"


def _crossing_us(boundary: Sequence[str], costs: Costs) -> float:
    return sum(costs.crossing.us(costs.elements.get(t)) for t in boundary)
