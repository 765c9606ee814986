"""calibrate() on an Engine: contiguous parts on the workers, statistics folded in part order.

Each worker reads its part's files itself (data/split.py) and returns that part's statistics;
the client folds them in part order and writes the header of the single run (data description,
sample count), so the table is the single run's, byte for byte, whatever the number of parts
or workers, the order results arrive in, or a task that ran twice:

- min/max, per-channel min/max and histograms merge exactly in any order (observers.py);
- channel means and GPTQ Gram matrices are sums of per-batch terms. A part's batches are the
  single run's batches (parts start on batch boundaries), so every term is the same, and the
  sums carry their rounding error (sums.py): their value does not depend on the grouping;
- a moving average (--moving-average) depends on the order of every batch and has no exact
  merge: it is refused here (calibrate it in one process).

The prepared model is cached per worker process (keyed by its sha256), so a worker loads and
prepares it once for all its parts.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import onnx

from ptq_cli.calibration.gram import Gram
from ptq_cli.calibration.in_process import calibrate_in_process
from ptq_cli.calibration.run import CalibrationRun
from ptq_cli.calibration.stats import TensorStats
from ptq_cli.calibration.table import CalibrationTable, model_sha256
from ptq_cli.data import Dataset
from ptq_cli.data.split import Part, split_contiguous
from ptq_cli.engine import Engine
from ptq_cli.engine.gather import gather_in_order, submit_shards
from ptq_cli.errors import CalibrationError, DataError, UsageError
from ptq_cli.model.io import load_model
from ptq_cli.model.prepare import prepare
from ptq_cli.recipe import CalibrationSpec


@dataclass(frozen=True)
class PartTask:
    """What a worker needs for one part: paths and settings, never arrays."""

    model: str
    part: Part
    run: CalibrationRun  # the part's own run: see calibrate_on


def calibrate_on(engine: Engine, model: str | os.PathLike, dataset: Dataset, run: CalibrationRun, *,
                 parts: int | None = None) -> CalibrationTable:
    """The table calibrate() makes in one process, computed as `parts` tasks on `engine`
    (default: two per task slot, so a slow worker does not hold the rest back)."""
    if isinstance(model, onnx.ModelProto):
        raise UsageError("calibrating on an engine needs the model as a file path (the workers read it)")
    if run.spec.moving_average:
        raise UsageError("--moving-average depends on the order of every batch and has no exact merge "
                         "across workers; calibrate it without --engine dask")
    path = str(Path(model).absolute())
    sha = model_sha256(path)
    shards = split_contiguous(dataset, dataset.specs, parts or 2 * engine.slots, batch_size=run.batch_size,
                              max_samples=run.max_samples)
    if not shards:
        raise DataError(f"{dataset.description} holds no sample to calibrate on")
    # A worker checks its file against the client's sha and prepares it once for all its parts
    # (_prepared), runs the threads the engine gives a task, and shows no bar: the client's counts
    # the parts' samples as they come back.
    on_worker = replace(run, model_sha=sha, prepared=True, progress=False, threads=engine.threads)
    tasks = [PartTask(path, part, replace(on_worker, max_samples=part.max_samples)) for part in shards]
    submitted = submit_shards(engine.executor, calibrate_part, tasks)
    tables = gather_in_order(submitted, len(tasks), weights=[p.rows for p in shards], progress=run.progress,
                             desc=f"calibrating on {engine.description}", unit="sample")
    return fold_parts(tables, run.spec, sha, data=dataset.description)


def fold_parts(tables: Sequence[CalibrationTable], spec: CalibrationSpec, sha: str, *,
               data: str) -> CalibrationTable:
    """The parts' statistics added up in part order, under the single run's header."""
    stats: dict[str, TensorStats] = {}
    grams: dict[str, Gram] = {}
    for table in tables:
        if table.model_sha256 != sha:
            raise CalibrationError(f"a worker calibrated another model (sha {table.model_sha256[:12]}..., "
                                   f"expected {sha[:12]}...); the model file differs on the workers")
        for name, s in table.stats.items():
            if name in stats:
                stats[name].merge(s)
            else:
                stats[name] = s.copy()
        for key, gram in table.grams.items():
            grams.setdefault(key, Gram()).merge(gram)
    return CalibrationTable.build(sha, spec, stats, data=data, samples=sum(t.samples for t in tables),
                                  grams=grams)


_PREPARED: dict[tuple[str, str], onnx.ModelProto] = {}  # per worker process: (path, sha) -> model
# A worker runs as many tasks at once as it has threads: one of them prepares, the others wait for it.
_PREPARING = threading.Lock()


def calibrate_part(task: PartTask) -> CalibrationTable:
    """Run on a worker: one part's table (only its statistics are used: fold_parts adds them up)."""
    return calibrate_in_process(_prepared(task.model, task.run.model_sha), task.part.dataset, task.run)


def _prepared(path: str, sha: str) -> onnx.ModelProto:
    key = (path, sha)
    with _PREPARING:
        model = _PREPARED.get(key)
        if model is None:
            found = model_sha256(path)
            if found != sha:
                raise CalibrationError(f"the worker reads another model at {path} (sha {found[:12]}..., the "
                                       f"client's is {sha[:12]}...); give the workers the same file")
            model = prepare(load_model(path, check=False), min_opset=0)
            _PREPARED.clear()  # one model at a time: a worker does not collect every model it saw
            _PREPARED[key] = model
    return model
