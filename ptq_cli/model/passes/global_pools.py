"""Spatial reductions in the form onnxruntime runs on integers.

- GlobalMaxPool becomes ReduceMax over the spatial axes (keepdims): onnxruntime has no integer
  GlobalMaxPool, but runs ReduceMax on the integer tensor (max commutes with quantization);
- ReduceMean over H and W of an NCHW tensor becomes GlobalAveragePool (then Flatten when the
  reduced axes are dropped), which it fuses into QLinearGlobalAveragePool; it has no integer ReduceMean.
Both are exact rewrites.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ptq_cli.model.graph import GraphIndex, NameAllocator, attribute
from ptq_cli.model.io import opset_version
from ptq_cli.model.passes.base import Pass, PassResult

# ReduceMax/ReduceMean take their axes as an input (not an attribute) from opset 18.
_AXES_INPUT_OPSET = 18


class GlobalPools(Pass):
    name = "global-pools"

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        index = GraphIndex(graph)
        names = NameAllocator(graph)
        opset = opset_version(model)
        ranks = _ranks(graph)
        changes, nodes = [], []
        for node in graph.node:
            rank = ranks.get(node.input[0]) if node.input else None
            if node.op_type == "GlobalMaxPool" and node.domain in ("", "ai.onnx") and rank and rank >= 3:
                nodes.extend(_reduce_max(node, list(range(2, rank)), opset, names, graph))
                changes.append(f"{node.name}: GlobalMaxPool -> ReduceMax")
            elif node.op_type == "ReduceMean" and node.domain in ("", "ai.onnx") and rank == 4 \
                    and _spatial_mean(node, index, opset) \
                    and (attribute(node, "keepdims", 1) or node.output[0] not in index.outputs):
                nodes.extend(_global_average(node, names, graph))
                changes.append(f"{node.name}: ReduceMean over H, W -> GlobalAveragePool")
            else:
                nodes.append(node)
        if changes:
            del graph.node[:]
            graph.node.extend(nodes)
        return PassResult(model, bool(changes), tuple(changes))


def _ranks(graph: onnx.GraphProto) -> dict[str, int]:
    return {v.name: len(v.type.tensor_type.shape.dim) for v in [*graph.input, *graph.value_info, *graph.output]
            if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")}


def _reduce_max(node, axes, opset, names, graph):
    if opset >= _AXES_INPUT_OPSET:
        axes_name = names.new(f"{node.name}_axes")
        graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), axes_name))
        return [helper.make_node("ReduceMax", [node.input[0], axes_name], list(node.output), name=node.name, keepdims=1)]
    return [helper.make_node("ReduceMax", [node.input[0]], list(node.output), name=node.name, axes=axes, keepdims=1)]


def _spatial_mean(node, index, opset) -> bool:
    if opset >= _AXES_INPUT_OPSET:
        axes = index.constant(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        if axes is None or attribute(node, "noop_with_empty_axes", 0):
            return False
        axes = axes.tolist()
    else:
        axes = attribute(node, "axes")
    return axes is not None and sorted(a % 4 for a in axes) == [2, 3]


def _global_average(node, names, graph):
    """GlobalAveragePool, keeping the output's name (so its calibrated range still applies); when
    ReduceMean dropped the axes, a Flatten after it feeds the readers under a new name."""
    pool = helper.make_node("GlobalAveragePool", [node.input[0]], [node.output[0]], name=node.name)
    if attribute(node, "keepdims", 1):
        return [pool]
    flat = names.new(f"{node.output[0]}_flat")
    for value in graph.value_info:
        if value.name == node.output[0]:
            kept = onnx.ValueInfoProto()
            kept.CopyFrom(value)
            kept.name = flat
            graph.value_info.append(kept)
            for _ in range(2):
                value.type.tensor_type.shape.dim.add().dim_value = 1
            break
    for reader in graph.node:
        for i, name in enumerate(reader.input):
            if name == node.output[0] and reader is not node:
                reader.input[i] = flat
    return [pool, helper.make_node("Flatten", [node.output[0]], [flat], name=names.new(f"{node.name}_flatten"), axis=1)]
