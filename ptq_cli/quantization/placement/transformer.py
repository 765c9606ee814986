"""Placement for transformers and sequence models: what stays float, what is quantized at run time.

Static INT8 with one calibrated range per tensor works for CNNs, whose activations are bounded
by ReLUs and batch norms. Transformers and sequence models break it in known places, all found
by following the graph (`patterns.py`), never by reading names:
- normalizations, GELU, hard-swish, the attention score path, the residual sums that feed a
  normalization and output probabilities stay float (each `Pattern` says why);
- a MatMul with a constant weight whose input comes from such float code is quantized at run
  time (DynamicQuantizeLinear -> MatMulInteger, which onnxruntime fuses into one integer kernel):
  its input's range follows each sample (sequence, line) instead of the calibration's extremes;
- an elementwise op whose inputs are all float stays float, whatever kept them float: an integer
  Add between float ops only adds a requantization on each side;
- a Concat whose inputs span ranges far apart stays float: its one output scale would leave the
  small input a few integer levels (a ViT's class token beside its patch embeddings), and what
  reads it only (the position Add) stays float with it;
- an embedding table read by Gather is stored as int8 and the gathered rows dequantized
  (weight-only: the file shrinks, the arithmetic stays float).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from ptq_cli.model.graph import GraphIndex, attribute
from ptq_cli.quantization.placement.handlers import OutputRule, handler_for
from ptq_cli.quantization.placement.patterns import Pattern, PatternKind, find_patterns
from ptq_cli.recipe import QType, Recipe

# Kept float by default: onnxruntime has no integer kernel for most of them, and where it has one
# (QLinearSoftmax, QLinearAdd) the measured drift says INT8 only loses there. A classifier's
# output Softmax stays quantized (QLinearSoftmax): on the CNNs it costs no top-1; the drift
# budget's fallback returns it to float where it does.
FLOAT_KINDS = frozenset(PatternKind) - {PatternKind.SOFTMAX_HEAD}

# Ops worth quantizing only next to other quantized ops (no weight, cheap in float).
_GLUE_OPS = ("Add", "Mul", "Concat", "Sigmoid", "Softmax", "LeakyRelu", "AveragePool", "GlobalAveragePool", "MatMul")
_MOVES = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Split", "Gather", "Identity")
# Below this many values, a Gather table is not worth a weight-only int8 copy.
_MIN_TABLE = 256


def float_patterns(graph: onnx.GraphProto, recipe: Recipe) -> tuple[list[Pattern], dict[str, str]]:
    """The patterns of `graph`, and node name -> why it stays float for the ones kept float."""
    patterns = find_patterns(graph)
    floating = {name: p.reason for p in patterns if p.kind in FLOAT_KINDS for name in p.nodes}
    return patterns, floating


def embedding_table(node: onnx.NodeProto, index: GraphIndex) -> np.ndarray | None:
    """The constant float table a Gather reads rows of (axis 0), or None."""
    if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or node.input[0] not in index.initializers:
        return None
    table = index.constant(node.input[0])
    if table.dtype != np.float32 or table.ndim < 2 or table.size < _MIN_TABLE or attribute(node, "axis", 0) != 0:
        return None
    return table


def float_source(tensor: str, index: GraphIndex, quantized: set[str]) -> onnx.NodeProto | None:
    """The float node `tensor` comes from (through data movement), or None when it comes from a
    quantized node, a graph input or a constant. An embedding lookup counts as float."""
    producer = index.producer.get(tensor)
    for _ in range(16):
        if producer is None or producer.name in quantized:
            return None
        handler = handler_for(producer)
        if not (producer.op_type in _MOVES or handler and handler.output is OutputRule.PASSTHROUGH):
            return producer
        if producer.op_type == "Gather" and producer.input[0] in index.initializers:
            return producer
        if not producer.input or producer.input[0] in index.initializers:
            return None
        producer = index.producer.get(producer.input[0])
    return producer


def runs_at_run_time(node: onnx.NodeProto, index: GraphIndex, recipe: Recipe) -> bool:
    """Whether `node` can be quantized at run time under `recipe`: a MatMul/Gemm (among the
    recipe's dynamic ops, Gemm without transA) of a float activation by a constant 2-D weight,
    with 8-bit weights and uint8 activations (what emit_dynamic makes MatMulInteger of)."""
    if node.op_type not in ("MatMul", "Gemm") or node.op_type not in recipe.dynamic_ops or \
            node.domain not in ("", "ai.onnx") or len(node.input) < 2 or attribute(node, "transA", 0):
        return False
    if recipe.activations.dtype is not QType.UINT8 or recipe.weights.dtype not in (QType.INT8, QType.UINT8):
        return False
    weight = index.constant(node.input[1])
    return weight is not None and weight.ndim == 2 and index.is_float(node.input[0]) and \
        node.input[0] not in index.initializers


def dynamic_matmul_reason(node: onnx.NodeProto, index: GraphIndex, quantized: set[str],
                          placed: set[str]) -> str | None:
    """Why `node` (a MatMul on a constant 2-D weight) is quantized at run time, or None when it
    is quantized statically: its input comes from code that placement keeps float (`placed`:
    patterns, other dynamic MatMuls, float glue) or from an embedding lookup."""
    if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
        return None
    weight = index.constant(node.input[1])
    if weight is None or weight.ndim != 2 or not index.is_float(node.input[0]):
        return None
    source = float_source(node.input[0], index, quantized)
    if source is None or (source.name not in placed and embedding_table(source, index) is None):
        return None
    return (f"quantized at run time (dynamic MatMul): its input {node.input[0]!r} comes from float code, "
            "so its range follows each sample")


# A Concat input spanning less than this fraction of the widest input's range gets fewer than
# 256 / 32 = 8 levels of a uint8 output scale.
_CONCAT_SPAN_RATIO = 32.0


def concat_span_reason(node: onnx.NodeProto, index: GraphIndex,
                       ranges: Mapping[str, tuple[float, float]]) -> str | None:
    """Why a Concat stays float: one input's calibrated span is a sliver of another's."""
    if node.op_type != "Concat" or node.domain not in ("", "ai.onnx"):
        return None
    spans = {}
    for name in (i for i in node.input if i and index.is_float(i)):
        value = index.constant(name) if name in index.initializers else None
        lo, hi = (float(value.min()), float(value.max())) if value is not None and value.size else \
            ranges.get(name, (0.0, 0.0))
        spans[name] = max(hi, 0.0) - min(lo, 0.0)  # the span a scale must cover (0 included)
    if len(spans) < 2 or min(spans.values()) <= 0.0:
        return None
    small, wide = min(spans, key=spans.get), max(spans, key=spans.get)
    if spans[wide] < _CONCAT_SPAN_RATIO * spans[small]:
        return None
    return (f"its input {small!r} spans 1/{spans[wide] / spans[small]:.0f} of {wide!r}'s range: one output "
            "scale would leave it a few integer levels")


def glue_reason(node: onnx.NodeProto, index: GraphIndex, quantized: set[str],
                placed: set[str]) -> tuple[str | None, bool]:
    """Why a weightless op stays float, and whether it is placement's own float code.

    It stays float when every activation input comes from a float node, whatever kept that node
    float (a pattern, --exclude, the latency search, the drift budget's fallback, no integer
    kernel, no calibration range): quantized, it would be a requantization on each side for no
    integer kernel worth having, and its rounding is pure loss. PP-OCRv4 with every Conv returned
    to float by the fallback but the swish Mul/Sigmoid after them still INT8 read 90.7 % of
    held-out lines as FP32; with those float too, 97.3 % (and no slower).

    It is placement's own float code only when those nodes are (`placed`: patterns, dynamic
    MatMuls, embeddings, other such glue): only then does the MatMul after it go to run time, so a
    node the user excludes moves no MatMul from static INT8 to run time."""
    if node.op_type not in _GLUE_OPS or node.domain not in ("", "ai.onnx"):
        return None, False
    if node.op_type == "MatMul" and any(i in index.initializers for i in node.input):
        return None, False
    inputs = [i for i in node.input if i and i not in index.initializers and index.is_float(i)]
    sources = [float_source(i, index, quantized) for i in inputs]
    if not inputs or any(s is None for s in sources):
        return None, False
    own = all(s.name in placed or embedding_table(s, index) is not None for s in sources)
    return (f"its inputs ({', '.join(repr(i) for i in inputs)}) come from float nodes: "
            "an integer op between float ops only adds requantization"), own
