"""Image folders and ImagePreprocess, checked against hand computations on tiny generated images."""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto

from ptq_cli.data import iter_batches, open_dataset
from ptq_cli.data.images import ImagePreprocess, Layout
from ptq_cli.errors import DataError, UsageError
from ptq_cli.model.io import input_specs
from tests.data.conftest import add_model, relu_model

Image = pytest.importorskip("PIL.Image")


def pattern_image(height=4, width=6) -> np.ndarray:
    """pixel(y, x, c) = 10*y + x + 100*c, so every value says where it came from."""
    y, x, c = np.meshgrid(np.arange(height), np.arange(width), np.arange(3), indexing="ij")
    return (10 * y + x + 100 * c).astype(np.uint8)


def save(path, pixels, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels)
    if mode == "P":  # an adaptive palette keeps the colours exact
        image = image.convert("P", palette=Image.Palette.ADAPTIVE)
    elif mode:
        image = image.convert(mode)
    image.save(path)
    return path


def one(folder, shape, preprocess, elem=TensorProto.FLOAT):
    specs = input_specs(relu_model(shape, elem))
    samples = list(open_dataset(folder, specs, image=preprocess))
    assert len(samples) == 1
    return samples[0].feeds["x"]


def test_centre_crop_scale_mean_std_nchw(tmp_path):
    save(tmp_path / "a.png", pattern_image())
    pre = ImagePreprocess(crop=(2, 2), scale=0.5, mean=(1.0, 2.0, 3.0), std=(2.0, 4.0, 8.0))
    got = one(tmp_path, ("N", 3, 2, 2), pre)
    # 4x6 image, 2x2 crop: top = (4-2)/2 = 1, left = (6-2)/2 = 2.
    expected = np.empty((1, 3, 2, 2), np.float32)
    for c, (m, s) in enumerate(zip((1.0, 2.0, 3.0), (2.0, 4.0, 8.0))):
        for i in range(2):
            for j in range(2):
                expected[0, c, i, j] = ((10 * (1 + i) + (2 + j) + 100 * c) * 0.5 - m) / s
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got.dtype == np.float32


def test_bgr_and_nhwc(tmp_path):
    save(tmp_path / "a.png", pattern_image())
    pre = ImagePreprocess(crop=(2, 2), bgr=True, mean=(5.0, 0.0, 0.0))
    got = one(tmp_path, ("N", 2, 2, 3), pre)  # NHWC guessed from the trailing 3
    assert got.shape == (1, 2, 2, 3)
    # BGR: channel 0 is blue (c=2 in the pattern), and the mean is in BGR order.
    assert got[0, 0, 0].tolist() == [10 + 2 + 200 - 5.0, 10 + 2 + 100, 10 + 2]
    # [N,3,3,3] would be guessed NCHW; --layout NHWC forces channels last. Crop 3x3 of 4x6:
    # top = round(0.5) = 0, left = round(1.5) = 2 (half to even, as torchvision).
    forced = one(tmp_path, ("N", 3, 3, 3), ImagePreprocess(crop=(3, 3), layout=Layout.NHWC))
    assert forced[0, 0, 0].tolist() == [2, 102, 202] and forced[0, 1, 0].tolist() == [12, 112, 212]


def test_grayscale_when_the_model_takes_one_channel(tmp_path):
    pixels = np.array([[[200, 100, 50], [7, 7, 7]]], np.uint8)  # 1x2
    save(tmp_path / "a.png", pixels)
    got = one(tmp_path, ("N", 1, 1, 2), ImagePreprocess())
    # ITU-R 601-2 luma, as Pillow's "L": 200*.299 + 100*.587 + 50*.114 = 124.2 -> 124.
    assert got.tolist() == [[[[124.0, 7.0]]]]
    with pytest.raises(UsageError, match="takes 1 channel .* mean/std have 3 values"):
        one(tmp_path, ("N", 1, 1, 2), ImagePreprocess.preset("imagenet-torch"))


