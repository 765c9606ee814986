"""Read-only queries over an ONNX graph, and unique names for what a pass adds."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx

from ptq_cli.model.external import tensor_array


@dataclass
class GraphIndex:
    """Producers, consumers, initializers and value types of a graph, built once per pass."""

    graph: onnx.GraphProto
    producer: dict[str, onnx.NodeProto] = field(init=False)
    consumers: dict[str, list[onnx.NodeProto]] = field(init=False)
    initializers: dict[str, onnx.TensorProto] = field(init=False)
    elem_types: dict[str, int] = field(init=False)
    outputs: set[str] = field(init=False)

    def __post_init__(self) -> None:
        g = self.graph
        self.producer = {out: n for n in g.node for out in n.output if out}
        self.consumers = defaultdict(list)
        for node in g.node:
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
        self.initializers = {t.name: t for t in g.initializer}
        self.elem_types = {}
        for value in list(g.value_info) + list(g.input) + list(g.output):
            if value.type.HasField("tensor_type"):
                self.elem_types[value.name] = value.type.tensor_type.elem_type
        for t in g.initializer:
            self.elem_types[t.name] = t.data_type
        self.outputs = {o.name for o in g.output}

    def is_float(self, name: str) -> bool:
        return self.elem_types.get(name) == onnx.TensorProto.FLOAT

    def constant(self, name: str) -> np.ndarray | None:
        tensor = self.initializers.get(name)
        return None if tensor is None else tensor_array(tensor)

    def single_consumer(self, name: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in self.outputs else None


class NameAllocator:
    """Hands out names that collide with nothing in the graph, its If/Loop/Scan bodies included
    (a body sees the outer scope, so a new outer name must not shadow one of its tensors), nor
    with each other."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self._taken: set[str] = set()
        self._collect(graph)

    def _collect(self, graph: onnx.GraphProto) -> None:
        self._taken.update(t.name for t in graph.initializer)
        self._taken.update(v.name for v in list(graph.input) + list(graph.output) + list(graph.value_info))
        for node in graph.node:
            self._taken.update(node.output)
            self._taken.update(node.input)
            self._taken.add(node.name)
            for attr in node.attribute:
                for body in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                    self._collect(body)

    def new(self, base: str) -> str:
        name, k = base, 1
        while name in self._taken:
            name, k = f"{base}_{k}", k + 1
        self._taken.add(name)
        return name


def attribute(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def remove_nodes(graph: onnx.GraphProto, removed: set[int]) -> int:
    """Drop the nodes whose id() is in `removed`, and the initializers only they read."""
    if removed:
        kept = [n for n in graph.node if id(n) not in removed]
        del graph.node[:]
        graph.node.extend(kept)
        drop_unused_initializers(graph)
    return len(removed)


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove initializers no node or output reads (and their entries in old-IR input lists).
    Reads from inside If/Loop/Scan bodies (outer-scope names) count."""
    used = _reads(graph)
    dropped = {t.name for t in graph.initializer if t.name not in used}
    if not dropped:
        return
    kept = [t for t in graph.initializer if t.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    inputs = [i for i in graph.input if i.name not in dropped]
    del graph.input[:]
    graph.input.extend(inputs)


def _reads(graph: onnx.GraphProto) -> set[str]:
    """Every name read by a node of `graph` or of a body nested in it, and the graph's outputs."""
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node.input)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                used |= _reads(attr.g)
            for sub in attr.graphs:
                used |= _reads(sub)
    return used
