"""calibrate on a 2-worker LocalCluster: the single run's table and quantized model, byte for byte."""

from __future__ import annotations

import random

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from ptq_cli.calibration.api import calibrate
from ptq_cli.calibration.run import CalibrationRun
from ptq_cli.calibration.sharded import PartTask, calibrate_part, fold_parts
from ptq_cli.calibration.table import CalibrationTable, model_sha256, merge
from ptq_cli.cli import main
from ptq_cli.data import open_dataset
from ptq_cli.data.split import split_contiguous
from ptq_cli.engine.gather import gather_in_order
from ptq_cli.model.io import input_specs
from ptq_cli.recipe import CalibMethod, CalibrationSpec

from .conftest import ON_A_CLUSTER, folder_bytes

SPEC = CalibrationSpec(method=CalibMethod.ENTROPY, bins=128)
OPTIONS = dict(spec=SPEC, batch_size=2, grams=True, progress=False)


pytestmark = ON_A_CLUSTER

def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def single(conv_model, data_dir, tmp_path_factory):
    """The table of one process, as the command line writes it."""
    path = tmp_path_factory.mktemp("single") / "single.json"
    calibrate(conv_model, data_dir, **OPTIONS).save(path)
    return path


@pytest.mark.parametrize("parts", [1, 2, 3, 7])
def test_any_number_of_parts_gives_the_single_runs_table_bytes(engine, conv_model, data_dir, single, tmp_path, parts):
    before = folder_bytes(data_dir), conv_model.read_bytes()
    table = calibrate(conv_model, data_dir, engine=engine, parts=parts, **OPTIONS)
    table.save(tmp_path / "dask.json")
    assert (tmp_path / "dask.json").read_bytes() == single.read_bytes()
    assert table.grams and all(s.mean is not None for n, s in table.stats.items() if n == "x")
    assert (folder_bytes(data_dir), conv_model.read_bytes()) == before  # inputs untouched


def test_parts_start_on_batch_boundaries(conv_model, data_dir):
    dataset = open_dataset(data_dir, input_specs(onnx.load(str(conv_model))))
    parts = split_contiguous(dataset, dataset.specs, 7, batch_size=2)
    assert len(parts) == 7 and [p.first_row % 2 for p in parts] == [0] * 7
    assert sum(p.rows for p in parts) == 45 and sum(p.files for p in parts) == 23
    limited = split_contiguous(dataset, dataset.specs, 3, batch_size=2, max_samples=10)
    assert sum(p.rows for p in limited) == 10 and limited[-1].max_samples == 10 - limited[-1].first_row


def test_a_part_run_twice_and_results_in_any_order_give_the_same_table(engine, conv_model, data_dir, single, tmp_path):
    dataset = open_dataset(data_dir, input_specs(onnx.load(str(conv_model))))
    sha = model_sha256(conv_model)
    parts = split_contiguous(dataset, dataset.specs, 3, batch_size=2)
    tasks = [_task(conv_model, sha, p) for p in parts]
    order = [(i, t) for i, t in enumerate(tasks)] + [(1, tasks[1])]  # part 1 submitted twice
    random.Random(0).shuffle(order)
    submitted = [(i, engine.executor.submit(calibrate_part, task)) for i, task in order]
    tables = gather_in_order(list(reversed(submitted)), len(tasks), progress=False)
    fold_parts(tables, SPEC, sha, data=dataset.description).save(tmp_path / "t.json")
    assert (tmp_path / "t.json").read_bytes() == single.read_bytes()


def test_the_cluster_table_is_what_shard_tables_merge_to(engine, conv_model, data_dir):
    # batch 1: the interleaved --shard K/N tables see the same per-batch terms as one run
    options = dict(spec=SPEC, progress=False, grams=True)
    merged = merge([calibrate(conv_model, data_dir, shard=(k, 3), **options) for k in range(3)]).to_dict()
    on_cluster = calibrate(conv_model, data_dir, engine=engine, parts=3, **options).to_dict()
    assert merged.pop("data") != on_cluster.pop("data")  # the merge lists its shards
    assert merged == on_cluster


def test_cli_on_the_cluster_gives_the_same_table_and_quantized_model(scheduler_address, conv_model, data_dir, tmp_path):
    common = ["--data", data_dir, "--method", "entropy", "--bins", "128", "--batch-size", "2", "--gram", "-q"]
    assert _run("calibrate", conv_model, *common, "-o", tmp_path / "a.json").exit_code == 0
    result = _run("calibrate", conv_model, *common, "-o", tmp_path / "b.json", "--engine", "dask",
                  "--address", scheduler_address, "--parts", "5")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    for name in "ab":
        out = _run("quantize", conv_model, "--calibration", tmp_path / f"{name}.json", "--rounding", "gptq",
                   "-o", tmp_path / f"{name}.onnx", "-q")
        assert out.exit_code == 0, out.output
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    onnx.checker.check_model(onnx.load(str(tmp_path / "b.onnx")), full_check=True)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "b.onnx")).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops


def test_moving_average_is_refused_on_the_cluster(engine, conv_model, data_dir):
    from ptq_cli.errors import UsageError

    with pytest.raises(UsageError, match="moving-average"):
        calibrate(conv_model, data_dir, engine=engine, spec=CalibrationSpec(moving_average=0.1), progress=False)


def test_a_worker_that_dies_is_retried_and_the_table_stays_exact(engine, conv_model, data_dir, single, tmp_path):
    dataset = open_dataset(data_dir, input_specs(onnx.load(str(conv_model))))
    sha = model_sha256(conv_model)
    parts = split_contiguous(dataset, dataset.specs, 2, batch_size=2)
    tasks = [_task(conv_model, sha, p) for p in parts]
    marker = tmp_path / "died-once"
    submitted = [(0, engine.executor.submit(_die_once, tasks[0], str(marker))),
                 (1, engine.executor.submit(calibrate_part, tasks[1]))]
    tables = gather_in_order(submitted, 2, progress=False)
    assert marker.exists()  # the first attempt did kill its worker
    fold_parts(tables, SPEC, sha, data=dataset.description).save(tmp_path / "t.json")
    assert (tmp_path / "t.json").read_bytes() == single.read_bytes()
    assert isinstance(tables[0], CalibrationTable) and np.isfinite(tables[0].stats["x"].minmax.max)


def _task(model, sha: str, part) -> PartTask:
    """The task calibrate_on gives a worker for `part` of a run with OPTIONS, one thread."""
    run = CalibrationRun(spec=SPEC, batch_size=2, grams=True, progress=False, max_samples=part.max_samples,
                         model_sha=sha, prepared=True, threads=1)
    return PartTask(str(model.absolute()), part, run)


def _die_once(task, marker: str):
    import os
    from pathlib import Path

    if not Path(marker).exists():
        Path(marker).touch()
        os._exit(1)  # the worker process dies mid-task; its nanny restarts it and Dask reruns the task
    return calibrate_part(task)
