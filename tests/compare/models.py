"""Tiny models for the compare tests, built with onnx.helper, and a hand-made QDQ quantizer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 13)]


def _model(nodes, inputs, outputs, inits, name="g") -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def mlp(rng: np.random.Generator, features: int = 4, hidden: int = 8, classes: int = 6) -> onnx.ModelProto:
    """x[N,F] -> MatMul -> Add -> Relu -> MatMul -> y[N,C] (classification-like)."""
    w1 = numpy_helper.from_array(rng.normal(size=(features, hidden)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.normal(size=(hidden,)).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.normal(size=(hidden, classes)).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["mm1"], name="fc1"),
             helper.make_node("Add", ["mm1", "b1"], ["add1"], name="bias1"),
             helper.make_node("Relu", ["add1"], ["relu1"], name="act1"),
             helper.make_node("MatMul", ["relu1", "w2"], ["y"], name="fc2")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])], [w1, b1, w2])


def two_in_two_out(rng: np.random.Generator, *, nan_branch: bool = False, noise: float = 0.0) -> onnx.ModelProto:
    """a[N,3], b[N,3] -> s = a + b + noise (classes), p = ReduceSum(a * b) [N,1].

    With nan_branch, s also gets 0 * Sqrt(a): NaN on every row where `a` has a negative entry.
    """
    inits = [numpy_helper.from_array(np.array(noise, dtype=np.float32), "eps")]
    nodes = [helper.make_node("Add", ["a", "b"], ["ab"], name="add"),
             helper.make_node("Add", ["ab", "eps"], ["s0"], name="shift"),
             helper.make_node("Mul", ["a", "b"], ["m"], name="mul"),
             helper.make_node("ReduceSum", ["m", "axes"], ["p"], name="sum", keepdims=1)]
    inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"))
    if nan_branch:
        inits.append(numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"))
        nodes += [helper.make_node("Sqrt", ["a"], ["r"], name="sqrt"),
                  helper.make_node("Mul", ["r", "zero"], ["z"], name="mul0"),
                  helper.make_node("Add", ["s0", "z"], ["s"], name="nan_add")]
    else:
        nodes.append(helper.make_node("Identity", ["s0"], ["s"], name="out"))
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3]) for n in ("a", "b")]
    outputs = [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 3]),
               helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 1])]
    return _model(nodes, inputs, outputs, inits)


@dataclass(frozen=True)
class QdqMap:
    """What the hand-made quantizer did: reference tensor -> the DQ output that stands for it."""

    model: onnx.ModelProto
    dq_of: dict


def fake_quant(x: np.ndarray, scale: float) -> np.ndarray:
    """numpy QuantizeLinear + DequantizeLinear, int8, zero-point 0 (round half to even)."""
    return (np.clip(np.rint(x / scale), -128, 127) * scale).astype(np.float32)


def make_qdq(model: onnx.ModelProto, scales: dict[str, float], *, rename: dict[str, str] | None = None,
             weight_scale: float = 0.02) -> QdqMap:
    """QDQ on every activation in `scales` (graph input or node output) and on every float initializer.

    `rename` maps candidate tensor names to new names (node outputs and DQ outputs), to prove
    that matching follows the graph and not the names.
    """
    rename = dict(rename or {})
    graph = model.graph
    # Like onnxruntime's quantizer: a quantized graph output keeps its name on the DQ output.
    for value in graph.output:
        if value.name in scales:
            rename.setdefault(value.name, f"{value.name}_QuantizeLinear_Input")
            rename.setdefault(f"{value.name}_dqa", value.name)
    nodes, inits, dq_of = [], [], {}
    zp = numpy_helper.from_array(np.array(0, dtype=np.int8), "zp")
    inits.append(zp)
    for init in graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype != np.float32:
            inits.append(init)
            continue
        q = np.clip(np.rint(arr / weight_scale), -128, 127).astype(np.int8)
        inits += [numpy_helper.from_array(q, f"{init.name}_q"),
                  numpy_helper.from_array(np.array(weight_scale, np.float32), f"{init.name}_s")]
        nodes.append(helper.make_node("DequantizeLinear", [f"{init.name}_q", f"{init.name}_s", "zp"],
                                      [rename.get(f"{init.name}_dq", f"{init.name}_dq")]))
        dq_of[init.name] = rename.get(f"{init.name}_dq", f"{init.name}_dq")

    def qdq(tensor: str) -> None:
        src = rename.get(tensor, tensor)
        inits.append(numpy_helper.from_array(np.array(scales[tensor], np.float32), f"{tensor}_sc"))
        out = rename.get(f"{tensor}_dqa", f"{tensor}_dqa")
        nodes.append(helper.make_node("QuantizeLinear", [src, f"{tensor}_sc", "zp"], [f"{tensor}_qa"]))
        nodes.append(helper.make_node("DequantizeLinear", [f"{tensor}_qa", f"{tensor}_sc", "zp"], [out]))
        dq_of[tensor] = out

    for value in graph.input:
        if value.name in scales:
            qdq(value.name)
    for node in graph.node:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        del new.input[:]
        new.input.extend(dq_of.get(name, rename.get(name, name)) for name in node.input)
        del new.output[:]
        new.output.extend(rename.get(name, name) for name in node.output)
        nodes.append(new)
        for out in node.output:
            if out in scales:
                qdq(out)
    outputs = []
    for value in graph.output:
        v = onnx.ValueInfoProto()
        v.CopyFrom(value)
        v.name = dq_of.get(value.name, rename.get(value.name, value.name))
        outputs.append(v)
    out_graph = helper.make_graph(nodes, "qdq", list(graph.input), outputs, initializer=inits)
    out_model = helper.make_model(out_graph, opset_imports=OPSET)
    out_model.ir_version = 8
    onnx.checker.check_model(out_model, full_check=True)
    return QdqMap(out_model, dq_of)


def ranges(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, float]:
    """int8 symmetric scale of every graph input and node output, from one run in onnxruntime."""
    import onnxruntime as ort

    from ptq_cli.drift.runtime import with_outputs

    names = [n for node in model.graph.node for n in node.output]
    sess = ort.InferenceSession(with_outputs(model, tuple(names)).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    values = dict(zip(names, sess.run(names, feeds)))
    values.update(feeds)
    return {k: float(np.abs(v).max()) / 127.0 for k, v in values.items() if v.dtype == np.float32}
