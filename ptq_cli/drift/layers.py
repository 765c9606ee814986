"""Per-layer matching of a reference model's activations to their counterparts in a QDQ candidate.

The rule, following the graph rather than parsing names:

- Every candidate tensor is first *unwrapped*: the output of DequantizeLinear(QuantizeLinear(x))
  stands for x, the output of DequantizeLinear(constant) and a constant itself stand for "a
  constant". So the candidate's data flow can be compared with the reference's node by node.
- Anchors: a candidate tensor with the same name as a reference tensor corresponds to it, when it
  is made by the same op type (or by a DequantizeLinear, as quantizers that rename a graph output
  do) or both are graph inputs. A same-named tensor made by another op is not trusted.
- Structure: walking the reference in topological order, a reference node N corresponds to the
  candidate node M of the same op type whose unwrapped inputs are, position by position, the
  counterparts of N's activation inputs (constants match constants). N's outputs then correspond
  to M's outputs by position, whatever their names.
- A Relu or Clip that the candidate folded into the QuantizeLinear of its input (whose range then
  starts at 0) corresponds to that quantized input; the input itself is then measured before
  quantization.
- The tensor measured for a reference tensor T with counterpart T' is the output of
  DequantizeLinear(QuantizeLinear(T')) when the candidate quantizes T' (what its consumers see),
  else T' itself.

Reference tensors for which no counterpart is found, or whose counterpart is not a float tensor,
are reported as unmatched with the reason.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ptq_cli.drift.metrics import sqnr_db
from ptq_cli.model.external import tensor_array

_CONST = "<const>"
_FUSABLE = ("Relu", "Clip")
_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}


@dataclass(frozen=True)
class LayerMatch:
    """A reference tensor and the candidate tensor measured against it."""

    reference: str
    candidate: str
    op_type: str          # op type of the reference node that produces `reference`
    node: str             # name of that node
    quantized: bool       # the candidate tensor is a DequantizeLinear(QuantizeLinear(...)) output
    how: str              # "name", "graph", "input" or "fused" (an activation folded into a Q)
    inputs: tuple[str, ...] = ()          # activation inputs of the reference node
    weight_sqnr_db: float | None = None   # worst per-channel SQNR of its quantized weights


@dataclass(frozen=True)
class Unmatched:
    reference: str
    op_type: str
    node: str
    reason: str


@dataclass(frozen=True)
class Matching:
    matches: tuple[LayerMatch, ...]
    unmatched: tuple[Unmatched, ...]
    # (reference node index, candidate node index) of the nodes found to correspond, in the main
    # graphs' node order; the sensitivity pass takes a quantized weight's float original from here.
    node_pairs: tuple[tuple[int, int], ...] = ()


class GraphView:
    """Producer/consumer look-ups over one graph (the main graph only)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.nodes = list(graph.node)
        self.producer = {out: node for node in self.nodes for out in node.output if out}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.nodes:
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
        self.initializers = {t.name: t for t in graph.initializer}
        self.inputs = {v.name for v in graph.input} - set(self.initializers)
        self.elem_type = _elem_types(model)

    def const_value(self, name: str) -> np.ndarray | None:
        if name in self.initializers:
            return tensor_array(self.initializers[name])  # external (lazy) weights too
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
        return None

    def is_const(self, name: str) -> bool:
        if name in self.initializers:
            return True
        node = self.producer.get(name)
        return node is not None and node.op_type == "Constant"

    def quantized_view(self, name: str) -> str | None:
        """The output of a QuantizeLinear -> DequantizeLinear pair fed by `name`, if any."""
        for q in self.consumers.get(name, ()):
            if q.op_type != "QuantizeLinear" or q.input[0] != name:
                continue
            for dq in self.consumers.get(q.output[0], ()):
                if dq.op_type == "DequantizeLinear" and dq.input[0] == q.output[0]:
                    return dq.output[0]
        return None

    def is_float(self, name: str) -> bool | None:
        elem = self.elem_type.get(name)
        return None if elem is None else elem in _FLOAT_TYPES


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # shape inference is a help here, not a requirement
        inferred = model
    g = inferred.graph
    types = {}
    for value in list(g.value_info) + list(g.input) + list(g.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    for init in g.initializer:
        types[init.name] = init.data_type
    return types


def _unwrap(graph: GraphView, name: str) -> str:
    """The candidate tensor that `name` stands for once QDQ pairs and quantized constants are removed."""
    seen = 0
    while seen < 64:  # a QDQ chain is short; the bound only guards against malformed cycles
        seen += 1
        if graph.is_const(name):
            return _CONST
        dq = graph.producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            return name
        source = dq.input[0]
        if graph.is_const(source):
            return _CONST
        q = graph.producer.get(source)
        if q is None or q.op_type != "QuantizeLinear":
            return name
        name = q.input[0]
    return name


def match_layers(reference: onnx.ModelProto, candidate: onnx.ModelProto) -> Matching:
    """Match every float activation of `reference` to the candidate tensor to measure it against."""
    ref, cand = GraphView(reference), GraphView(candidate)
    counterpart: dict[str, str] = {}   # reference tensor -> unwrapped candidate tensor
    how: dict[str, str] = {}
    for name in ref.inputs & cand.inputs:
        counterpart[name] = name
        how[name] = "input"
    index = _structural_index(cand)
    used: set[int] = set()
    node_pair: dict[int, onnx.NodeProto] = {}   # id(reference node) -> candidate node
    for node in ref.nodes:
        if node.op_type == "Constant":
            continue
        _anchor_outputs(node, ref, cand, counterpart, how)
        anchored = cand.producer.get(counterpart.get(node.output[0], ""))
        if anchored is not None and anchored.op_type == node.op_type:
            node_pair[id(node)] = anchored
            used.add(id(anchored))
        if all(out in counterpart for out in node.output if out):
            continue
        key = _ref_key(node, ref, counterpart)
        found = _take(index.get(key, []), used) if key is not None else None
        if found is None:
            _fused_activation(node, ref, cand, counterpart, how)
            continue
        node_pair[id(node)] = found
        for ref_out, cand_out in zip(node.output, found.output):
            if ref_out and cand_out and ref_out not in counterpart:
                counterpart[ref_out] = cand_out
                how[ref_out] = "graph"
    return _measured(ref, cand, counterpart, how, node_pair)


def _fused_activation(node, ref: GraphView, cand: GraphView, counterpart: dict, how: dict) -> None:
    """A Relu/Clip that the candidate folded into the quantization of its input (onnxruntime does:
    the QuantizeLinear range starts at 0, so it clamps). Its output then stands for the quantized
    view of its input, and that input is measured before quantization."""
    if node.op_type not in _FUSABLE or not node.input or node.output[0] in counterpart:
        return
    source = counterpart.get(node.input[0])
    if source is None or source == _CONST or cand.quantized_view(source) is None:
        return
    counterpart[node.output[0]] = source
    how[node.output[0]] = "fused"


def _anchor_outputs(node, ref: GraphView, cand: GraphView, counterpart: dict, how: dict) -> None:
    for out in node.output:
        if not out or out in counterpart:
            continue
        producer = cand.producer.get(out)
        if producer is not None and producer.op_type in (node.op_type, "DequantizeLinear"):
            counterpart[out] = _unwrap(cand, out)
            how[out] = "name"


def _structural_index(cand: GraphView) -> dict[tuple, list[onnx.NodeProto]]:
    index: dict[tuple, list[onnx.NodeProto]] = defaultdict(list)
    for node in cand.nodes:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear", "Constant"):
            continue
        inputs = tuple(_unwrap(cand, name) if name else "" for name in node.input)
        index[(node.op_type, inputs)].append(node)
    return index


def _ref_key(node: onnx.NodeProto, ref: GraphView, counterpart: dict[str, str]) -> tuple | None:
    inputs = []
    for name in node.input:
        if not name:
            inputs.append("")
        elif ref.is_const(name):
            inputs.append(_CONST)
        elif name in counterpart:
            inputs.append(counterpart[name])
        else:
            return None  # an input we could not follow: nothing downstream of it is trusted
    return (node.op_type, tuple(inputs))


def _take(candidates: list[onnx.NodeProto], used: set[int]) -> onnx.NodeProto | None:
    for node in candidates:
        if id(node) not in used:
            used.add(id(node))
            return node
    return None


def _measured(ref: GraphView, cand: GraphView, counterpart: dict[str, str], how: dict[str, str],
              node_pair: dict[int, onnx.NodeProto]) -> Matching:
    matches, unmatched = [], []
    fused_sources = {counterpart[t] for t, way in how.items() if way == "fused"}
    for name in sorted(ref.inputs & cand.inputs):
        view = cand.quantized_view(name)
        if view is not None and ref.is_float(name) is not False:
            matches.append(LayerMatch(name, view, "(graph input)", "", True, "input"))
    for node in ref.nodes:
        if node.op_type == "Constant":
            continue
        for out in node.output:
            if not out or ref.is_float(out) is False:
                continue  # shapes, indices, masks: not activations
            target = counterpart.get(out)
            if target is None or target == _CONST:
                unmatched.append(Unmatched(out, node.op_type, node.name, "no counterpart in the candidate"))
                continue
            view = cand.quantized_view(target)
            if view is not None and how[out] != "fused" and target in fused_sources:
                view = None  # the quantized view holds the fused activation's output, not this one
            measured = view or target
            if cand.is_float(measured) is False:
                unmatched.append(Unmatched(out, node.op_type, node.name,
                                           "its counterpart in the candidate is not a float tensor (a QOperator model?)"))
                continue
            inputs = tuple(n for n in node.input if n and not ref.is_const(n))
            weights = _weight_sqnr(node, node_pair.get(id(node)), ref, cand)
            matches.append(LayerMatch(out, measured, node.op_type, node.name, view is not None, how[out],
                                      inputs, weights))
    cand_index = {id(node): i for i, node in enumerate(cand.nodes)}
    pairs = tuple((i, cand_index[id(node_pair[id(node)])]) for i, node in enumerate(ref.nodes)
                  if id(node) in node_pair)
    return Matching(tuple(matches), tuple(unmatched), pairs)


def _weight_sqnr(node: onnx.NodeProto, found: onnx.NodeProto | None, ref: GraphView, cand: GraphView) -> float | None:
    """Worst per-output-channel SQNR of the node's weights (constant inputs of rank >= 2) that the
    candidate feeds through a DequantizeLinear. Per channel, because a per-tensor scale can wipe
    out a small channel completely while the SQNR of the whole tensor still looks fine."""
    if found is None or len(found.input) != len(node.input):
        return None
    worst = None
    for position, (ref_name, cand_name) in enumerate(zip(node.input, found.input)):
        if not ref_name or not ref.is_const(ref_name):
            continue
        dq = cand.producer.get(cand_name)
        original = ref.const_value(ref_name)
        if dq is None or dq.op_type != "DequantizeLinear" or original is None or original.ndim < 2:
            continue
        restored = _dequantize(dq, cand)
        if restored is None or restored.shape != original.shape or original.dtype.kind != "f":
            continue
        value = _worst_channel_sqnr(original.astype(np.float64), restored, _channel_axis(node, position))
        if value is not None and (worst is None or value < worst):
            worst = value
    return worst


def _channel_axis(node: onnx.NodeProto, position: int) -> int:
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        trans = {a.name: a.i for a in node.attribute}.get("transB" if position == 1 else "transA", 0)
        return 0 if trans else -1
    return -1 if node.op_type == "MatMul" else 0


def _worst_channel_sqnr(original: np.ndarray, restored: np.ndarray, axis: int) -> float | None:
    axes = tuple(i for i in range(original.ndim) if i != axis % original.ndim)
    signal = np.sum(original * original, axis=axes)
    noise = np.sum((original - restored) ** 2, axis=axes)
    values = [sqnr_db(float(s), float(n)) for s, n in zip(signal, noise) if s > 0]
    return min(values) if values else None


def _dequantize(dq: onnx.NodeProto, graph: GraphView) -> np.ndarray | None:
    """numpy DequantizeLinear of constant inputs (per-tensor or per-axis; None for anything else)."""
    values = [graph.const_value(name) if name else None for name in dq.input]
    q, scale = values[0], values[1]
    zero = values[2] if len(values) > 2 and values[2] is not None else np.zeros_like(scale, dtype=np.int64)
    attrs = {a.name: a for a in dq.attribute}
    if q is None or scale is None or ("block_size" in attrs and attrs["block_size"].i):
        return None
    q, scale, zero = q.astype(np.float64), scale.astype(np.float64), zero.astype(np.float64)
    if scale.size > 1:
        axis = attrs["axis"].i if "axis" in attrs else 1
        shape = [1] * q.ndim
        shape[axis % q.ndim] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (q - zero) * scale
