"""Image folders: decoding (Pillow, imported lazily) and the preprocessing a model was trained with.

Order of operations, as torchvision and Keras do it: resize the short side (bilinear), centre
crop, convert to float, swap to BGR if asked, then (x * scale - mean) / std per channel, then
the model's layout (NCHW or NHWC) with a batch axis. mean and std are in the model's channel
order (after the BGR swap), as Caffe publishes its means.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ptq_cli.data.dataset import Entry
from ptq_cli.errors import DataError, UsageError
from ptq_cli.model.io import InputSpec

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class Layout(enum.Enum):
    NCHW = "NCHW"
    NHWC = "NHWC"


@dataclass(frozen=True)
class ImagePreprocess:
    """How to turn an image file into a model input. Defaults: raw 0..255 RGB values."""

    resize: int | None = None                 # short side, before cropping
    crop: tuple[int, int] | None = None       # (height, width) of the centre crop
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)          # one value, or one per channel
    std: tuple[float, ...] = (1.0,)
    bgr: bool = False
    layout: Layout | None = None              # None: guessed from the input's shape
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        if self.resize is not None and self.resize < 1:
            raise UsageError(f"resize must be a positive size, got {self.resize}")
        if self.crop is not None and (len(self.crop) != 2 or min(self.crop) < 1):
            raise UsageError(f"crop must be (height, width) with positive sizes, got {self.crop}")
        for what, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, 3):
                raise UsageError(f"{what} needs 1 value or 3 (one per channel), got {len(values)}")
        if any(s == 0 for s in self.std):
            raise UsageError("std must not contain 0 (the image would be divided by zero)")
        if self.scale == 0:
            raise UsageError("scale must not be 0 (every image would become constant)")

    @classmethod
    def preset(cls, name: str) -> ImagePreprocess:
        """A named preset: imagenet-torch, imagenet-tf, caffe, raw, unit."""
        try:
            return replace(PRESETS[name], name=name)
        except KeyError:
            raise UsageError(f"unknown image preset {name!r}; choose one of "
                             f"{', '.join(PRESETS)}") from None

    def describe(self) -> str:
        parts = [self.name]
        if self.resize:
            parts.append(f"resize {self.resize}")
        if self.crop:
            parts.append(f"crop {self.crop[0]}x{self.crop[1]}")
        return ", ".join(parts)

    def apply(self, image, spec: InputSpec, source: str) -> np.ndarray:
        """A decoded PIL image -> array shaped like `spec` (batch of one), in float32."""
        layout, channels, height, width = image_geometry(spec, self.layout, source)
        image = image.convert("L" if channels == 1 else "RGB")
        image = self._resize_and_crop(image, height, width, source)
        pixels = np.asarray(image, dtype=np.float32)
        if pixels.ndim == 2:
            pixels = pixels[:, :, np.newaxis]
        if self.bgr and pixels.shape[2] == 3:
            pixels = pixels[:, :, ::-1]
        if pixels.shape[2] == 1 and (len(self.mean) == 3 or len(self.std) == 3):
            raise UsageError("the model takes 1 channel (grayscale) but mean/std have 3 values; "
                             "give one value each with --mean and --std")
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        pixels = (pixels * np.float32(self.scale) - mean) / std
        if layout is Layout.NCHW:
            pixels = pixels.transpose(2, 0, 1)
        return np.ascontiguousarray(pixels[np.newaxis], dtype=np.float32)

    def _resize_and_crop(self, image, height: int | None, width: int | None, source: str):
        # optional: the images extra (the image given came from Pillow)
        from PIL import Image

        bilinear = Image.Resampling.BILINEAR
        if self.resize is not None:
            w, h = image.size
            short, long = min(w, h), max(w, h)
            new_long = int(self.resize * long / short)  # truncation, as torchvision does
            size = (self.resize, new_long) if w <= h else (new_long, self.resize)
            if size != image.size:
                image = image.resize(size, bilinear)
        elif self.crop is None and height and width and image.size != (width, height):
            return image.resize((width, height), bilinear)
        crop = self.crop
        if crop is None and self.resize is not None and height and width:
            crop = (height, width)  # resize given without crop: cut the model's size from the centre
        if crop is not None:
            image = _centre_crop(image, crop, source)
        return image


PRESETS = {
    "imagenet-torch": ImagePreprocess(resize=256, crop=(224, 224), scale=1 / 255,
                                      mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    "imagenet-tf": ImagePreprocess(resize=256, crop=(224, 224), scale=1 / 127.5, mean=(1.0,)),
    "caffe": ImagePreprocess(resize=256, crop=(224, 224), bgr=True,
                             mean=(103.939, 116.779, 123.68)),
    "raw": ImagePreprocess(),
    "unit": ImagePreprocess(scale=1 / 255),
}


def _centre_crop(image, crop: tuple[int, int], source: str):
    ch, cw = crop
    w, h = image.size
    if ch > h or cw > w:
        raise DataError(f"{source}: image is {w}x{h} (after resizing), smaller than the "
                        f"{cw}x{ch} crop; resize it first (--resize) or crop less")
    top = int(round((h - ch) / 2.0))
    left = int(round((w - cw) / 2.0))
    return image.crop((left, top, left + cw, top + ch))


def image_geometry(spec: InputSpec, layout: Layout | None,
                   source: str) -> tuple[Layout, int, int | None, int | None]:
    """(layout, channels, height, width) of an image input; guesses NCHW/NHWC from 1/3 channels."""
    if len(spec.shape) != 4:
        raise DataError(f"{source}: images need a 4-D input ([N,C,H,W] or [N,H,W,C]) but input "
                        f"{spec.name!r} has shape {list(spec.shape)}; save arrays as .npy/.npz instead")
    if layout is None:
        nhwc = spec.shape[3] in (1, 3) and spec.shape[1] not in (1, 3)
        layout = Layout.NHWC if nhwc else Layout.NCHW
    if layout is Layout.NCHW:
        channels, height, width = spec.shape[1], spec.shape[2], spec.shape[3]
    else:
        height, width, channels = spec.shape[1], spec.shape[2], spec.shape[3]
    if channels not in (None, 1, 3):
        raise DataError(f"input {spec.name!r} has {channels} channels in {layout.value} layout; "
                        "images give 1 (grayscale) or 3 (RGB); check --layout")
    return layout, channels or 3, height, width


def open_image(path: Path, source: str):
    try:  # optional: the images extra
        from PIL import Image
    except ImportError:
        raise DataError("reading images needs Pillow: pip install 'ptq-cli[images]'") from None
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()  # closing the file would release the decoded pixels
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{source}: cannot decode the image ({exc}); remove or replace it") from None


@dataclass(frozen=True)
class ImageReader:
    """One image per sample, preprocessed for the model's only input."""

    spec: InputSpec
    preprocess: ImagePreprocess

    def read(self, entry: Entry) -> dict[str, np.ndarray]:
        image = open_image(entry.paths[0], entry.source)
        return {self.spec.name: _to_dtype(self.preprocess.apply(image, self.spec, entry.source),
                                          self.spec, entry.source)}

    def rows(self, entry: Entry) -> int:
        return 1


def _to_dtype(array: np.ndarray, spec: InputSpec, source: str) -> np.ndarray:
    """Images are computed in float32; integer inputs (uint8 models) take whole values only."""
    if spec.dtype.kind == "f":
        return array.astype(spec.dtype, copy=False)
    info = np.iinfo(spec.dtype) if spec.dtype.kind in "ui" else None
    if info is None or not np.array_equal(array, np.round(array)) \
            or array.min() < info.min or array.max() > info.max:
        raise DataError(f"{source}: input {spec.name!r} takes {spec.dtype} but the preprocessed "
                        f"image is not whole numbers in that range; use --preset raw")
    return array.astype(spec.dtype)
