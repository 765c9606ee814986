"""An If on a constant is folded into the branch it takes, which then quantizes like the rest."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import ptq_cli
from ptq_cli.model.passes import FoldConstantIf
from tests.conftest import run
from tests.model.passes.helpers import apply, same_outputs
from tests.quantize.test_control_flow import _branch


def passthrough_copy(graph: onnx.GraphProto) -> onnx.GraphProto:
    copy = onnx.GraphProto()
    copy.CopyFrom(graph)
    copy.node[0].output[0] = copy.output[0].name = "x_copy2"
    copy.node[0].name = "copy2"
    return copy


def constant_if_model(flag: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(11)
    passthrough = helper.make_graph([helper.make_node("Identity", ["x"], ["x_copy"], name="copy")], "pass", [],
                                    [helper.make_tensor_value_info("x_copy", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("If", ["flag"], ["y"], name="if", then_branch=_branch("then", rng, 0.3),
                              else_branch=_branch("else", rng, 0.5)),
             helper.make_node("If", ["flag"], ["x_again"], name="if_pass", then_branch=passthrough,
                              else_branch=passthrough_copy(passthrough))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8]),
                               helper.make_tensor_value_info("x_again", TensorProto.FLOAT, ["N", 16])],
                              [numpy_helper.from_array(np.array(flag), "flag")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_the_branch_taken_replaces_the_if(rng):
    for flag, prefix in ((True, "then"), (False, "else")):
        model = constant_if_model(flag)
        result = apply(FoldConstantIf(), model)
        ops = [(n.op_type, n.name) for n in result.model.graph.node]
        assert ("MatMul", f"{prefix}_mm") in ops and not any(op == "If" for op, _ in ops)
        assert ("Identity", "copy" if flag else "copy2") in ops
        same_outputs(model, result.model, {"x": rng.standard_normal((3, 16)).astype(np.float32)})


def test_a_folded_if_is_quantized(tmp_path, rng):
    model = constant_if_model(True)
    folder = tmp_path / "d"
    folder.mkdir()
    for i in range(4):
        np.save(folder / f"{i}.npy", rng.standard_normal((1, 16)).astype(np.float32))
    result = ptq_cli.quantize(model, None, data=folder, progress=False)
    assert {"then_mm", "then_add"} <= set(result.quantized)
    x = {"x": np.load(folder / "0.npy")}
    want, got = run(model, x)[0], run(result.model, x)[0]
    np.testing.assert_allclose(got, want, atol=0.03 * float(np.abs(want).max()))
