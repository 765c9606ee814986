"""The pure transformation: a float model, a recipe and activation ranges in, a quantized model out.

Every kind of static quantization goes through `quantize_model`; `quantize()` (api.py) wraps it
with calibration, the latency search, the drift budget and the atomic write.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import onnx

from ptq_cli.model.io import opset_version
from ptq_cli.model.passes import SequenceResult
from ptq_cli.model.prepare import QDQ_4_16_BIT_OPSET, QDQ_PER_AXIS_OPSET, prepare_with_result
from ptq_cli.quantization.arithmetic.bias_correction import correct_biases
from ptq_cli.quantization.arithmetic.rounding import bound_plan_pairs, carry_rounding, gptq_plan
from ptq_cli.quantization.emitters.base import EmitResult
from ptq_cli.quantization.emitters.dynamic import emit_dynamic
from ptq_cli.quantization.emitters.qdq import emit_qdq
from ptq_cli.quantization.emitters.qoperator import emit_qoperator
from ptq_cli.quantization.emitters.subgraphs import emit_bodies
from ptq_cli.quantization.placement.opsets import all_float, fit_recipe
from ptq_cli.quantization.placement.place import make_plan, replan_weights
from ptq_cli.quantization.plan import QuantPlan
from ptq_cli.recipe import Format, Recipe, Rounding

Ranges = Mapping[str, tuple[float, float]]


def quantize_model(model: onnx.ModelProto, recipe: Recipe, ranges: Ranges,
                   channel_means: Mapping[str, np.ndarray] | None = None,
                   grams: Mapping | None = None, *, prepared: bool = False) -> tuple[onnx.ModelProto, QuantPlan]:
    """The pure transformation: a float model and activation ranges in, a quantized model out,
    with the plan it was written from (what the emitters wrote, in `quantized` and `dynamic`).
    `prepared` says the model already went through prepare() (it is not prepared again).

    `channel_means` (per-channel E[x] of Conv/Gemm inputs) enables bias correction; `grams`
    (Σ x·xᵀ of the weights' inputs, calibration/gram.py) is what GPTQ rounding needs."""
    prepared_result = SequenceResult(model, False) if prepared else \
        prepare_with_result(model, min_opset=required_opset(recipe))
    prepared = prepared_result.model
    recipe, notes = fit_recipe(recipe, opset_version(prepared))
    if recipe is None:  # the opset has no QuantizeLinear and cannot be raised
        unchanged = onnx.ModelProto()
        unchanged.CopyFrom(prepared)  # the caller's model may be the one given: it gets stamped
        return unchanged, QuantPlan(skipped=all_float(prepared, notes[0]), notes=notes,
                                    prepare_skipped=prepared_result.skipped)
    prepared, plan = _refined(prepared, make_plan(prepared, recipe, ranges), recipe, channel_means, grams)
    emit = emit_qoperator if recipe.format is Format.QOPERATOR else emit_qdq

    def emit_body(body: onnx.ModelProto) -> EmitResult:
        # If/Loop/Scan bodies: planned and emitted as graphs of their own, in the same format.
        return emit(body, bound_plan_pairs(body, make_plan(body, recipe, ranges), recipe))

    static = emit_bodies(emit(prepared, plan), emit_body)
    run_time = _dynamic_matmuls(static.model, plan, recipe)
    # A MatMul placement sent to run time that the dynamic emitter refused stays float: say why.
    order = {n.name: i for i, n in enumerate(prepared.graph.node)}
    refused = tuple(s for s in run_time.skipped if s.node in plan.dynamic)
    skipped = tuple(sorted(static.skipped + refused, key=lambda s: order.get(s.node, len(order))))
    return run_time.model, replace(plan, quantized=static.quantized, skipped=skipped, dynamic=run_time.quantized,
                                   prepare_skipped=prepared_result.skipped,
                                   notes=plan.notes + notes + static.notes + run_time.notes)


def _refined(prepared: onnx.ModelProto, plan: QuantPlan, recipe: Recipe, channel_means, grams
             ) -> tuple[onnx.ModelProto, QuantPlan]:
    """The plan's integer weights as written: GPTQ-rounded when asked, held to the portable
    target's pair limit, and measured by bias correction (which gives the model new biases)."""
    if recipe.rounding is Rounding.GPTQ:
        plan, _ = gptq_plan(prepared, plan, grams or {}, recipe)
    # The pair limit before bias correction, so that the correction measures the integers written.
    plan = bound_plan_pairs(prepared, plan, recipe)
    if recipe.bias_correction and channel_means:
        prepared, corrected = correct_biases(prepared, plan, channel_means)
        if corrected:
            # the biases are new tensors now; bias correction measured these integers, keep them
            # (a weight whose scale had to widen for its int32 bias is rounded and bounded again)
            plan = carry_rounding(plan, replan_weights(prepared, recipe, plan, corrected), prepared)
            plan = bound_plan_pairs(prepared, plan, recipe)
    return prepared, plan


def _dynamic_matmuls(model: onnx.ModelProto, plan: QuantPlan, recipe: Recipe) -> EmitResult:
    """The MatMuls placement quantizes at run time (placement/place.py, chosen by
    placement/transformer.py), rewritten after the static pass."""
    if not plan.dynamic:
        return EmitResult(model, (), ())
    return emit_dynamic(model, recipe, only=frozenset(plan.dynamic))


def required_opset(recipe: Recipe) -> int:
    """The opset the recipe's integer types need QuantizeLinear at (4/16-bit: 21)."""
    wide = {spec.dtype.bits for spec in (recipe.weights, recipe.activations)} - {8}
    return QDQ_4_16_BIT_OPSET if wide else QDQ_PER_AXIS_OPSET
