"""A deterministic stand-in for the machine: kernel costs from a table, no clock involved."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper, numpy_helper
import numpy as np

from ptq_cli.quantization.placement.latency.machine import Timing
from tests.conftest import make_model


class TableMachine:
    """Each compute node costs table[name] = (fp32 µs, int8 µs): int8 when it reads a
    DequantizeLinear. Entering the integer region (a QuantizeLinear of a graph input or of a
    float node's output) costs `crossing` µs. A model's time is the sum."""

    def __init__(self, table: dict[str, tuple[float, float]], crossing: float = 20.0) -> None:
        self.table, self.crossing = table, crossing
        self.timed: list[int] = []  # how many models each `time` call got

    def _costs(self, data: bytes) -> dict[str, tuple[str, float]]:
        model = onnx.load_from_string(data)
        producer = {o: n for n in model.graph.node for o in n.output}

        def integer(tensor: str) -> bool:
            node = producer.get(tensor)
            if node is None:
                return False
            if node.op_type == "DequantizeLinear":
                return True
            if node.op_type in ("Relu", "Clip", "QuantizeLinear"):
                return integer(node.input[0])
            return any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in node.input)

        costs = {}
        for node in model.graph.node:
            if node.name in self.table:
                costs[node.name] = (node.op_type, self.table[node.name][1 if integer(node.output[0]) else 0])
            elif node.op_type == "QuantizeLinear" and not integer(node.input[0]) and node.input[0] not in \
                    {t.name for t in model.graph.initializer}:
                costs[node.name] = (node.op_type, self.crossing)
        return costs

    def profile(self, model: bytes, feeds) -> dict[str, tuple[str, float]]:
        return self._costs(model)

    def time(self, models, feeds) -> list[Timing]:
        self.timed.append(len(models))
        return [Timing((sum(us for _, us in self._costs(m).values()) / 1e6,) * 5) for m in models]


def mobile_cnn(rng) -> onnx.ModelProto:
    """x[1,3,16,16] -> stem Conv 3->8 -> Relu -> depthwise 8 -> Relu -> 1x1 8->16 -> Relu
    -> 1x1 16->16 -> Relu -> GlobalAveragePool -> Flatten -> Gemm 10: a MobileNet in miniature."""
    def weight(name, shape):
        return numpy_helper.from_array(rng.normal(0, 0.4, shape).astype(np.float32), name)

    inits = [weight("ws", (8, 3, 3, 3)), weight("wd", (8, 1, 3, 3)), weight("wp", (16, 8, 1, 1)),
             weight("wq", (16, 16, 1, 1)), weight("wf", (10, 16)), weight("bf", (10,))]
    nodes = [
        helper.make_node("Conv", ["x", "ws"], ["c0"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="stem_relu"),
        helper.make_node("Conv", ["r0", "wd"], ["c1"], name="dw", pads=[1, 1, 1, 1], group=8),
        helper.make_node("Relu", ["c1"], ["r1"], name="dw_relu"),
        helper.make_node("Conv", ["r1", "wp"], ["c2"], name="pw"),
        helper.make_node("Relu", ["c2"], ["r2"], name="pw_relu"),
        helper.make_node("Conv", ["r2", "wq"], ["c3"], name="pw2"),
        helper.make_node("Relu", ["c3"], ["r3"], name="pw2_relu"),
        helper.make_node("GlobalAveragePool", ["r3"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])
    return make_model(nodes, [x], [y], inits)


# Stem and few-channel depthwise lose in INT8, the 1x1 Convs win: FP32 105 µs, full INT8 98 µs
# (78 + the input's crossing), stem+dw in float 63 µs, stem alone in float 78 µs.
MOBILE_TABLE = {"stem": (10.0, 30.0), "dw": (10.0, 25.0), "pw": (40.0, 10.0), "pw2": (40.0, 10.0), "fc": (5.0, 3.0)}
