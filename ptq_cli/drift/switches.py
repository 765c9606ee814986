"""Variants of a QDQ candidate in which only one node's quantization is on.

A *quantized node* is a node with an input made by a DequantizeLinear. Its float source is the
tensor the QuantizeLinear read (activations, through chains of Q/DQ pairs), or the reference's
float constant at the same input of the matching reference node (weights, biases). The *float
base* is the candidate with every quantized node reading its float sources; the variant of node k
is the float base with node k reading its DequantizeLinear outputs again. The unused Q/DQ nodes
left in a variant are dropped by onnxruntime when it loads it.

Separate small variants beat one model with a run-time switch per input (Where(mask, DQ, float)):
a switched weight is not a constant, so onnxruntime cannot pre-pack it, and the switches cost as
much as the convolutions themselves (measured: 4x the reference's run time on MobileNetV1).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ptq_cli.drift.layers import GraphView, Matching
from ptq_cli.model.external import serialized

_PREFIX = "__ptq_float/"
_QDQ = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class SwitchedNode:
    name: str
    op_type: str
    index: int                                # position in the candidate's node list
    quantized_inputs: tuple[tuple[int, str], ...]   # (input position, DequantizeLinear output) switched
    fixed: int      # quantized inputs without a float source (e.g. a weight the reference lacks):
                    # quantized in every variant


class FloatBase:
    """The candidate with every quantized node reading float data; `variant(k)` turns node k back on."""

    def __init__(self, reference: onnx.ModelProto, candidate: onnx.ModelProto, matching: Matching) -> None:
        ref, cand = GraphView(reference), GraphView(candidate)
        ref_of = {c: r for r, c in matching.node_pairs}
        ref_by_name = {n.name: n for n in ref.nodes if n.name}
        self.model = onnx.ModelProto()
        self.model.CopyFrom(candidate)
        self._switching = threading.Lock()
        self._float_outputs(cand)
        nodes: list[SwitchedNode] = []
        for index, node in enumerate(cand.nodes):
            if node.op_type in _QDQ or node.op_type == "Constant":
                continue
            ref_node = ref.nodes[ref_of[index]] if index in ref_of else _same_name(node, ref_by_name)
            sources = _float_sources(node, cand, ref, ref_node)
            switched = self._rewire(index, sources)
            if switched:
                nodes.append(SwitchedNode(node.name, node.op_type, index, switched, len(sources) - len(switched)))
        self.nodes = tuple(nodes)

    def _float_outputs(self, cand: GraphView) -> None:
        """Graph outputs made by DequantizeLinear(QuantizeLinear(x)) give x in every variant: their
        quantization belongs to no node, and would otherwise set a noise floor under all of them.
        The DequantizeLinear keeps working, under a new name, for any node that reads it."""
        renamed = {}
        for output in self.model.graph.output:
            source = _quantizer_input(output.name, cand)
            if source is not None:
                renamed[output.name] = (f"{_PREFIX}output/{output.name}", source)
        if not renamed:
            return
        for node in self.model.graph.node:
            for i, name in enumerate(node.input):
                if name in renamed:
                    node.input[i] = renamed[name][0]
            for i, name in enumerate(node.output):
                if name in renamed:
                    node.output[i] = renamed[name][0]
        for output, (_, source) in renamed.items():
            self.model.graph.node.append(helper.make_node("Identity", [source], [output]))

    def _rewire(self, index: int, sources: dict) -> tuple[tuple[int, str], ...]:
        """Point the copy's node at its float sources; returns what was switched."""
        target = self.model.graph.node[index]
        switched = []
        for position, source in sources.items():
            if source is None:
                continue
            if isinstance(source, np.ndarray):
                name = f"{_PREFIX}{index}/{position}"
                self.model.graph.initializer.append(numpy_helper.from_array(source, name))
                source = name
            switched.append((position, target.input[position]))   # the DQ output, renamed or not
            target.input[position] = source
        return tuple(switched)

    def variant(self, k: int) -> bytes:
        """The serialized model with only nodes[k] quantized. Safe from several threads (the
        ranking builds variants on as many as it runs sessions)."""
        node = self.nodes[k]
        # One copy of the model serves every variant: switched, serialized and restored under the
        # lock. Without it a thread could serialize another's switch too (two nodes quantized, or
        # none), and the ranking, the fallback and so the written file changed from run to run.
        with self._switching:
            target = self.model.graph.node[node.index]
            floats = [(position, target.input[position]) for position, _ in node.quantized_inputs]
            for position, dq_output in node.quantized_inputs:
                target.input[position] = dq_output
            try:
                return serialized(self.model)
            finally:
                for position, name in floats:
                    target.input[position] = name


def _same_name(node: onnx.NodeProto, ref_by_name: dict) -> onnx.NodeProto | None:
    found = ref_by_name.get(node.name) if node.name else None
    return found if found is not None and found.op_type == node.op_type else None


def _float_sources(node: onnx.NodeProto, cand: GraphView, ref: GraphView,
                   ref_node: onnx.NodeProto | None) -> dict[int, str | np.ndarray | None]:
    """Per input position that reads a DequantizeLinear: the float tensor name (activation) or
    array (constant) to read instead, or None when there is none to be had."""
    sources: dict[int, str | np.ndarray | None] = {}
    for position, name in enumerate(node.input):
        dq = cand.producer.get(name) if name else None
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        if cand.is_const(dq.input[0]):
            sources[position] = _reference_constant(dq, cand, ref, ref_node, position)
        else:
            sources[position] = _quantizer_input(name, cand)
    return sources


def _quantizer_input(name: str, cand: GraphView) -> str | None:
    """x for DequantizeLinear(QuantizeLinear(x)), through chains of such pairs."""
    found = None
    for _ in range(64):  # a QDQ chain is short; the bound only guards against malformed cycles
        dq = cand.producer.get(name)
        q = cand.producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear":
            return found
        name = found = q.input[0]
    return found


def _reference_constant(dq: onnx.NodeProto, cand: GraphView, ref: GraphView,
                        ref_node: onnx.NodeProto | None, position: int) -> np.ndarray | None:
    """The reference's float constant at the same input of the matching node, when its shape is
    the quantized one's (a quantizer that folded something into it made it a different constant)."""
    if ref_node is None or position >= len(ref_node.input) or not ref.is_const(ref_node.input[position]):
        return None
    original = ref.const_value(ref_node.input[position])
    quantized = cand.const_value(dq.input[0])
    if original is None or quantized is None or original.shape != quantized.shape or original.dtype.kind != "f":
        return None
    scale = cand.const_value(dq.input[1])
    return original.astype(scale.dtype if scale is not None and scale.dtype.kind == "f" else original.dtype)
