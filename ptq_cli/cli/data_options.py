"""The --data family of flags shared by calibrate, quantize and compare.

    @main.command()
    @click.argument("model")
    @data_options                      # or @data_options(required=False)
    def calibrate(model, **kwargs):
        dataset = dataset_from_options(model, **pop_data_options(kwargs))
        ...                            # kwargs now holds only the command's own flags
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import onnx

from ptq_cli.data import Dataset, open_dataset
from ptq_cli.data.images import PRESETS, ImagePreprocess, Layout
from ptq_cli.errors import UsageError
from ptq_cli.model.io import input_specs, load_model

IMAGE_OPTION_NAMES = ("preset", "resize", "crop", "scale", "mean", "std", "bgr", "layout")
DATA_OPTION_NAMES = ("data", "labels") + IMAGE_OPTION_NAMES


class CropSize(click.ParamType):
    """224 (square) or HxW, e.g. 224x192."""

    name = "SIZE"

    def convert(self, value: Any, param, ctx) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        parts = str(value).lower().split("x")
        try:
            sizes = tuple(int(p) for p in parts)
        except ValueError:
            sizes = ()
        if len(sizes) not in (1, 2) or min(sizes, default=0) < 1:
            self.fail(f"{value!r} is not a size; write 224 or HEIGHTxWIDTH such as 224x192",
                      param, ctx)
        return (sizes[0], sizes[-1])


class FloatList(click.ParamType):
    """One number, or one per channel separated by commas."""

    name = "FLOATS"

    def convert(self, value: Any, param, ctx) -> tuple[float, ...]:
        if isinstance(value, tuple):
            return value
        try:
            values = tuple(float(v) for v in str(value).replace(" ", "").split(","))
        except ValueError:
            self.fail(f"{value!r} is not a number or a comma-separated list such as "
                      "0.485,0.456,0.406", param, ctx)
        if len(values) not in (1, 3):
            self.fail(f"give 1 value or 3 (one per channel), got {len(values)}", param, ctx)
        return values


def _options(required: bool) -> list:
    return [
        click.option("--data", type=click.Path(exists=True, path_type=Path), required=required,
                     metavar="DIR",
                     help="Calibration/evaluation data: a folder of .npy (single-input models), "
                          ".npz (one key per input name) or .pb TensorProto files, ONNX model-zoo "
                          "test_data_set_*/input_N.pb folders, or images (jpg/png/bmp/webp, "
                          "optionally in class sub-folders). A single .npy/.npz/.pb file works too."),
        click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     metavar="FILE",
                     help="Class labels (0-based), one per sample in sorted file order: text of "
                          "integers, .npy/.npz, CSV (header naming a label column) or JSON. Image "
                          "class sub-folders give labels without this."),
        click.option("--preset", type=click.Choice(list(PRESETS)),
                     help="Image preprocessing preset; the flags below override "
                          "its fields. imagenet-tf: resize 256, crop 224, x/127.5-1."),
        click.option("--resize", type=click.IntRange(min=1), metavar="N",
                     help="Resize the image's short side to N pixels (bilinear) before cropping. "
                          "Without --resize/--crop, images are resized to the model's H,W."),
        click.option("--crop", type=CropSize(),
                     help="Centre crop to SIZE (224, or HEIGHTxWIDTH) after resizing."),
        click.option("--scale", type=float, metavar="X",
                     help="Multiply pixel values (0..255) by X, e.g. 0.00392157 for 1/255."),
        click.option("--mean", type=FloatList(),
                     help="Subtract after scaling: one value or R,G,B (B,G,R with --bgr)."),
        click.option("--std", type=FloatList(),
                     help="Divide by after subtracting the mean: one value or one per channel."),
        click.option("--bgr", is_flag=True, default=None,
                     help="Feed channels in BGR order (Caffe/OpenCV-trained models)."),
        click.option("--layout", type=click.Choice([layout.value for layout in Layout], case_sensitive=False),
                     help="Image input layout; guessed from the input's shape when omitted."),
    ]


def data_options(f=None, *, required: bool = True):
    """Decorator adding --data, --labels and the image preprocessing flags to a click command."""

    def decorate(func):
        # Applied in reverse so that --help lists them in the order written above.
        for option in reversed(_options(required)):
            func = option(func)
        return func

    return decorate(f) if f is not None else decorate


def pop_data_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Remove the data flags from a command's kwargs (so the rest can be passed on) and return them."""
    return {name: kwargs.pop(name) for name in DATA_OPTION_NAMES if name in kwargs}


def image_preprocess_from_options(**opts: Any) -> ImagePreprocess | None:
    """The preset (or plain defaults) with every given flag applied; None when no image flag is set."""
    given = {name: opts[name] for name in IMAGE_OPTION_NAMES if opts.get(name) is not None}
    if not given:
        return None
    base = ImagePreprocess.preset(given.pop("preset")) if "preset" in given else ImagePreprocess()
    if "layout" in given:
        given["layout"] = Layout(given["layout"].upper())
    name = base.name if not given else f"{base.name} + " + ", ".join(f"--{k}" for k in given)
    return replace(base, **given, name=name)


def dataset_from_options(model: str | Path | onnx.ModelProto, **opts: Any) -> Dataset | None:
    """The Dataset the data flags describe (None without --data). Other keys are ignored."""
    if opts.get("data") is None:
        stray = [n for n in DATA_OPTION_NAMES if opts.get(n) not in (None, False)]
        if stray:
            raise UsageError(f"--{stray[0]} needs --data DIR")
        return None
    if not isinstance(model, onnx.ModelProto):
        model = load_model(model)
    return open_dataset(opts["data"], input_specs(model),
                        image=image_preprocess_from_options(**opts), labels=opts.get("labels"))
