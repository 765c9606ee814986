"""The real folders in ../shared/realdata (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from ptq_cli.data import iter_batches, open_dataset
from ptq_cli.data.images import ImagePreprocess
from ptq_cli.model.io import input_specs

REALDATA = Path(__file__).resolve().parents[3] / "shared" / "realdata"
if not REALDATA.is_dir():
    REALDATA = Path("/work/shared/realdata")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not REALDATA.is_dir(), reason=f"{REALDATA} is absent (real models "
                                                               "and images for end-to-end tests)")]


def test_imagenet_images_with_imagenet_tf():
    specs = input_specs(onnx.load(REALDATA / "imagenet" / "mobilenet_v1_0.25_224.onnx"))
    ds = open_dataset(REALDATA / "imagenet" / "images", specs, image=ImagePreprocess.preset("imagenet-tf"))
    assert len(ds) == 1000
    calib = ds.shard(0, 10)  # the README's calibration split: every 10th file in sorted order
    assert len(calib) == 100
    batches = list(iter_batches(calib, specs, batch_size=1, max_samples=5))
    assert len(batches) == 5
    for batch in batches:
        x = batch.feeds["input"]
        assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32
        assert x.min() >= -1.0 and x.max() <= 1.0 and x.max() - x.min() > 1.0
    assert Path(batches[0].sources[0]).name == "n01440764_tench.JPEG"


def test_cifar10_class_folders_raw_on_batch_one_resnet8():
    specs = input_specs(onnx.load(REALDATA / "cifar10" / "resnet8.onnx"))
    ds = open_dataset(REALDATA / "cifar10" / "calib", specs, image=ImagePreprocess.preset("raw"))
    assert len(ds) == 1000
    labels = []
    for batch in iter_batches(ds.shard(0, 50), specs, batch_size=16):
        assert batch.size == 1 and batch.feeds["input_1"].shape == (1, 3, 32, 32)
        assert 0 <= batch.feeds["input_1"].min() and batch.feeds["input_1"].max() <= 255
        labels.extend(batch.labels)
    assert sorted(set(labels)) == list(range(10)) and len(labels) == 20
