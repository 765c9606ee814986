"""Train the three sample models on scikit-learn's digits and export them to ONNX.

Install:  pip install torch==2.13.0 scikit-learn
Run:      python sample_models/make_samples.py        (from the repository root, ~1 min on CPU)

No onnxscript is needed: export uses the TorchScript exporter (``dynamo=False``),
which still ships with torch 2.13 and gives small, clean graphs for these models.

Writes
  sample_models/digits_cnn.onnx      Conv(+folded BN)/Relu/MaxPool/Conv/Relu/GlobalAveragePool/Flatten/Gemm, opset 13
  sample_models/digits_resnet.onnx   residual block with depthwise + pointwise Conv, Relu/Clip, Add, opset 13
  sample_models/digits_mixer.onnx    8 row-tokens, LayerNormalization, single-head attention, MLP, opset 17
  calibration/digits/calib/NNNN.npy  100 train samples, float32 [1,1,8,8]
  calibration/digits/eval/NNNN.npy   300 held-out test samples, float32 [1,1,8,8]
  calibration/digits/eval_labels.txt one label per line, in sorted file order
  calibration/digits/eval.npz        input [300,1,8,8] float32, labels [300] int64

Everything is seeded and single-threaded, so reruns give the same weights and files.
"""

from __future__ import annotations

import io
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / "sample_models"
DATA_DIR = ROOT / "calibration" / "digits"
SEED = 0
N_TEST = 300
N_CALIB = 100
EPOCHS = 100
BATCH = 64


@dataclass(frozen=True)
class Split:
    x_train: np.ndarray  # float32 [n,1,8,8] in [0,1]
    y_train: np.ndarray  # int64 [n]
    x_test: np.ndarray
    y_test: np.ndarray


def seed_everything() -> None:
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.use_deterministic_algorithms(True)
    # One thread: float reductions then run in a fixed order, so weights are reproducible.
    torch.set_num_threads(1)


def load_split() -> Split:
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=N_TEST, random_state=SEED, stratify=y
    )
    return Split(x_tr, y_tr, x_te, y_te)


# ---------------------------------------------------------------- models


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = torch.relu(self.conv2(x))
        return self.fc(torch.flatten(self.gap(x), 1))

    def fold_batchnorm(self) -> None:
        """Replace conv1+bn1 by one conv, so the exported graph has no BatchNormalization."""
        self.conv1 = fuse_conv_bn_eval(self.conv1, self.bn1)
        self.bn1 = nn.Identity()


class DigitsResNet(nn.Module):
    def __init__(self, ch: int = 24) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, ch, 3, padding=1)
        self.depthwise = nn.Conv2d(ch, ch, 3, padding=1, groups=ch)
        self.pointwise = nn.Conv2d(ch, ch, 1)
        self.head = nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * ch, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        y = self.pointwise(nn.functional.relu6(self.depthwise(x)))
        x = torch.relu(x + y)  # the residual Add
        x = nn.functional.relu6(self.head(x))
        return self.fc(torch.flatten(self.gap(x), 1))


class DigitsMixer(nn.Module):
    """Rows as 8 tokens of 8 pixels; one pre-norm attention block and one MLP block."""

    def __init__(self, dim: int = 48) -> None:
        super().__init__()
        self.dim = dim
        self.embed = nn.Linear(8, dim)
        self.pos = nn.Parameter(torch.zeros(8, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp_in = nn.Linear(dim, 2 * dim)
        self.mlp_out = nn.Linear(2 * dim, dim)
        # A bare weight instead of nn.Linear: a 2-D Linear would export as Gemm, we want MatMul.
        self.cls_w = nn.Parameter(torch.randn(dim, 10) / math.sqrt(dim))
        self.cls_b = nn.Parameter(torch.zeros(10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x.reshape(-1, 8, 8)) + self.pos
        # Three Linears, not one split in three: chunk() exports as a Shape/Gather/Slice chain.
        h = self.norm1(t)
        q, k, v = self.q(h), self.k(h), self.v(h)
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(self.dim), dim=-1)
        t = t + self.proj(att @ v)
        t = t + self.mlp_out(torch.relu(self.mlp_in(self.norm2(t))))
        return t.mean(dim=1) @ self.cls_w + self.cls_b


# ---------------------------------------------------------------- training


def train(model: nn.Module, split: Split) -> None:
    gen = torch.Generator().manual_seed(SEED)
    x = torch.from_numpy(split.x_train)
    y = torch.from_numpy(split.y_train)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(EPOCHS):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), BATCH):
            idx = order[i : i + BATCH]
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
        sched.step()
    model.eval()


