"""Sequence agreement of [N, T, C] step scores: greedy CTC decoding, the blank found from the data."""

import json

import numpy as np
import onnx
import onnxruntime as ort
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from ptq_cli.cli import main
from ptq_cli.drift.kinds import OutputKind
from ptq_cli.drift.outputs import OutputState
from ptq_cli.drift.sequences import SequenceAccumulator, greedy_decode
from ptq_cli.drift.thresholds import Thresholds, evaluate
from tests.conftest import save_samples


def one_hot(classes_per_step, classes=4):
    out = np.full((len(classes_per_step), classes), 0.01, np.float32)
    out[np.arange(len(classes_per_step)), classes_per_step] = 0.97
    return out


def test_greedy_decode_merges_repeats_then_drops_the_blank():
    assert greedy_decode(np.array([0, 2, 2, 0, 2, 3, 3, 0]), blank=0).tolist() == [2, 2, 3]
    assert greedy_decode(np.array([], np.int64), blank=0).tolist() == []


def test_a_moved_blank_is_the_same_sequence_an_inserted_class_is_not():
    ref = np.stack([one_hot([0, 1, 1, 0, 2, 0]), one_hot([0, 2, 0, 0, 3, 0]), one_hot([1, 0, 0, 2, 0, 0])])
    cand = ref.copy()
    cand[0] = one_hot([0, 0, 1, 0, 2, 2])   # two steps flip, yet it still reads [1, 2]
    cand[1, 2] = one_hot([3])[0]            # one step flips: [2, 3] becomes [2, 3, 3]
    state = OutputState("steps", "steps", OutputKind.STEP_SCORES)
    state.update(ref, cand, 3)
    report = state.report()
    assert report.top1_agreement == 15 / 18
    assert report.sequence_agreement == 2 / 3
    accumulator = SequenceAccumulator()
    accumulator.update(ref, cand)
    assert accumulator.blank == 0           # the class the reference chooses most often


def test_non_finite_candidate_steps_never_decode_as_the_reference():
    ref = np.stack([one_hot([0, 1, 0])] * 2)
    cand = ref.copy()
    cand[1, 1, 2] = np.nan
    state = OutputState("steps", "steps", OutputKind.STEP_SCORES)
    state.update(ref, cand, 2)
    assert state.report().sequence_agreement == 0.5
    same = OutputState("steps", "steps", OutputKind.STEP_SCORES)  # a model with NaN agrees with itself
    same.update(cand, cand.copy(), 2)
    assert same.report().sequence_agreement == 1.0


def test_a_time_major_output_is_not_decoded_per_row():
    ref = np.stack([one_hot([0, 1, 0, 2])]).transpose(1, 0, 2)   # [T=4, N=1, C]
    state = OutputState("steps", "steps", OutputKind.STEP_SCORES)
    state.update(ref, ref.copy(), 1)
    assert state.report().sequence_agreement is None


def test_threshold_holds_step_outputs_only_and_names_the_worst():
    ref = np.stack([one_hot([0, 1, 0, 2])] * 20)
    cand = ref.copy()
    cand[:3, 2] = one_hot([3])[0]           # 3 of 20 sequences read differently, 95 % of steps agree
    state = OutputState("steps", "steps", OutputKind.STEP_SCORES)
    state.update(ref, cand, 20)
    report = state.report()
    assert report.top1_agreement == 77 / 80 and report.sequence_agreement == 17 / 20
    (result,) = evaluate(Thresholds(min_sequence_agreement=0.9), (report,))
    assert not result.passed and result.value == 0.85 and "'steps'" in result.detail
    (result,) = evaluate(Thresholds(min_sequence_agreement=0.8), (report,))
    assert result.passed
    scores = OutputState("scores", "scores", OutputKind.SCORES)
    scores.update(np.eye(4, dtype=np.float32), np.eye(4, dtype=np.float32), 4)
    assert scores.report().sequence_agreement is None
    # A default budget leaves the limit out where no output can be decoded; an explicit one fails.
    assert evaluate(Thresholds(min_sequence_agreement=0.9), (scores.report(),), where_measurable=True) == ()
    (missing,) = evaluate(Thresholds(min_sequence_agreement=0.9), (scores.report(),))
    assert not missing.passed and "no step-scores output" in missing.detail


def ctc_model(weight: np.ndarray) -> onnx.ModelProto:
    """x[N, T, 3] -> MatMul -> Softmax over the classes: a CTC head with 4 classes (0 = blank)."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["steps"], axis=-1)],
        "ctc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", 3])],
        [helper.make_tensor_value_info("steps", TensorProto.FLOAT, ["N", "T", 4])],
        [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_compare_gates_on_sequences_decoded_as_the_reference(tmp_path):
    rng = np.random.default_rng(0)
    weight = np.array([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, 1.9]], np.float32)
    reference = ctc_model(weight)
    bent = weight.copy()
    bent[2, 3] = 2.1                        # class 3 now wins the steps where class 2 did, barely
    onnx.save(reference, tmp_path / "ref.onnx")
    onnx.save(ctc_model(bent), tmp_path / "cand.onnx")
    before = (tmp_path / "ref.onnx").read_bytes()
    feeds = []
    for i in range(24):
        steps = rng.choice(3, size=10, p=[0.6, 0.3, 0.1] if i % 4 else [0.6, 0.2, 0.2])
        feeds.append(np.eye(3, dtype=np.float32)[steps][None] + rng.normal(0, 0.01, (1, 10, 3)).astype(np.float32))
    data = save_samples(tmp_path / "data", feeds)
    ref_session = ort.InferenceSession(str(tmp_path / "ref.onnx"), providers=["CPUExecutionProvider"])
    cand_session = ort.InferenceSession(str(tmp_path / "cand.onnx"), providers=["CPUExecutionProvider"])
    same = [np.array_equal(greedy_decode(ref_session.run(None, {"x": x})[0][0].argmax(-1), 0),
                           greedy_decode(cand_session.run(None, {"x": x})[0][0].argmax(-1), 0)) for x in feeds]
    expected = float(np.mean(same))
    assert 0.0 < expected < 0.9             # the data has lines with and without class 2

    result = CliRunner().invoke(main, ["compare", str(tmp_path / "ref.onnx"), str(tmp_path / "cand.onnx"),
                                       "--data", str(data), "-q", "--json", "--min-sequence-agreement", "0.9"],
                                env={"GITHUB_STEP_SUMMARY": None})
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    (out,) = doc["outputs"]
    assert out["kind"] == "step_scores" and out["sequence_agreement"] == expected
    assert out["classification"]["top1_agreement"] > expected   # per step, most still agree
    assert [t["name"] for t in doc["thresholds"]] == ["min_sequence_agreement"]
    assert "sequences same" in result.stderr
    assert (tmp_path / "ref.onnx").read_bytes() == before
