"""Bias correction: remove the systematic shift that weight quantization adds to each output.

    E[y_q] - E[y] = (W_q - W) · E[x]        so        b' = b - (W_q - W) · E[x]

(Nagel et al., "Data-Free Quantization", 2019, §4.2, with E[x] measured on the calibration data
instead of derived from BatchNorm.) Rounding errors of a channel's weights do not average out
when its input has a non-zero mean, which every ReLU output has; on MobileNetV1 this shift is
most of what per-channel INT8 loses. The correction only changes float biases, before they are
quantized to int32, so it costs nothing at inference.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from ptq_cli.model.graph import GraphIndex, NameAllocator, attribute
from ptq_cli.quantization.plan import QuantPlan
from ptq_cli.quantization.arithmetic.scheme import dequantize

log = logging.getLogger(__name__)


def correct_biases(model: onnx.ModelProto, plan: QuantPlan,
                   channel_means: Mapping[str, np.ndarray]) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of the prepared `model` with corrected Conv/Gemm biases; returns it and the nodes changed."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    index = GraphIndex(out.graph)
    names = NameAllocator(out.graph)
    quantized = set(plan.quantized)
    changed = []
    for node in out.graph.node:
        if node.name not in quantized or node.op_type not in ("Conv", "Gemm"):
            continue
        weight = plan.weights.get((node.name, node.input[1]))
        mean = channel_means.get(node.input[0])
        if weight is None or mean is None:
            continue
        w = index.constant(weight.tensor)
        error = dequantize(weight.integers(w), weight.params).astype(np.float64) - w
        shift = _conv_shift(node, error, mean) if node.op_type == "Conv" else _gemm_shift(node, error, mean)
        if shift is None:
            continue
        _subtract_from_bias(node, shift, index, names, out.graph)
        changed.append(node.name)
    log.info("bias correction changed %d nodes", len(changed))
    return out, changed


def _conv_shift(node: onnx.NodeProto, error: np.ndarray, mean: np.ndarray) -> np.ndarray | None:
    c_out, c_in_per_group = error.shape[:2]
    groups = attribute(node, "group", 1)
    if mean.shape != (c_in_per_group * groups,) or c_out % groups:
        return None
    per_tap = error.reshape(c_out, c_in_per_group, -1).sum(axis=2)  # every kernel tap sees E[x]
    group_of = np.arange(c_out) // (c_out // groups)
    return (per_tap * mean.reshape(groups, c_in_per_group)[group_of]).sum(axis=1)


def _gemm_shift(node: onnx.NodeProto, error: np.ndarray, mean: np.ndarray) -> np.ndarray | None:
    if attribute(node, "transA", 0) or error.ndim != 2:
        return None
    error = error if attribute(node, "transB", 0) else error.T  # [N, K]
    if mean.shape != (error.shape[1],):
        return None
    beta = attribute(node, "beta", 1.0)
    if beta == 0.0:
        return None
    return attribute(node, "alpha", 1.0) * (error @ mean) / beta


def _subtract_from_bias(node, shift: np.ndarray, index: GraphIndex, names: NameAllocator,
                        graph: onnx.GraphProto) -> None:
    has_bias = len(node.input) > 2 and node.input[2]
    bias = index.constant(node.input[2]) if has_bias else np.zeros(shift.shape, np.float32)
    if bias is None or bias.size not in (1, shift.size):
        return
    corrected = (np.broadcast_to(bias.astype(np.float64).reshape(-1), shift.shape) - shift).astype(np.float32)
    # A new initializer per node: a bias shared by two nodes gets a different correction in each.
    name = names.new(f"{node.input[2] if has_bias else node.name}_bias_corrected")
    graph.initializer.append(numpy_helper.from_array(corrected, name))
    if len(node.input) > 2:
        node.input[2] = name
    else:
        node.input.append(name)
