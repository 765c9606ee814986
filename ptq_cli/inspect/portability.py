"""Whether a quantized model computes the same on every CPU: the worst 16-bit pair sum of each
integer matrix node.

onnxruntime's u8·s8 kernels on x86 without VNNI (AVX2) add each pair of products
a[k]·w[k] + a[k+1]·w[k+1] in a saturating 16-bit lane (quantization/arithmetic/pairs.py); a weight
whose pairs can leave [-32768, 32767] gives other results there than on a VNNI or ARM CPU.
The int8 weight of every integer matrix node, and the op whose kernel pairs it, are found as
onnxruntime will run them:

- QDQ: a Conv/MatMul/Gemm reading, at input 1, a DequantizeLinear of an 8-bit constant and, at
  input 0, a DequantizeLinear of an 8-bit activation (fused to QLinearConv/QLinearMatMul/QGemm;
  behind a weight-only DequantizeLinear the op runs in float and is not listed);
- QOperator: QLinearConv, QLinearMatMul and QGemm (weight at input 3);
- dynamic: MatMulInteger and ConvInteger (weight at input 1), DynamicQuantizeLSTM (W and R).

uint8 weights (u8·u8 kernels widen to 16 bits before multiplying), depthwise Convs and
ConvInteger pair nothing: they are exact everywhere, whatever their weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx

from ptq_cli.model.graph import GraphIndex, attribute
from ptq_cli.quantization.arithmetic.pairs import Pairing, pairing_for, saturates, worst_pair_sums

_EIGHT_BITS = (onnx.TensorProto.UINT8, onnx.TensorProto.INT8)
_QDQ_KERNELS = ("Conv", "MatMul", "Gemm")
# Integer ops with a constant weight: {op: (input indices of the weights, the op pairing_for knows)}.
_INTEGER_KERNELS = {"QLinearConv": ((3,), "Conv"), "QLinearMatMul": ((3,), "MatMul"), "QGemm": ((3,), "Gemm"),
                    "MatMulInteger": ((1,), "MatMulInteger"), "ConvInteger": ((1,), "ConvInteger"),
                    "DynamicQuantizeLSTM": ((1, 2), "LSTM")}

EXACT = "exact everywhere"
SATURATES = "saturates without VNNI"


@dataclass(frozen=True)
class NodePairSums:
    """One integer matrix node: the largest and smallest 16-bit pair sum any uint8 activation can
    make with its weights (None when its kernel pairs nothing, `unpaired` saying why)."""

    node: str
    op_type: str
    weights: tuple[str, ...]
    high: int | None
    low: int | None
    unpaired: str | None = None

    @property
    def saturates(self) -> bool:
        return self.high is not None and saturates((self.high, self.low))

    @property
    def verdict(self) -> str:
        if self.saturates:
            return SATURATES
        return f"{EXACT} ({self.unpaired})" if self.unpaired else EXACT

    def to_dict(self) -> dict:
        return {"node": self.node, "op_type": self.op_type, "weights": list(self.weights),
                "max_pair_sum": self.high, "min_pair_sum": self.low,
                "exact_without_vnni": not self.saturates, "unpaired": self.unpaired}


@dataclass(frozen=True)
class Portability:
    """The pair sums of every integer matrix node, and the target the model's recipe names."""

    nodes: tuple[NodePairSums, ...]
    recipe_target: str | None = None  # "portable" / "vnni" from the ptq.recipe metadata

    @property
    def saturating(self) -> tuple[NodePairSums, ...]:
        return tuple(n for n in self.nodes if n.saturates)

    @property
    def portable(self) -> bool:
        return not self.saturating

    @property
    def verdict(self) -> str:
        if self.portable:
            return "portable: exact on every CPU"
        count = len(self.saturating)
        nodes = "1 node can" if count == 1 else f"{count} nodes can"
        return f"not portable: {nodes} saturate on x86 CPUs without VNNI (AVX2)"

    def to_dict(self) -> dict:
        return {"portable": self.portable, "verdict": self.verdict, "saturating_nodes": len(self.saturating),
                "recipe_target": self.recipe_target, "nodes": [n.to_dict() for n in self.nodes]}


def portability(model: onnx.ModelProto) -> Portability:
    """The pair sums of every integer matrix node of `model`, its If/Loop/Scan bodies included."""
    return Portability(tuple(_graph_pair_sums(model.graph)), _recipe_target(model))


