"""Fold a BatchNormalization into the Conv, ConvTranspose or Gemm before it (whose output only
it reads). With f = γ/√(σ² + ε) per output channel:

    W' = W · f  (along the output-channel axis),    b' = (b − μ) · f + β
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ptq_cli.model.graph import GraphIndex, attribute, remove_nodes
from ptq_cli.model.passes.base import Pass, PassResult

_FOLDABLE = ("Conv", "ConvTranspose", "Gemm")


class FoldBatchNorm(Pass):
    name = "fold-batch-norm"

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        index = GraphIndex(graph)
        removed: dict[int, str] = {}
        for bn in graph.node:
            if bn.op_type != "BatchNormalization" or len([o for o in bn.output if o]) != 1:
                continue
            node = index.producer.get(bn.input[0])
            if node is None or node.op_type not in _FOLDABLE or index.single_consumer(node.output[0]) is not bn:
                continue
            if _fold(graph, index, bn, node):
                removed[id(bn)] = node.op_type
        remove_nodes(graph, set(removed))
        changes = tuple(f"folded {list(removed.values()).count(op)} BatchNormalization into {op}"
                        for op in _FOLDABLE if op in removed.values())
        return PassResult(model, bool(removed), changes)


def _fold(graph: onnx.GraphProto, index: GraphIndex, bn: onnx.NodeProto, node: onnx.NodeProto) -> bool:
    params = [index.constant(name) for name in list(bn.input[1:5]) + list(node.input[1:2])]
    if len(params) != 5 or any(p is None for p in params):
        return False
    gamma, beta, mean, var, weight = params
    bias = index.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros_like(mean)
    if bias is None:
        return False
    factor = gamma / np.sqrt(var + attribute(bn, "epsilon", 1e-5))
    new_w = _scaled_weight(node, weight, factor)
    if new_w is None or (node.op_type == "Gemm" and bias.size not in (1, factor.size)):
        return False
    new_b = ((bias - mean) * factor + beta).astype(np.float32)
    w_name, b_name = f"{node.name or node.output[0]}_bn_folded_W", f"{node.name or node.output[0]}_bn_folded_B"
    graph.initializer.extend([numpy_helper.from_array(new_w.astype(np.float32), w_name),
                              numpy_helper.from_array(new_b, b_name)])
    del node.input[1:]
    node.input.extend([w_name, b_name])
    node.output[0] = bn.output[0]
    return True


def _scaled_weight(node: onnx.NodeProto, weight: np.ndarray, factor: np.ndarray) -> np.ndarray | None:
    """The weight with each output channel multiplied by its factor; None where the layout or
    the attributes do not allow a fold."""
    if node.op_type == "Conv":
        return weight * factor.reshape(-1, *([1] * (weight.ndim - 1)))
    if node.op_type == "ConvTranspose":  # [C_in, C_out / group, k...]: output channels on axis 1
        groups = attribute(node, "group", 1)
        per_group = weight.shape[1]
        if weight.ndim < 3 or per_group * groups != factor.size or weight.shape[0] % groups:
            return None
        shape = (groups, weight.shape[0] // groups, per_group, *weight.shape[2:])
        f = factor.reshape(groups, 1, per_group, *([1] * (weight.ndim - 2)))
        return (weight.reshape(shape) * f).reshape(weight.shape)
    # Gemm: y = A·B (+ C), features on axis 1 of y; only the plain form (alpha = beta = 1, no transA)
    if weight.ndim != 2 or attribute(node, "alpha", 1.0) != 1.0 or attribute(node, "beta", 1.0) != 1.0 \
            or attribute(node, "transA", 0):
        return None
    if attribute(node, "transB", 0):
        return weight * factor.reshape(-1, 1) if weight.shape[0] == factor.size else None
    return weight * factor.reshape(1, -1) if weight.shape[1] == factor.size else None
