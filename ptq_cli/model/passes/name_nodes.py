"""Give every unnamed node a stable name (op type + index) so that plans and reports can refer to it."""

from __future__ import annotations

import onnx

from ptq_cli.model.graph import NameAllocator
from ptq_cli.model.passes.base import Pass, PassResult


class NameNodes(Pass):
    name = "name-nodes"

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        unnamed = [i for i, node in enumerate(graph.node) if not node.name]
        if unnamed:
            names = NameAllocator(graph)
            for i in unnamed:
                graph.node[i].name = names.new(f"{graph.node[i].op_type}_{i}")
        return PassResult(model, bool(unnamed), (f"named {len(unnamed)} nodes",) if unnamed else ())