def test_resize_short_side_is_bilinear(tmp_path):
    save(tmp_path / "a.png", np.array([[[0] * 3, [100] * 3]], np.uint8))  # 2 wide, 1 high
    got = one(tmp_path, ("N", 3, 2, 4), ImagePreprocess(resize=2))  # short side 1 -> 2: 4x2
    # Output pixel centres map to input x = (j + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25;
    # linear weights, clamped at the edges: 0, 25, 75, 100.
    assert got[0, 0].tolist() == [[0, 25, 75, 100]] * 2
    assert (got[0, 0] == got[0, 2]).all()


def test_resize_to_the_model_size_when_nothing_else_is_given(tmp_path):
    save(tmp_path / "a.png", np.array([[[0] * 3, [100] * 3]], np.uint8))
    got = one(tmp_path, ("N", 3, 2, 4), ImagePreprocess())
    assert got[0, 1].tolist() == [[0, 25, 75, 100]] * 2
    save(tmp_path / "a.png", pattern_image())  # same size as the model: untouched
    assert one(tmp_path, ("N", 3, 4, 6), ImagePreprocess())[0, 0, 3, 5] == 35


def test_resize_without_crop_cuts_the_model_size_from_the_centre(tmp_path):
    save(tmp_path / "a.png", np.full((40, 60, 3), 9, np.uint8))
    got = one(tmp_path, ("N", 3, 16, 16), ImagePreprocess(resize=20))  # 30x20 -> crop 16x16
    assert got.shape == (1, 3, 16, 16) and (got == 9).all()


@pytest.mark.parametrize("name,rgb,expected", [
    ("imagenet-tf", (255, 0, 51), (1.0, -1.0, 51 / 127.5 - 1)),
    ("imagenet-torch", (255, 0, 51), ((1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0.2 - 0.406) / 0.225)),
    ("caffe", (255, 0, 51), (51 - 103.939, 0 - 116.779, 255 - 123.68)),
    ("raw", (255, 0, 51), (255, 0, 51)),
    ("unit", (255, 0, 51), (1.0, 0.0, 0.2)),
])
def test_presets(tmp_path, name, rgb, expected):
    # 300x260 of one colour: resize 256 + crop 224 keep the colour, so each channel is constant.
    save(tmp_path / "a.png",
         np.broadcast_to(np.array(rgb, np.uint8), (260, 300, 3)).copy())
    got = one(tmp_path, ("N", 3, 224, 224), ImagePreprocess.preset(name))
    assert got.shape == (1, 3, 224, 224)
    for c in range(3):
        np.testing.assert_allclose(got[0, c], expected[c], rtol=1e-5, atol=1e-5)


def test_preset_fields_and_unknown_preset():
    tf = ImagePreprocess.preset("imagenet-tf")
    assert (tf.resize, tf.crop, tf.scale, tf.mean, tf.bgr) == (256, (224, 224), 1 / 127.5, (1.0,), False)
    assert ImagePreprocess.preset("caffe").bgr
    with pytest.raises(UsageError, match="unknown image preset 'imagenet'; choose one of "
                                         "imagenet-torch, imagenet-tf, caffe, raw, unit"):
        ImagePreprocess.preset("imagenet")


@pytest.mark.parametrize("kwargs,message", [
    ({"std": (1.0, 0.0, 1.0)}, "std must not contain 0"),
    ({"mean": (1.0, 2.0)}, "mean needs 1 value or 3"),
    ({"resize": 0}, "resize must be a positive size"),
    ({"crop": (0, 3)}, "crop must be"),
    ({"scale": 0.0}, "scale must not be 0"),
])
def test_invalid_preprocess(kwargs, message):
    with pytest.raises(UsageError, match=message):
        ImagePreprocess(**kwargs)


def test_crop_larger_than_image(tmp_path):
    save(tmp_path / "small.png", pattern_image())
    with pytest.raises(DataError, match=r"small\.png: image is 6x4 \(after resizing\), smaller than "
                                        r"the 8x8 crop"):
        one(tmp_path, ("N", 3, 8, 8), ImagePreprocess(crop=(8, 8)))


def test_image_size_mismatch_names_the_file(tmp_path):
    save(tmp_path / "a.png", pattern_image())
    with pytest.raises(DataError, match=r"a\.png: input 'x' expects shape \[\?,3,8,8\], got \(1,3,2,2\)"):
        one(tmp_path, ("N", 3, 8, 8), ImagePreprocess(crop=(2, 2)))


