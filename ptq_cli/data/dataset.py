"""The Dataset a reader produces: a lazy, re-iterable list of samples read one file at a time.

A Dataset holds only light entries (paths and labels), never arrays, so memory does not grow
with the number of files; each iteration reads the files again, in order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from ptq_cli.data.checks import check_feeds, shares_batch_axis
from ptq_cli.errors import DataError, UsageError
from ptq_cli.model.io import InputSpec


@dataclass(frozen=True)
class Entry:
    """One sample on disk: its files (one, or one per input), its name in messages, its labels."""

    source: str
    paths: tuple[Path, ...]
    labels: tuple[int, ...] | None = None


class Reader(Protocol):
    """Turns an Entry into raw arrays (keyed by input name) before they are checked."""

    def read(self, entry: Entry) -> dict[str, np.ndarray]: ...

    def rows(self, entry: Entry) -> int:
        """Number of rows (batch entries) in the sample, read cheaply (headers) when possible."""
        ...


@dataclass(frozen=True)
class Sample:
    """What one file (or one test_data_set_* folder, or one image) holds, checked against the model.

    `feeds` maps every input name to an array with the batch dimension first; a file may hold
    several rows. `labels` has one entry per row when labels are known. A `whole` sample is one
    feed of a model whose inputs share no batch axis: one row, fed as given.
    """

    feeds: dict[str, np.ndarray]
    source: str
    labels: tuple[int, ...] | None = None
    whole: bool = False

    @property
    def rows(self) -> int:
        return 1 if self.whole else _rows(self.feeds)

    @property
    def label(self) -> int | None:
        """The label of a one-row sample (None without labels); use `labels` for multi-row files."""
        if self.labels is None:
            return None
        if len(self.labels) != 1:
            raise DataError(f"{self.source} holds {len(self.labels)} rows; read sample.labels "
                            "(one label per row) instead of sample.label")
        return self.labels[0]


@dataclass(frozen=True)
class Batch:
    """Rows regrouped to the requested batch size; `sources` and `labels` have one entry per row."""

    feeds: dict[str, np.ndarray]
    sources: tuple[str, ...]
    labels: tuple[int, ...] | None = None

    @property
    def size(self) -> int:
        return len(self.sources)


@dataclass(frozen=True)
class Dataset:
    """Samples of `entries`, read by `reader` on iteration and checked against `specs`."""

    entries: tuple[Entry, ...]
    reader: Reader
    specs: tuple[InputSpec, ...]
    description: str

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Sample]:
        whole = not shares_batch_axis(self.specs)
        for entry in self.entries:
            feeds = check_feeds(self.reader.read(entry), self.specs, entry.source)
            sample = Sample(feeds, entry.source, entry.labels, whole)
            if entry.labels is not None and len(entry.labels) != sample.rows:
                raise DataError(f"{entry.source}: holds {sample.rows} rows but {len(entry.labels)} "
                                "labels were assigned to it; did the file change while reading?")
            yield sample

    @property
    def has_labels(self) -> bool:
        return bool(self.entries) and self.entries[0].labels is not None

    def shard(self, index: int, count: int) -> Dataset:
        """Every `count`-th sample starting at `index` (0 <= index < count), e.g. for a split."""
        if not isinstance(index, int) or not isinstance(count, int) or count < 1 \
                or not 0 <= index < count:
            raise UsageError(f"shard {index}/{count} is not valid: need 0 <= index < count")
        entries = self.entries[index::count]
        return replace(self, entries=entries,
                       description=f"{self.description}, shard {index}/{count} ({len(entries)} samples)")


def with_labels(entries: Sequence[Entry], labels: Sequence[int], reader: Reader,
                what: str, labels_name: str) -> tuple[Entry, ...]:
    """Spread one label per row over the entries; the counts must match exactly."""
    out, offset = [], 0
    for entry in entries:
        rows = reader.rows(entry)
        out.append(replace(entry, labels=tuple(labels[offset:offset + rows])))
        offset += rows
    if offset != len(labels):
        raise DataError(f"{labels_name} has {len(labels)} labels but {what} holds {offset} samples; "
                        "give exactly one label per sample, in the same (sorted) order")
    return tuple(out)


def _rows(feeds: dict[str, np.ndarray]) -> int:
    first = next(iter(feeds.values()))
    return int(first.shape[0]) if first.ndim else 1
