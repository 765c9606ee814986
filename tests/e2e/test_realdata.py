"""End to end on the real models of ../shared/realdata (skipped when it is absent): every model,
including the opset-9/11 ones onnxruntime's own quantizer breaks, gives a valid per-channel
INT8 model that agrees with FP32."""

import gzip
import shutil

import numpy as np
import onnx
import pytest

import ptq_cli
from tests.conftest import REALDATA, run

pytestmark = pytest.mark.skipif(not REALDATA.is_dir(), reason=f"{REALDATA} is absent")


def _mnist(tmp_path, normalize: bool):
    raw = gzip.open(REALDATA / "mnist" / "t10k-images-idx3-ubyte.gz").read()[16:]
    images = np.frombuffer(raw, np.uint8).reshape(-1, 1, 1, 28, 28)[:24].astype(np.float32)
    if normalize:
        images = (images / 255 - 0.1307) / 0.3081
    folder = tmp_path / "mnist"
    folder.mkdir()
    for i, image in enumerate(images):
        np.save(folder / f"{i:03d}.npy", image.astype(np.float32))
    return folder


def _images(tmp_path, source, pattern):
    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted(source.glob(pattern))[:24]:
        shutil.copy(path, folder / path.name)
    return folder


CASES = {
    "mobilenet": ("imagenet/mobilenet_v1_0.25_224.onnx", "imagenet-tf"),
    "resnet8": ("cifar10/resnet8.onnx", "raw"),
    "resnet_large": ("cifar10/resnet_large.onnx", "raw"),
    "mnist_cntk": ("mnist/mnist-cntk-opset15.onnx", None),
    "cnn_mnist_pytorch": ("mnist/cnn_mnist_pytorch.onnx", None),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_real_model_quantizes_to_a_valid_agreeing_model(name, tmp_path):
    model_path, preset = CASES[name]
    if name == "mobilenet":
        data = _images(tmp_path, REALDATA / "imagenet" / "images", "*.JPEG")
    elif preset == "raw":
        data = _images(tmp_path, REALDATA / "cifar10" / "test" / "cat", "*.jpg")
    else:
        data = _mnist(tmp_path, normalize=name == "cnn_mnist_pytorch")
    image = ptq_cli.ImagePreprocess.preset(preset) if preset else None
    source = REALDATA / model_path
    before = source.read_bytes()
    result = ptq_cli.quantize(source, tmp_path / "int8.onnx", data=data, image=image, progress=False)
    assert source.read_bytes() == before
    onnx.checker.check_model(str(result.output), full_check=True)
    assert not [s for s in result.skipped if s.op_type in ("Conv", "Gemm", "MatMul")]
    # Top-1 of INT8 agrees with FP32 on the calibration samples.
    from ptq_cli.data import iter_batches, open_dataset
    from ptq_cli.model.io import input_specs, load_model

    fp32 = load_model(source)
    specs = input_specs(fp32)
    agree = total = 0
    for batch in iter_batches(open_dataset(data, specs, image=image), specs, batch_size=1):
        a = run(fp32, batch.feeds)[0].argmax(-1)
        b = run(result.model, batch.feeds)[0].argmax(-1)
        agree, total = agree + int((a == b).sum()), total + a.size
    assert agree / total >= 0.8, f"{name}: {agree}/{total}"
