"""What each node of the float graph costs in FP32 and in INT8, and what a float→int8 crossing costs.

onnxruntime renames what it optimizes: an FP32 Conv fused with its ReLU becomes a node named
after the ReLU's output plus `_nchwc`, a QDQ group becomes `<node>_token_N` or `<node>_quant`.
Profile entries are mapped back to the float graph's compute node through those names (a fused
Relu/Clip's time goes to its producer); what maps to nothing (layout reorders, transposes,
QuantizeLinear at the edges) is overhead, left to the crossing model.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from ptq_cli.model.graph import GraphIndex
from ptq_cli.quantization.placement.handlers import FUSED_ACTIVATIONS

_RENAMED = re.compile(r"(_token_\d+|_nchwc|_quant)+$")


@dataclass(frozen=True)
class CrossingCost:
    """Time to enter the integer region at one tensor: quantize, NCHW→NHWC transpose, reorder.

    Measured on the project's 2-core machine (onnxruntime 1.3x): about 12 µs per crossing plus
    0.65 ns per element; the search times its best candidates end to end, so this only ranks."""

    fixed_us: float = 12.0
    per_element_ns: float = 0.65

    def us(self, elements: int | None) -> float:
        return self.fixed_us + (self.per_element_ns * elements / 1e3 if elements else 0.0)


def node_costs(profile: Mapping[str, tuple[str, float]], model: onnx.ModelProto) -> dict[str, float]:
    """µs per compute node of `model` (the float graph whose names the quantized one keeps)."""
    index = GraphIndex(model.graph)
    names = {n.name: n for n in model.graph.node}
    costs: dict[str, float] = {}
    for event, (_, us) in profile.items():
        owner = _owner(_RENAMED.sub("", event), names, index)
        if owner is not None:
            costs[owner] = costs.get(owner, 0.0) + us
    return costs


def _owner(base: str, names: Mapping[str, onnx.NodeProto], index: GraphIndex) -> str | None:
    node = names.get(base) or index.producer.get(base)
    if node is None:
        return None
    if node.op_type in FUSED_ACTIVATIONS and node.input and node.input[0] in index.producer:
        node = index.producer[node.input[0]]  # Conv+ReLU fused: the ReLU's name, the Conv's work
    return node.name


def tensor_elements(model: onnx.ModelProto, feeds: Sequence[Mapping[str, np.ndarray]]) -> dict[str, int]:
    """Number of elements of every float tensor whose shape is known once the inputs' are fixed."""
    fixed = copy.deepcopy(model)
    first = feeds[0] if feeds else {}
    for value in fixed.graph.input:
        if value.name in first and value.type.HasField("tensor_type"):
            shape = value.type.tensor_type.shape
            del shape.dim[:]
            for size in first[value.name].shape:
                shape.dim.add().dim_value = int(size)
    del fixed.graph.value_info[:]
    try:
        fixed = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    except Exception:  # shape inference refuses some custom ops: sizes stay unknown, crossings cost the fixed part
        return {}
    sizes: dict[str, int] = {}
    for value in list(fixed.graph.value_info) + list(fixed.graph.input) + list(fixed.graph.output):
        dims = value.type.tensor_type.shape.dim if value.type.HasField("tensor_type") else []
        if dims and all(d.HasField("dim_value") for d in dims):
            sizes[value.name] = int(np.prod([d.dim_value for d in dims]))
    return sizes
