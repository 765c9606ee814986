"""Infer the type (and shape) of every tensor, at any model size.

onnx's shape inference serializes the model, which fails at 2 GB (and returns the model
untyped if asked not to raise). Weights carry no information inference needs beyond their type
and shape, so inference runs on a copy of the graph in which every large or external
initializer is a typed graph input instead; the inferred value_info is copied back. Tensors
left untyped are reported as a skip reason: nodes reading them stay in float.
"""

from __future__ import annotations

import onnx

from ptq_cli.model.external import weightless
from ptq_cli.model.passes.base import Pass, PassResult

# Initializers up to this size keep their values (shape inputs of Reshape, Slice, ... are small
# and data propagation needs them); larger ones are only typed.
_KEEP_VALUES_BELOW = 4096


class InferTypes(Pass):
    name = "infer-types"

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        try:
            inferred = onnx.shape_inference.infer_shapes(weightless(model, _KEEP_VALUES_BELOW), strict_mode=False,
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


def _untyped_reasons(model: onnx.ModelProto, why: str) -> tuple[str, ...]:
    graph = model.graph
    typed = {v.name for v in [*graph.value_info, *graph.input, *graph.output] if v.type.HasField("tensor_type")
             and v.type.tensor_type.elem_type}
    # A sequence or a map (ZipMap's output) is typed too: no node quantizes it, nothing is missing.
    typed.update(v.name for v in [*graph.value_info, *graph.input, *graph.output]
                 if v.type.WhichOneof("value") in ("sequence_type", "map_type", "optional_type"))
    typed.update(t.name for t in graph.initializer)
    untyped = [(node, out) for node in graph.node for out in node.output if out and out not in typed]
    if not untyped:
        return ()
    node, out = untyped[0]
    return (f"{len(untyped)} tensors have no known type ({why}; first: {out!r} of {node.op_type} "
            f"{node.name!r}): nodes reading only such tensors stay in float",)
