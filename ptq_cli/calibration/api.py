"""calibrate(): model + data -> CalibrationTable, in memory that does not grow with the data."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import onnx

from ptq_cli.calibration.in_process import calibrate_in_process
from ptq_cli.calibration.run import CalibrationRun
from ptq_cli.calibration.sharded import calibrate_on
from ptq_cli.calibration.table import CalibrationTable
from ptq_cli.data import Dataset, open_dataset
from ptq_cli.data.images import ImagePreprocess
from ptq_cli.errors import UsageError
from ptq_cli.model.io import input_specs, load_model
from ptq_cli.recipe import CalibrationSpec

if TYPE_CHECKING:
    from ptq_cli.engine import Engine


def calibrate(model: str | os.PathLike | onnx.ModelProto, data: str | os.PathLike | Dataset, *,
              spec: CalibrationSpec = CalibrationSpec(), image: ImagePreprocess | None = None,
              batch_size: int = 1, max_samples: int | None = None,
              shard: tuple[int, int] | None = None, provider: str = "CPUExecutionProvider",
              tensors: Sequence[str] | None = None, progress: bool = True,
              histograms: bool | None = None, channel_axis: int | None = None,
              overlap: bool | None = None, grams: bool = False,
              model_sha: str | None = None, prepared: bool = False, threads: int = 0,
              engine: "Engine | None" = None, parts: int | None = None) -> CalibrationTable:
    """Run `model` over `data` and return the statistics and ranges of its float activations.

    shard=(k, n) observes every n-th sample from offset k; merging the n tables (table.merge)
    equals one run over all samples. With max_samples, shard k takes its share of the first
    max_samples samples, so the shards still add up to the single run (one row per file).
    histograms=None collects histograms only for the methods that need them (not minmax, to keep
    it as cheap as inference); True keeps them so `table.with_method` can switch method later.
    channel_axis also records per-channel min/max along that axis. overlap=None runs onnxruntime
    on the next batch while numpy folds the current one whenever arrays are fetched (histograms):
    about 25 % faster on 2 cores for about 20 MB more memory; False turns it off.
    The model is calibrated as quantize plans it: prepared (BatchNorm and zero Pads folded, Div
    by a constant as Mul, ...), unless `prepared` says it already is.
    model_sha, when the caller knows it (quantize, which loaded the model once), is recorded
    instead of hashing the model again.
    grams=True also sums x·xᵀ of every MatMul/Gemm/Conv weight's input (GPTQ rounding needs
    them), in a second pass over the data on the prepared model (the graph quantize rewrites).
    threads > 0 fixes onnxruntime's intra-op threads (0: chosen for this machine).
    engine (ptq_cli.engine.open_engine) runs the work as `parts` tasks on its executor, a Dask
    cluster for instance, and returns the same table byte for byte (calibration/sharded.py); the
    model must then be a path and the data a folder or Dataset of files the workers can read.
    """
    run = CalibrationRun(spec=spec, batch_size=batch_size, max_samples=max_samples, shard=shard,
                         provider=provider, tensors=None if tensors is None else tuple(tensors),
                         progress=progress, histograms=histograms, channel_axis=channel_axis,
                         overlap=overlap, grams=grams, model_sha=model_sha, prepared=prepared,
                         threads=threads)
    if engine is not None:
        return _on_engine(engine, model, data, run, image=image, parts=parts)
    return calibrate_in_process(model, data, run, image=image)


def _on_engine(engine: "Engine", model, data, run: CalibrationRun, *, image: ImagePreprocess | None,
               parts: int | None) -> CalibrationTable:
    if run.shard is not None:
        raise UsageError("--shard runs one shard on this machine and --engine dask splits all the data "
                         "across the cluster: give one or the other")
    if run.prepared:
        raise UsageError("an engine calibrates the model file as given (the workers prepare it)")
    if isinstance(model, onnx.ModelProto):
        raise UsageError("calibrating on an engine needs the model as a file path (the workers read it)")
    dataset = data if isinstance(data, Dataset) else \
        open_dataset(data, input_specs(load_model(model, check=False)), image=image)
    return calibrate_on(engine, model, dataset, run, parts=parts)
