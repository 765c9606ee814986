"""Weight-only block quantization: MatMulNBits / GatherBlockQuantized / block-wise DequantizeLinear."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from ptq_cli.cli import main
from ptq_cli.quantization.emitters import weight_only
from ptq_cli.quantization.api import quantize
from ptq_cli.quantization.arithmetic.blocks import block_params, pack_matmul_nbits, pack_zero_points
from ptq_cli.recipe import QType, Recipe, Rounding, WeightOnly

RNG = np.random.default_rng(5)
K, N, V = 80, 24, 50  # K is not a whole number of blocks of 32: the last block is padded


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("k", [96, K])
def test_packing_is_bit_for_bit_onnxruntimes(bits, symmetric, k):
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    w = RNG.standard_normal((k, N)).astype(np.float32)
    nb = -(-k // 32)
    packed = np.zeros((N, nb, 32 * bits // 8), np.uint8)
    zero = np.zeros((N, -(-nb * bits // 8)), np.uint8)
    scale = np.zeros((N, nb), np.float32)
    (quantize_matmul_4bits if bits == 4 else quantize_matmul_8bits)(packed, w, scale, zero, 32, N, k, symmetric)
    blocks = block_params(w.T, bits, 32, symmetric, search=False)
    assert np.array_equal(blocks.scale, scale)
    assert np.array_equal(pack_matmul_nbits(blocks.unsigned(blocks.nearest(w.T)), blocks), packed)
    if not symmetric:
        assert np.array_equal(pack_zero_points(blocks), zero)


def test_clipping_search_lowers_the_error():
    w = RNG.standard_t(3, size=(64, 128)).astype(np.float32)  # heavy tails: outliers in most blocks
    full = block_params(w, 4, 32, True, search=False)
    searched = block_params(w, 4, 32, True)
    searched_error = ((searched.dequantize(searched.nearest(w)) - w) ** 2).reshape(64, 4, 32).sum(axis=2)
    full_error = ((full.dequantize(full.nearest(w)) - w) ** 2).reshape(64, 4, 32).sum(axis=2)
    assert np.all(searched_error <= full_error)  # the full range is one of the candidates
    assert searched_error.sum() < 0.97 * full_error.sum()


W = RNG.standard_normal((K, N)).astype(np.float32)
TABLE = RNG.standard_normal((V, 64)).astype(np.float32)


def text_model() -> onnx.ModelProto:
    """ids [1, S] -> Gather TABLE [V, 64] -> e; Concat(e, e[..., :16]) -> MatMul W [80, 24] -> y."""
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
             helper.make_node("Slice", ["e", "starts", "ends", "axes"], ["part"], name="part"),
             helper.make_node("Concat", ["e", "part"], ["x"], name="concat", axis=2),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")]
    inits = [numpy_helper.from_array(TABLE, "table"), numpy_helper.from_array(W, "w"),
             numpy_helper.from_array(np.array([0], np.int64), "starts"),
             numpy_helper.from_array(np.array([16], np.int64), "ends"),
             numpy_helper.from_array(np.array([2], np.int64), "axes")]
    graph = helper.make_graph(nodes, "text", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "S"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "S", N])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def reference(ids: np.ndarray, table: np.ndarray, w: np.ndarray) -> np.ndarray:
    e = table[ids]
    return np.concatenate([e, e[:, :, :16]], axis=2) @ w


def run(model: onnx.ModelProto, ids: np.ndarray, optimize: bool = True) -> np.ndarray:
    options = ort.SessionOptions()
    if not optimize:  # onnxruntime fuses DequantizeLinear+MatMul into MatMulNBits with int8 compute (level 4)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return sess.run(None, {"ids": ids})[0]


@pytest.fixture
def small_tables(monkeypatch):
    monkeypatch.setattr(weight_only, "SMALL_TABLE", 0)  # the test table is tiny


@pytest.mark.parametrize("qdq", [False, True])
@pytest.mark.parametrize("bits,symmetric", [(4, True), (4, False), (8, True), (8, False)])
def test_weight_only_model_computes_with_the_dequantized_weights(small_tables, qdq, bits, symmetric):
    model = text_model()
    before = model.SerializeToString()
    spec = WeightOnly(QType.INT4 if bits == 4 else QType.INT8, 32, symmetric=symmetric, qdq=qdq)
    result = quantize(model, recipe=Recipe(weight_only=spec), progress=False)
    out = result.model
    onnx.checker.check_model(out, full_check=True)
    ops = {n.op_type for n in out.graph.node}
    if qdq:
        assert {"DequantizeLinear", "MatMul", "Gather"} <= ops and out.opset_import[0].version == 21
        assert all(a.i == 32 for n in out.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute
                   if a.name == "block_size")
    else:
        assert "MatMulNBits" in ops and "MatMul" not in ops
        assert "GatherBlockQuantized" in ops and "Gather" not in ops
    assert set(result.quantized) == {"embed", "proj"}
    assert not {"table", "w"} & {i.name for i in out.graph.initializer}  # the float weights are gone
    table_q = block_params(TABLE, bits, 32, symmetric)
    w_q = block_params(W.T, bits, 32, symmetric)
    ids = RNG.integers(0, V, (1, 7))
    expected = reference(ids, table_q.dequantize(table_q.nearest(TABLE)), w_q.dequantize(w_q.nearest(W.T)).T)
    np.testing.assert_allclose(run(out, ids, optimize=not qdq), expected, rtol=1e-4, atol=1e-4)
    assert np.abs(run(out, ids) - reference(ids, TABLE, W)).max() > 1e-3  # it did quantize
    assert model.SerializeToString() == before
    assert result.size_after < (0.45 if bits == 4 else 0.6) * result.size_before


def test_weight_only_gptq_is_closer_to_float(small_tables, tmp_path):
    model = text_model()
    folder = tmp_path / "calib"
    folder.mkdir()
    # Correlated inputs: a few frequent tokens
    for i in range(16):
        np.save(folder / f"{i:02d}.npy", RNG.choice(np.arange(8), size=(1, 24)).astype(np.int64))
    ids = np.concatenate([np.load(p) for p in sorted(folder.glob("*.npy"))], axis=1)
    exact = reference(ids, TABLE, W)
    errors = {}
    for rounding in (Rounding.NEAREST, Rounding.GPTQ):
        recipe = Recipe(weight_only=WeightOnly(QType.INT4, 32, embeddings=False), rounding=rounding)
        result = quantize(model, data=folder if rounding is Rounding.GPTQ else None, recipe=recipe, progress=False)
        errors[rounding] = float(np.mean((run(result.model, ids) - exact) ** 2))
    assert errors[Rounding.GPTQ] < 0.7 * errors[Rounding.NEAREST]


def test_cli_weight_only(tmp_path, small_tables):
    path = tmp_path / "text.onnx"
    onnx.save(text_model(), str(path))
    runner = CliRunner()
    result = runner.invoke(main, ["quantize", str(path), "--weight-only", "int4", "--block-size", "64", "-q"])
    assert result.exit_code == 0, result.output
    out = onnx.load(str(tmp_path / "text.int4.onnx"))
    nbits = next(n for n in out.graph.node if n.op_type == "MatMulNBits")
    assert {a.name: a.i for a in nbits.attribute}["block_size"] == 64
    bad = runner.invoke(main, ["quantize", str(path), "--weight-only", "int4", "--rounding", "stochastic", "-f"])
    assert bad.exit_code == 2 and "stochastic" in bad.output
    assert not (tmp_path / "text.int4.onnx.tmp").exists()
