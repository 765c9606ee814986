"""Infer the type (and shape) of every tensor, at any model size.

onnx's shape inference serializes the model, which fails at 2 GB (and returns the model
untyped if asked not to raise). Weights carry no information inference needs beyond their type
and shape, so inference runs on a copy of the graph in which every large or external
initializer is a typed graph input instead; the inferred value_info is copied back. Tensors
left untyped are reported as a skip reason: nodes reading them stay in float.
"""

from __future__ import annotations

import onnx
from onnx import helper

from ptq_cli.model.external import is_external
from ptq_cli.model.passes.base import Pass, PassResult

# Initializers up to this size keep their values (shape inputs of Reshape, Slice, ... are small
# and data propagation needs them); larger ones are only typed.
_KEEP_VALUES_BELOW = 4096


class InferTypes(Pass):
    name = "infer-types"

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        try:
            inferred = onnx.shape_inference.infer_shapes(_without_weights(model), strict_mode=False,
                                                         data_prop=True)
        except Exception as exc:  # an op without a shape function, a custom domain, ...
            reason = f"type inference failed ({type(exc).__name__}: {str(exc).strip().splitlines()[0]})"
            return PassResult(model, False, (), _untyped_reasons(model, reason))
        graph = model.graph
        del graph.value_info[:]
        graph.value_info.extend(inferred.graph.value_info)
        outputs = {o.name: o for o in inferred.graph.output}
        for i, out in enumerate(graph.output):
            if out.name in outputs:
                graph.output[i].CopyFrom(outputs[out.name])
        return PassResult(model, True, (), _untyped_reasons(model, "type inference left them untyped"))


def _without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose large or external initializers are typed graph inputs: the copy
    holds no weight data, whatever the model's size."""
    copy = onnx.ModelProto()
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(copy, field, getattr(model, field))
    copy.opset_import.extend(model.opset_import)
    copy.functions.extend(model.functions)
    src, dst = model.graph, copy.graph
    dst.name = src.name
    dst.node.extend(src.node)
    dst.input.extend(src.input)
    dst.output.extend(src.output)
    dst.value_info.extend(src.value_info)
    listed = {i.name for i in src.input}
    for tensor in src.initializer:
        if is_external(tensor) or tensor.ByteSize() >= _KEEP_VALUES_BELOW:
            if tensor.name not in listed:
                dst.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
        else:
            dst.initializer.append(tensor)
    return copy


def _untyped_reasons(model: onnx.ModelProto, why: str) -> tuple[str, ...]:
    graph = model.graph
    typed = {v.name for v in [*graph.value_info, *graph.input, *graph.output] if v.type.HasField("tensor_type")
             and v.type.tensor_type.elem_type}
    typed.update(t.name for t in graph.initializer)
    untyped = [(node, out) for node in graph.node for out in node.output if out and out not in typed]
    if not untyped:
        return ()
    node, out = untyped[0]
    return (f"{len(untyped)} tensors have no known type ({why}; first: {out!r} of {node.op_type} "
            f"{node.name!r}): nodes reading only such tensors stay in float",)
