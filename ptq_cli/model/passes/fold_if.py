"""An If whose condition is a constant becomes the branch it always takes.

Its nodes and weights move into the enclosing graph (their names are unique in the model), the
branch outputs take the If's output names, and the main-graph plan then quantizes them like any
other node. Branch outputs that are not made inside the branch (an outer tensor, a weight) are
passed on by an Identity.
"""

from __future__ import annotations

import onnx
from onnx import helper

from ptq_cli.model.graph import GraphIndex, attribute
from ptq_cli.model.passes.base import Pass, PassResult


class FoldConstantIf(Pass):
    name = "fold-constant-if"

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        index = GraphIndex(graph)
        nodes, changes = [], []
        for node in graph.node:
            cond = index.constant(node.input[0]) if node.op_type == "If" and node.domain in ("", "ai.onnx") else None
            if cond is None or cond.size != 1:
                nodes.append(node)
                continue
            taken = "then_branch" if bool(cond.reshape(-1)[0]) else "else_branch"
            nodes.extend(_inline(graph, node, attribute(node, taken)))
            changes.append(f"{node.name or node.output[0]}: If on a constant -> its {taken.split('_')[0]} branch")
        if changes:
            del graph.node[:]
            graph.node.extend(nodes)
        return PassResult(model, bool(changes), tuple(changes))


def _inline(graph: onnx.GraphProto, node: onnx.NodeProto, branch: onnx.GraphProto) -> list[onnx.NodeProto]:
    made = {o for n in branch.node for o in n.output}
    rename = {out.name: mine for out, mine in zip(branch.output, node.output)
              if out.name in made and mine}
    body = []
    for inner in branch.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(inner)
        for i, name in enumerate(copy.output):
            copy.output[i] = rename.get(name, name)
        for i, name in enumerate(copy.input):
            copy.input[i] = rename.get(name, name)
        body.append(copy)
    graph.initializer.extend(branch.initializer)
    for out, mine in zip(branch.output, node.output):
        if mine and out.name not in rename:
            body.append(helper.make_node("Identity", [out.name], [mine], name=f"{mine}_passed"))
    return body
