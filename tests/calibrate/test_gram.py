"""Gram matrices Σ x·xᵀ of the weighted layers' inputs, reduced inside onnxruntime."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ptq_cli.calibration import calibrate, merge
from ptq_cli.calibration.gram import Gram, gram_sites
from ptq_cli.model.prepare import prepare

RNG = np.random.default_rng(3)
W_CONV = RNG.standard_normal((4, 2, 3, 3)).astype(np.float32)  # 4 outputs, 2 groups of 2 channels
W_DW = RNG.standard_normal((4, 1, 3, 3)).astype(np.float32)  # depthwise
W_PW = RNG.standard_normal((3, 4, 1, 1)).astype(np.float32)  # pointwise
W_MM = RNG.standard_normal((3, 2)).astype(np.float32)


def conv_model() -> onnx.ModelProto:
    """x[N,4,6,5] -> grouped 3x3 stride 2 pad 1 -> depthwise 3x3 dilation 2 pad 2 -> 1x1 -> MatMul on the last axis."""
    nodes = [helper.make_node("Conv", ["x", "wc"], ["a"], name="grouped", group=2, kernel_shape=[3, 3],
                              strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "wd"], ["b"], name="dw", group=4, kernel_shape=[3, 3],
                              dilations=[2, 2], pads=[2, 2, 2, 2]),
             helper.make_node("Conv", ["b", "wp"], ["c"], name="pw", kernel_shape=[1, 1]),
             helper.make_node("Reshape", ["c", "shape"], ["d"], name="flat"),
             helper.make_node("MatMul", ["d", "wm"], ["y"], name="mm")]
    inits = [numpy_helper.from_array(W_CONV, "wc"), numpy_helper.from_array(W_DW, "wd"),
             numpy_helper.from_array(W_PW, "wp"), numpy_helper.from_array(W_MM, "wm"),
             numpy_helper.from_array(np.array([1, 3, 3, 3], np.int64), "shape")]
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 3, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def patches(x: np.ndarray, k: int, stride: int, pad: int, dilation: int = 1) -> np.ndarray:
    """im2col by hand: [N, C, H, W] -> [C*k*k, positions] (channel-major, then taps)."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    span = dilation * (k - 1) + 1
    rows = []
    for i in range(0, h + 2 * pad - span + 1, stride):
        for j in range(0, w + 2 * pad - span + 1, stride):
            rows.append(xp[:, :, i:i + span:dilation, j:j + span:dilation].reshape(n, -1))
    return np.concatenate(rows, axis=0).T.astype(np.float64)


def forward(x: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    model = conv_model()
    for name in ("a", "b", "c", "d"):
        model.graph.output.append(onnx.ValueInfoProto(name=name))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(["y", "a", "b", "c", "d"], sess.run(None, {"x": x})))


def expected_grams(xs: list[np.ndarray]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}

    def add(key, value):
        out[key] = out.get(key, 0) + value

    for x in xs:
        acts = forward(x)
        p = patches(x, 3, 2, 1)  # [2 groups * 18, positions]
        add("grouped", np.stack([p[g * 18:(g + 1) * 18] @ p[g * 18:(g + 1) * 18].T for g in range(2)]))
        p = patches(acts["a"], 3, 1, 2, dilation=2)  # [4 * 9, positions]
        add("dw", np.stack([p[g * 9:(g + 1) * 9] @ p[g * 9:(g + 1) * 9].T for g in range(4)]))
        b = acts["b"].reshape(4, -1).astype(np.float64)
        add("pw", (b @ b.T)[None])
        d = acts["d"].reshape(-1, 3).astype(np.float64)
        add("mm", (d.T @ d)[None])
    return out


@pytest.fixture
def conv_data(tmp_path):
    xs = [RNG.standard_normal((1, 4, 6, 5)).astype(np.float32) for _ in range(6)]
    folder = tmp_path / "calib"
    folder.mkdir()
    for i, x in enumerate(xs):
        np.save(folder / f"{i:02d}.npy", x)
    path = tmp_path / "convs.onnx"
    onnx.save(conv_model(), str(path))
    return path, folder, xs


def test_gram_matrices_match_numpy_im2col(conv_data):
    path, folder, xs = conv_data
    before = onnx.load(str(path)).SerializeToString()
    table = calibrate(path, folder, grams=True, progress=False)
    sites = {s.conv.name if s.conv is not None else "mm": s.key for s in gram_sites(prepare(conv_model()))}
    expected = expected_grams(xs)
    assert set(table.grams) == set(sites.values())
    for node, key in sites.items():
        got = table.grams[key]
        assert got.batches == len(xs)
        np.testing.assert_allclose(got.total, expected[node], rtol=2e-5, atol=1e-4)
    assert table.grams[sites["grouped"]].total.shape == (2, 18, 18)
    assert table.grams[sites["dw"]].total.shape == (4, 9, 9)
    assert onnx.load(str(path)).SerializeToString() == before


def test_shards_merge_bit_for_bit_and_round_trip(conv_data, tmp_path):
    path, folder, _ = conv_data
    whole = calibrate(path, folder, grams=True, progress=False)
    shards = [calibrate(path, folder, grams=True, progress=False, shard=(k, 3)) for k in range(3)]
    merged = merge(shards)
    for key, gram in whole.grams.items():
        assert np.array_equal(merged.grams[key].total, gram.total), key
        assert merged.grams[key].batches == gram.batches
    back = type(whole).load(whole.save(tmp_path / "t.json"))
    for key, gram in whole.grams.items():
        assert np.array_equal(back.grams[key].total, gram.total)
    plain = calibrate(path, folder, progress=False)
    assert not plain.grams and "grams" not in plain.to_dict()
    with pytest.raises(Exception, match="second-order"):
        merge([whole, plain])


def test_gram_adds_in_float64():
    gram = Gram()
    gram.add(np.array([[1e8, 1.0], [1.0, 1.0]], np.float32))
    gram.add(np.array([[1.0, 0.0], [0.0, 1.0]], np.float32))
    assert gram.total.dtype == np.float64 and gram.total[0, 0, 0] == 1e8 + 1


def test_gram_of_an_opset_12_matmul(tmp_path):
    """Models below opset 13 (PP-OCRv4 is at 12) are calibrated at their own opset: the rows
    are laid out without Unsqueeze, whose axes were an attribute there."""
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "mm12",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 3])],
                              [numpy_helper.from_array(W_MM.T.copy(), "w")])
    path = tmp_path / "mm12.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)], ir_version=7), str(path))
    xs = [RNG.standard_normal((1, 5, 2)).astype(np.float32) for _ in range(3)]
    folder = tmp_path / "calib"
    folder.mkdir()
    for i, x in enumerate(xs):
        np.save(folder / f"{i}.npy", x)
    (gram,) = calibrate(path, folder, grams=True, progress=False).grams.values()
    rows = np.concatenate([x.reshape(-1, 2) for x in xs]).astype(np.float64)
    np.testing.assert_allclose(gram.total[0], rows.T @ rows, rtol=1e-5)
