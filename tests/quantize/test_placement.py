"""Transformer/sequence placement: each pattern on a tiny graph built here, found by structure,
kept float with its reason, the rest quantized (static, dynamic MatMul or weight-only), and
the result valid and close to FP32 in onnxruntime."""

import copy

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ptq_cli.model.prepare import prepare
from ptq_cli.quantization.api import quantize_model
from ptq_cli.quantization.placement.patterns import PatternKind, find_patterns
from ptq_cli.recipe import Recipe
from tests.conftest import make_model, minmax_ranges, ops, run, sqnr_db

D = 16


def _init(rng, name, shape, scale=0.3):
    return numpy_helper.from_array(rng.normal(0, scale, shape).astype(np.float32), name)


def _const(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _seq_model(rng, body, extra_inits=(), out="n", out_shape=("N", "S", D)):
    """x[N,S,D] -> MatMul(w_in) = h -> body(h) -> MatMul(w_out) -> y."""
    nodes = [helper.make_node("MatMul", ["x", "w_in"], ["h"], name="proj_in"), *body,
             helper.make_node("MatMul", [out, "w_out"], ["y"], name="proj_out")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "S", D])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))
    inits = [_init(rng, "w_in", (D, D)), _init(rng, "w_out", (D, D)), *extra_inits]
    return make_model(nodes, [x], [y], inits, opset=17)


def _quantize(model, rng, shape=(2, 5, D), scale=1.0):
    batches = [{"x": rng.normal(0, scale, shape).astype(np.float32)} for _ in range(6)]
    before = model.SerializeToString()
    ranges = minmax_ranges(prepare(model, min_opset=13), batches)
    quantized, plan = quantize_model(model, Recipe(), ranges)
    assert model.SerializeToString() == before  # the input is never mutated
    onnx.checker.check_model(quantized, full_check=True)
    feeds = batches[0]
    return quantized, plan, sqnr_db(run(model, feeds)[0], run(quantized, feeds)[0])


def _kinds(model):
    return [(p.kind, p.nodes) for p in find_patterns(prepare(model, min_opset=13).graph)]


def _reasons(plan):
    return {s.node: s.reason for s in plan.skipped}


def _written_layer_norm(x="h", out="n"):
    return [
        helper.make_node("ReduceMean", [x], ["mu"], name="mean", axes=[-1]),
        helper.make_node("Sub", [x, "mu"], ["d"], name="center"),
        helper.make_node("Pow", ["d", "two"], ["d2"], name="square"),
        helper.make_node("ReduceMean", ["d2"], ["var"], name="variance", axes=[-1]),
        helper.make_node("Add", ["var", "eps"], ["var_eps"], name="eps_add"),
        helper.make_node("Sqrt", ["var_eps"], ["std"], name="root"),
        helper.make_node("Div", ["d", "std"], ["normed"], name="divide"),
        helper.make_node("Mul", ["normed", "gamma"], ["scaled"], name="gamma_mul"),
        helper.make_node("Add", ["scaled", "beta"], [out], name="beta_add"),
    ]


def test_written_layer_norm_stays_float_and_the_matmul_after_it_is_dynamic(rng):
    model = _seq_model(rng, _written_layer_norm(), [_const("two", 2.0), _const("eps", 1e-5),
                                                    _init(rng, "gamma", (D,)), _init(rng, "beta", (D,))])
    norm = ("mean", "center", "square", "variance", "eps_add", "root", "divide", "gamma_mul", "beta_add")
    assert _kinds(model) == [(PatternKind.LAYER_NORM, norm)]
    quantized, plan, sqnr = _quantize(model, rng)
    reasons = _reasons(plan)
    assert all(reasons[n].startswith("normalization of 'h'") for n in norm)
    assert plan.quantized == ("proj_in",) and plan.dynamic == ("proj_out",)
    kinds = ops(quantized)
    assert kinds.count("DynamicQuantizeLinear") == 1 and kinds.count("MatMulInteger") == 1
    assert {"ReduceMean", "Sqrt", "Div", "Pow"} <= set(kinds)
    assert sqnr > 25, sqnr


def test_rms_norm_with_reciprocal_is_one_pattern(rng):
    body = [helper.make_node("Mul", ["h", "h"], ["sq"], name="square"),
            helper.make_node("ReduceMean", ["sq"], ["ms"], name="mean_square", axes=[-1]),
            helper.make_node("Add", ["ms", "eps"], ["ms_eps"], name="eps_add"),
            helper.make_node("Sqrt", ["ms_eps"], ["rms"], name="root"),
            helper.make_node("Reciprocal", ["rms"], ["inv"], name="inverse"),
            helper.make_node("Mul", ["h", "inv"], ["n"], name="scale")]
    model = _seq_model(rng, body, [_const("eps", 1e-6)])
    assert _kinds(model) == [(PatternKind.LAYER_NORM, ("square", "mean_square", "eps_add", "root", "inverse", "scale"))]
    _, plan, sqnr = _quantize(model, rng)
    assert plan.dynamic == ("proj_out",) and sqnr > 25


