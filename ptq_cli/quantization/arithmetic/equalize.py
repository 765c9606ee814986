"""Cross-layer equalization (Nagel et al., "Data-Free Quantization", 2019, §4.1), made safe for ReLU6.

For Conv1 -> Relu/Clip -> Conv2, scaling output channel c of Conv1 by 1/s_c and input channel c
of Conv2 by s_c leaves the network unchanged when the activation commutes with the scaling:

    W1[c] /= s_c,  b1[c] /= s_c,  W2[:, c] *= s_c,     s_c = sqrt(r1_c / r2_c)

(r = the largest |weight| of the channel on each side), which makes both channel ranges
sqrt(r1_c · r2_c): per-tensor scales then stop wasting their range on one large channel.
Relu commutes with any s_c > 0. Clip(0, U) (ReLU6) only does where its top is not reached:
clip(x / s, 0, U) = clip(x, 0, U) / s needs x ≤ U · min(1, s). So each channel's scale is bounded
with the channel's calibrated maximum m_c before the Clip: a channel that reaches U keeps s_c = 1,
and others use s_c ≥ m_c / U. (This is what lets MobileNets be equalized: AMD Quark skips every
pair with a ReLU6.) The model is equivalent on every input that stays within the calibrated ranges.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from ptq_cli.model.graph import GraphIndex, attribute

log = logging.getLogger(__name__)


def equalization_pairs(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, onnx.NodeProto, onnx.NodeProto]]:
    """(Conv1, activation, Conv2) chains equalization can scale, in graph order."""
    index = GraphIndex(model.graph)
    pairs = []
    for conv1 in model.graph.node:
        act = index.single_consumer(conv1.output[0]) if conv1.op_type == "Conv" else None
        if act is None or act.op_type not in ("Relu", "Clip") or _clip_bounds(act, index) is None:
            continue
        conv2 = index.single_consumer(act.output[0])
        if conv2 is None or conv2.op_type != "Conv" or conv2.input[0] != act.output[0]:
            continue
        w1, w2 = index.constant(conv1.input[1]), index.constant(conv2.input[1])
        if w1 is None or w2 is None or not _scalable(conv1, w1, conv2, w2):
            continue
        pairs.append((conv1, act, conv2))
    return pairs


def equalize(model: onnx.ModelProto, channel_max: Mapping[str, np.ndarray], *,
             rounds: int = 8) -> tuple[onnx.ModelProto, int]:
    """A copy of the prepared `model` with its Conv pairs equalized; returns it and the pair count.

    `channel_max[t]` is the calibrated per-channel maximum (axis 1) of the input t of each
    Relu/Clip, measured on the unequalized model."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    index = GraphIndex(out.graph)
    pairs = [p for p in equalization_pairs(out) if p[0].output[0] in channel_max]
    # float64 copies of the tensors it scales only (not of every weight of the model)
    scaled_tensors = {name for conv1, _, conv2 in pairs for name in [*conv1.input[1:3], conv2.input[1]] if name}
    weights = {name: index.constant(name).astype(np.float64) for name in scaled_tensors
               if name in index.initializers}
    scaled = {conv1.output[0]: np.ones(_channels(weights[conv1.input[1]])) for conv1, _, _ in pairs}
    for _ in range(rounds):  # a Conv can be the second of one pair and the first of the next
        for conv1, act, conv2 in pairs:
            bounds = _clip_bounds(act, index)
            w1, w2 = weights[conv1.input[1]], weights[conv2.input[1]]
            r1 = np.abs(w1).reshape(w1.shape[0], -1).max(axis=1)
            r2 = _input_channel_ranges(conv2, w2)
            s = np.sqrt(np.maximum(r1, 1e-12) / np.maximum(r2, 1e-12))
            peak = channel_max[conv1.output[0]] / scaled[conv1.output[0]]
            if bounds[1] is not None:  # Clip(0, U): keep x / s below U where it was
                s = np.where(peak > bounds[1], 1.0, np.maximum(s, peak / bounds[1]))
            s = np.where((r1 > 0) & (r2 > 0) & np.isfinite(s), s, 1.0)
            weights[conv1.input[1]] = w1 / s.reshape(-1, *([1] * (w1.ndim - 1)))
            if len(conv1.input) > 2 and conv1.input[2]:
                weights[conv1.input[2]] = weights[conv1.input[2]] / s
            weights[conv2.input[1]] = _scale_input_channels(conv2, w2, s)
            scaled[conv1.output[0]] *= s
    for tensor in out.graph.initializer:
        if tensor.name in weights and tensor.data_type == onnx.TensorProto.FLOAT:
            tensor.CopyFrom(numpy_helper.from_array(weights[tensor.name].astype(np.float32), tensor.name))
    log.info("equalized %d conv pairs", len(pairs))
    return out, len(pairs)


def _clip_bounds(act: onnx.NodeProto, index: GraphIndex) -> tuple[float, float | None] | None:
    """(0, upper) of a Relu or a Clip with min 0; None for any other activation."""
    if act.op_type == "Relu":
        return 0.0, None
    lo = attribute(act, "min") if len(act.input) < 2 else _scalar(index, act.input[1] if len(act.input) > 1 else "")
    hi = attribute(act, "max") if len(act.input) < 2 else _scalar(index, act.input[2] if len(act.input) > 2 else "")
    if lo is None or float(lo) != 0.0:
        return None
    return 0.0, None if hi is None else float(hi)


def _scalar(index: GraphIndex, name: str):
    value = index.constant(name) if name else None
    return None if value is None or value.size != 1 else float(value.reshape(-1)[0])


def _channels(w: np.ndarray) -> int:
    return w.shape[0]


def _scalable(conv1, w1, conv2, w2) -> bool:
    """Conv1's output channels are Conv2's input channels, one to one."""
    if attribute(conv1, "group", 1) not in (1, w1.shape[0]):
        return False
    groups = attribute(conv2, "group", 1)
    if groups == 1:
        return w2.shape[1] == w1.shape[0]
    return groups == w1.shape[0] and w2.shape[0] == groups and w2.shape[1] == 1  # depthwise


def _input_channel_ranges(conv2: onnx.NodeProto, w2: np.ndarray) -> np.ndarray:
    if attribute(conv2, "group", 1) == 1:
        return np.abs(w2).transpose(1, 0, *range(2, w2.ndim)).reshape(w2.shape[1], -1).max(axis=1)
    return np.abs(w2).reshape(w2.shape[0], -1).max(axis=1)  # depthwise: input c = output c


def _scale_input_channels(conv2: onnx.NodeProto, w2: np.ndarray, s: np.ndarray) -> np.ndarray:
    if attribute(conv2, "group", 1) == 1:
        return w2 * s.reshape(1, -1, *([1] * (w2.ndim - 2)))
    return w2 * s.reshape(-1, *([1] * (w2.ndim - 1)))
