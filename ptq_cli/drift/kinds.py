"""What an output of the model is, so that it is judged by the right figures.

Shape alone misleads: a [batch, 384] sentence embedding looks like a 384-class classifier, and
an int64 copy of the input ids looks like scores. The kind is read from the graph (the op that
makes the output, looked for through data movement) and the output's element type:

- SCORES       rank 2, more than one column, made by a Softmax/LogSoftmax/Sigmoid or by a
               logit layer (Gemm, MatMul, Conv, their bias Add): top-1/top-5 agreement apply.
- STEP_SCORES  rank 3 made by a Softmax/LogSoftmax over the last axis ([N, T, C], e.g. a CTC
               head): judged per step, top-1 agreement of every step's class.
- EMBEDDING    a float vector made by pooling or normalization (ReduceMean/ReduceSum, Div,
               LayerNormalization, LpNormalization, ...) or by a Tanh (BERT's pooler_output):
               SQNR and cosine, no classes.
- INTEGER      not a float tensor (ids, masks, argmax indices): exact agreement per sample.
- TENSOR       any other float output: SQNR and cosine.
- OTHER        not a tensor (a sequence or a map, e.g. ZipMap's): not measured.
"""

from __future__ import annotations

import enum

import onnx
from onnx import TensorProto


class OutputKind(enum.Enum):
    SCORES = "scores"
    STEP_SCORES = "step_scores"
    EMBEDDING = "embedding"
    INTEGER = "integer"
    TENSOR = "tensor"
    OTHER = "other"


_MOVEMENT = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Cast", "Gather",
             "Slice", "DequantizeLinear", "QuantizeLinear"}
_SCORE_OPS = {"Softmax", "LogSoftmax", "Sigmoid"}
_LOGIT_OPS = {"Gemm", "MatMul", "Conv", "MatMulInteger", "QLinearMatMul", "QLinearConv", "QGemm"}
_POOLING_OPS = {"ReduceMean", "ReduceSum", "ReduceL2", "Div", "LayerNormalization", "LpNormalization",
                "Normalizer", "GlobalAveragePool", "ReduceMax"}
# BERT-style pooler outputs end in Tanh: a bounded feature vector whose saturated columns (many
# near +1) make top-1 "agreement" a coin toss; no classifier head ends in Tanh.
_FEATURE_OPS = {"Tanh"}
_FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}


def output_kinds(model: onnx.ModelProto) -> dict[str, OutputKind]:
    """The kind of every graph output, by name."""
    producer = {out: node for node in model.graph.node for out in node.output}
    kinds = {}
    for value in model.graph.output:
        if value.type.WhichOneof("value") not in (None, "tensor_type"):
            kinds[value.name] = OutputKind.OTHER
            continue
        tensor = value.type.tensor_type
        rank = len(tensor.shape.dim) if tensor.HasField("shape") else None
        last = tensor.shape.dim[-1] if rank else None
        columns = last.dim_value if last is not None and last.HasField("dim_value") else None
        kinds[value.name] = kind_of(value.name, tensor.elem_type, rank, columns, producer)
    return kinds


def kind_of(name: str, elem_type: int, rank: int | None, columns: int | None, producer: dict) -> OutputKind:
    if elem_type and elem_type not in _FLOATS:
        return OutputKind.INTEGER
    node = _maker(name, producer)
    op = node.op_type if node is not None else None
    if rank == 3 and op in ("Softmax", "LogSoftmax") and _last_axis(node, rank):
        return OutputKind.STEP_SCORES
    if rank != 2 or columns == 1:
        return OutputKind.TENSOR
    if op in _POOLING_OPS or op in _FEATURE_OPS:
        return OutputKind.EMBEDDING
    if op == "Add" and _any_pooling(node, producer):  # a residual or offset after the pooling
        return OutputKind.EMBEDDING
    # Scores, logits, and anything not recognised keep compare's long-standing reading of
    # [batch, classes]: treating real scores as a plain tensor would lose the top-1 figures.
    return OutputKind.SCORES


def _maker(name: str, producer: dict) -> onnx.NodeProto | None:
    """The node that makes `name`, seen through data movement."""
    node = producer.get(name)
    for _ in range(64):  # data-movement chains are short; the bound guards against cycles
        single_concat = node is not None and node.op_type == "Concat" and len(node.input) == 1
        if node is None or (node.op_type not in _MOVEMENT and not single_concat):
            return node
        node = producer.get(node.input[0])
    return node


def _last_axis(node: onnx.NodeProto, rank: int) -> bool:
    axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
    return axis in (-1, rank - 1)


def _any_pooling(node: onnx.NodeProto, producer: dict) -> bool:
    makers = [_maker(i, producer) for i in node.input]
    return any(m is not None and m.op_type in _POOLING_OPS for m in makers)