def torch_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


# ---------------------------------------------------------------- export


def constants_to_initializers(model: onnx.ModelProto) -> None:
    """Move tensor-valued Constant nodes (e.g. Clip bounds, Reshape shapes) into initializers."""
    graph = model.graph
    keep = []
    for node in graph.node:
        attr = node.attribute[0] if len(node.attribute) == 1 else None
        if node.op_type == "Constant" and attr is not None and attr.name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(attr.t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def name_matmul_weights(model: onnx.ModelProto) -> None:
    """Give the exporter's anonymous transposed weights ("onnx::MatMul_67") their layer's name."""
    graph = model.graph
    rename = {}
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1].startswith("onnx::"):
            layer = node.name.strip("/").rsplit("/", 1)[0]  # "/embed/MatMul" -> "embed"
            rename[node.input[1]] = f"{layer}.weight_t"
    for tensor in graph.initializer:
        tensor.name = rename.get(tensor.name, tensor.name)
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = rename.get(name, name)


def export(model: nn.Module, path: Path, opset: int) -> onnx.ModelProto:
    buf = io.BytesIO()
    torch.onnx.export(
        model,
        (torch.zeros(2, 1, 8, 8),),
        buf,
        dynamo=False,
        opset_version=opset,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        do_constant_folding=True,
    )
    onnx_model = onnx.load_from_string(buf.getvalue())
    constants_to_initializers(onnx_model)
    name_matmul_weights(onnx_model)
    onnx_model.producer_name = "ptq sample_models/make_samples.py"
    onnx_model.doc_string = f"{path.stem}: trained on sklearn digits (8x8, pixels/16), seed {SEED}"
    # Checked with strict shape inference, but saved without value_info: ptq infers its own.
    onnx.shape_inference.infer_shapes(onnx_model, check_type=True, strict_mode=True)
    onnx.checker.check_model(onnx_model, full_check=True)
    onnx.save(onnx_model, str(path))
    return onnx_model


def verify(model: nn.Module, path: Path, x: np.ndarray) -> tuple[np.ndarray, float]:
    """Run the exported file in onnxruntime; return its logits and the max |ort - torch|."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"input": x})[0]
    want = torch_logits(model, x)
    err = float(np.max(np.abs(got - want)))
    if err > 1e-4:
        raise SystemExit(f"{path.name}: onnxruntime differs from torch by {err:.3g} (> 1e-4)")
    return got, err


# ---------------------------------------------------------------- data


def write_samples(folder: Path, x: np.ndarray) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for i, sample in enumerate(x):
        np.save(folder / f"{i:04d}.npy", np.ascontiguousarray(sample[None], dtype=np.float32))


def write_data(split: Split) -> None:
    rng = np.random.default_rng(SEED)
    calib_idx = np.sort(rng.choice(len(split.x_train), size=N_CALIB, replace=False))
    write_samples(DATA_DIR / "calib", split.x_train[calib_idx])
    write_samples(DATA_DIR / "eval", split.x_test)
    labels = "".join(f"{int(v)}\n" for v in split.y_test)
    (DATA_DIR / "eval_labels.txt").write_text(labels)
    np.savez(DATA_DIR / "eval.npz", input=split.x_test, labels=split.y_test)


def main() -> int:
    seed_everything()
    split = load_split()
    write_data(split)
    specs = [
        ("digits_cnn", DigitsCNN, 13),
        ("digits_resnet", DigitsResNet, 13),
        ("digits_mixer", DigitsMixer, 17),
    ]
    for name, cls, opset in specs:
        torch.manual_seed(SEED)
        model = cls()
        train(model, split)
        if isinstance(model, DigitsCNN):
            model.fold_batchnorm()
        path = MODEL_DIR / f"{name}.onnx"
        onnx_model = export(model, path, opset)
        logits, err = verify(model, path, split.x_test)
        acc = float(np.mean(logits.argmax(1) == split.y_test))
        ops = sorted({n.op_type for n in onnx_model.graph.node})
        print(f"{name}: acc={acc:.4f} size={path.stat().st_size} B max|ort-torch|={err:.2g} ops={','.join(ops)}")
        if acc <= 0.9:
            raise SystemExit(f"{name}: accuracy {acc:.3f} is not above 0.9")
    return 0


if __name__ == "__main__":
    sys.exit(main())
