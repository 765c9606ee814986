"""Building blocks the emitters share: fresh names, initializers, Q/DQ nodes."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ptq_cli.model.graph import NameAllocator
from ptq_cli.quantization.arithmetic.scheme import QParams


class Emitter:
    """Adds initializers and Q/DQ nodes with fresh names; equal (scale, zero-point) pairs are shared."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.graph = model.graph
        self.names = NameAllocator(model.graph)
        self.initializers: list[onnx.TensorProto] = []
        self._params_cache: dict[tuple, tuple[str, str]] = {}

    def constant(self, array: np.ndarray, base: str) -> str:
        name = self.names.new(base)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def scale_and_zero(self, qp: QParams, base: str) -> tuple[str, str]:
        """Initializers for a (scale, zero-point) pair, shared by tensors with equal parameters."""
        key = (qp.qtype, qp.scale.tobytes(), qp.zero_point.tobytes(), qp.scale.shape)
        if key not in self._params_cache:
            scale = self.constant(qp.scale.astype(np.float32), f"{base}_scale")
            zero = self.names.new(f"{base}_zero_point")
            self.initializers.append(typed_constant(np.asarray(qp.zero_point), qp, zero))
            self._params_cache[key] = (scale, zero)
        return self._params_cache[key]

    def dequantize(self, source: str, qp: QParams, output: str, base: str) -> onnx.NodeProto:
        scale, zero = self.scale_and_zero(qp, base)
        return qdq_node("DequantizeLinear", [source, scale, zero], output, self.names.new(f"{base}_DequantizeLinear"), qp)

    def quantize(self, source: str, qp: QParams, output: str, base: str) -> onnx.NodeProto:
        scale, zero = self.scale_and_zero(qp, base)
        return qdq_node("QuantizeLinear", [source, scale, zero], output, self.names.new(f"{base}_QuantizeLinear"), qp)


def qdq_node(op: str, inputs: list[str], output: str, name: str, qp: QParams) -> onnx.NodeProto:
    attrs = {"axis": qp.axis} if qp.per_channel else {}
    return helper.make_node(op, inputs, [output], name=name, **attrs)


def typed_constant(array: np.ndarray, qp: QParams, name: str) -> onnx.TensorProto:
    if qp.qtype.bits == 4:  # onnx packs 4-bit values itself when given the element type
        return helper.make_tensor(name, qp.qtype.onnx_type, array.shape, array.reshape(-1).tolist())
    return numpy_helper.from_array(array, name)
