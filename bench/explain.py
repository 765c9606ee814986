"""Why an INT8 model is not faster: what onnxruntime's optimizer made of it.

onnxruntime fuses DequantizeLinear → op → QuantizeLinear groups into integer kernels
(QLinearConv, QLinearMatMul, QGemm, ...). What it could not fuse stays a float op with Q/DQ
around it, which costs more than the FP32 model did. This module saves the optimized graph
(SessionOptions.optimized_model_filepath), follows which tensors are integer and which are float
through it, and lists the float compute nodes and the Q/DQ nodes left behind.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from common import session

LEVELS = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
          "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
          "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
# Integer kernels. Any op whose name starts with "QLinear" counts too (QLinearConv, QLinearAdd, ...).
INTEGER_OPS = {"ConvInteger", "MatMulInteger", "QGemm", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
               "QAttention", "QEmbedLayerNormalization", "QOrderedMatMul", "MatMulNBits", "QuickGelu_int8"}
INT_TYPES = {onnx.TensorProto.UINT8, onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16,
             onnx.TensorProto.INT32, onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
# Ops that only move or reshape data: float ones are cheap and not worth naming as "stayed float".
MOVEMENT_OPS = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Gather",
                "Slice", "Split", "Concat", "ReorderInput", "ReorderOutput", "Cast", "Expand"}


@dataclass
class Explanation:
    path: str
    optimized_path: str
    level: str
    op_counts: dict[str, int]
    integer_nodes: int
    float_compute: dict[str, list[str]]  # op type -> node names, compute ops that run in float
    float_movement: dict[str, int]
    qdq_left: dict[str, int]  # QuantizeLinear / DequantizeLinear still in the optimized graph
    unfused_patterns: dict[str, int] = field(default_factory=dict)  # "DequantizeLinear → Softmax" -> n

    def summary(self) -> str:
        floats = sum(len(v) for v in self.float_compute.values())
        return (f"{self.integer_nodes} integer, {floats} float compute, "
                f"{sum(self.qdq_left.values())} Q/DQ left")

    def render(self) -> str:
        lines = [f"{self.path} (optimized at level '{self.level}', saved to {self.optimized_path})",
                 f"  {self.summary()}",
                 "  op types after optimization: " + ", ".join(f"{k} ×{v}" for k, v in sorted(self.op_counts.items()))]
        if self.float_compute:
            lines.append("  compute nodes that stayed float:")
            for op, nodes in sorted(self.float_compute.items(), key=lambda kv: -len(kv[1])):
                more = f" … (+{len(nodes) - 4})" if len(nodes) > 4 else ""
                lines.append(f"    {op} ×{len(nodes)}: {', '.join(nodes[:4])}{more}")
        if self.float_movement:
            lines.append("  float data movement: " + ", ".join(f"{k} ×{v}" for k, v in self.float_movement.items()))
        if self.unfused_patterns:
            lines.append("  Q/DQ not fused (edge ×count):")
            for pattern, n in sorted(self.unfused_patterns.items(), key=lambda kv: -kv[1]):
                lines.append(f"    {pattern} ×{n}")
        return "\n".join(lines)


def explain(path: str | Path, level: str = "all", save: str | Path | None = None) -> Explanation:
    """Optimize `path` in onnxruntime's CPU provider, save the result, and classify its nodes."""
    if save is None:
        save = Path(tempfile.mkdtemp(prefix="ptq-explain-")) / (Path(path).stem + f".optimized-{level}.onnx")
    session(path, threads=1, level=LEVELS[level], optimized_path=save)
    model = onnx.load(str(save), load_external_data=False)
    return classify(model, str(path), str(save), level)


