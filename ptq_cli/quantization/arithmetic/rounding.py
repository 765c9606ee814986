"""Choose a QuantPlan's integer weights: GPTQ rounding, and the pair limit of the portable target
(pairs.py). The integers are chosen once, here, and every emitter (QDQ, QOperator) and bias
correction then reads them through WeightPlan.integers.

A weight is seen as rows × inputs, the layout GPTQ works in (calibration/gram.py collects the
matching Gram matrices):
    MatMul / Gemm  W [K, N] (Gemm transB: [N, K])  -> [N, K]
    Conv           W [Co, C/g, kh, kw]             -> per group g: [Co/g, C/g·kh·kw]
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import onnx

from ptq_cli.calibration.gram import Gram, gram_key
from ptq_cli.model.graph import GraphIndex, attribute
from ptq_cli.quantization.arithmetic.blas import single_threaded_blas
from ptq_cli.quantization.arithmetic.gptq import gptq_round
from ptq_cli.quantization.arithmetic.pairs import (PAIR_LIMIT, POWER_OF_TWO_STEPS, SCALE_STEPS, Pairing, bound_pairs,
                                              pairing_for, portable_weight, saturates, unrounded, worst_pair_sums)
from ptq_cli.quantization.arithmetic.stochastic import weight_rng
from ptq_cli.quantization.plan import QuantPlan, WeightPlan, fit_bias_in_int32
from ptq_cli.quantization.arithmetic.scheme import QParams, integer_range
from ptq_cli.recipe import Recipe

log = logging.getLogger(__name__)

GPTQ_OPS = ("MatMul", "Gemm", "Conv")


def gptq_plan(model: onnx.ModelProto, plan: QuantPlan, grams: Mapping[str, Gram],
              recipe: Recipe) -> tuple[QuantPlan, list[str]]:
    """`plan` with GPTQ-rounded integers for every weight whose Gram matrix is known (within the
    pair limit when the recipe bounds pairs); returns it and the nodes left to round to nearest
    (no Gram matrix for their input)."""
    with single_threaded_blas():
        return _gptq_plan(model, plan, grams, recipe.weights, recipe.bounds_pairs)


def node_pairing(node: onnx.NodeProto, shape: tuple[int, ...]) -> Pairing | None:
    """How onnxruntime's u8·s8 kernel for `node` pairs the entries of its weight (pairs.py)."""
    return pairing_for(node.op_type, shape, trans_b=bool(attribute(node, "transB", 0)),
                       group=int(attribute(node, "group", 1)))


def bound_plan_pairs(model: onnx.ModelProto, plan: QuantPlan, recipe: Recipe) -> QuantPlan:
    """`plan` whose int8 weights of integer matrix kernels keep every pair sum within 16 bits:
    weights rounded here (to nearest, or stochastically) get, per scale, the step that costs
    least once bounded (pairs.portable_weight); integers chosen beforehand (GPTQ, or an earlier
    pass of this function) are bounded as they are. Weights already within the limit are left
    alone, so that bounding twice changes nothing."""
    if not recipe.bounds_pairs:
        return plan
    index = GraphIndex(model.graph)
    nodes = {n.name: n for n in model.graph.node}
    weights = dict(plan.weights)
    for (node_name, tensor), weight in plan.weights.items():
        node = nodes.get(node_name)
        if node is None or node.op_type not in PAIRED_OPS or len(node.input) < 2 or node.input[1] != tensor:
            continue
        value = index.constant(tensor)
        pairing = node_pairing(node, value.shape)
        if pairing is None:
            continue
        q = weight.integers(value)
        if not saturates(worst_pair_sums(q, pairing)):
            continue
        weights[(node_name, tensor)] = _bounded(weight, value, q, pairing, recipe.weights.power_of_two)
    return _with_weights(plan, weights)


def _bounded(weight: WeightPlan, value: np.ndarray, q: np.ndarray, pairing: Pairing,
             power_of_two: bool) -> WeightPlan:
    if weight.rounded is not None:  # integers chosen before (GPTQ, which bounds its own pairs)
        return replace(weight, rounded=bound_pairs(q, unrounded(value, weight.params), pairing))
    rng = None if weight.stochastic_seed is None else weight_rng(weight.stochastic_seed, weight.tensor)
    params, integers = portable_weight(value, weight.params, pairing, rng,
                                       POWER_OF_TWO_STEPS if power_of_two else SCALE_STEPS)
    return replace(weight, params=params, rounded=integers)


# Ops whose quantized weight feeds a u8·s8 matrix kernel (depthwise Convs pair nothing: pairing_for).
PAIRED_OPS = ("MatMul", "Gemm", "Conv")