def _recipe_target(model: onnx.ModelProto) -> str | None:
    recipe = {p.key: p.value for p in model.metadata_props}.get("ptq.recipe")
    try:
        return json.loads(recipe).get("target") if recipe else None
    except (ValueError, AttributeError):
        return None  # metadata written by hand or by another tool: no target to report


def _graph_pair_sums(graph: onnx.GraphProto) -> list[NodePairSums]:
    index = GraphIndex(graph)
    found = []
    for node in graph.node:
        entry = _qdq_node(node, index) if node.op_type in _QDQ_KERNELS else _integer_node(node, index)
        if entry is not None:
            found.append(entry)
        for attr in node.attribute:
            for body in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                found += _graph_pair_sums(body)
    return found


def _qdq_node(node: onnx.NodeProto, index: GraphIndex) -> NodePairSums | None:
    """A float Conv/MatMul/Gemm that onnxruntime fuses with its DequantizeLinears into an integer op."""
    if len(node.input) < 2:
        return None
    activation, weight = (index.producer.get(name) for name in node.input[:2])
    if not (_is_dequantize(activation) and _is_dequantize(weight)):
        return None
    stored = index.constant(weight.input[0])
    if stored is None or _dequantized_type(activation, index) not in _EIGHT_BITS:
        return None
    return _node_pair_sums(node, node.op_type, [(weight.input[0], stored, _dequantized_type(weight, index))])


def _integer_node(node: onnx.NodeProto, index: GraphIndex) -> NodePairSums | None:
    """A QOperator or dynamic integer op whose weights are constants."""
    if node.op_type not in _INTEGER_KERNELS:
        return None
    positions, kernel = _INTEGER_KERNELS[node.op_type]
    weights = []
    for i in positions:
        name = node.input[i] if len(node.input) > i else ""
        stored = index.constant(name) if name else None
        if stored is None:
            return None  # activations × activations (attention): no weight to judge
        weights.append((name, stored, index.initializers[name].data_type))
    return _node_pair_sums(node, kernel, weights)


def _node_pair_sums(node: onnx.NodeProto, kernel: str,
                    weights: list[tuple[str, np.ndarray, int]]) -> NodePairSums | None:
    """The worst pair sums over the weights of `node`, whose kernel pairs as `kernel` does."""
    names = tuple(name for name, _, _ in weights)
    if any(dtype not in _EIGHT_BITS for _, _, dtype in weights):
        return None  # 4- or 16-bit weights: no 8-bit integer kernel runs them
    if any(dtype == onnx.TensorProto.UINT8 for _, _, dtype in weights):
        return NodePairSums(node.name, node.op_type, names, None, None, "uint8 weights")
    pairings = [_pairing(node, kernel, stored.shape) for _, stored, _ in weights]
    if any(p is None for p in pairings):
        return NodePairSums(node.name, node.op_type, names, None, None, _why_unpaired(node, kernel))
    sums = [worst_pair_sums(stored, pairing) for (_, stored, _), pairing in zip(weights, pairings)]
    return NodePairSums(node.name, node.op_type, names, max(s[0] for s in sums), min(s[1] for s in sums))


def _pairing(node: onnx.NodeProto, kernel: str, shape: tuple[int, ...]) -> Pairing | None:
    return pairing_for(kernel, shape, trans_b=bool(attribute(node, "transB", 0)),
                       group=int(attribute(node, "group", 1)))


def _why_unpaired(node: onnx.NodeProto, kernel: str) -> str:
    if kernel == "ConvInteger":
        return "ConvInteger"
    if kernel == "Conv" and int(attribute(node, "group", 1)) > 1:
        return "depthwise"
    return "no pairs"


def _is_dequantize(node: onnx.NodeProto | None) -> bool:
    return node is not None and node.op_type == "DequantizeLinear"


def _dequantized_type(dequantize: onnx.NodeProto, index: GraphIndex) -> int:
    """The integer type a DequantizeLinear reads: its input's, its zero point's, else uint8 (the
    ONNX default of a QuantizeLinear without zero point)."""
    x = dequantize.input[0]
    if x in index.initializers:
        return index.initializers[x].data_type
    zero = dequantize.input[2] if len(dequantize.input) > 2 else ""
    if zero in index.initializers:
        return index.initializers[zero].data_type
    return index.elem_types.get(x, onnx.TensorProto.UINT8)
