"""The one emitter contract (quantization/emitters/base.py), held by all six emitters: a prepared
model and what to write in, an EmitResult out; the input untouched, the output valid and run by
onnxruntime close to the float model, and every node accounted for."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ptq_cli.model.prepare import prepare
from ptq_cli.quantization.emitters.base import EmitResult
from ptq_cli.quantization.emitters.codebook import emit_codebook
from ptq_cli.quantization.emitters.dynamic import emit_dynamic
from ptq_cli.quantization.emitters.qdq import emit_qdq
from ptq_cli.quantization.emitters.qoperator import emit_qoperator
from ptq_cli.quantization.emitters.subgraphs import emit_bodies
from ptq_cli.quantization.emitters.weight_only import emit_weight_only
from ptq_cli.quantization.placement.place import make_plan
from ptq_cli.quantization.plan import QuantPlan, SkipReason
from ptq_cli.quantization.static import quantize_model
from ptq_cli.recipe import Format, QType, Recipe, WeightCodebook, WeightOnly
from tests.conftest import make_model, minmax_ranges, ops, run, sqnr_db
from tests.quantize.test_control_flow import _if_samples, if_model


def _mlp(rng) -> onnx.ModelProto:
    """x[N,64] -> MatMul W1[64,64] -> Relu -> MatMul W2[64,32] -> y, and a Sin left float (no integer kernel)."""
    inits = [numpy_helper.from_array(rng.normal(0, 0.2, (64, 64)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.2, (64, 32)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
             helper.make_node("Sin", ["y"], ["p"], name="sin")]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                      [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 32]),
                       helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])], inits, opset=21)


def _plan(model, rng) -> QuantPlan:
    batches = [{"x": rng.normal(0, 1, (4, 64)).astype(np.float32)} for _ in range(4)]
    return make_plan(model, Recipe(), minmax_ranges(model, batches))


EMITTERS = {
    "qdq": lambda model, rng: emit_qdq(model, _plan(model, rng)),
    "qoperator": lambda model, rng: emit_qoperator(model, _plan(model, rng)),
    "dynamic": lambda model, rng: emit_dynamic(model, Recipe(dynamic=True)),
    "weight_only": lambda model, rng: emit_weight_only(model, Recipe(weight_only=WeightOnly(QType.INT8))),
    "codebook": lambda model, rng: emit_codebook(model, Recipe(weight_codebook=WeightCodebook(4))),
}


@pytest.mark.parametrize("kind", EMITTERS)
def test_every_emitter_keeps_the_contract(kind, rng):
    model = prepare(_mlp(rng))
    before = model.SerializeToString()
    result = EMITTERS[kind](model, rng)
    assert isinstance(result, EmitResult)
    assert model.SerializeToString() == before  # the prepared model is not touched
    onnx.checker.check_model(result.model, full_check=True)
    assert set(result.quantized) >= {"mm1", "mm2"}
    assert all(isinstance(s, SkipReason) for s in result.skipped)
    assert not set(result.quantized) & {s.node for s in result.skipped}  # a node is one or the other
    x = {"x": rng.normal(0, 1, (8, 64)).astype(np.float32)}
    assert sqnr_db(run(model, x)[1], run(result.model, x)[1]) > 20  # y: close to float in onnxruntime
    assert ops(result.model) != ops(model)


def test_bodies_are_emitted_with_the_main_graph_s_emitter(rng):
    model = prepare(if_model(), min_opset=13)
    before = model.SerializeToString()
    main = emit_dynamic(model, Recipe(dynamic=True))
    result = emit_bodies(main, lambda body: emit_dynamic(body, Recipe(dynamic=True)))
    assert model.SerializeToString() == before
    onnx.checker.check_model(result.model, full_check=True)
    assert set(result.quantized) == {"then_mm", "else_mm"}
    assert "if" not in {s.node for s in result.skipped}  # its bodies were quantized: not "float"
    for sample in _if_samples(model, rng):
        assert sqnr_db(run(model, sample)[0], run(result.model, sample)[0]) > 25


def test_the_plan_is_frozen_and_quantize_model_derives_a_new_one(rng):
    model = prepare(_mlp(rng))
    plan = _plan(model, rng)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.quantized = ()  # type: ignore[misc]
    assert isinstance(plan.quantized, tuple) and isinstance(plan.skipped, tuple)
    batches = [{"x": rng.normal(0, 1, (4, 64)).astype(np.float32)} for _ in range(4)]
    for fmt in Format:
        out, written = quantize_model(model, Recipe(format=fmt), minmax_ranges(model, batches), prepared=True)
        assert written.quantized == ("mm1", "mm2") and "sin" in {s.node for s in written.skipped}
        assert written.fused == {"relu": "mm1"}
        onnx.checker.check_model(out, full_check=True)
