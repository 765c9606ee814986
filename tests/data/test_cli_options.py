"""The shared --data flags, driven through a probe command with click's CliRunner."""

from __future__ import annotations

import click
import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from ptq_cli.cli.reporting import reported_errors
from ptq_cli.cli.data_options import (DATA_OPTION_NAMES, data_options, dataset_from_options,
                                      image_preprocess_from_options, pop_data_options)
from ptq_cli.data import iter_batches
from ptq_cli.data.images import ImagePreprocess, Layout
from tests.data.conftest import relu_model, write_npys


def probe_command(required: bool) -> click.Command:
    @click.command()
    @click.argument("model", type=click.Path(exists=True))
    @data_options(required=required)
    @click.option("--batch-size", type=int, default=4)
    @click.pass_context
    def probe(ctx, model, **kwargs):
        with reported_errors(ctx):
            ds = dataset_from_options(model, **pop_data_options(kwargs))
            click.echo(f"left: {sorted(kwargs)}")  # what the command would pass on
            batch_size = kwargs.pop("batch_size")
            if ds is None:
                click.echo("no data")
                return
            click.echo(ds.description)
            for batch in iter_batches(ds, ds.specs, batch_size=batch_size):
                click.echo(f"{batch.size} {batch.labels}")
    return probe


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(relu_model(("N", 3, 2, 2)), path)
    return path


@pytest.fixture
def npy_folder(tmp_path):
    return write_npys(tmp_path / "calib", [np.ones((3, 3, 2, 2), np.float32)] * 2)


def invoke(args, required=True):
    return CliRunner().invoke(probe_command(required), [str(a) for a in args])


def test_help_lists_every_flag():
    result = invoke(["--help"])
    assert result.exit_code == 0
    for flag in ("--data DIR", "--labels FILE", "--preset", "--resize N", "--crop SIZE", "--scale X",
                 "--mean FLOATS", "--std FLOATS", "--bgr", "--layout", "imagenet-tf", "[required]"):
        assert flag in result.output, flag
    assert "[required]" not in invoke(["--help"], required=False).output


def test_data_and_labels_batches(model_path, npy_folder, tmp_path):
    (tmp_path / "labels.txt").write_text("0 1 2 3 4 5")
    result = invoke([model_path, "--data", npy_folder, "--labels", tmp_path / "labels.txt",
                     "--batch-size", 4])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "left: ['batch_size']", f"npy folder {npy_folder} (2 files), labels from {tmp_path}/labels.txt",
        "4 (0, 1, 2, 3)", "2 (4, 5)"]


def test_missing_data_flag(model_path, tmp_path):
    result = invoke([model_path])
    assert result.exit_code == 2 and "Missing option '--data'" in result.output
    result = invoke([model_path], required=False)
    assert result.exit_code == 0 and "no data" in result.output
    (tmp_path / "l.txt").write_text("1")
    result = invoke([model_path, "--labels", tmp_path / "l.txt"], required=False)
    assert result.exit_code == 2 and "ptq: error: --labels needs --data DIR" in result.output


def test_data_errors_exit_3_with_one_line(model_path, tmp_path):
    bad = write_npys(tmp_path / "bad", [np.ones((1, 3, 5, 5), np.float32)])
    result = invoke([model_path, "--data", bad])
    assert result.exit_code == 3
    assert result.output.strip().splitlines()[-1] == \
        f"ptq: error: {bad}/0000.npy: input 'x' expects shape [?,3,2,2], got (1,3,5,5)"
    result = invoke([model_path, "--data", tmp_path / "nope"])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_image_flags_on_array_data_exit_2(model_path, npy_folder):
    result = invoke([model_path, "--data", npy_folder, "--preset", "unit"])
    assert result.exit_code == 2 and "apply to image folders" in result.output


@pytest.mark.parametrize("args,message", [
    (["--crop", "22a"], "'22a' is not a size"),
    (["--crop", "0x4"], "'0x4' is not a size"),
    (["--mean", "1,2"], "give 1 value or 3"),
    (["--std", "a,b,c"], "is not a number"),
    (["--preset", "nope"], "'nope' is not one of"),
    (["--resize", "0"], "x>=1"),
])
def test_bad_flag_values_exit_2(model_path, npy_folder, args, message):
    result = invoke([model_path, "--data", npy_folder, *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_images_through_the_flags(model_path, tmp_path):
    image = pytest.importorskip("PIL.Image")
    folder = tmp_path / "imgs"
    folder.mkdir()
    image.fromarray(np.full((4, 4, 3), 51, np.uint8)).save(folder / "a.png")
    result = invoke([model_path, "--data", folder, "--preset", "unit", "--crop", "2"])
    assert result.exit_code == 0, result.output
    assert "image folder" in result.output and "preprocess unit + --crop, crop 2x2" in result.output
    result = invoke([model_path, "--data", folder])
    assert result.exit_code == 2 and "say how to preprocess them with --preset" in result.output


def test_flags_override_the_preset():
    pre = image_preprocess_from_options(preset="imagenet-tf", mean=(0.5,), crop=(200, 100),
                                        layout="nhwc", bgr=None, data="ignored")
    assert pre == ImagePreprocess(resize=256, crop=(200, 100), scale=1 / 127.5, mean=(0.5,),
                                  layout=Layout.NHWC)
    assert image_preprocess_from_options(data="x", labels=None) is None
    assert image_preprocess_from_options(bgr=True) == ImagePreprocess(bgr=True)


def test_pop_data_options_leaves_the_rest():
    kwargs = {name: None for name in DATA_OPTION_NAMES} | {"output": "o.onnx"}
    popped = pop_data_options(kwargs)
    assert kwargs == {"output": "o.onnx"} and set(popped) == set(DATA_OPTION_NAMES)


def test_dataset_from_a_model_proto(npy_folder):
    ds = dataset_from_options(relu_model(("N", 3, 2, 2)), data=npy_folder, other="ignored")
    assert len(ds) == 2 and [s.rows for s in ds] == [3, 3]
