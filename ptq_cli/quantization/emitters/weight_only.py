"""Weight-only quantization: block-wise 4/8-bit weights, float activations, no activation ranges.

    MatMul(A, W [K, N])   ->  com.microsoft.MatMulNBits(A, B, scales[, zero_points])  (K, N, bits, block_size, accuracy_level)
                          or  DequantizeLinear(W_q [K, N], S [K/block, N], axis 0, block_size) -> MatMul   (--format qdq, opset 21)
    Gather(E [V, D], ids) ->  com.microsoft.GatherBlockQuantized(E_q, ids, S [V, D/block])   (int4)
                          or  DequantizeLinear(E_q, S, axis 1, block_size) -> Gather              (--format qdq, or int8)

MatMul weights are rounded to nearest or with GPTQ (the Gram matrix of A, from calibration);
an embedding table is read a row at a time, so its rows have no input statistics: nearest.
Each weight is quantized and its float initializer dropped before the next one is read.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ptq_cli.calibration.gram import Gram
from ptq_cli.model.graph import GraphIndex, NameAllocator, attribute, drop_unused_initializers
from ptq_cli.quantization.arithmetic.blas import single_threaded_blas
from ptq_cli.quantization.arithmetic.blocks import (Blocks, block_params, pack_matmul_nbits, pack_nibbles,
                                                     pack_zero_points)
from ptq_cli.quantization.arithmetic.gptq import gptq_round
from ptq_cli.quantization.emitters.base import EmitResult
from ptq_cli.quantization.plan import SkipReason, Why
from ptq_cli.recipe import Recipe, Rounding, WeightOnly

MS_DOMAIN = "com.microsoft"
# Below this many values a Gather table stays float: MiniLM's position (512 x 384) and token-type
# tables are 1 % of the file, and their rows are added to every token.
SMALL_TABLE = 1 << 20


def emit_weight_only(model: onnx.ModelProto, recipe: Recipe, grams: Mapping[str, Gram] | None = None) -> EmitResult:
    """A copy of the prepared `model` with its MatMul weights (and Gather tables) block-quantized."""
    spec = recipe.weight_only
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    index = GraphIndex(graph)
    names = NameAllocator(graph)
    done: list[str] = []
    skipped: list[SkipReason] = []
    nodes: list[onnx.NodeProto] = []
    with single_threaded_blas():
        for node in graph.node:
            reason = _refusal(node, index, recipe)
            if reason is None:
                nodes += _rewrite(node, index, names, spec, graph, _gram(recipe, grams, node))
                done.append(node.name)
                continue
            if node.op_type in ("MatMul", "Gather", "Gemm"):
                why = Why.EXCLUDED if recipe.excludes(node.name, node.op_type) else Why.UNSUPPORTED
                skipped.append(SkipReason(node.name, node.op_type, reason, why))
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    drop_unused_initializers(graph)
    if not spec.qdq and not any(o.domain == MS_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    if any(t.data_type in (TensorProto.INT4, TensorProto.UINT4) for t in graph.initializer):
        out.ir_version = max(out.ir_version, 10)  # the IR that has 4-bit types
    return EmitResult(out, tuple(done), tuple(skipped))


def _gram(recipe: Recipe, grams, node: onnx.NodeProto) -> np.ndarray | None:
    if recipe.rounding is not Rounding.GPTQ or node.op_type != "MatMul" or not grams:
        return None
    gram = grams.get(node.input[0])
    return None if gram is None or gram.total is None else gram.total[0]


def _refusal(node: onnx.NodeProto, index: GraphIndex, recipe: Recipe) -> str | None:
    """Why `node` stays float, or None when its weight is quantized."""
    spec = recipe.weight_only
    if node.op_type not in ("MatMul", "Gather"):
        return "weight-only quantization rewrites MatMul and Gather (Gemm: not yet)"
    if recipe.excludes(node.name, node.op_type):
        return "excluded by --exclude"
    weight = node.input[1] if node.op_type == "MatMul" else node.input[0]
    tensor = index.initializers.get(weight)
    if tensor is None:
        return "both inputs are activations" if node.op_type == "MatMul" else "the table is not a constant"
    if tensor.data_type != TensorProto.FLOAT or len(tensor.dims) != 2:
        return "only 2-D float32 weights are block-quantized"
    if node.op_type == "Gather":
        if not spec.embeddings:
            return "embedding tables left in float"
        if np.prod(tensor.dims) < SMALL_TABLE:
            return f"a small table ({tensor.dims[0]} rows): read for every token, it would cost more accuracy than bytes"
        if attribute(node, "axis", 0) != 0 or tensor.dims[1] % spec.block_size:
            return f"the table's rows are not whole blocks of {spec.block_size}"
    elif len(index.consumers.get(weight, [])) > 1:
        return "the weight is shared with another node"
    return None


def _rewrite(node, index, names, spec: WeightOnly, graph, h) -> list[onnx.NodeProto]:
    bits = spec.dtype.bits
    if node.op_type == "MatMul":
        w = index.constant(node.input[1])
        rows = w.T  # [N, K]: blocks run along K
        blocks = block_params(rows, bits, spec.block_size, spec.symmetric, importance=None if h is None else np.diag(h))
        q = blocks.nearest(rows) if h is None else _gptq(rows, h, blocks)
        if spec.qdq:
            return _dequantized(node, 1, q.T, blocks, axis=0, names=names, graph=graph)
        return [_matmul_nbits(node, q, blocks, spec, names, graph)]
    table = index.constant(node.input[0])  # [V, D]: blocks run along D
    blocks = block_params(table, bits, spec.block_size, spec.symmetric)
    q = blocks.nearest(table)
    if spec.qdq:
        return _dequantized(node, 0, q, blocks, axis=1, names=names, graph=graph)
    return [_gather_block_quantized(node, q, blocks, names, graph)]


def _gptq(rows: np.ndarray, h: np.ndarray, blocks: Blocks) -> np.ndarray:
    q = gptq_round(rows, h, blocks.per_value(blocks.scale), blocks.zeros_per_value(), blocks.qmin, blocks.qmax)
    return q.astype(np.int16)


def _matmul_nbits(node, q, blocks: Blocks, spec: WeightOnly, names, graph) -> onnx.NodeProto:
    n, k = q.shape
    base = node.input[1]
    inputs = [node.input[0], _add(graph, names, pack_matmul_nbits(blocks.unsigned(q), blocks), f"{base}_Q{blocks.bits}"),
              _add(graph, names, blocks.scale, f"{base}_scales")]
    zero = pack_zero_points(blocks)
    if zero is not None:
        inputs.append(_add(graph, names, zero, f"{base}_zero_points"))
    attrs = dict(K=k, N=n, bits=blocks.bits, block_size=blocks.block)
    if spec.accuracy_level:
        attrs["accuracy_level"] = spec.accuracy_level
    return helper.make_node("MatMulNBits", inputs, list(node.output), name=names.new(f"{node.name}_nbits"),
                            domain=MS_DOMAIN, **attrs)


def _gather_block_quantized(node, q, blocks: Blocks, names, graph) -> onnx.NodeProto:
    """4 bits: INT4 (symmetric) or UINT4 data and zero-points, as onnxruntime's own quantizer
    writes them; 8 bits: uint8 data (implicit zero-point 128 when symmetric) with bits=8."""
    base = node.input[0]
    if blocks.bits == 4:
        data = _typed(graph, names, q, blocks, f"{base}_Q4")
        zero = None if blocks.zero is None else _typed(graph, names, blocks.zero, blocks, f"{base}_zero_points")
    else:
        data = _add(graph, names, blocks.unsigned(q), f"{base}_Q8")
        zero = None if blocks.zero is None else _add(graph, names, blocks.zero.astype(np.uint8), f"{base}_zero_points")
    inputs = [data, node.input[1], _add(graph, names, blocks.scale, f"{base}_scales")] + ([zero] if zero else [])
    return helper.make_node("GatherBlockQuantized", inputs, list(node.output), name=names.new(f"{node.name}_q{blocks.bits}"),
                            domain=MS_DOMAIN, gather_axis=0, quantize_axis=1, block_size=blocks.block,
                            **({"bits": 8} if blocks.bits == 8 else {}))


def _dequantized(node, position: int, q, blocks: Blocks, *, axis: int, names, graph) -> list[onnx.NodeProto]:
    """A block-wise DequantizeLinear (opset 21) of the integers, read by `node` instead of its weight."""
    base = node.input[position]
    scale = blocks.scale if axis == 1 else blocks.scale.T
    inputs = [_typed(graph, names, q, blocks, f"{base}_quantized"), _add(graph, names, scale, f"{base}_scale")]
    if blocks.zero is not None:
        zero = blocks.zero if axis == 1 else blocks.zero.T
        inputs.append(_typed(graph, names, zero, blocks, f"{base}_zero_point"))
    dequantized = names.new(f"{base}_dequantized")
    dq = helper.make_node("DequantizeLinear", inputs, [dequantized], name=names.new(f"{base}_DequantizeLinear"),
                          axis=axis, block_size=blocks.block)
    node.input[position] = dequantized
    return [dq, node]


def _typed(graph, names, values: np.ndarray, blocks: Blocks, base: str) -> str:
    """An INT4/UINT4/INT8/UINT8 initializer of integer `values` (onnx packs 4-bit ones)."""
    signed = blocks.symmetric
    dtype = {(4, True): TensorProto.INT4, (4, False): TensorProto.UINT4,
             (8, True): TensorProto.INT8, (8, False): TensorProto.UINT8}[(blocks.bits, signed)]
    name = names.new(base)
    if blocks.bits == 8:
        graph.initializer.append(numpy_helper.from_array(values.astype(np.int8 if signed else np.uint8), name))
        return name
    flat = values.reshape(-1)
    if flat.size % 2:
        flat = np.append(flat, 0)
    graph.initializer.append(helper.make_tensor(name, dtype, values.shape, pack_nibbles(flat).tobytes(), raw=True))
    return name


def _add(graph, names, array: np.ndarray, base: str) -> str:
    name = names.new(base)
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
    return name