def _gelu_erf():
    return [helper.make_node("Div", ["h", "sqrt2"], ["s"], name="scale"),
            helper.make_node("Erf", ["s"], ["e"], name="erf"),
            helper.make_node("Add", ["e", "one"], ["e1"], name="plus_one"),
            helper.make_node("Mul", ["h", "e1"], ["he"], name="times_x"),
            helper.make_node("Mul", ["he", "half"], ["n"], name="half_mul")]


def _gelu_tanh():
    return [helper.make_node("Pow", ["h", "three"], ["h3"], name="cube"),
            helper.make_node("Mul", ["h3", "k"], ["kh3"], name="cubic_term"),
            helper.make_node("Add", ["h", "kh3"], ["inner"], name="inner_sum"),
            helper.make_node("Mul", ["inner", "c"], ["arg"], name="scale"),
            helper.make_node("Tanh", ["arg"], ["t"], name="tanh"),
            helper.make_node("Add", ["t", "one"], ["t1"], name="plus_one"),
            helper.make_node("Mul", ["h", "half"], ["hh"], name="half_x"),
            helper.make_node("Mul", ["hh", "t1"], ["n"], name="times_half_x")]


@pytest.mark.parametrize("body,consts,names", [
    (_gelu_erf(), {"sqrt2": np.sqrt(2), "one": 1.0, "half": 0.5},
     ("scale", "erf", "plus_one", "times_x", "half_mul")),
    (_gelu_tanh(), {"three": 3.0, "k": 0.044715, "c": np.sqrt(2 / np.pi), "one": 1.0, "half": 0.5},
     ("cube", "cubic_term", "inner_sum", "scale", "tanh", "plus_one", "half_x", "times_half_x")),
], ids=["erf", "tanh"])
def test_gelu_forms_stay_float(rng, body, consts, names):
    model = _seq_model(rng, body, [_const(k, v) for k, v in consts.items()])
    found = _kinds(model)
    assert [k for k, _ in found] == [PatternKind.GELU] and set(found[0][1]) == set(names)
    quantized, plan, sqnr = _quantize(model, rng)
    assert all(_reasons(plan)[n].startswith("GELU of 'h'") for n in names)
    assert plan.dynamic == ("proj_out",) and sqnr > 25, sqnr


def _conv_model(rng, body, extra, out):
    w1, w2 = _init(rng, "w1", (8, 3, 3, 3)), _init(rng, "w2", (4, 8, 1, 1))
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1]), *body,
             helper.make_node("Conv", [out, "w2"], ["y"], name="conv2")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])
    return make_model(nodes, [x], [y], [w1, w2, *extra], opset=13)


def test_written_hard_swish_stays_float_between_integer_convs(rng):
    body = [helper.make_node("Add", ["c", "three"], ["c3"], name="shift"),
            helper.make_node("Clip", ["c3", "zero", "six"], ["clipped"], name="clip"),
            helper.make_node("Mul", ["c", "clipped"], ["prod"], name="times_x"),
            helper.make_node("Div", ["prod", "six"], ["hs"], name="over_six")]
    model = _conv_model(rng, body, [_const("three", 3.0), _const("zero", 0.0), _const("six", 6.0)], "hs")
    found = _kinds(model)
    assert found == [(PatternKind.HARD_SWISH, ("shift", "clip", "times_x", "over_six"))]
    quantized, plan, sqnr = _quantize(model, rng, shape=(2, 3, 8, 8))
    assert plan.quantized == ("conv1", "conv2") and plan.dynamic == ()
    assert all(_reasons(plan)[n].startswith("hard-swish of 'c'") for n in ("shift", "clip", "times_x", "over_six"))
    assert ops(quantized).count("Clip") == 1 and sqnr > 25, sqnr


def test_hard_sigmoid_gate_and_hard_swish_op_forms(rng):
    body = [helper.make_node("HardSigmoid", ["c"], ["g"], name="gate"),
            helper.make_node("Mul", ["c", "g"], ["hs"], name="gated")]
    model = _conv_model(rng, body, [], "hs")
    assert _kinds(model) == [(PatternKind.HARD_SWISH, ("gate", "gated"))]
    _, plan, sqnr = _quantize(model, rng, shape=(2, 3, 8, 8))
    assert plan.quantized == ("conv1", "conv2") and sqnr > 25


