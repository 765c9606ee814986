"""One calibration run in this process: what `calibrate()` does without an engine, and what
each engine task runs on its part of the data (sharded.py)."""

from __future__ import annotations

import os

import onnx

from ptq_cli.calibration.collector import collect
from ptq_cli.calibration.gram import collect_grams
from ptq_cli.calibration.run import CalibrationRun
from ptq_cli.calibration.table import CalibrationTable, model_sha256
from ptq_cli.data import Dataset, iter_batches, open_dataset
from ptq_cli.data.images import ImagePreprocess
from ptq_cli.errors import DataError, UsageError
from ptq_cli.model.io import input_specs, load_model
from ptq_cli.model.prepare import prepare


def calibrate_in_process(model: str | os.PathLike | onnx.ModelProto, data: str | os.PathLike | Dataset,
                         run: CalibrationRun, *, image: ImagePreprocess | None = None) -> CalibrationTable:
    """`calibrate()` in this process (api.py documents the options `run` carries)."""
    if isinstance(model, onnx.ModelProto):
        proto, sha = model, run.model_sha or model_sha256(model)
    else:
        # onnxruntime validates the model when it builds the session (ModelError if it cannot
        # load it); onnx's checker would cost 11 MB of schemas for the rest of the run.
        proto, sha = load_model(model, check=False), run.model_sha or model_sha256(model)
    if not run.prepared:
        # The graph quantize plans (min_opset 0: upgrading the opset keeps every tensor's name).
        proto = prepare(proto, min_opset=0)
    specs = input_specs(proto)
    dataset = data if isinstance(data, Dataset) else open_dataset(data, specs, image=image)
    max_samples = run.max_samples
    if run.shard is not None:
        index, count = run.shard
        dataset = dataset.shard(index, count)
        if max_samples is not None:
            max_samples = len(range(index, max_samples, count))
            if max_samples == 0:
                raise UsageError(f"--max-samples leaves no sample for shard {index}/{count}")
    if len(dataset) == 0:
        raise DataError(f"{dataset.description} holds no sample to calibrate on")
    total = len(dataset) if max_samples is None else min(len(dataset), max_samples)
    batches = iter_batches(dataset, specs, batch_size=run.batch_size, max_samples=max_samples)
    stats, samples = collect(proto, batches, spec=run.spec, tensors=run.tensors, provider=run.provider,
                             progress=run.progress, total=total, histograms=run.histograms,
                             channel_axis=run.channel_axis, overlap=run.overlap, threads=run.threads)
    if samples == 0:
        raise DataError(f"{dataset.description} holds no rows to calibrate on (every array has 0 rows "
                        "along its batch axis); give arrays with at least one sample")
    second_order = None
    if run.grams:
        batches = iter_batches(dataset, specs, batch_size=run.batch_size, max_samples=max_samples)
        second_order = collect_grams(proto, batches, progress=run.progress, total=total, threads=run.threads)
    return CalibrationTable.build(sha, run.spec, stats, data=dataset.description, samples=samples,
                                  shard=run.shard, grams=second_order)
