"""Checking raw arrays against the model's inputs: names, rank, fixed dims, dtype, finiteness.

When the inputs share a batch axis (see `shares_batch_axis`), the batch (first) dimension is not
checked here: iter_batches regroups rows to what the model takes. An array with one dimension less
than the input is a single sample and gets a batch axis. When they do not (a recurrent state
[2, 1, 128] beside audio [1, 512]), a sample is one feed, checked as given, every fixed dim included.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ptq_cli.errors import DataError
from ptq_cli.model.io import InputSpec


def shares_batch_axis(specs: Sequence[InputSpec]) -> bool:
    """Whether axis 0 is the batch axis of every input, so that samples may be split and stacked.

    True when every input has a first axis and those axes are all free (under one symbolic name,
    when named), all fixed at one size, or fixed at 1 beside free ones. A scalar input, or fixed first sizes that differ (or a fixed size
    above 1 beside a free one, e.g. a state [2, N, 128]), means axis 0 is not a batch axis of all.
    """
    if not specs or any(len(s.shape) == 0 for s in specs):
        return False
    fixed = {s.shape[0] for s in specs if s.shape[0] is not None}
    free = any(s.shape[0] is None for s in specs)
    if len({s.first_dim_name for s in specs if s.shape[0] is None and s.first_dim_name}) > 1:
        return False  # free first dims named apart (T beside N): not one batch axis
    return len(fixed) == 0 or (len(fixed) == 1 and (not free or fixed == {1}))


def check_feeds(raw: dict[str, np.ndarray], specs: Sequence[InputSpec],
                source: str) -> dict[str, np.ndarray]:
    """Return the feeds, cast/expanded as the model wants them, or raise DataError naming `source`."""
    names = [s.name for s in specs]
    missing = [n for n in names if n not in raw]
    extra = sorted(k for k in raw if k not in names)
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing input " + ", ".join(repr(n) for n in missing))
        if extra:
            parts.append("unknown key " + ", ".join(repr(k) for k in extra))
        raise DataError(f"{source}: {'; '.join(parts)}; the model's inputs are "
                        f"{', '.join(repr(n) for n in names)}")
    batched = shares_batch_axis(specs)
    feeds = {spec.name: check_array(raw[spec.name], spec, source, batched=batched) for spec in specs}
    if batched:
        _check_same_rows(feeds, source)
    return feeds


def check_array(array: np.ndarray, spec: InputSpec, source: str, *, batched: bool = True) -> np.ndarray:
    """The array cast as `spec` wants it; `batched`: axis 0 is regrouped later, so not checked here."""
    array = np.asarray(array)
    rank = len(spec.shape) if spec.rank_known else array.ndim
    if spec.rank_known and rank > 0 and array.ndim == rank - 1:
        array = array[np.newaxis]  # one sample saved without its batch axis
    first = 1 if batched else 0
    if spec.rank_known and (array.ndim != rank or any(want is not None and want != got
                                                      for want, got in zip(spec.shape[first:], array.shape[first:]))):
        scalar = " (a scalar: save it as a 0-d array, np.array(value))" if rank == 0 else ""
        raise DataError(f"{source}: input {spec.name!r} expects shape {format_spec_shape(spec)}{scalar}, "
                        f"got {format_shape(array.shape)}")
    array = _check_dtype(array, spec, source)
    if array.dtype.kind in "fc":
        bad = np.size(array) - int(np.count_nonzero(np.isfinite(array)))
        if bad:
            raise DataError(f"{source}: input {spec.name!r} contains {bad} NaN or Inf value(s); "
                            "fix or drop this file")
    return array


def _check_dtype(array: np.ndarray, spec: InputSpec, source: str) -> np.ndarray:
    if array.dtype == spec.dtype:
        return array
    if spec.dtype.name == "bfloat16":
        raise DataError(f"{source}: input {spec.name!r} is bfloat16, which onnxruntime's Python API cannot "
                        "feed; quantize with --dynamic (no data needed), or export the model's inputs as float32")
    if array.dtype.kind == "f" and spec.dtype.kind == "f":
        # numpy saves float64 by default, float16 models get float32 data: the model's own
        # precision is what it would compute in anyway.
        return array.astype(spec.dtype)
    raise DataError(f"{source}: input {spec.name!r} expects {spec.dtype}, got {array.dtype}; "
                    f"save the data as {spec.dtype}")


def _check_same_rows(feeds: dict[str, np.ndarray], source: str) -> None:
    rows = {name: a.shape[0] for name, a in feeds.items() if a.ndim}
    if len(set(rows.values())) > 1:
        listed = ", ".join(f"{n}: {r}" for n, r in rows.items())
        raise DataError(f"{source}: inputs have different batch sizes ({listed}); "
                        "every input of a sample needs the same number of rows")


def format_spec_shape(spec: InputSpec) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in spec.shape) + "]"


def format_shape(shape: tuple[int, ...]) -> str:
    return "(" + ",".join(str(d) for d in shape) + ")"