def test_attention_score_path_stays_float_and_the_projections_are_dynamic(rng):
    """q, k, v projections -> Q·Kᵀ -> /√d -> + mask -> Softmax -> ·V -> output projection."""
    nodes = [helper.make_node("MatMul", ["x", f"w_{t}"], [t], name=f"proj_{t}") for t in "qkv"] + [
        helper.make_node("Transpose", ["k"], ["kt"], name="k_transpose", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="qk"),
        helper.make_node("Div", ["scores", "sqrt_d"], ["scaled"], name="scale"),
        helper.make_node("Add", ["scaled", "mask"], ["masked"], name="mask_add"),
        helper.make_node("Softmax", ["masked"], ["probs"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["ctx"], name="pv"),
        helper.make_node("MatMul", ["ctx", "w_o"], ["y"], name="proj_o")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, D])
    mask = helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 1, 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, D])
    inits = [_init(rng, f"w_{t}", (D, D)) for t in "qkvo"] + [_const("sqrt_d", 4.0)]
    model = make_model(nodes, [x, mask], [y], inits, opset=13)
    path = ("qk", "scale", "mask_add", "softmax", "pv")
    assert _kinds(model) == [(PatternKind.ATTENTION, path)]
    batches = [{"x": rng.normal(0, 1, (2, 5, D)).astype(np.float32),
                "mask": np.where(rng.random((2, 1, 5)) < 0.3, -10000.0, 0.0).astype(np.float32)} for _ in range(4)]
    quantized, plan = quantize_model(model, Recipe(), minmax_ranges(model, batches))
    onnx.checker.check_model(quantized, full_check=True)
    assert all(_reasons(plan)[n].startswith("attention scores of 'scores'") for n in path)
    assert plan.quantized == ("proj_q", "proj_k", "proj_v", "k_transpose") and plan.dynamic == ("proj_o",)
    assert "Softmax" in ops(quantized) and "QLinearSoftmax" not in ops(quantized)
    assert sqnr_db(run(model, batches[0])[0], run(quantized, batches[0])[0]) > 25


def test_residual_add_before_layer_normalization_stays_float(rng):
    body = [helper.make_node("Add", ["x", "h"], ["res"], name="residual"),
            helper.make_node("LayerNormalization", ["res", "gamma", "beta"], ["n"], name="norm", axis=-1)]
    model = _seq_model(rng, body, [_init(rng, "gamma", (D,)), _init(rng, "beta", (D,))])
    assert _kinds(model) == [(PatternKind.RESIDUAL, ("residual",)), (PatternKind.LAYER_NORM, ("norm",))]
    _, plan, sqnr = _quantize(model, rng)
    assert _reasons(plan)["residual"].startswith("residual sum 'res' feeds a normalization")
    assert plan.quantized == ("proj_in",) and plan.dynamic == ("proj_out",) and sqnr > 25


def test_embedding_table_is_stored_int8_and_only_gathered_rows_dequantized(rng):
    table = rng.normal(0, 0.5, (200, D)).astype(np.float32)
    table[:, 3] *= 20  # an outlier column: one scale per column keeps the others precise
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
             helper.make_node("LayerNormalization", ["e", "gamma", "beta"], ["y"], name="norm", axis=-1)]
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "S"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S", D])
    model = make_model(nodes, [ids], [y], [numpy_helper.from_array(table, "table"),
                                           _init(rng, "gamma", (D,)), _init(rng, "beta", (D,))], opset=17)
    quantized, plan = quantize_model(model, Recipe(), {})
    onnx.checker.check_model(quantized, full_check=True)
    assert list(plan.weight_only) == ["embed"]
    assert ops(quantized) == ["Gather", "DequantizeLinear", "LayerNormalization"]
    stored = {t.name: t for t in quantized.graph.initializer}
    assert stored[quantized.graph.node[0].input[0]].data_type == TensorProto.INT8
    assert quantized.ByteSize() < 0.35 * model.ByteSize()
    feeds = {"ids": rng.integers(0, 200, (2, 7)).astype(np.int64)}
    probe = copy.deepcopy(quantized)
    probe.graph.output.append(helper.make_tensor_value_info("e", TensorProto.FLOAT, None))
    rows = run(probe, feeds)[1]
    column_step = np.abs(table).max(axis=0) / 127
    assert np.all(np.abs(rows - table[feeds["ids"]]) <= column_step / 2 + 1e-7)


def test_cnn_without_patterns_is_placed_as_before(rng):
    from tests.conftest import image_batches, tiny_conv_relu

    model = tiny_conv_relu(rng)
    assert find_patterns(prepare(model).graph) == []
    _, plan = quantize_model(model, Recipe(), minmax_ranges(model, image_batches(rng)))
    assert plan.dynamic == () and plan.weight_only == {} and plan.skipped == ()


