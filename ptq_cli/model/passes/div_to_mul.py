"""x / c (c a float constant without zeros) becomes x · (1/c): attention's 1/√d then has an
integer kernel (QLinearMul), where Div has none."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ptq_cli.model.graph import GraphIndex, NameAllocator, drop_unused_initializers
from ptq_cli.model.passes.base import Pass, PassResult


class DivToMul(Pass):
    name = "div-to-mul"

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        index = GraphIndex(graph)
        names = NameAllocator(graph)
        count = 0
        for node in graph.node:
            divisor = index.constant(node.input[1]) if node.op_type == "Div" and len(node.input) == 2 else None
            if divisor is None or divisor.dtype != np.float32 or not np.all(divisor != 0):
                continue
            name = names.new(f"{node.input[1]}_reciprocal")
            graph.initializer.append(numpy_helper.from_array((1.0 / divisor).astype(np.float32), name))
            node.op_type = "Mul"
            node.input[1] = name
            count += 1
        if count:
            drop_unused_initializers(graph)
        return PassResult(model, bool(count), (f"{count} Div by a constant became Mul",) if count else ())
