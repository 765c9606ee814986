"""The inputs a placement is timed on: the first calibration samples, one row each (batch 1,
as deployed), or, with only a calibration table, arrays made from the model's input types."""

from __future__ import annotations

import itertools

import numpy as np
import onnx

from ptq_cli.data import Dataset, open_dataset
from ptq_cli.model.io import input_specs
from ptq_cli.quantization.placement.latency.machine import Feeds

TIMING_SAMPLES = 8


def timing_feeds(model: onnx.ModelProto, data=None, image=None) -> tuple[list[Feeds], str]:
    """Feeds to time `model` on, and where they come from (for the summary)."""
    specs = input_specs(model)
    if data is not None:
        dataset = data if isinstance(data, Dataset) else open_dataset(data, specs, image=image)
        # A whole sample (inputs without a shared batch axis, e.g. a recurrent state or a scalar
        # sample rate) is one feed already: it is timed as given.
        feeds = [{name: np.ascontiguousarray(array if sample.whole or array.ndim == 0 else array[:1])
                  for name, array in sample.feeds.items()}
                 for sample in itertools.islice(dataset, TIMING_SAMPLES)]
        if feeds:
            return feeds, f"{len(feeds)} calibration samples, batch 1"
    rng = np.random.default_rng(0)
    made = {}
    for spec in specs:
        shape = tuple(1 if d is None else d for d in spec.shape)
        # Integer inputs are usually ids or masks: zeros are valid for both.
        made[spec.name] = (rng.standard_normal(shape).astype(spec.dtype) if spec.dtype.kind == "f"
                           else np.zeros(shape, spec.dtype))
    return [made], "synthetic inputs (no --data), unknown dimensions set to 1"
