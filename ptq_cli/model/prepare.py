"""Passes that put an FP32 model in the shape the quantizer expects. Each takes a model and
returns a new one; the caller's model is never modified.

- Constant nodes become initializers (weights stored in Constant nodes count as weights);
- the opset is raised to one with per-axis QuantizeLinear/DequantizeLinear (13), or 21 for
  4- and 16-bit types: writing `axis` into an older opset gives a model onnxruntime refuses;
- BatchNormalization after a Conv is folded into the Conv's weights and bias;
- a Div by a constant becomes a Mul by its reciprocal (attention's 1/sqrt(d)), which has an
  integer kernel (QLinearMul) where Div has none;
- a zero Pad before a Conv becomes the Conv's own padding: onnxruntime has no integer Pad
  fusion, so a Pad left in the graph runs in float between a Dequantize and a Quantize;
- shapes and types are inferred so that passes know which tensors are float.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper, version_converter

from ptq_cli.errors import ModelError
from ptq_cli.model.graph import GraphIndex, NameAllocator, attribute, drop_unused_initializers, ensure_node_names
from ptq_cli.model.io import opset_version

log = logging.getLogger(__name__)

QDQ_PER_AXIS_OPSET = 13
QDQ_4_16_BIT_OPSET = 21


def prepare(model: onnx.ModelProto, *, min_opset: int = QDQ_PER_AXIS_OPSET) -> onnx.ModelProto:
    """Copy, normalise and shape-infer `model` for quantization."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    constants_to_initializers(out)
    out = upgrade_opset(out, min_opset)
    _modern_ir(out)
    fold_batch_norm(out)
    fold_pad_into_conv(out)
    div_by_constant_to_mul(out)
    ensure_node_names(out.graph)
    return infer_shapes(out)


def _modern_ir(model: onnx.ModelProto) -> None:
    """Raise the IR version to what the opsets need (IR 3 files, e.g. from CNTK, require every
    new initializer to be a graph input too) and stop listing initializers as inputs, which makes
    onnxruntime treat them as overridable and skip constant folding."""
    needed = helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    model.ir_version = max(model.ir_version, needed, 4)
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(inputs)


def constants_to_initializers(model: onnx.ModelProto) -> None:
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
    if len(kept) != len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)


def upgrade_opset(model: onnx.ModelProto, min_opset: int) -> onnx.ModelProto:
    current = opset_version(model)
    if current >= min_opset:
        return model
    try:
        upgraded = version_converter.convert_version(model, min_opset)
    except Exception as exc:
        raise ModelError(f"the model is at opset {current}; per-channel QDQ needs opset {min_opset}, "
                         f"and onnx's version converter failed ({type(exc).__name__}: {exc}). "
                         "Try --per-tensor, or upgrade the model with your exporter.") from None
    upgraded.ir_version = max(upgraded.ir_version, helper.find_min_ir_version_for(
        [helper.make_opsetid("", min_opset)], ignore_unknown=True))
    log.info("upgraded opset %d -> %d", current, min_opset)
    return upgraded


