"""The augmented graph calibration runs: which tensors are float, and the extra outputs.

Every observed float tensor t gets reductions inside the graph, so onnxruntime hands back a few
scalars instead of a copy of t and frees t as soon as its consumers ran, as in plain inference:

    t -> ReduceMin, ReduceMax              (the exact min and max; onnxruntime's CPU reductions
                                            skip NaN, hence the sum below)
    t -> ReduceSum                         (NaN detector, where an op can make a NaN: see below)
      or Reshape [N, C, -1] -> ReduceSum over 0, 2   (per-channel sums, for bias correction)
    t -> Size                              (element count: skip empty tensors, divide the sums)

Tensors that a histogram or a per-channel min/max must see whole are also fetched as arrays.

Every reduction costs a pass over the tensor, and observing a Conv output at all stops
onnxruntime from fusing the Conv with its Relu/Clip (measured on MobileNetV1-0.25, 1 thread,
per sample: plain 0.75 ms, one ReduceMin per tensor 1.33 ms, + ReduceMax 1.63 ms, + ReduceSum
1.95 ms). So the NaN detector is left out after the ops below, which cannot turn finite inputs
into a NaN (only into an infinity, which min/max show); a NaN from the data is caught at the
graph input, and a NaN made elsewhere (Log, Div, Sqrt, Pow, custom ops ...) is caught where it
appears. The one gap: a float32 overflow to +inf and -inf inside a single dot product of a
Conv/Gemm/MatMul, i.e. activations near 1e38.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ptq_cli.model.external import weightless
from ptq_cli.model.graph import NameAllocator
from ptq_cli.model.io import opset_version

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE}
# Reductions in the graph for these; float16 (rare on CPU, where ReduceMin has no fp16 kernel in
# every onnxruntime build) is fetched and reduced in numpy instead.
REDUCED_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE}

# Output 0 has the type of input 0 (other outputs: see _OTHER_OUTPUTS).
_SAME_AS_INPUT = set("""
Abs Acos Acosh Add AveragePool BatchNormalization Ceil Celu Clip Concat Conv ConvTranspose Cos
Cosh CumSum DepthToSpace Div Dropout Einsum Elu Erf Exp Expand Flatten Floor Gather GatherElements
GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool HardSigmoid HardSwish Hardmax
Identity InstanceNormalization LRN LayerNormalization LeakyRelu Log LogSoftmax LpNormalization
LpPool MatMul Max MaxPool Mean Min Mish Mod Mul Neg PRelu Pad Pow Reciprocal ReduceL1 ReduceL2
ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare
Relu Reshape Resize Round ScatterElements ScatterND Selu Shrink Sigmoid Sign Sin Sinh Slice
Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile
TopK Transpose Trilu Unsqueeze Upsample
Affine Crop ImageScaler ParametricSoftplus Scale ScaledTanh
""".split())  # the last line: experimental ops of opset 7-9 exports, which onnx has no schema for
# The type of each extra output (None: same as input 0).
_OTHER_OUTPUTS = {"Split": None, "MaxPool": TensorProto.INT64, "Dropout": TensorProto.BOOL,
                  "TopK": TensorProto.INT64}
_CANNOT_MAKE_NAN = set("""
Abs AveragePool BatchNormalization Clip Concat Conv ConvTranspose DepthToSpace Dropout Elu Erf
Exp Expand Flatten Gather Gelu Gemm GlobalAveragePool GlobalMaxPool HardSigmoid HardSwish Identity
LeakyRelu MatMul Max MaxPool Min Neg Pad PRelu ReduceMax ReduceMin Relu Reshape Resize Sigmoid
Slice SpaceToDepth Split Squeeze Tanh Tile Transpose Unsqueeze Upsample
""".split())
_BOOL_OPS = set("And Equal Greater GreaterOrEqual IsInf IsNaN Less LessOrEqual Not Or Xor".split())
_INT64_OPS = {"ArgMax", "ArgMin", "NonZero", "Shape", "Size"}


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor of the main graph.

    Propagated over the common ops in Python; a graph with any other op (or a function, a
    subgraph) falls back to onnx shape inference, which is exact but loads onnx's operator
    schemas (about 15 MB of memory for the rest of the process)."""
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*graph.input, *graph.value_info, *graph.output] if v.type.HasField("tensor_type")}
    types.update({t.name: t.data_type for t in graph.initializer})
    if _propagate(graph, types):
        return types
    # onnx's inference is exact where it answers; where it cannot (an experimental op without a
    # schema stops it), the Python propagation fills in what follows from the known types.
    merged = {**types, **_inferred_types(model)}
    _propagate(graph, merged)
    return merged


def _propagate(graph: onnx.GraphProto, types: dict[str, int]) -> bool:
    """Add the output types of the nodes whose rule is known; False if any node had none."""
    complete = True
    for node in graph.node:
        out = _node_types(node, types)
        if out is None:
            complete = False
            continue
        for name, elem in zip(node.output, out):
            if name:
                types.setdefault(name, elem)
    return complete


