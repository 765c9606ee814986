"""Groups of nodes that are quantized, or left in float, together: found by following the graph.

A pattern is the unit of a placement decision: a normalization written out as ReduceMean / Sub /
Pow / Sqrt / Div is one thing to the user and to onnxruntime, and quantizing half of it is worse
than either choice. `find_patterns` returns every pattern of a graph; each names the tensor the
user knows it by (its input or output in the user's model) and says why placement keeps it in
float. The automatic fallback returns whole patterns to float through the same list.

    LAYER_NORM   LayerNormalization, or mean/variance (or RMS) statistics written out, with
                 their affine Mul/Add
    GELU         Gelu, or x·½(1+erf(x/√2)), or the tanh approximation
    HARD_SWISH   HardSwish, HardSigmoid+Mul, or x·clip(x+3, 0, 6)/6 written out
    HARD_SIGMOID a HardSigmoid gate (squeeze-and-excitation)
    ATTENTION    MatMul Q·Kᵀ -> scale -> mask -> Softmax -> MatMul with V
    RESIDUAL     an Add of two activations whose sum feeds a normalization
    SOFTMAX_HEAD a Softmax/LogSoftmax whose output is a graph output (classifier, CTC frames)

Every matcher is a pure function of the graph; none reads a name.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import onnx

from ptq_cli.model.graph import GraphIndex


class PatternKind(enum.Enum):
    LAYER_NORM = "layer_norm"
    GELU = "gelu"
    HARD_SWISH = "hard_swish"
    HARD_SIGMOID = "hard_sigmoid"
    ATTENTION = "attention"
    RESIDUAL = "residual"
    SOFTMAX_HEAD = "softmax_head"


_WHY = {
    PatternKind.LAYER_NORM: "normalization of {t}: its mean/variance statistics lose their precision in "
                            "8 bits and onnxruntime runs it in float anyway",
    PatternKind.GELU: "GELU of {t}: onnxruntime has no integer GELU, and each of its elementwise steps "
                      "would be requantized",
    PatternKind.HARD_SWISH: "hard-swish of {t}: written out, each step would be requantized; onnxruntime "
                            "runs it in float",
    PatternKind.HARD_SIGMOID: "hard-sigmoid gate of {t}: onnxruntime has no integer HardSigmoid",
    PatternKind.ATTENTION: "attention scores of {t}: Q·Kᵀ (with its scale and any mask) and the Softmax need "
                           "more than 8 bits: the few largest scores set the scale and the rest round away",
    PatternKind.RESIDUAL: "residual sum {t} feeds a normalization: its outlier channels would take the "
                          "whole 8-bit range",
    PatternKind.SOFTMAX_HEAD: "output probabilities {t}: 8 bits (steps of 1/255) tie the argmax of close "
                              "classes",
}


@dataclass(frozen=True)
class Pattern:
    kind: PatternKind
    nodes: tuple[str, ...]  # node names, in graph order
    tensor: str  # the tensor of the user's model it is named by (its input, or its output)

    @property
    def reason(self) -> str:
        return _WHY[self.kind].format(t=repr(self.tensor))


def find_patterns(graph: onnx.GraphProto) -> list[Pattern]:
    """Every pattern of `graph` (node names must be set), in graph order, no node in two."""
    index = GraphIndex(graph)
    order = {n.name: i for i, n in enumerate(graph.node)}
    found: list[Pattern] = []
    taken: set[str] = set()
    for matcher in (_layer_norms, _gelus, _hard_swishes, _attentions, _hard_sigmoids, _residuals, _heads):
        for kind, nodes, tensor in matcher(graph, index, taken):
            names = {n.name for n in nodes}
            if names & taken:
                continue
            taken |= names
            found.append(Pattern(kind, tuple(sorted(names, key=order.__getitem__)), tensor))
    found.sort(key=lambda p: order[p.nodes[0]])
    return found


# --- helpers ------------------------------------------------------------------------------------

def _is(node: onnx.NodeProto | None, *ops: str) -> bool:
    return node is not None and node.domain in ("", "ai.onnx") and node.op_type in ops


def _scalar(index: GraphIndex, name: str) -> float | None:
    value = index.constant(name)
    if value is None or value.size != 1:
        return None
    return float(value.reshape(-1)[0])


def _other(node: onnx.NodeProto, name: str) -> str | None:
    """The other input of a binary node that reads `name`."""
    if len(node.input) != 2 or name not in node.input:
        return None
    return node.input[1] if node.input[0] == name else node.input[0]


def _only(index: GraphIndex, tensor: str, *ops: str) -> onnx.NodeProto | None:
    node = index.single_consumer(tensor)
    return node if _is(node, *ops) else None


def _const_step(index: GraphIndex, tensor: str, *ops: str) -> onnx.NodeProto | None:
    """The lone consumer of `tensor` among `ops` whose other input is a constant."""
    node = _only(index, tensor, *ops)
    if node is None:
        return None
    other = _other(node, tensor)
    return node if other is not None and other in index.initializers else None


def _affine_tail(index: GraphIndex, tensor: str, nodes: list) -> None:
    """Append the Mul(γ) / Add(β) with constants that follow a normalization."""
    for op in ("Mul", "Add"):
        step = _const_step(index, tensor, op)
        if step is None:
            return
        nodes.append(step)
        tensor = step.output[0]


# --- normalizations -----------------------------------------------------------------------------

_NORM_OPS = ("LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization", "RMSNormalization")


def _layer_norms(graph, index, taken):
    for node in graph.node:
        if node.op_type in _NORM_OPS and node.domain in ("", "ai.onnx", "com.microsoft"):
            yield PatternKind.LAYER_NORM, [node], node.input[0]
        elif _is(node, "ReduceMean"):
            nodes = _written_norm(node, index)
            if nodes:
                yield PatternKind.LAYER_NORM, nodes, node.input[0]


def _written_norm(mean: onnx.NodeProto, index: GraphIndex) -> list | None:
    """x -> ReduceMean -> Sub(x, ·) = d -> d² -> ReduceMean -> (+ε) -> Sqrt/Pow -> Div(d, ·) or
    Reciprocal -> Mul(d, ·); or the RMS form without centring (x² -> ReduceMean -> ... -> x/·)."""
    x = mean.input[0]
    center = next((c for c in index.consumers.get(mean.output[0], []) if _is(c, "Sub")
                   and list(c.input) == [x, mean.output[0]]), None)
    if center is not None:
        nodes = _variance_chain(center.output[0], index)
        return [mean, center, *nodes] if nodes else None
    square = index.producer.get(x)  # RMS: this ReduceMean is the statistic of x² itself
    if _is(square, "Pow") and _scalar(index, square.input[1]) == 2.0 or \
            _is(square, "Mul") and square.input[0] == square.input[1]:
        tail = _scale_chain(mean.output[0], square.input[0], index)
        return [square, mean, *tail] if tail else None
    return None


def _variance_chain(d: str, index: GraphIndex) -> list | None:
    for square in index.consumers.get(d, []):
        if not (_is(square, "Pow") and square.input[0] == d and _scalar(index, square.input[1]) == 2.0
                or _is(square, "Mul") and list(square.input) == [d, d]):
            continue
        variance = _only(index, square.output[0], "ReduceMean")
        if variance is None:
            continue
        tail = _scale_chain(variance.output[0], d, index)
        if tail:
            return [square, variance, *tail]
    return None


def _scale_chain(statistic: str, x: str, index: GraphIndex) -> list | None:
    """From the variance to the node dividing `x` by its root: + ε, Sqrt, Reciprocal, Pow(-½)."""
    nodes, tensor = [], statistic
    for _ in range(4):
        node = index.single_consumer(tensor)
        if node is None:
            return None
        if _is(node, "Div") and list(node.input) == [x, tensor] or _is(node, "Mul") and set(node.input) == {x, tensor}:
            nodes.append(node)
            _affine_tail(index, node.output[0], nodes)
            return nodes
        if _is(node, "Sqrt", "Reciprocal") or _is(node, "Add", "Pow", "Max") and \
                (_other(node, tensor) or "") in index.initializers and node.input[0] == tensor:
            nodes.append(node)
            tensor = node.output[0]
            continue
        return None
    return None


# --- activations --------------------------------------------------------------------------------

def _gelus(graph, index, taken):
    for node in graph.node:
        if node.op_type in ("Gelu", "FastGelu", "BiasGelu") and node.domain in ("", "ai.onnx", "com.microsoft"):
            yield PatternKind.GELU, [node], node.input[0]
        elif _is(node, "Erf", "Tanh"):
            nodes = _written_gelu(node, index)
            if nodes:
                yield PatternKind.GELU, nodes[1:], nodes[0]


def _written_gelu(core: onnx.NodeProto, index: GraphIndex) -> list | None:
    """[x, nodes...] of x·½(1 + erf(x/√2)) or x·½(1 + tanh(√(2/π)(x + 0.044715x³))), with the ½
    applied to x first or to the product last."""
    one = _const_step(index, core.output[0], "Add")
    if one is None or _scalar(index, _other(one, core.output[0])) != 1.0:
        return None
    product = _only(index, one.output[0], "Mul")
    if product is None:
        return None
    factor = _other(product, one.output[0])
    half = index.producer.get(factor)
    candidates = [(factor, [])]
    if _is(half, "Mul") and any(_scalar(index, i) == 0.5 for i in half.input):
        candidates.append((next(i for i in half.input if i not in index.initializers), [half]))
    for x, extra in candidates:
        inner = _region_from(core.input[0], x, index)
        if inner is None:
            continue
        nodes = [*inner, core, one, *extra, product]
        last = _const_step(index, product.output[0], "Mul")
        if not extra and last is not None and _scalar(index, _other(last, product.output[0])) == 0.5:
            nodes.append(last)
        return [x, *nodes]
    return None


_REGION_OPS = ("Mul", "Div", "Add", "Sub", "Pow")


def _region_from(tensor: str, x: str, index: GraphIndex) -> list | None:
    """The elementwise nodes computing `tensor` from `x` and constants alone (x/√2, or
    √(2/π)·(x + 0.044715·x³)); None if the computation reads anything else."""
    nodes, stack, seen = [], [tensor], set()
    while stack:
        name = stack.pop()
        if name == x or name in index.initializers or name in seen:
            continue
        seen.add(name)
        producer = index.producer.get(name)
        if not _is(producer, *_REGION_OPS) or len(nodes) >= 6:
            return None
        nodes.append(producer)
        stack.extend(producer.input)
    return nodes[::-1] if nodes else None


def _hard_swishes(graph, index, taken):
    for node in graph.node:
        if _is(node, "HardSwish"):
            yield PatternKind.HARD_SWISH, [node], node.input[0]
        elif _is(node, "HardSigmoid"):
            product = _only(index, node.output[0], "Mul")
            if product is not None and _other(product, node.output[0]) == node.input[0]:
                yield PatternKind.HARD_SWISH, [node, product], node.input[0]
        elif _is(node, "Clip"):
            nodes = _written_hard_swish(node, index)
            if nodes:
                yield PatternKind.HARD_SWISH, nodes[1:], nodes[0]


def _written_hard_swish(clip: onnx.NodeProto, index: GraphIndex) -> list | None:
    """[x, nodes...] of x · clip(x + 3, 0, 6) / 6 (the division as Div or Mul by 1/6, before or after)."""
    shift = index.producer.get(clip.input[0])
    if not _is(shift, "Add"):
        return None
    x = next((i for i in shift.input if i not in index.initializers), None)
    if x is None or _scalar(index, _other(shift, x)) != 3.0:
        return None
    bounds = [_scalar(index, n) if n else None for n in list(clip.input[1:3])]
    if len(bounds) != 2 or bounds != [0.0, 6.0]:
        return None
    nodes, tensor = [shift, clip], clip.output[0]
    step = _const_step(index, tensor, "Mul", "Div")
    if step is not None:  # clip(x + 3)/6 first, then · x
        nodes.append(step)
        tensor = step.output[0]
    product = _only(index, tensor, "Mul")
    if product is None or _other(product, tensor) != x:
        return None
    nodes.append(product)
    if step is None:
        step = _const_step(index, product.output[0], "Mul", "Div")
        if step is None:
            return None
        nodes.append(step)
    value = _scalar(index, _other(step, step.input[0] if step.input[1] in index.initializers else step.input[1]))
    if value is None or not (np.isclose(value, 6.0) if step.op_type == "Div" else np.isclose(value, 1 / 6)):
        return None
    return [x, *nodes]


def _hard_sigmoids(graph, index, taken):
    for node in graph.node:
        if _is(node, "HardSigmoid") and node.name not in taken:
            yield PatternKind.HARD_SIGMOID, [node], node.input[0]


# --- attention, residuals, heads ------------------------------------------------------------------

_SCORE_STEPS = ("Mul", "Div", "Add", "Where", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast")
_PROB_STEPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast", "Dropout", "Identity")


def _attentions(graph, index, taken):
    for node in graph.node:
        if not _is(node, "Softmax"):
            continue
        before = _score_path(node.input[0], index)
        after = _probability_path(node.output[0], index)
        if before and after:
            yield PatternKind.ATTENTION, [*before, node, *after], before[0].output[0]


def _activation_matmul(node: onnx.NodeProto | None, index: GraphIndex) -> bool:
    return _is(node, "MatMul") and not any(i in index.initializers for i in node.input)


def _score_path(tensor: str, index: GraphIndex) -> list | None:
    """Softmax input back to the Q·Kᵀ MatMul through scale / mask / reshape steps; with a constant
    scale on Q or K just before it."""
    path = []
    for _ in range(6):
        producer = index.producer.get(tensor)
        if _activation_matmul(producer, index):
            scales = [index.producer.get(i) for i in producer.input]
            scales = [s for s in scales if _is(s, "Mul", "Div") and any(i in index.initializers for i in s.input)
                      and index.single_consumer(s.output[0]) is producer]
            return [*scales, producer, *reversed(path)]
        if not _is(producer, *_SCORE_STEPS):
            return None
        path.append(producer)
        tensor = producer.input[0] if producer.op_type != "Where" else producer.input[-1]
        if producer.op_type in ("Add", "Mul", "Div") and tensor in index.initializers:
            tensor = producer.input[1]
    return None


def _probability_path(tensor: str, index: GraphIndex) -> list | None:
    path = []
    for _ in range(4):
        node = index.single_consumer(tensor)
        if _activation_matmul(node, index) and node.input[0] == tensor:
            return [*path, node]
        if not _is(node, *_PROB_STEPS):
            return None
        path.append(node)
        tensor = node.output[0]
    return None


def _residuals(graph, index, taken):
    norm_inputs = {}
    for node in graph.node:
        if node.op_type in _NORM_OPS or _is(node, "ReduceMean") and node.name in taken:
            norm_inputs[node.input[0]] = node
    for node in graph.node:
        if _is(node, "Add") and node.output[0] in norm_inputs and \
                not any(i in index.initializers for i in node.input) and all(index.is_float(i) for i in node.input):
            yield PatternKind.RESIDUAL, [node], node.output[0]


def _heads(graph, index, taken):
    for node in graph.node:
        if not _is(node, "Softmax", "LogSoftmax") or node.name in taken:
            continue
        path, tensor = [node], node.output[0]
        while tensor not in index.outputs:
            step = _only(index, tensor, *_PROB_STEPS, "Transpose")
            if step is None:
                break
            path.append(step)
            tensor = step.output[0]
        if tensor in index.outputs:
            yield PatternKind.SOFTMAX_HEAD, path, tensor
