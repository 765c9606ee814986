"""Loaders for the five real models of ../shared/realdata/, with the preprocessing and the
calibrate/evaluate split that its README states.

Each loader returns a `RealModel`: the model path, a calibration folder of `.npy` files (one
sample per file, shape [1, ...]) and the evaluation split as memory-mapped `.npy` arrays. The
arrays are decoded once into a cache folder (bench/.cache/ by default) and reused; the SAME
files feed ptq (`--data` folder) and onnxruntime.quantization (a CalibrationDataReader over
them), so the two tools see identical bytes.

Images are decoded with Pillow here, not with ptq's reader, so that the benchmark does not
depend on the code it measures.

Subsets: a calibration count below the README's split and `eval_limit` take evenly spaced
samples of the sorted split, not its first N: the CIFAR-10 folders are sorted by class, so the
first 100 would all be airplanes.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

REALDATA = Path(os.environ.get("PTQ_REALDATA", Path(__file__).resolve().parents[2] / "shared" / "realdata"))
CACHE = Path(os.environ.get("PTQ_BENCH_CACHE", Path(__file__).resolve().parent / ".cache"))


@dataclass(frozen=True)
class RealModel:
    """A real model with its data, ready for quantization and evaluation."""

    name: str
    model_path: Path
    input_name: str
    calib_dir: Path  # one sample per .npy file, shape [1, ...], float32
    eval_x: np.ndarray  # [N, ...] float32 (memory-mapped)
    eval_y: np.ndarray  # [N] int64
    eval_batch: int  # 1 where the model fixes the batch dimension at 1
    reference: str  # the README's FP32 figure, for the eye

    @property
    def calib_count(self) -> int:
        return len(list(self.calib_dir.glob("*.npy")))


@dataclass(frozen=True)
class LoadOptions:
    """How much data to use. None = the README's split."""

    calib_count: int | None = None
    eval_limit: int | None = None
    cache: Path = CACHE


def names() -> list[str]:
    return list(_LOADERS)


def load(name: str, options: LoadOptions = LoadOptions()) -> RealModel:
    if name not in _LOADERS:
        raise SystemExit(f"unknown model {name!r}; choose from {', '.join(_LOADERS)}")
    if not REALDATA.is_dir():
        raise SystemExit(f"real data not found at {REALDATA}; set PTQ_REALDATA to the realdata folder")
    return _LOADERS[name](options)


# --- the five models ------------------------------------------------------------------------

def mobilenet(options: LoadOptions) -> RealModel:
    """MobileNetV1-0.25, ImageNet samples: calibrate on sorted index % 10 == 0, evaluate the rest."""
    folder = REALDATA / "imagenet"
    files = sorted((folder / "images").glob("*.JPEG"))
    wnids = sorted({f.name.split("_")[0] for f in files})
    rank = {w: i for i, w in enumerate(wnids)}
    labels = np.array([rank[f.name.split("_")[0]] for f in files], dtype=np.int64)
    calib = [f for i, f in enumerate(files) if i % 10 == 0]
    evaluate = [i for i in range(len(files)) if i % 10 != 0]
    return _assemble(
        "mobilenet", folder / "mobilenet_v1_0.25_224.onnx", "input", "imagenet-tf", options,
        calib_items=calib, calib_decode=_imagenet_tf,
        eval_items=[files[i] for i in evaluate], eval_labels=labels[evaluate], eval_decode=_imagenet_tf,
        eval_batch=16, reference="58.8 % on the 900 (README)")


def resnet8(options: LoadOptions) -> RealModel:
    return _cifar("resnet8", "resnet8.onnx", "input_1", "75.48 % on the 10000 (README)", options)


def resnet_large(options: LoadOptions) -> RealModel:
    return _cifar("resnet_large", "resnet_large.onnx", "serving_default_input_5:0",
                  "81.03 % on the 10000 (README)", options)


def mnist_cntk(options: LoadOptions) -> RealModel:
    return _mnist("mnist_cntk", "mnist-cntk-opset15.onnx", "Input3", "mnist-raw", _raw_pixels,
                  "98.91 % on all 10000 (README)", options)


def cnn_mnist_pytorch(options: LoadOptions) -> RealModel:
    return _mnist("cnn_mnist_pytorch", "cnn_mnist_pytorch.onnx", "0", "mnist-norm", _torch_mnist,
                  "99.07 % on all 10000 (README)", options)


def _cifar(name: str, file: str, input_name: str, reference: str, options: LoadOptions) -> RealModel:
    folder = REALDATA / "cifar10"
    calib, _ = _class_folder(folder / "calib")
    test, labels = _class_folder(folder / "test")
    return _assemble(
        name, folder / file, input_name, "cifar10-raw", options,
        calib_items=calib, calib_decode=_cifar_pixels,
        eval_items=test, eval_labels=labels, eval_decode=_cifar_pixels,
        eval_batch=1, reference=reference)