def _gptq_plan(model, plan, grams, spec, bounds_pairs: bool) -> tuple[QuantPlan, list[str]]:
    index = GraphIndex(model.graph)
    nodes = {n.name: n for n in model.graph.node}
    qmin, qmax = integer_range(spec.dtype, symmetric=spec.symmetric, reduce_range=spec.reduce_range)
    weights = dict(plan.weights)
    missing = []
    for (node_name, tensor), weight in plan.weights.items():
        node = nodes[node_name]
        if node.op_type not in GPTQ_OPS or len(node.input) < 2 or node.input[1] != tensor:
            continue
        gram = grams.get(gram_key(node, index) or "")
        if gram is None or gram.total is None:
            missing.append(node_name)
            continue
        w = index.constant(tensor)
        layout = _Rows(node, w.shape, gram.total.shape[0])
        # Per tensor only, where one channel's outlier sets every channel's step (MobileNetV1-0.25
        # with --equalize: 57.0 % with the search, 56.6 without); per channel GPTQ alone reaches FP32.
        if spec.symmetric and not weight.params.per_channel:
            weight = _fitted(replace(weight, params=searched_scale(layout, w, weight.params, gram.total, qmin, qmax)),
                             node, plan, index)
        pairing = node_pairing(node, w.shape) if bounds_pairs else None
        partner = None if pairing is None or len(pairing.partner) != gram.total.shape[-1] \
            else pairing.partner  # else bounded after, by bound_plan_pairs
        rounded = gptq_weight(layout, w, weight.params, gram.total, qmin, qmax, partner)
        weights[(node_name, tensor)] = replace(weight, rounded=rounded.astype(weight.params.qtype.numpy_type))
    if missing:
        log.info("GPTQ: no Gram matrix for %d nodes, rounded to nearest: %s", len(missing), missing[:5])
    return _with_weights(plan, weights), missing


class _Rows:
    """A weight seen as [rows, inputs], with the rows of each group together."""

    def __init__(self, node: onnx.NodeProto, shape: tuple[int, ...], groups: int) -> None:
        self.shape, self.groups = tuple(shape), groups
        self.transposed = node.op_type != "Conv" and not (node.op_type == "Gemm" and attribute(node, "transB", 0))

    def view(self, a: np.ndarray) -> np.ndarray:
        a = np.broadcast_to(a, self.shape)
        return a.T if self.transposed else a.reshape(self.shape[0], -1)

    def back(self, a: np.ndarray) -> np.ndarray:
        return a.T if self.transposed else a.reshape(self.shape)

    def grouped(self, a: np.ndarray) -> np.ndarray:
        """[groups, rows per group, inputs]."""
        view = self.view(a)
        return view.reshape(self.groups, view.shape[0] // self.groups, view.shape[1])


def gptq_weight(layout: _Rows, w: np.ndarray, qp: QParams, h: np.ndarray, qmin: int, qmax: int,
                partner: np.ndarray | None = None) -> np.ndarray:
    """The GPTQ integers of one weight, in the weight's own layout (pairs within PAIR_LIMIT
    where `partner` says which inputs a kernel adds in one 16-bit lane; see pairs.py)."""
    scale, zero = _along(qp.scale, w.ndim, qp.axis), _along(qp.zero_point, w.ndim, qp.axis)
    q = gptq_round(layout.grouped(w), h, layout.grouped(scale), layout.grouped(zero), qmin, qmax,
                   partner=partner, pair_limit=PAIR_LIMIT)
    return layout.back(q.reshape(-1, q.shape[-1]))


SCALE_GRID = np.linspace(0.5, 1.0, 26)


def searched_scale(layout: _Rows, w: np.ndarray, qp: QParams, h: np.ndarray, qmin: int, qmax: int) -> QParams:
    """The per-tensor symmetric scale shrunk by the factor of SCALE_GRID that minimises the
    output error of nearest rounding, Σ δ·H·δᵀ: clipping a few outlying weights buys resolution
    for all the others, and the output error, not the weight error, says when that pays."""
    scale, zero = _along(qp.scale, w.ndim, qp.axis), _along(qp.zero_point, w.ndim, qp.axis)
    wg, sg, zg = layout.grouped(w.astype(np.float64)), layout.grouped(scale), layout.grouped(zero)
    errors = []
    for factor in SCALE_GRID:
        q = np.clip(np.rint(wg / (sg * factor)) + zg, qmin, qmax)
        delta = (q - zg) * (sg * factor) - wg
        errors.append(float(((delta @ h) * delta).sum()))
    best = SCALE_GRID[int(np.argmin(errors))]
    return replace(qp, scale=(qp.scale * best).astype(np.float32))


def _fitted(weight: WeightPlan, node: onnx.NodeProto, plan: QuantPlan, index: GraphIndex) -> WeightPlan:
    """The weight with its scale widened again where its node's int32 bias would not fit."""
    bias = plan.biases.get(node.name)
    if bias is None:
        return weight
    return fit_bias_in_int32(weight, index.constant(bias.tensor), plan.activations[bias.input_tensor].scale)


def carry_rounding(before: QuantPlan, after: QuantPlan, model: onnx.ModelProto) -> QuantPlan:
    """`after` (re-planned after bias correction) keeping `before`'s chosen scales and integers
    wherever the corrected bias still fits them in int32."""
    index = GraphIndex(model.graph)
    nodes = {n.name: n for n in model.graph.node}
    weights = dict(after.weights)
    for key, weight in after.weights.items():
        old = before.weights.get(key)
        if old is not None and old.rounded is not None and \
                _fitted(old, nodes[key[0]], after, index).params.same_as(old.params):
            weights[key] = old
    return _with_weights(after, weights)


def _with_weights(plan: QuantPlan, weights: dict[tuple[str, str], WeightPlan]) -> QuantPlan:
    biases = {node: replace(b, weight=weights.get((node, b.weight.tensor), b.weight)) for node, b in plan.biases.items()}
    return replace(plan, weights=weights, biases=biases)


def _along(values: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    values = np.asarray(values, np.float64)
    if values.ndim == 0 or axis is None:
        return values
    shape = [1] * ndim
    shape[axis] = -1
    return values.reshape(shape)
