"""Fold a BatchNormalization into the Conv before it (whose output only it reads):

    W' = W · γ/√(σ² + ε)  (per output channel),    b' = (b − μ) · γ/√(σ² + ε) + β
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ptq_cli.model.graph import GraphIndex, attribute, remove_nodes
from ptq_cli.model.passes.base import Pass, PassResult


class FoldBatchNorm(Pass):
    name = "fold-batch-norm"

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        index = GraphIndex(graph)
        removed: set[int] = set()
        for bn in graph.node:
            if bn.op_type != "BatchNormalization" or len([o for o in bn.output if o]) != 1:
                continue
            conv = index.producer.get(bn.input[0])
            if conv is None or conv.op_type != "Conv" or index.single_consumer(conv.output[0]) is not bn:
                continue
            if _fold(graph, index, bn, conv):
                removed.add(id(bn))
        remove_nodes(graph, removed)
        return PassResult(model, bool(removed), (f"folded {len(removed)} BatchNormalization into Conv",)
                          if removed else ())


def _fold(graph: onnx.GraphProto, index: GraphIndex, bn: onnx.NodeProto, conv: onnx.NodeProto) -> bool:
    params = [index.constant(name) for name in list(bn.input[1:5]) + list(conv.input[1:2])]
    if any(p is None for p in params):
        return False
    gamma, beta, mean, var, weight = params
    bias = index.constant(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros_like(mean)
    if bias is None:
        return False
    factor = gamma / np.sqrt(var + attribute(bn, "epsilon", 1e-5))
    new_w = (weight * factor.reshape(-1, *([1] * (weight.ndim - 1)))).astype(np.float32)
    new_b = ((bias - mean) * factor + beta).astype(np.float32)
    w_name, b_name = f"{conv.name or conv.output[0]}_bn_folded_W", f"{conv.name or conv.output[0]}_bn_folded_B"
    graph.initializer.extend([numpy_helper.from_array(new_w, w_name), numpy_helper.from_array(new_b, b_name)])
    del conv.input[1:]
    conv.input.extend([w_name, b_name])
    conv.output[0] = bn.output[0]
    return True
