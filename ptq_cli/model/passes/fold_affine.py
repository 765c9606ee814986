"""Fold a constant scale (and shift) after a Conv into the Conv's weights and bias:

    Conv(x, W, b) · a + c  =  Conv(x, W·a, b·a + c)      a, c: scalars or one value per output channel

Exporters write learnable affine blocks (PP-LCNetV3's "lab", layer scale) this way. Left as
they are, each Mul and Add is quantized on its own: two more requantizations per convolution.
Only a Mul (optionally followed by an Add) is folded, each the single reader of the tensor
before it; a Conv's output that the user's graph exposes is left alone.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ptq_cli.model.graph import GraphIndex, remove_nodes
from ptq_cli.model.passes.base import Pass, PassResult


class FoldAffineIntoConv(Pass):
    name = "fold-affine-into-conv"

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        index = GraphIndex(graph)
        removed: set[int] = set()
        for conv in list(graph.node):
            if conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx") or len(conv.input) < 2:
                continue
            weight = index.constant(conv.input[1])
            scale_node = index.single_consumer(conv.output[0])
            scale = _channel_constant(scale_node, conv.output[0], "Mul", index, weight)
            if weight is None or scale is None:
                continue
            shift_node = index.single_consumer(scale_node.output[0])
            shift = _channel_constant(shift_node, scale_node.output[0], "Add", index, weight)
            bias = index.constant(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else \
                np.zeros(weight.shape[0], np.float32)
            if bias is None:
                continue
            new_w = (weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))).astype(np.float32)
            new_b = (bias * scale + (shift if shift is not None else 0.0)).astype(np.float32)
            last = shift_node if shift is not None else scale_node
            w_name, b_name = f"{conv.name}_affine_folded_W", f"{conv.name}_affine_folded_B"
            graph.initializer.extend([numpy_helper.from_array(new_w, w_name), numpy_helper.from_array(new_b, b_name)])
            del conv.input[1:]
            conv.input.extend([w_name, b_name])
            conv.output[0] = last.output[0]
            removed |= {id(scale_node)} | ({id(shift_node)} if shift is not None else set())
        remove_nodes(graph, removed)
        return PassResult(model, bool(removed), (f"folded {len(removed)} constant Mul/Add into Conv",)
                          if removed else ())


def _channel_constant(node, tensor: str, op: str, index: GraphIndex, weight) -> np.ndarray | None:
    """The per-output-channel values of a constant operand of `node` (an `op` reading `tensor`), or None."""
    if node is None or weight is None or node.op_type != op or node.domain not in ("", "ai.onnx") or \
            len(node.input) != 2 or tensor in index.outputs:
        return None
    other = node.input[1] if node.input[0] == tensor else node.input[0]
    value = index.constant(other)
    channels = weight.shape[0]
    if value is None or value.dtype != np.float32:
        return None
    if value.size == 1 and value.ndim <= weight.ndim:
        return np.full(channels, float(value.reshape(-1)[0]), np.float32)
    # [C, 1, 1] or [1, C, 1, 1]: one value per output channel of an NC... output
    spatial = weight.ndim - 2
    if value.size == channels and value.ndim >= spatial + 1 and value.shape[-spatial - 1] == channels \
            and all(d == 1 for d in value.shape[-spatial:]) and value.ndim <= weight.ndim:
        return value.reshape(channels).astype(np.float32)
    return None