def test_class_subfolders_give_labels_by_sorted_rank(tmp_path):
    for folder, count in (("dog", 2), ("cat", 1), ("emu", 0), ("zebra", 1)):
        (tmp_path / folder).mkdir()
        for i in range(count):
            save(tmp_path / folder / f"{i}.png", np.full((2, 2, 3), 10 * i, np.uint8))
    (tmp_path / "zebra" / "notes.txt").write_text("ignored")
    specs = input_specs(relu_model(("N", 3, 2, 2)))
    ds = open_dataset(tmp_path, specs, image=ImagePreprocess.preset("raw"))
    assert ds.description == f"image class folder {tmp_path} (4 images), preprocess raw"
    assert [(s.source.split("/")[-2], s.label) for s in ds] == \
        [("cat", 0), ("dog", 1), ("dog", 1), ("zebra", 3)]
    batch = next(iter_batches(ds, specs, batch_size=4))
    assert batch.labels == (0, 1, 1, 3) and batch.feeds["x"].shape == (4, 3, 2, 2)
    session = ort.InferenceSession(relu_model(("N", 3, 2, 2)).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, batch.feeds)[0], batch.feeds["x"])
    # A labels file overrides the folder ranks.
    (tmp_path.parent / "labels.txt").write_text("7 7 7 7")
    ds = open_dataset(tmp_path, specs, image=ImagePreprocess(), labels=tmp_path.parent / "labels.txt")
    assert [s.label for s in ds] == [7, 7, 7, 7]


def test_every_image_extension_and_mode(tmp_path):
    pixels = np.full((2, 2, 3), 60, np.uint8)
    save(tmp_path / "1.png", pixels, "RGBA")
    save(tmp_path / "2.PNG", pixels, "P")
    save(tmp_path / "3.bmp", pixels)
    save(tmp_path / "4.jpeg", pixels)
    save(tmp_path / "5.jpg", pixels)
    save(tmp_path / "6.webp", pixels)
    got = [s.feeds["x"] for s in open_dataset(tmp_path, input_specs(relu_model(("N", 3, 2, 2))),
                                               image=ImagePreprocess())]
    assert len(got) == 6
    for array in got:
        np.testing.assert_allclose(array, 60, atol=2)  # jpeg/webp are lossy


def test_images_need_a_preprocess_choice(tmp_path):
    save(tmp_path / "a.png", pattern_image())
    with pytest.raises(UsageError, match="holds images: say how to preprocess them with --preset"):
        open_dataset(tmp_path, input_specs(relu_model(("N", 3, 4, 6))))


def test_images_need_one_4d_input(tmp_path):
    save(tmp_path / "a.png", pattern_image())
    with pytest.raises(DataError, match="holds images but the model has 2 inputs"):
        open_dataset(tmp_path, input_specs(add_model()), image=ImagePreprocess())
    with pytest.raises(DataError, match=r"images need a 4-D input .* has shape \[None, 6\]"):
        list(open_dataset(tmp_path, input_specs(relu_model(("N", 6))), image=ImagePreprocess()))


def test_uint8_inputs_take_raw_pixels(tmp_path):
    save(tmp_path / "a.png", pattern_image())
    got = one(tmp_path, ("N", 3, 4, 6), ImagePreprocess(), elem=TensorProto.UINT8)
    assert got.dtype == np.uint8 and got[0, 2, 3, 5] == 235
    with pytest.raises(DataError, match="takes uint8 but the preprocessed image is not whole numbers"):
        one(tmp_path, ("N", 3, 4, 6), ImagePreprocess.preset("unit"), elem=TensorProto.UINT8)


def test_corrupt_image_names_the_file(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"bad\.jpg: cannot decode the image"):
        list(open_dataset(tmp_path, input_specs(relu_model(("N", 3, 2, 2))), image=ImagePreprocess()))


def test_missing_pillow_says_how_to_install(tmp_path, monkeypatch):
    save(tmp_path / "a.png", pattern_image())
    ds = open_dataset(tmp_path, input_specs(relu_model(("N", 3, 4, 6))), image=ImagePreprocess())
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(DataError, match=r"pip install 'ptq-cli\[images\]'"):
        list(ds)
