"""Bias correction against a brute-force expectation, and its effect through onnxruntime."""

import copy

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ptq_cli.model.prepare import prepare
from ptq_cli.quantization.api import quantize_model
from ptq_cli.quantization.arithmetic.bias_correction import correct_biases
from ptq_cli.quantization.placement.place import make_plan
from ptq_cli.quantization.arithmetic.scheme import dequantize, quantize
from ptq_cli.recipe import PerTensor, Recipe, TensorSpec, QType
from tests.conftest import make_model, minmax_ranges, run


def _depthwise_then_gemm(rng):
    c = 6
    w = numpy_helper.from_array(rng.normal(0, 1, (c, 1, 3, 3)).astype(np.float32), "w")
    wf = numpy_helper.from_array(rng.normal(0, 1, (4, c * 4 * 4)).astype(np.float32), "wf")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="dw", group=c),  # no bias: one is added
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "wf"], ["y"], name="fc", transB=1)]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, 6, 6])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [w, wf])


def _with_output(model, name):
    probe = copy.deepcopy(model)
    probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return probe


def _batches(rng, n=6):
    # Inputs with a large positive mean, so rounding errors of the weights shift the outputs.
    return [{"x": rng.uniform(0.5, 3.0, (4, 6, 6, 6)).astype(np.float32)} for _ in range(n)]


def test_corrected_bias_cancels_the_mean_output_shift(rng):
    model = _depthwise_then_gemm(rng)
    recipe = Recipe(weights=TensorSpec(QType.INT8, True, PerTensor()))
    prepared = prepare(model)
    batches = _batches(rng)
    x = np.concatenate([b["x"] for b in batches])
    plan = make_plan(prepared, recipe, minmax_ranges(prepared, batches))
    corrected, changed = correct_biases(prepared, plan, {"x": x.mean(axis=(0, 2, 3))})
    assert changed == ["dw"]
    conv = next(n for n in corrected.graph.node if n.name == "dw")
    bias = numpy_helper.to_array(next(t for t in corrected.graph.initializer if t.name == conv.input[2]))
    # Brute force: the mean over the data of conv(x, W_q) - conv(x, W), per output channel.
    w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w"))
    qp = plan.weights[("dw", "w")].params
    err = dequantize(quantize(w, qp), qp) - w
    windows = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))  # N,C,4,4,3,3
    shift = np.einsum("nchwij,cij->c", windows, err[:, 0]) / (x.shape[0] * 16)
    # E[x] per channel is taken over all pixels, the windows of a valid conv miss the border: a few %.
    np.testing.assert_allclose(bias, -shift, rtol=0.05, atol=1e-4)
    assert np.all(np.sign(bias) == -np.sign(shift))


def test_bias_correction_reduces_output_error_in_onnxruntime(rng):
    model = _depthwise_then_gemm(rng)
    recipe = Recipe(weights=TensorSpec(QType.INT8, True, PerTensor()))
    batches = _batches(rng)
    ranges = minmax_ranges(prepare(model), batches)
    x = np.concatenate([b["x"] for b in batches])
    flat = run(_with_output(model, "f"), {"x": x})[1]
    means = {"x": x.mean(axis=(0, 2, 3)), "f": flat.mean(axis=0)}  # what the collector records
    plain, _ = quantize_model(model, recipe.with_(bias_correction=False), ranges, means)
    corrected, _ = quantize_model(model, recipe, ranges, means)
    test = {"x": rng.uniform(0.5, 3.0, (64, 6, 6, 6)).astype(np.float32)}

    def mean_shift(candidate, tensor, axes):
        ref = run(_with_output(model, tensor), test)[-1]
        return np.abs((run(_with_output(candidate, tensor), test)[-1] - ref).mean(axis=axes)).mean()

    # After the corrected conv the systematic error is all but gone ...
    assert mean_shift(corrected, "r", (0, 2, 3)) < 0.1 * mean_shift(plain, "r", (0, 2, 3))
    # ... and at the output what is left is mostly the activations' rounding.
    assert mean_shift(corrected, "y", 0) < 0.8 * mean_shift(plain, "y", 0)


def test_channel_means_stream_and_merge_exactly(rng):
    from ptq_cli.calibration.observers import ChannelMean

    parts = [rng.normal(i, 1, (2, 5, 3, 3)).astype(np.float32) for i in range(4)]
    whole, left, right = ChannelMean(), ChannelMean(), ChannelMean()
    for k, part in enumerate(parts):
        whole.update(part)
        (left if k % 2 else right).update(part)
    left.merge(right)
    np.testing.assert_allclose(whole.mean, np.concatenate(parts).mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(left.mean, whole.mean, rtol=1e-12)
    assert ChannelMean.from_dict(whole.to_dict()).count == whole.count


def test_replanning_only_the_corrected_nodes_equals_planning_again(rng):
    from ptq_cli.quantization.placement.place import replan_weights

    model = prepare(_depthwise_then_gemm(rng))
    batches = _batches(rng)
    ranges = minmax_ranges(model, batches)
    recipe = Recipe()
    plan = make_plan(model, recipe, ranges)
    means = {n.input[0]: rng.uniform(0, 2, 6 if n.op_type == "Conv" else 96).astype(np.float32)
             for n in model.graph.node if n.op_type in ("Conv", "Gemm")}
    corrected_model, corrected = correct_biases(model, plan, means)
    assert corrected
    full = make_plan(corrected_model, recipe, ranges)
    again = replan_weights(corrected_model, recipe, plan, corrected)
    assert again.biases.keys() == full.biases.keys() and again.weights.keys() == full.weights.keys()
    assert all((again.biases[k].tensor, again.biases[k].input_tensor) == (full.biases[k].tensor, full.biases[k].input_tensor)
               and again.biases[k].weight.params.same_as(full.biases[k].weight.params) for k in full.biases)
    assert all(again.weights[k].params.same_as(full.weights[k].params) for k in full.weights)
    assert again.activations.keys() == full.activations.keys() and again.quantized == full.quantized