def fold_batch_norm(model: onnx.ModelProto) -> int:
    """Fold BatchNormalization into a preceding Conv whose output only it reads. Returns the count."""
    graph = model.graph
    index = GraphIndex(graph)
    removed: set[int] = set()
    for bn in graph.node:
        if bn.op_type != "BatchNormalization" or len([o for o in bn.output if o]) != 1:
            continue
        conv = index.producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or index.single_consumer(conv.output[0]) is not bn:
            continue
        params = [index.constant(name) for name in list(bn.input[1:5]) + list(conv.input[1:2])]
        if any(p is None for p in params):
            continue
        gamma, beta, mean, var, weight = params
        bias = index.constant(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros_like(mean)
        if bias is None:
            continue
        factor = gamma / np.sqrt(var + attribute(bn, "epsilon", 1e-5))
        new_w = (weight * factor.reshape(-1, *([1] * (weight.ndim - 1)))).astype(np.float32)
        new_b = ((bias - mean) * factor + beta).astype(np.float32)
        w_name, b_name = f"{conv.name or conv.output[0]}_bn_folded_W", f"{conv.name or conv.output[0]}_bn_folded_B"
        graph.initializer.extend([numpy_helper.from_array(new_w, w_name), numpy_helper.from_array(new_b, b_name)])
        del conv.input[1:]
        conv.input.extend([w_name, b_name])
        conv.output[0] = bn.output[0]
        removed.add(id(bn))
    return _remove_nodes(graph, removed)


def fold_pad_into_conv(model: onnx.ModelProto) -> int:
    """Merge a constant-zero, spatial-only Pad into the Conv that alone reads it. Returns the count."""
    graph = model.graph
    index = GraphIndex(graph)
    removed: set[int] = set()
    for pad in graph.node:
        conv = index.single_consumer(pad.output[0]) if pad.op_type == "Pad" else None
        if conv is None or conv.op_type != "Conv" or conv.input[0] != pad.output[0]:
            continue
        pads = _spatial_zero_pads(pad, index)
        if pads is None or attribute(conv, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        rank = len(pads) // 2
        old = attribute(conv, "pads", [0] * len(pads))
        if len(old) != len(pads):
            continue
        merged = [a + b for a, b in zip(old, pads)]
        kept = [a for a in conv.attribute if a.name != "pads"]
        del conv.attribute[:]
        conv.attribute.extend(kept + [helper.make_attribute("pads", merged)])
        conv.input[0] = pad.input[0]
        removed.add(id(pad))
        log.info("folded %s into %s (%d spatial dims)", pad.name, conv.name, rank)
    return _remove_nodes(graph, removed)


def _remove_nodes(graph: onnx.GraphProto, removed: set[int]) -> int:
    """Drop the nodes whose id() is in `removed`, and the initializers only they read."""
    if removed:
        kept = [n for n in graph.node if id(n) not in removed]
        del graph.node[:]
        graph.node.extend(kept)
        drop_unused_initializers(graph)
    return len(removed)


def div_by_constant_to_mul(model: onnx.ModelProto) -> int:
    """Rewrite x / c (c a float constant without zeros) as x * (1 / c). Returns the count."""
    graph = model.graph
    index = GraphIndex(graph)
    names = NameAllocator(graph)
    count = 0
    for node in graph.node:
        divisor = index.constant(node.input[1]) if node.op_type == "Div" and len(node.input) == 2 else None
        if divisor is None or divisor.dtype != np.float32 or not np.all(divisor != 0):
            continue
        name = names.new(f"{node.input[1]}_reciprocal")
        graph.initializer.append(numpy_helper.from_array((1.0 / divisor).astype(np.float32), name))
        node.op_type = "Mul"
        node.input[1] = name
        count += 1
    if count:
        drop_unused_initializers(graph)
    return count


def _spatial_zero_pads(pad: onnx.NodeProto, index: GraphIndex) -> list[int] | None:
    """The Pad's spatial pads as a Conv `pads` list, or None unless it is a zero pad of N,C-free dims."""
    if attribute(pad, "mode", b"constant") not in (b"constant", "constant"):
        return None
    if len(pad.input) > 1:  # opset >= 11: pads (and the value) are inputs
        pads = index.constant(pad.input[1])
        value = index.constant(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else None
        if pads is None or (len(pad.input) > 2 and pad.input[2] and value is None) or \
                (len(pad.input) > 3 and pad.input[3]):
            return None
        pads, value = [int(p) for p in pads], 0.0 if value is None else float(value.reshape(-1)[0])
    else:
        pads, value = list(attribute(pad, "pads", [])), float(attribute(pad, "value", 0.0))
    rank = len(pads) // 2
    if value != 0.0 or rank < 3 or any(p < 0 for p in pads):
        return None
    begins, ends = pads[:rank], pads[rank:]
    if begins[:2] != [0, 0] or ends[:2] != [0, 0]:
        return None  # padding of the batch or channel dims is not a Conv padding
    return begins[2:] + ends[2:]


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        if model.ByteSize() < 2**31 - 1:
            return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:  # inference is best effort: ops without a shape function, ...
        log.info("shape inference failed (%s); continuing with the types that are known", exc)
    return model
