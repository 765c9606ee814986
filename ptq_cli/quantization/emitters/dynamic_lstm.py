"""LSTM -> com.microsoft DynamicQuantizeLSTM: int8 weights, activations quantized at run time.

onnxruntime's kernel takes W and R transposed to [directions, input, 4·hidden] and one
symmetric scale per gate row ([directions, 4·hidden], zero point 0), as its own quantizer
writes them. GRU has no dynamic integer kernel in onnxruntime and stays float.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ptq_cli.model.graph import GraphIndex, NameAllocator, attribute
from ptq_cli.quantization.arithmetic.pairs import pairing_for, portable_weight
from ptq_cli.quantization.arithmetic.scheme import QParams
from ptq_cli.recipe import QType

MS_DOMAIN = "com.microsoft"


def refuse_lstm(node: onnx.NodeProto, index: GraphIndex) -> str | None:
    w, r = (index.constant(node.input[i]) if len(node.input) > i else None for i in (1, 2))
    if w is None or r is None or w.ndim != 3 or r.ndim != 3:
        return "LSTM whose W and R are not constant 3-D weights stays float"
    if attribute(node, "layout", 0):
        return "LSTM with layout=1 (batch first) has no DynamicQuantizeLSTM form; it stays float"
    return None


def dynamic_lstm(node: onnx.NodeProto, index: GraphIndex, names: NameAllocator, bounds_pairs: bool
                 ) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """The DynamicQuantizeLSTM replacing `node`, and its new initializers; with `bounds_pairs`,
    its kernel's 16-bit pair sums (pairs of inputs k, k+1 of each gate row) stay in range."""
    inits, quantized = [], []
    for i in (1, 2):
        weight = index.constant(node.input[i]).astype(np.float32)  # [directions, 4·hidden, k]
        peak = np.abs(weight).max(axis=2)
        scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
        transposed = np.ascontiguousarray(weight.transpose(0, 2, 1))  # [directions, k, 4·hidden]
        integers = np.clip(np.rint(transposed / scale[:, None, :]), -127, 127).astype(np.int8)
        if bounds_pairs:  # pairs are rows (k, k+1) of each gate column, as a MatMul's
            integers, scale = _portable(transposed, scale)
        tensors = [(np.ascontiguousarray(integers), "quantized"), (scale, "scale"),
                   (np.zeros(scale.shape, np.int8), "zero_point")]
        made = [names.new(f"{node.input[i]}_{suffix}") for _, suffix in tensors]
        inits += [numpy_helper.from_array(array, name) for (array, _), name in zip(tensors, made)]
        quantized.append(made)
    rest = [node.input[i] if len(node.input) > i else "" for i in range(3, 8)]
    inputs = [node.input[0], quantized[0][0], quantized[1][0], *rest,
              quantized[0][1], quantized[0][2], quantized[1][1], quantized[1][2]]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name != "layout"}
    return helper.make_node("DynamicQuantizeLSTM", inputs, list(node.output), name=node.name,
                            domain=MS_DOMAIN, **attrs), inits


def _portable(weight: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integers [directions, k, 4·hidden] and scales [directions, 4·hidden] within the pair limit."""
    integers, scales = [], []
    for w, s in zip(weight, scale):
        params, q = portable_weight(w, QParams(s, np.zeros(s.shape, np.int8), QType.INT8, axis=1),
                                    pairing_for("LSTM", w.shape))
        integers.append(q)
        scales.append(params.scale)
    return np.stack(integers), np.stack(scales)
