"""Contiguous parts of a Dataset that start on batch boundaries: the shards of a cluster run.

`Dataset.shard(k, n)` interleaves (every n-th file), which suits independent machines but
batches the samples differently from one run as soon as --batch-size > 1. A part here is a
run of consecutive files that starts where one of the single run's batches starts, so every
batch a part feeds the model is, row for row, a batch of the single run: per-batch figures
(the float32 sums onnxruntime computes for channel means and Gram matrices, compare's per-batch
partial sums) come out bit for bit the same, and only how they are added up remains to be
matched (see calibration/sharded.py and comparison/sharded.py). A part is a file list: the workers
read the files themselves, nothing is shipped but paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from ptq_cli.data.batching import effective_batch_size
from ptq_cli.data.checks import shares_batch_axis
from ptq_cli.data.dataset import Dataset
from ptq_cli.model.io import InputSpec


@dataclass(frozen=True)
class Part:
    """Consecutive files of a dataset, in order, and how many rows of them to read."""

    index: int
    dataset: Dataset
    first_row: int  # the part's first row in the whole data (a multiple of the batch size)
    rows: int  # rows it feeds (one per file when rows need not be counted: batch 1, no max_samples)
    max_samples: int | None  # the rows to read, when the last part stops inside its files

    @property
    def files(self) -> int:
        return len(self.dataset)


def split_contiguous(dataset: Dataset, specs: Sequence[InputSpec], parts: int, *, batch_size: int = 1,
                     max_samples: int | None = None) -> list[Part]:
    """At most `parts` parts of about equal rows, cut only where a batch starts; their
    concatenation is the data one run reads (the first max_samples rows). Fewer parts come out
    when the files allow fewer cuts (e.g. one file of many rows is one part)."""
    whole = not shares_batch_axis(specs)
    size = 1 if whole else effective_batch_size(specs, batch_size)
    entries = tuple(replace(e, paths=tuple(p.absolute() for p in e.paths)) for e in dataset.entries)
    counted = size > 1 or max_samples is not None
    bounds = [0]  # rows before each file
    for entry in entries:
        if max_samples is not None and bounds[-1] >= max_samples:
            break
        bounds.append(bounds[-1] + (dataset.reader.rows(entry) if counted and not whole else 1))
    used = len(bounds) - 1
    total = bounds[-1] if max_samples is None else min(bounds[-1], max_samples)
    cuts = _cuts(bounds, used, size, parts, total)
    out = []
    for index, (start, stop) in enumerate(zip(cuts, cuts[1:])):
        last = stop == used
        rows = (total if last else bounds[stop]) - bounds[start]
        limited = last and max_samples is not None and total < bounds[stop]
        part = replace(dataset, entries=entries[start:stop],
                       description=f"{dataset.description}, files {start + 1}-{stop}")
        out.append(Part(index, part, bounds[start], rows, rows if limited else None))
    return out


def _cuts(bounds: list[int], used: int, size: int, parts: int, total: int) -> list[int]:
    """File indices where parts start: 0, the allowed cut nearest each equal share, `used`."""
    allowed = [j for j in range(1, used) if bounds[j] % size == 0 and bounds[j] < total]
    cuts = [0]
    for k in range(1, parts):
        target = total * k / parts
        later = [j for j in allowed if j > cuts[-1]]
        if not later:
            break
        best = min(later, key=lambda j: (abs(bounds[j] - target), j))
        if best not in cuts:
            cuts.append(best)
    return cuts + [used] if used else [0]