def classify(model: onnx.ModelProto, path: str, saved: str, level: str) -> Explanation:
    graph = model.graph
    is_int = {t.name: t.data_type in INT_TYPES for t in graph.initializer}
    is_int.update({i.name: i.type.tensor_type.elem_type in INT_TYPES for i in graph.input})
    producer: dict[str, onnx.NodeProto] = {}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for out in node.output:
            producer[out] = node
        for inp in node.input:
            consumers.setdefault(inp, []).append(node)
    float_compute: dict[str, list[str]] = {}
    float_movement: Counter = Counter()
    integer = 0
    for node in graph.node:  # the saved graph is topologically sorted
        kind = _kind(node, is_int)
        for out in node.output:
            is_int[out] = kind in ("int", "qdq-int")
        if kind in ("int", "qdq-int") and node.op_type not in QDQ_OPS:
            integer += 1
        elif kind == "float" and node.op_type in MOVEMENT_OPS:
            float_movement[node.op_type] += 1
        elif kind == "float":
            float_compute.setdefault(node.op_type, []).append(node.name or node.output[0])
    return Explanation(
        path=path, optimized_path=saved, level=level,
        op_counts=dict(Counter(n.op_type for n in graph.node)),
        integer_nodes=integer, float_compute=float_compute, float_movement=dict(float_movement),
        qdq_left=dict(Counter(n.op_type for n in graph.node if n.op_type in QDQ_OPS)),
        unfused_patterns=_unfused(graph, producer, consumers))


def _kind(node: onnx.NodeProto, is_int: dict[str, bool]) -> str:
    op = node.op_type
    if op in ("QuantizeLinear", "DynamicQuantizeLinear"):
        return "qdq-int"
    if op == "DequantizeLinear":
        return "qdq-float"
    if op.startswith("QLinear") or op in INTEGER_OPS:
        return "int-to-float" if op in ("MatMulIntegerToFloat", "DynamicQuantizeMatMul") else "int"
    data = [i for i in node.input if i]
    return "int" if data and is_int.get(data[0], False) else "float"


def _unfused(graph: onnx.GraphProto, producer: dict, consumers: dict) -> dict[str, int]:
    """Edges DQ → op and op → Q that onnxruntime left: each is a float op fed or read by Q/DQ."""
    outputs = {o.name for o in graph.output}
    inputs = {i.name for i in graph.input}
    patterns: Counter = Counter()
    for node in graph.node:
        if node.op_type == "DequantizeLinear":
            src = producer.get(node.input[0])
            origin = "weight" if src is None and node.input[0] not in inputs else (src.op_type if src else "input")
            for user in consumers.get(node.output[0], []):
                patterns[f"DequantizeLinear({origin}) → {user.op_type}"] += 1
            if node.output[0] in outputs:
                patterns["DequantizeLinear → graph output (expected)"] += 1
        elif node.op_type == "QuantizeLinear":
            src = producer.get(node.input[0])
            patterns[f"{src.op_type if src else 'graph input (expected)'} → QuantizeLinear"] += 1
    return dict(patterns)


def profile(path: str | Path, runs: int = 200, threads: int = 2, seed: int = 0) -> dict[str, float]:
    """Mean microseconds per run spent in each op type (onnxruntime's profiler, kernel time only).

    Inputs are seeded uniform random in [0, 1) with free dimensions set to 1: kernel times of
    these models do not depend on the values.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.log_severity_level = 3  # the NCHWc serialization warning is expected here
    folder = Path(tempfile.mkdtemp(prefix="ptq-profile-"))
    options.profile_file_prefix = str(folder / "ort")
    options.optimized_model_filepath = str(folder / "optimized.onnx")
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    depthwise = _depthwise_nodes(onnx.load(str(folder / "optimized.onnx"), load_external_data=False))
    rng = np.random.default_rng(seed)
    feeds = {i.name: rng.random([d if isinstance(d, int) else 1 for d in i.shape], dtype=np.float32)
             for i in sess.get_inputs()}
    for _ in range(runs):
        sess.run(None, feeds)
    trace = json.loads(Path(sess.end_profiling()).read_text())
    per_op: Counter = Counter()
    for event in trace:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            node = event["name"][: -len("_kernel_time")]
            per_op[event["args"]["op_name"] + (" (depthwise)" if node in depthwise else "")] += event["dur"]
    return {op: us / runs for op, us in per_op.most_common()}


def render_profile(times: dict[str, float]) -> str:
    total = sum(times.values()) or 1.0
    rows = [f"    {op:<28} {us:9.1f} µs  {100 * us / total:5.1f} %" for op, us in times.items()]
    return "\n".join([f"  kernel time per run by op type (total {total:.1f} µs):", *rows])


def _depthwise_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of grouped convolutions: their integer kernels are the usual reason INT8 is slow."""
    out = set()
    for node in model.graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if "Conv" in node.op_type and group > 1:
            out.add(node.name)
    return out
