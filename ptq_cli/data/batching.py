"""Regrouping samples into batches of the size the model takes.

Files may hold one row or many; rows are split out and regrouped to `batch_size`, so a folder of
single images and a file holding 1000 rows feed the model the same way. Only `batch_size` rows
(plus one file) are held at a time. Rows are regrouped only along an axis that is the batch axis
of every input (`shares_batch_axis`); otherwise each sample is one feed, given to the model as is.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from ptq_cli.data.checks import shares_batch_axis
from ptq_cli.data.dataset import Batch, Dataset, Sample
from ptq_cli.errors import DataError, UsageError
from ptq_cli.model.io import InputSpec


def effective_batch_size(specs: Sequence[InputSpec], batch_size: int) -> int:
    """The batch the model accepts: its fixed first dimension when it has one, else batch_size;
    1 (one sample per feed) when axis 0 is not the batch axis of every input."""
    if not shares_batch_axis(specs):
        return 1  # scalar inputs or a recurrent state: no batch axis to split or stack
    fixed = {s.shape[0] for s in specs if s.shape[0] is not None}
    return fixed.pop() if fixed else batch_size


def iter_batches(dataset: Dataset, specs: Sequence[InputSpec] | None = None, batch_size: int = 8,
                 max_samples: int | None = None) -> Iterator[Batch]:
    """Batches of `batch_size` rows (the last may be smaller), at most `max_samples` rows in all."""
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    if max_samples is not None and max_samples < 1:
        raise UsageError(f"max samples must be at least 1, got {max_samples}")
    specs = tuple(specs if specs is not None else dataset.specs)
    size = effective_batch_size(specs, batch_size)
    if not shares_batch_axis(specs):
        yield from _whole_samples(dataset, max_samples)
        return
    pending: deque[Sample] = deque()
    count = 0
    for sample in _limited(dataset, max_samples):
        pending.append(sample)
        count += sample.rows
        while count >= size:
            yield _take(pending, size)
            count -= size
    if count:
        if size > 1 and any(s.shape[0] is not None for s in specs):
            raise DataError(f"the model fixes the batch at {size} but {count} row(s) are left over; "
                            f"give a multiple of {size} samples (or --max-samples)")
        yield _take(pending, count)


def _limited(dataset: Iterable[Sample], max_samples: int | None) -> Iterator[Sample]:
    """The samples, the last one cut so that at most max_samples rows come out; stops reading then."""
    left = max_samples
    for sample in dataset:
        if left is not None and sample.rows >= left:
            yield _slice(sample, 0, left)
            return
        if left is not None:
            left -= sample.rows
        yield sample


def _take(pending: deque[Sample], n: int) -> Batch:
    parts = []
    while n:
        head = pending[0]
        if head.rows <= n:
            parts.append(pending.popleft())
            n -= head.rows
        else:
            parts.append(_slice(head, 0, n))
            pending[0] = _slice(head, n, head.rows)
            n = 0
    return _join(parts)


def _slice(sample: Sample, start: int, stop: int) -> Sample:
    if start == 0 and stop == sample.rows:
        return sample
    labels = None if sample.labels is None else sample.labels[start:stop]
    return Sample({k: v[start:stop] for k, v in sample.feeds.items()}, sample.source, labels, sample.whole)


def _join(parts: list[Sample]) -> Batch:
    sources = tuple(p.source for p in parts for _ in range(p.rows))
    labels = None
    if all(p.labels is not None for p in parts):
        labels = tuple(label for p in parts for label in p.labels)
    if len(parts) == 1:
        feeds = dict(parts[0].feeds)
    else:
        feeds = {name: _stack(name, parts) for name in parts[0].feeds}
    return Batch(feeds, sources, labels)


def _stack(name: str, parts: list[Sample]) -> np.ndarray:
    first = parts[0].feeds[name]
    for part in parts[1:]:
        if part.feeds[name].shape[1:] != first.shape[1:]:
            raise DataError(f"input {name!r}: {parts[0].source} has rows of shape {first.shape[1:]} but "
                            f"{part.source} has {part.feeds[name].shape[1:]}; they cannot share a batch: "
                            "use batch size 1, or make the sizes equal (e.g. --resize/--crop for images)")
    return np.concatenate([p.feeds[name] for p in parts])


def _whole_samples(dataset: Dataset, max_samples: int | None) -> Iterator[Batch]:
    for index, sample in enumerate(dataset):
        if max_samples is not None and index >= max_samples:
            return
        yield Batch(dict(sample.feeds), (sample.source,), sample.labels)
