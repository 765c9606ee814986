"""What a recipe can still do at the opset a model could be raised to.

prepare() raises the opset to what the recipe asks (13 for per-channel QDQ, 21 for 4/16-bit
types). When onnx's version converter cannot get there, the model stays at a lower opset and the
recipe degrades instead of ptq refusing a model onnxruntime runs: per-tensor weights below 13
(QuantizeLinear has no `axis` before), 8-bit types below 21, and nothing quantized below 10
(no QuantizeLinear) or, for dynamic quantization, below 11 (no DynamicQuantizeLinear).
"""

from __future__ import annotations

from dataclasses import replace

import onnx

from ptq_cli.model.prepare import DYNAMIC_OPSET, QDQ_4_16_BIT_OPSET, QDQ_PER_AXIS_OPSET, QDQ_PER_TENSOR_OPSET
from ptq_cli.quantization.plan import SkipReason, Why
from ptq_cli.recipe import PerChannel, PerTensor, QType, Recipe


def fit_recipe(recipe: Recipe, opset: int) -> tuple[Recipe | None, tuple[str, ...]]:
    """The recipe as far as `opset` allows (None: nothing can be quantized), and what changed."""
    lowest = DYNAMIC_OPSET if recipe.dynamic else QDQ_PER_TENSOR_OPSET
    if opset < lowest:
        what = "DynamicQuantizeLinear" if recipe.dynamic else "QuantizeLinear"
        return None, (f"the model stays at opset {opset} (onnx's version converter cannot raise it to "
                      f"{lowest}, where {what} appears): nothing is quantized; re-export at opset >= {lowest}",)
    notes = []
    weights, activations = recipe.weights, recipe.activations
    if opset < QDQ_4_16_BIT_OPSET and not recipe.dynamic:
        narrow = {QType.INT4: QType.INT8, QType.INT16: QType.INT8, QType.UINT4: QType.UINT8, QType.UINT16: QType.UINT8}
        if weights.dtype in narrow or activations.dtype in narrow:
            weights = replace(weights, dtype=narrow.get(weights.dtype, weights.dtype))
            activations = replace(activations, dtype=narrow.get(activations.dtype, activations.dtype))
            notes.append(f"the model stays at opset {opset} (onnx's version converter cannot raise it to "
                         f"{QDQ_4_16_BIT_OPSET}): 4/16-bit types become 8-bit")
    if opset < QDQ_PER_AXIS_OPSET and not recipe.dynamic and isinstance(weights.granularity, PerChannel):
        weights = replace(weights, granularity=PerTensor())
        notes.append(f"the model stays at opset {opset} (onnx's version converter cannot raise it to "
                     f"{QDQ_PER_AXIS_OPSET}, where QuantizeLinear gains a per-channel axis): weights are "
                     "quantized per tensor")
    return replace(recipe, weights=weights, activations=activations), tuple(notes)


def all_float(model: onnx.ModelProto, reason: str) -> tuple[SkipReason, ...]:
    """Every node left in float for one reason."""
    return tuple(SkipReason(node.name, node.op_type, reason, Why.UNSUPPORTED) for node in model.graph.node)
