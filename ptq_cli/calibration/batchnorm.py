"""Activation ranges from BatchNormalization statistics, without data (seed 003: data-free).

A BatchNormalization's output is γ·(x − μ)/√(σ² + ε) + β: over the data the network was trained
on, channel c has mean β_c and standard deviation |γ_c|. So the pre-activation of a
Conv → BN → ReLU block is known per channel, and its range is taken as β ± K·|γ| (K = 4, past
almost every value of a normal distribution), the union over channels. The ranges then flow
forward through the ops whose output range follows from their input's: ReLU/Clip cut it,
pooling and data movement keep it, Add sums the bounds, Concat takes the union. A BN folded into
its Conv by `prepare` gave the Conv its output name, so the range lands on the tensor the plan
quantizes.
"""

from __future__ import annotations

import numpy as np
import onnx

from ptq_cli.model.graph import GraphIndex, attribute
from ptq_cli.model.passes import LiftConstants

SIGMAS = 4.0
_KEEP = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Reshape", "Flatten", "Transpose",
         "Squeeze", "Unsqueeze", "Identity", "Dropout", "Resize", "DepthToSpace", "SpaceToDepth", "Slice")


def batchnorm_ranges(source: onnx.ModelProto, prepared: onnx.ModelProto) -> dict[str, tuple[float, float]]:
    """Ranges of the BN outputs of `source`, carried forward through `prepared` (the graph quantized)."""
    lifted = onnx.ModelProto()
    lifted.CopyFrom(source)
    LiftConstants()(lifted)  # BN parameters stored in Constant nodes
    index = GraphIndex(lifted.graph)
    ranges: dict[str, tuple[float, float]] = {}
    for node in lifted.graph.node:
        if node.op_type != "BatchNormalization" or len(node.input) < 3:
            continue
        gamma, beta = index.constant(node.input[1]), index.constant(node.input[2])
        if gamma is None or beta is None:
            continue
        spread = SIGMAS * np.abs(gamma.astype(np.float64))
        ranges[node.output[0]] = (float((beta - spread).min()), float((beta + spread).max()))
    return propagate(prepared, ranges) if ranges else {}


def propagate(model: onnx.ModelProto, ranges: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """`ranges` plus every tensor whose range follows from them (graph order is topological)."""
    out = dict(ranges)
    index = GraphIndex(model.graph)
    for node in model.graph.node:
        known = [out.get(name) for name in node.input if name and name not in index.initializers]
        if not known or any(r is None for r in known) or not node.output or node.output[0] in out:
            continue
        result = _through(node, known, index)
        if result is not None:
            out[node.output[0]] = result
    return out


def _through(node: onnx.NodeProto, known: list[tuple[float, float]], index: GraphIndex):
    lo, hi = known[0]
    op = node.op_type
    if op in _KEEP:
        return lo, hi
    if op == "Relu":
        return max(lo, 0.0), max(hi, 0.0)
    if op == "Clip":
        low, high = _clip_bounds(node, index)
        return float(np.clip(lo, low, high)), float(np.clip(hi, low, high))
    if op == "Add" and len(known) == 2:
        return lo + known[1][0], hi + known[1][1]
    if op == "Concat":
        return min(r[0] for r in known), max(r[1] for r in known)
    return None


def _clip_bounds(node: onnx.NodeProto, index: GraphIndex) -> tuple[float, float]:
    low, high = attribute(node, "min", -np.inf), attribute(node, "max", np.inf)
    for position, default in ((1, low), (2, high)):
        if len(node.input) > position and node.input[position]:
            value = index.constant(node.input[position])
            value = default if value is None else float(value)
            low, high = (value, high) if position == 1 else (low, value)
    return float(low), float(high)
