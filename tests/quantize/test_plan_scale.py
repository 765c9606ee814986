"""A 20,000-node graph is planned whole (its time is measured in bench/scale.py, not here: a
test that times itself passes or fails with the machine it lands on)."""

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ptq_cli.quantization.placement.place import make_plan
from ptq_cli.recipe import Recipe


def _blocks(count: int):
    """count x (MatMul -> Add -> Relu -> Reshape), typed, as prepare would leave it."""
    rng = np.random.default_rng(0)
    nodes, inits, infos, x = [], [numpy_helper.from_array(np.array([1, 8], np.int64), "shape")], [], "x"
    for i in range(count):
        inits += [numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"mm{i}"),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"], name=f"add{i}"),
                  helper.make_node("Relu", [f"a{i}"], [f"r{i}"], name=f"relu{i}"),
                  helper.make_node("Reshape", [f"r{i}", "shape"], [f"s{i}"], name=f"reshape{i}")]
        infos += [helper.make_tensor_value_info(f"{t}{i}", TensorProto.FLOAT, [1, 8]) for t in "mars"]
        x = f"s{i}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [infos.pop()], inits, value_info=infos)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_20000_node_graph_plans_every_node():
    model = _blocks(5000)
    ranges = {out: (-1.0, 1.0 + i * 1e-4) for i, node in enumerate(model.graph.node) for out in node.output}
    ranges["x"] = (-1.0, 1.0)
    plan = make_plan(model, Recipe(), ranges)
    assert len(model.graph.node) == 20000
    assert len(plan.quantized) == 15000 and len(plan.fused) == 5000 and not plan.skipped
    assert len(plan.weights) == 10000 and len(plan.activations) == 15001