def _mnist(name: str, file: str, input_name: str, key: str, transform: Callable[[np.ndarray], np.ndarray],
           reference: str, options: LoadOptions) -> RealModel:
    folder = REALDATA / "mnist"
    images = _read_idx(folder / "t10k-images-idx3-ubyte.gz")  # [10000, 28, 28] uint8
    labels = _read_idx(folder / "t10k-labels-idx1-ubyte.gz").astype(np.int64)

    def decode(i: int) -> np.ndarray:
        return transform(images[i][None, :, :])

    return _assemble(
        name, folder / file, input_name, key, options,
        calib_items=list(range(1000)), calib_decode=decode,
        eval_items=list(range(1000, len(images))), eval_labels=labels[1000:], eval_decode=decode,
        eval_batch=1, reference=reference)


_LOADERS: dict[str, Callable[[LoadOptions], RealModel]] = {
    "mobilenet": mobilenet,
    "resnet8": resnet8,
    "resnet_large": resnet_large,
    "mnist_cntk": mnist_cntk,
    "cnn_mnist_pytorch": cnn_mnist_pytorch,
}


# --- preprocessing (each returns one sample [C, H, W] float32) --------------------------------

def _imagenet_tf(path: Path) -> np.ndarray:
    """RGB, short side to 256 (bilinear), centre crop 224, x / 127.5 - 1, CHW."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        scale = 256 / min(w, h)
        size = (256, max(256, round(h * scale))) if w <= h else (max(256, round(w * scale)), 256)
        img = img.resize(size, Image.BILINEAR)
        left, top = round((size[0] - 224) / 2), round((size[1] - 224) / 2)
        img = img.crop((left, top, left + 224, top + 224))
        x = np.asarray(img, dtype=np.float32)
    return (x / 127.5 - 1.0).transpose(2, 0, 1)


def _cifar_pixels(path: Path) -> np.ndarray:
    """RGB pixel values 0..255 as float, no scaling, CHW."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float32).transpose(2, 0, 1)


def _raw_pixels(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32)


def _torch_mnist(x: np.ndarray) -> np.ndarray:
    return ((x.astype(np.float32) / 255.0 - 0.1307) / 0.3081).astype(np.float32)


def _class_folder(root: Path) -> tuple[list[Path], np.ndarray]:
    """Files of class sub-folders in sorted order; the label is the folder's rank."""
    files, labels = [], []
    for label, sub in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
        for f in sorted(sub.glob("*.jpg")):
            files.append(f)
            labels.append(label)
    return files, np.array(labels, dtype=np.int64)


def _read_idx(path: Path) -> np.ndarray:
    """The IDX format of MNIST: big-endian magic (dtype, rank), the dims, then the data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise SystemExit(f"{path}: not an unsigned-byte IDX file")
    rank = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank).reshape(dims)


# --- the cache ---------------------------------------------------------------------------------

def _assemble(name: str, model_path: Path, input_name: str, key: str, options: LoadOptions, *,
              calib_items: list, calib_decode: Callable, eval_items: list, eval_labels: np.ndarray,
              eval_decode: Callable, eval_batch: int, reference: str) -> RealModel:
    base = options.cache / "realdata" / key
    chosen = _evenly_spaced(len(calib_items), options.calib_count)
    calib_dir = _calibration_folder(base / f"calib_{len(chosen)}", [calib_items[i] for i in chosen], calib_decode)
    eval_x, eval_y = _evaluation_arrays(base, eval_items, eval_labels, eval_decode)
    keep = _evenly_spaced(len(eval_y), options.eval_limit)
    if len(keep) < len(eval_y):
        eval_x, eval_y = eval_x[keep], eval_y[keep]  # fancy indexing copies only the kept rows
    return RealModel(name, model_path, input_name, calib_dir, eval_x, eval_y, eval_batch, reference)


def _evenly_spaced(total: int, limit: int | None) -> np.ndarray:
    if limit is None or limit >= total:
        return np.arange(total)
    if limit <= 0:
        raise SystemExit(f"a sample count must be positive, got {limit}")
    return (np.arange(limit) * total) // limit


def _calibration_folder(folder: Path, items: list, decode: Callable) -> Path:
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        for i, item in enumerate(items):
            np.save(tmp / f"{i:05d}.npy", decode(item)[None])
        os.replace(tmp, folder)  # atomic: an interrupted run leaves no half-written cache
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _evaluation_arrays(base: Path, items: list, labels: np.ndarray, decode: Callable) -> tuple[np.ndarray, np.ndarray]:
    x_path, y_path = base / "eval_x.npy", base / "eval_y.npy"
    if not (x_path.is_file() and y_path.is_file()):
        base.mkdir(parents=True, exist_ok=True)
        first = decode(items[0])
        tmp = base / "eval_x.npy.tmp"
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(items), *first.shape))
        for i, item in enumerate(items):  # streamed: the decoded split never sits in memory
            out[i] = first if i == 0 else decode(item)
        out.flush()
        del out
        np.save(y_path, labels.astype(np.int64))
        os.replace(tmp, x_path)
    x = np.load(x_path, mmap_mode="r")
    y = np.load(y_path)
    if len(x) != len(y):
        raise SystemExit(f"cache {base} is inconsistent ({len(x)} inputs, {len(y)} labels): delete it")
    return x, y


def batches(model: RealModel, batch: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(inputs, labels) of the evaluation split, `batch` rows at a time (the model's own by default)."""
    size = batch or model.eval_batch
    for start in range(0, len(model.eval_y), size):
        yield np.ascontiguousarray(model.eval_x[start:start + size]), model.eval_y[start:start + size]
