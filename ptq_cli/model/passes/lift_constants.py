"""Constant nodes become initializers, so that weights stored in Constant nodes (PyTorch's old
exporter does that) count as weights for every later pass."""

from __future__ import annotations

import onnx

from ptq_cli.model.graph import attribute
from ptq_cli.model.passes.base import Pass, PassResult


class LiftConstants(Pass):
    name = "lift-constants"

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        kept = []
        for node in graph.node:
            value = attribute(node, "value") if node.op_type == "Constant" and node.domain in ("", "ai.onnx") else None
            if value is not None and len(node.output) == 1:
                tensor = onnx.TensorProto()
                tensor.CopyFrom(value)
                tensor.name = node.output[0]
                graph.initializer.append(tensor)
            else:
                kept.append(node)
        lifted = len(graph.node) - len(kept)
        if lifted:
            del graph.node[:]
            graph.node.extend(kept)
        return PassResult(model, bool(lifted), (f"{lifted} Constant nodes became initializers",) if lifted else ())
