"""Models whose inputs share no batch axis (audio [1, 512] beside a recurrent state [2, 1, 128]):
a sample is one feed, given as is; quantization and labels work on such samples."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ptq_cli
from ptq_cli.data import effective_batch_size, iter_batches, open_dataset
from ptq_cli.data.checks import shares_batch_axis
from ptq_cli.errors import DataError
from ptq_cli.model.io import input_specs
from tests.conftest import run


def stateful_model(audio=(1, 64), state=(2, 1, 16)) -> onnx.ModelProto:
    """prob, new_state = f(audio, state): a one-step recurrent cell (MatMul, Add, Tanh, MatMul)."""
    rng = np.random.default_rng(3)
    hidden = state[-1]
    inits = [numpy_helper.from_array((rng.standard_normal((audio[-1], hidden)) * 0.2).astype(np.float32), "w_in"),
             numpy_helper.from_array((rng.standard_normal((hidden, hidden)) * 0.3).astype(np.float32), "w_rec"),
             numpy_helper.from_array((rng.standard_normal((hidden, 1)) * 0.3).astype(np.float32), "w_out")]
    nodes = [helper.make_node("MatMul", ["audio", "w_in"], ["h"]),
             helper.make_node("MatMul", ["state", "w_rec"], ["hs"]),
             helper.make_node("Add", ["hs", "h"], ["pre"]),
             helper.make_node("Tanh", ["pre"], ["new_state"]),
             helper.make_node("MatMul", ["new_state", "w_out"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], ["prob"])]
    graph = helper.make_graph(
        nodes, "vad", [helper.make_tensor_value_info("audio", TensorProto.FLOAT, list(audio)),
                       helper.make_tensor_value_info("state", TensorProto.FLOAT, list(state))],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, list(state[:-1]) + [1]),
         helper.make_tensor_value_info("new_state", TensorProto.FLOAT, list(state))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def write_samples(folder, count, rng, audio=(1, 64), state=(2, 1, 16)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        np.savez(folder / f"{i:03d}.npz", audio=rng.standard_normal(audio).astype(np.float32),
                 state=(rng.standard_normal(state) * 0.5).astype(np.float32))
    return folder


def test_which_inputs_share_a_batch_axis():
    assert shares_batch_axis(input_specs(stateful_model((None, 64), (None, 1, 16))))
    assert shares_batch_axis(input_specs(stateful_model((1, 64), (None, 1, 16))))  # 1 beside free: fine
    assert not shares_batch_axis(input_specs(stateful_model()))  # fixed 1 and 2
    assert not shares_batch_axis(input_specs(stateful_model((None, 64), (2, None, 16))))  # state axis 0 is 2
    assert effective_batch_size(input_specs(stateful_model()), 8) == 1
    assert not shares_batch_axis(input_specs(stateful_model(("N", 64), ("S", 1, 16))))  # named apart
    assert shares_batch_axis(input_specs(stateful_model(("N", 64), ("N", 1, 16))))


@pytest.mark.parametrize("shapes", [((1, 64), (2, 1, 16)), ((None, 64), (2, None, 16))])
def test_each_sample_is_fed_as_given(tmp_path, rng, shapes):
    model = stateful_model(*shapes)
    specs = input_specs(model)
    folder = write_samples(tmp_path / "d", 3, rng)
    labels = tmp_path / "labels.txt"
    labels.write_text("0\n1\n1\n")
    ds = open_dataset(folder, specs, labels=labels)
    assert [s.rows for s in ds] == [1, 1, 1]
    batches = list(iter_batches(ds, specs, batch_size=4))
    assert [b.size for b in batches] == [1, 1, 1]
    assert [b.labels for b in batches] == [(0,), (1,), (1,)]
    with np.load(folder / "001.npz") as sample:
        for name in ("audio", "state"):
            np.testing.assert_array_equal(batches[1].feeds[name], sample[name])
    assert run(model, batches[0].feeds)[1].shape == (2, 1, 16)


def test_a_fixed_leading_dim_is_checked_when_samples_are_whole(tmp_path, rng):
    folder = write_samples(tmp_path / "d", 1, rng, state=(3, 1, 16))
    with pytest.raises(DataError, match=r"input 'state' expects shape \[2,1,16\], got \(3,1,16\)"):
        list(open_dataset(folder, input_specs(stateful_model())))


def test_stateful_model_quantizes(tmp_path, rng):
    model = stateful_model()
    before = copy.deepcopy(model)
    folder = write_samples(tmp_path / "d", 8, rng)
    result = ptq_cli.quantize(model, tmp_path / "q.onnx", data=folder, progress=False, batch_size=4)
    assert model == before
    onnx.checker.check_model(result.model, full_check=True)
    assert len(result.quantized) >= 3  # the three MatMuls at least
    ops = [n.op_type for n in result.model.graph.node]
    assert ops.count("QuantizeLinear") >= 2 and ops.count("DequantizeLinear") >= 4
    with np.load(folder / "005.npz") as sample:
        feeds = {k: sample[k] for k in ("audio", "state")}
    want, got = run(model, feeds), run(result.model, feeds)
    for w, g in zip(want, got):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, atol=0.05 * float(np.abs(w).max()))


def test_a_scalar_input_given_as_a_one_element_array_says_how_to_save_it(tmp_path):
    """onnxruntime refuses a [1] array for a scalar (the sample rate of a voice-activity
    detector); the error says to save a 0-d array, and a 0-d array is accepted."""
    nodes = [helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["audio", "srf"], ["y"])]
    graph = helper.make_graph(nodes, "sr", [helper.make_tensor_value_info("audio", TensorProto.FLOAT, [1, 8]),
                                            helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    audio = np.ones((1, 8), np.float32)
    bad, good = tmp_path / "bad", tmp_path / "good"
    bad.mkdir(), good.mkdir()
    np.savez(bad / "0.npz", audio=audio, sr=np.array([16000], np.int64))
    np.savez(good / "0.npz", audio=audio, sr=np.array(16000, np.int64))
    with pytest.raises(DataError, match=r"input 'sr' expects shape \[\] \(a scalar: save it as a 0-d array, "
                                        r"np\.array\(value\)\), got \(1\)"):
        list(open_dataset(bad, input_specs(model)))
    feeds = next(iter_batches(open_dataset(good, input_specs(model)), batch_size=1)).feeds
    assert feeds["sr"].shape == () and run(model, feeds)[0][0, 0] == 16000.0
