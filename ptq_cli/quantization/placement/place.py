"""Decide, for a prepared float model, which nodes are quantized and with which parameters.

The plan is independent of the output format: the QDQ pass and the QOperator rewrite both
consume it. It is built in three steps over the (topologically sorted) graph:
1. compute nodes (Conv, MatMul, Add, ...) claim their activation inputs and their output
   (moved past a lone Relu/Clip, which onnxruntime folds into the integer kernel);
2. data-movement nodes (Reshape, MaxPool, ...) join when their input is already quantized;
3. every quantized tensor gets its parameters: inherited through data-movement nodes,
   [0, 1] for Softmax/Sigmoid, its calibrated range otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import onnx

from ptq_cli.errors import CalibrationError
from ptq_cli.model.graph import GraphIndex, attribute
from ptq_cli.quantization.placement.handlers import (FUSED_ACTIVATIONS, OpHandler, OutputRule, activation_inputs,
                                                 handler_for)
from ptq_cli.quantization.placement.patterns import Pattern
from ptq_cli.quantization.placement.transformer import (concat_span_reason, dynamic_matmul_reason, embedding_table,
                                                    float_patterns, glue_reason, runs_at_run_time)
from ptq_cli.quantization.arithmetic.scheme import QParams, compute_qparams, weight_range
from ptq_cli.quantization.plan import BiasPlan, QuantPlan, SkipReason, WeightPlan, Why, fit_bias_in_int32
from ptq_cli.recipe import ExcludedConvInput, PerChannel, QType, Recipe, Rounding, TensorSpec


def make_plan(model: onnx.ModelProto, recipe: Recipe, ranges: Mapping[str, tuple[float, float]]) -> QuantPlan:
    index = GraphIndex(model.graph)
    draft = _Draft(*float_patterns(model.graph, recipe))
    claimed = _claim_compute_nodes(model.graph, index, recipe, ranges, draft)
    passthrough = _claim_passthrough_nodes(model.graph, index, recipe, claimed, draft)
    _assign_activation_params(model.graph, index, recipe, ranges, claimed, passthrough, draft)
    _plan_weights(model.graph, index, recipe, draft)
    order = {n.name: i for i, n in enumerate(model.graph.node)}
    return QuantPlan(
        activations=draft.activations, weights=draft.weights, biases=draft.biases,
        quantized=tuple(sorted(draft.quantized, key=order.__getitem__)), fused=draft.fused,
        range_source=draft.range_source, skipped=tuple(sorted(draft.skipped, key=lambda s: order[s.node])),
        dequantized_float_convs=recipe.excluded_conv_input is ExcludedConvInput.DEQUANTIZED,
        dynamic=tuple(sorted(draft.dynamic, key=order.__getitem__)), weight_only=draft.weight_only,
        patterns=tuple(draft.patterns), floating=draft.floating)


@dataclass
class _Draft:
    """The plan while make_plan fills it, step by step; what leaves this module is a QuantPlan."""

    patterns: list[Pattern]
    floating: dict[str, str]
    activations: dict[str, QParams] = field(default_factory=dict)
    weights: dict[tuple[str, str], WeightPlan] = field(default_factory=dict)
    biases: dict[str, BiasPlan] = field(default_factory=dict)
    quantized: list[str] = field(default_factory=list)
    fused: dict[str, str] = field(default_factory=dict)
    range_source: dict[str, str] = field(default_factory=dict)
    skipped: list[SkipReason] = field(default_factory=list)
    dynamic: list[str] = field(default_factory=list)
    weight_only: dict[str, WeightPlan] = field(default_factory=dict)


def _skip_reason(node: onnx.NodeProto, handler: OpHandler | None, index: GraphIndex, recipe: Recipe,
                 floating: Mapping[str, str] = {}) -> tuple[Why, str] | None:
    if recipe.excludes(node.name, node.op_type):
        return Why.EXCLUDED, "excluded by --exclude"
    if node.name in floating:
        return Why.FLOAT_PATTERN, floating[node.name]
    if not any(index.is_float(name) for name in node.input if name):
        return Why.NOT_FLOAT, "no float input: integer or shape arithmetic"
    if handler is None:
        return Why.NO_KERNEL, f"onnxruntime has no integer kernel for {node.op_type}; it runs in float"
    if node.op_type in _NO_4BIT_FUSION and recipe.activations.dtype.bits == 4:
        return Why.NO_KERNEL, (f"onnxruntime fuses a quantized {node.op_type} into QLinear{node.op_type}, which "
                               "has no 4-bit activation kernel (it would refuse the model); it runs in float")
    refused = handler.refuse(node, index)
    return None if refused is None else (Why.UNSUPPORTED, refused)


# Ops whose Q/DQ onnxruntime (1.17-1.23) fuses into a QLinear kernel even with 4-bit activations,
# then refuses the model; measured: Conv. MatMul, Gemm, Add, Mul, Concat, pools... run.
_NO_4BIT_FUSION = frozenset({"Conv"})


def _claim_compute_nodes(graph, index, recipe, ranges, draft) -> set[str]:
    """Step 1: compute nodes claim their inputs and output. Returns the claimed tensor names."""
    claimed: set[str] = set()
    done: set[str] = set()  # nodes quantized so far, and the Relu/Clip folded into them
    placed = set(draft.floating)  # nodes placement itself keeps float (or quantizes at run time)
    for node in graph.node:
        handler = handler_for(node)
        if node.op_type in FUSED_ACTIVATIONS or (handler and handler.output is OutputRule.PASSTHROUGH):
            continue
        reason = _skip_reason(node, handler, index, recipe, draft.floating)
        if reason is None and node.name in recipe.run_time and runs_at_run_time(node, index, recipe):
            placed.add(node.name)  # its output is float, as a dynamic MatMul's placement chose
            draft.dynamic.append(node.name)
            continue
        if reason is None:
            reason, own = _placement_reason(node, index, recipe, ranges, done, placed)
            if own:
                placed.add(node.name)
            if reason is not None and reason[0] is Why.RUN_TIME:
                draft.dynamic.append(node.name)
                continue
        inputs = [node.input[i] for i in activation_inputs(node, handler)] if handler else []
        weight = node.input[handler.weight] if handler and handler.weight is not None and \
            handler.weight < len(node.input) and node.input[handler.weight] in index.initializers else None
        activations = [t for t in inputs if t != weight and t not in index.initializers]
        if reason is not None:
            draft.skipped.append(SkipReason(node.name, node.op_type, reason[1], reason[0]))
            continue
        out, fused, source = _output_and_fusion(node, handler, index, recipe, ranges, draft.floating)
        # The range that sets the output's parameters; a folded Relu/Clip's replaces the producer's.
        missing = [t for t in activations if t not in ranges]
        if handler.output is not OutputRule.UNIT and (source or out) not in ranges:
            missing.append(source or out)
        if missing:
            draft.skipped.append(SkipReason(node.name, node.op_type, f"no calibration range for {missing[0]!r}",
                                           Why.NO_RANGE))
            continue
        if fused is not None:
            draft.fused[fused.name] = node.name
            done.add(fused.name)
        if source is not None:
            draft.range_source[out] = source
        claimed.update(activations)
        claimed.add(out)
        draft.quantized.append(node.name)
        done.add(node.name)
    for node in graph.node:
        if node.op_type in FUSED_ACTIVATIONS and node.name not in draft.fused:
            reason = _skip_reason(node, None, index, recipe, draft.floating)
            if reason is None or reason[0] is Why.NO_KERNEL:
                reason = (Why.FOLLOWS_FLOAT,
                          f"{node.op_type} only folds into a quantized producer (Conv, Gemm, MatMul, Add, ...)")
            draft.skipped.append(SkipReason(node.name, node.op_type, reason[1], reason[0]))
    return claimed


def _placement_reason(node, index, recipe, ranges, done: set[str],
                      placed: set[str]) -> tuple[tuple[Why, str] | None, bool]:
    """Why placement (transformer.py) does not quantize `node` statically, given the decisions so
    far, and whether that makes it placement's own float code (which a MatMul it feeds follows to
    run time)."""
    if recipe.activations.dtype is QType.UINT8 and recipe.weights.dtype in (QType.INT8, QType.UINT8):
        reason = dynamic_matmul_reason(node, index, done, placed)
        if reason is not None:
            return (Why.RUN_TIME, reason), True
    reason = concat_span_reason(node, index, ranges)
    if reason is not None:
        return (Why.RANGE_SPAN, reason), True
    reason, own = glue_reason(node, index, done, placed)
    return (None if reason is None else (Why.FOLLOWS_FLOAT, reason)), own


def _output_and_fusion(node, handler, index, recipe, ranges, floating):
    """(the tensor quantized after `node`, the Relu/Clip folded into it, the tensor whose range
    it takes instead of its own). A lone Relu/Clip right after the node is folded; one reached
    through max-pool/reshapes (which commute with it) lends its range."""
    out = node.output[0]
    if not handler.fuses_relu:
        return out, None, None
    follower = index.single_consumer(out)
    if follower is not None and follower.op_type in FUSED_ACTIVATIONS and follower.name not in floating and \
            not recipe.excludes(follower.name, follower.op_type) and follower.output[0] in ranges:
        return follower.output[0], follower, None
    relu = _relu_after_data_movement(out, index, recipe)
    if relu is not None and relu.name not in floating and relu.output[0] in ranges:
        return out, None, relu.output[0]
    return out, None, None


_COMMUTE_WITH_RELU = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze")


def _relu_after_data_movement(tensor: str, index: GraphIndex, recipe: Recipe) -> onnx.NodeProto | None:
    """The Relu/Clip reached from `tensor` through single-consumer, order-preserving data movement."""
    node = index.single_consumer(tensor)
    steps = 0
    while node is not None and node.op_type in _COMMUTE_WITH_RELU and len(node.output) == 1 and steps < 8:
        node, steps = index.single_consumer(node.output[0]), steps + 1
    if steps and node is not None and node.op_type in FUSED_ACTIVATIONS and \
            not recipe.excludes(node.name, node.op_type):
        return node
    return None


def _claim_passthrough_nodes(graph, index, recipe, claimed, draft) -> set[str]:
    """Step 2: data-movement nodes whose input is quantized. Returns their quantized outputs."""
    outputs: set[str] = set()
    for node in graph.node:
        handler = handler_for(node)
        if handler is None or handler.output is not OutputRule.PASSTHROUGH:
            continue
        chosen = not recipe.excludes(node.name, node.op_type) and node.name not in draft.floating
        if chosen and _plan_weight_only(node, index, recipe, draft):
            continue
        reason = _skip_reason(node, handler, index, recipe, draft.floating)
        source = node.input[0]
        if reason is None and source not in claimed and source not in outputs:
            reason = (Why.FOLLOWS_FLOAT,
                      f"its input {source!r} is float here; data-movement ops only follow quantized data")
        if reason is not None:
            draft.skipped.append(SkipReason(node.name, node.op_type, reason[1], reason[0]))
            continue
        outputs.update(o for o in node.output if o)
        draft.quantized.append(node.name)
    return outputs


def _plan_weight_only(node, index, recipe, draft) -> bool:
    """An embedding table (Gather from a constant) stored as int8, one scale per column."""
    table = embedding_table(node, index)
    if table is None:
        return False
    spec = recipe.weights
    axis = table.ndim - 1 if isinstance(spec.granularity, PerChannel) else None
    lo, hi = weight_range(table, axis)
    draft.weight_only[node.name] = WeightPlan(node.input[0], _params(lo, hi, spec, axis))
    return True


def _assign_activation_params(graph, index, recipe, ranges, claimed, passthrough, draft) -> None:
    """Step 3: parameters for every quantized activation, in graph order."""
    spec = recipe.activations
    quantized = set(draft.quantized)
    unit = {n.output[0] for n in graph.node if n.name in quantized
            and handler_for(n) is not None and handler_for(n).output is OutputRule.UNIT}
    quantized_inputs = [i.name for i in graph.input if i.name in claimed]
    for name in quantized_inputs:
        draft.activations[name] = _activation_params(name, ranges, spec)
    for node in graph.node:
        for out in node.output:
            if out in passthrough:
                draft.activations[out] = draft.activations[node.input[0]]
            elif out in unit:
                draft.activations[out] = _params(0.0, 1.0, spec)
            elif out in claimed:
                draft.activations[out] = _activation_params(draft.range_source.get(out, out), ranges, spec)


def _activation_params(name: str, ranges, spec: TensorSpec) -> QParams:
    lo, hi = ranges[name]
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise CalibrationError(f"calibration range of {name!r} is not finite ({lo}, {hi}): "
                               "the data produced NaN/Inf there; check the inputs or exclude the node")
    return _params(lo, hi, spec)


def _params(lo, hi, spec: TensorSpec, axis: int | None = None) -> QParams:
    return compute_qparams(lo, hi, spec.dtype, symmetric=spec.symmetric, reduce_range=spec.reduce_range,
                           power_of_two=spec.power_of_two, axis=axis)


def replan_weights(model: onnx.ModelProto, recipe: Recipe, plan: QuantPlan, nodes) -> QuantPlan:
    """A copy of `plan` whose weights and biases of `nodes` are planned again on `model`, e.g.
    after bias correction gave them new biases (the rest of the plan does not depend on them),
    instead of planning the whole graph a second time."""
    index = GraphIndex(model.graph)
    again = set(nodes)
    weights, biases = dict(plan.weights), dict(plan.biases)
    for node in model.graph.node:
        if node.name in again:
            handler = handler_for(node)
            if handler is not None and handler.output is not OutputRule.PASSTHROUGH:
                _plan_node_weights(node, handler, index, recipe, plan.activations, weights, biases)
    return replace(plan, weights=weights, biases=biases)


def _plan_weights(graph, index, recipe, draft) -> None:
    """Weights (and activation inputs that are constants) of the quantized compute nodes."""
    quantized = set(draft.quantized)
    for node in graph.node:
        handler = handler_for(node)
        if node.name not in quantized or handler is None or handler.output is OutputRule.PASSTHROUGH:
            continue
        _plan_node_weights(node, handler, index, recipe, draft.activations, draft.weights, draft.biases)


def _plan_node_weights(node, handler, index, recipe, activations, weights, biases) -> None:
    """Plans the weights and the bias of one quantized node into `weights` and `biases`."""
    for i in sorted(set(activation_inputs(node, handler)) | ({handler.weight} - {None})):
        if i >= len(node.input) or node.input[i] not in index.initializers:
            continue
        value = index.constant(node.input[i])
        is_weight = i == handler.weight
        spec = recipe.weights if is_weight else recipe.activations
        axis = None
        if is_weight and isinstance(spec.granularity, PerChannel):
            axis = spec.granularity.axis if spec.granularity.axis is not None else handler.weight_axis(node, value.ndim)
        lo, hi = weight_range(value, axis, node.input[i], node.name)
        seed = recipe.seed if is_weight and recipe.rounding is Rounding.STOCHASTIC else None
        weights[(node.name, node.input[i])] = WeightPlan(node.input[i], _params(lo, hi, spec, axis), seed)
    _plan_bias(node, handler, index, activations, weights, biases)


def _plan_bias(node, handler, index, activations, weights, biases) -> None:
    if handler.bias is None or handler.bias >= len(node.input) or not node.input[handler.bias]:
        return
    bias, x, w = node.input[handler.bias], node.input[0], node.input[handler.weight]
    weight = weights.get((node.name, w))
    if bias not in index.initializers or weight is None or x not in activations:
        return
    if weight.params.per_channel and np.size(weight.params.scale) != index.constant(bias).size:
        return  # grouped ConvTranspose: its weight scales repeat per group, the bias stays float
    if node.op_type == "Gemm" and (attribute(node, "alpha", 1.0) != 1.0 or attribute(node, "beta", 1.0) != 1.0
                                   or index.constant(bias).ndim != 1):
        return  # onnxruntime's QGemm only takes a plain 1-D int32 bias
    weight = fit_bias_in_int32(weight, index.constant(bias), activations[x].scale)
    weights[(node.name, w)] = weight
    biases[node.name] = BiasPlan(bias, x, weight)