def test_constant_scale_and_shift_after_a_conv_fold_into_it(rng):
    """Conv -> Mul(a) -> Add(c) (a learnable affine block) becomes one Conv with W·a, b·a + c."""
    from ptq_cli.model.passes import FoldAffineIntoConv

    body = [helper.make_node("Mul", ["scale", "c"], ["scaled"], name="lab_scale"),
            helper.make_node("Add", ["scaled", "shift"], ["hs"], name="lab_shift")]
    model = _conv_model(rng, body, [_const("scale", [1.7]), _const("shift", [-0.4])], "hs")
    before = model.SerializeToString()
    prepared = prepare(model)
    assert model.SerializeToString() == before
    assert ops(prepared) == ["Conv", "Conv"] and prepared.graph.node[0].output[0] == "hs"
    x = {"x": rng.normal(0, 1, (2, 3, 8, 8)).astype(np.float32)}
    np.testing.assert_allclose(run(prepared, x)[0], run(model, x)[0], rtol=1e-4, atol=1e-4)
    # a Mul whose operand is not one value per output channel is left alone
    odd = _conv_model(rng, body, [_const("scale", np.ones((1, 1, 8, 1))), _const("shift", [0.1])], "hs")
    assert not FoldAffineIntoConv()(prepare(odd)).modified
    _, plan, sqnr = _quantize(model, rng, shape=(2, 3, 8, 8))
    assert plan.quantized == ("conv1", "conv2") and sqnr > 25


def test_glue_after_an_excluded_node_stays_float_but_moves_no_matmul_to_run_time(rng):
    """An Add reading only a node the user (or the fallback) left float is float too: quantized,
    it would only round. The MatMul after it stays static INT8: only placement's own float code
    sends a MatMul to run time."""
    body = [helper.make_node("Add", ["h", "bias"], ["n"], name="bias_add")]
    model = _seq_model(rng, body, [_init(rng, "bias", (D,))])
    before = model.SerializeToString()
    batches = [{"x": rng.normal(0, 1, (2, 5, D)).astype(np.float32)} for _ in range(4)]
    ranges = minmax_ranges(model, batches)
    quantized, plan = quantize_model(model, Recipe(exclude=("proj_in",)), ranges)
    assert model.SerializeToString() == before
    onnx.checker.check_model(quantized, full_check=True)
    assert plan.quantized == ("proj_out",) and plan.dynamic == ()
    assert _reasons(plan)["proj_in"] == "excluded by --exclude"
    assert _reasons(plan)["bias_add"].startswith("its inputs ('h') come from float nodes")
    # The Add reads float and writes float: no Q/DQ pair sits between proj_in and it.
    consumers = [n for n in quantized.graph.node if "h" in n.input]
    assert [n.op_type for n in consumers] == ["Add"]
    assert sqnr_db(run(model, batches[0])[0], run(quantized, batches[0])[0]) > 25


def test_a_class_token_beside_patch_embeddings_keeps_its_concat_float(rng):
    """A ViT prepends a class token (~0.02) to patch embeddings (~1): one Concat scale would round
    the token to a level or two, and LayerNorm then blows that error up over its whole row."""
    body = [helper.make_node("Concat", ["cls", "h"], ["tokens"], name="prepend_cls", axis=1),
            helper.make_node("Add", ["tokens", "pos"], ["embedded"], name="add_pos"),
            helper.make_node("LayerNormalization", ["embedded", "ln_scale", "ln_bias"], ["n"], name="ln",
                             axis=-1)]
    inits = [_init(rng, "cls", (2, 1, D), 0.02), _init(rng, "pos", (1, 6, D), 0.02),
             _const("ln_scale", np.ones(D)), _const("ln_bias", np.zeros(D))]
    model = _seq_model(rng, body, inits, out_shape=(2, 6, D))
    quantized, plan, _ = _quantize(model, rng, shape=(2, 5, D))
    reasons = _reasons(plan)
    assert reasons["prepend_cls"].startswith("its input 'cls' spans 1/")
    assert "come from float nodes" in reasons["add_pos"]
    feeds = {"x": rng.normal(0, 1.0, (2, 5, D)).astype(np.float32)}
    cls_row = (run(model, feeds)[0][:, 0], run(quantized, feeds)[0][:, 0])
    assert sqnr_db(*cls_row) > 25.0


def test_a_concat_of_alike_ranges_is_still_quantized(rng):
    body = [helper.make_node("Concat", ["h", "h2"], ["n"], name="join", axis=1),
            helper.make_node("Mul", ["h", "two"], ["h2"], name="double")]
    body = body[::-1]
    model = _seq_model(rng, body, [_const("two", 2.0)], out_shape=("N", 10, D))
    _, plan, sqnr = _quantize(model, rng)
    assert "join" in plan.quantized and sqnr > 25.0