def _node_types(node: onnx.NodeProto, types: dict[str, int]) -> list[int] | None:
    if node.domain not in ("", "ai.onnx"):
        return None
    op, first = node.op_type, types.get(node.input[0]) if node.input else None
    count = len(node.output)
    if op in _SAME_AS_INPUT and first is not None:
        if count > 1 and op not in _OTHER_OUTPUTS:
            return None  # e.g. training outputs of BatchNormalization, LayerNorm's stash type
        extra = _OTHER_OUTPUTS.get(op)
        return [first] + [first if extra is None else extra] * (count - 1)
    if op == "Cast":
        return [_attr(node, "to")]
    if op == "CastLike" and types.get(node.input[1]) is not None:
        return [types[node.input[1]]]
    if op == "Where" and types.get(node.input[1]) is not None:
        return [types[node.input[1]]]
    if op == "Constant":
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        return None if value is None else [value.data_type]
    if op in _BOOL_OPS:
        return [TensorProto.BOOL]
    if op in _INT64_OPS:
        return [TensorProto.INT64]
    return None


def _attr(node: onnx.NodeProto, name: str) -> int:
    return next((a.i for a in node.attribute if a.name == name), 0)


def _inferred_types(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(weightless(model))  # at any size
    except Exception:  # inference fails on some exotic/custom ops: fall back to what is declared
        inferred = model
    graph = inferred.graph
    return {v.name: v.type.tensor_type.elem_type
            for v in [*graph.input, *graph.value_info, *graph.output]
            if v.type.HasField("tensor_type")}


def float_tensors(model: onnx.ModelProto, types: dict[str, int] | None = None) -> list[str]:
    """Float graph inputs and node outputs, in graph order (initializers and Constant outputs,
    which are weights rather than activations, are left out)."""
    types = elem_types(model) if types is None else types
    initializers = {t.name for t in model.graph.initializer}
    names = [v.name for v in model.graph.input if v.name not in initializers]
    for node in model.graph.node:
        if node.op_type != "Constant":
            names.extend(out for out in node.output if out)
    return [n for n in dict.fromkeys(names) if types.get(n) in FLOAT_TYPES]


@dataclass(frozen=True)
class Probe:
    """Where one tensor's reductions land among the session's outputs (indices into them)."""

    name: str
    min: int
    max: int
    sums: int | None  # a scalar total, or per-channel sums when channel_sums; None: no NaN check
    size: int
    channel_sums: bool


@dataclass(frozen=True)
class Augmented:
    """What the augmented session returns: outputs[i] for i in a probe, arrays for `fetched`."""

    outputs: list[str]  # what to fetch, in order
    fetched: list[str]  # tensors fetched whole, at outputs[:len(fetched)]
    probes: list[Probe]


def augment(model: onnx.ModelProto, reduced: Sequence[str], channel_sums: Iterable[str],
            fetched: Sequence[str]) -> tuple[onnx.ModelProto, Augmented]:
    """A copy of `model` with the reductions of `reduced` and the arrays `fetched` as outputs
    (the input model is not touched)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    names = NameAllocator(out.graph)
    present = {o.name for o in graph.output}
    outputs = list(fetched)
    for name in fetched:
        if name not in present:
            graph.output.append(onnx.ValueInfoProto(name=name))
    per_channel = set(channel_sums)
    safe = {o for node in graph.node if node.op_type in _CANNOT_MAKE_NAN and node.domain in ("", "ai.onnx")
            for o in node.output}
    axes, flat = names.new("ptq_axes_0_2"), names.new("ptq_shape_n_c_rest")
    if per_channel & set(reduced):
        constants = [numpy_helper.from_array(np.array([0, 2], np.int64), axes),
                     numpy_helper.from_array(np.array([0, 0, -1], np.int64), flat)]
        graph.initializer.extend(constants)
        if out.ir_version < 4:  # IR 3 (opset 7/8 exports): every initializer is a graph input too
            graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                               for t in constants)
    new_axes = opset_version(model) >= 13  # ReduceSum takes its axes as an input from opset 13
    probes = []
    extra: dict[str, list[onnx.NodeProto]] = {}
    for name in reduced:
        base = len(outputs)
        mn, mx, total, size = (names.new(f"{name}/ptq_{k}") for k in ("min", "max", "sum", "size"))
        nodes = [helper.make_node("ReduceMin", [name], [mn], keepdims=0),
                 helper.make_node("ReduceMax", [name], [mx], keepdims=0),
                 helper.make_node("Size", [name], [size])]
        if name in per_channel:
            rows = names.new(f"{name}/ptq_rows")
            nodes.append(helper.make_node("Reshape", [name, flat], [rows]))
            nodes.append(helper.make_node("ReduceSum", [rows, axes], [total], keepdims=0) if new_axes
                         else helper.make_node("ReduceSum", [rows], [total], keepdims=0, axes=[0, 2]))
        elif name not in safe:
            nodes.append(helper.make_node("ReduceSum", [name], [total], keepdims=0))
        summed = name in per_channel or name not in safe
        extra.setdefault(name, []).extend(nodes)
        values = [mn, mx, size] + ([total] if summed else [])
        graph.output.extend(onnx.ValueInfoProto(name=v) for v in values)
        outputs += values
        probes.append(Probe(name, base, base + 1, base + 3 if summed else None, base + 2, name in per_channel))
    _interleave(graph, extra)
    return out, Augmented(outputs, list(fetched), probes)


def _interleave(graph: onnx.GraphProto, extra: dict[str, list[onnx.NodeProto]]) -> None:
    """Put each tensor's reductions right after its producer, so that with a priority-based
    execution order each activation can be freed as soon as its last consumer ran."""
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        nodes.append(node)
        nodes += [n for out in node.output if out in extra for n in extra.pop(out)]
    nodes += [n for rest in extra.values() for n in rest]  # of tensors no node makes: none so far
    del graph.node[:]
    graph.node.extend(nodes)
