"""Submit one task per shard, show one progress bar, and hand back the results in shard order.

Results arrive in any order (and a task may run twice: Dask reruns a task whose worker died,
and a caller may submit a shard twice); they are kept by shard index, first one wins, so what
the caller folds is always the same list in the same order. Any error, or Ctrl-C, cancels the
futures still pending before it propagates: nothing is written by the tasks themselves.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, as_completed
from typing import Any

from tqdm import tqdm


def submit_shards(executor: Executor, task: Callable[[Any], Any], shards: Sequence[Any]) -> list[tuple[int, Future]]:
    """(shard index, future) for task(shard) of every shard."""
    return [(index, executor.submit(task, shard)) for index, shard in enumerate(shards)]


def gather_in_order(submitted: Sequence[tuple[int, Future]], count: int, *, weights: Sequence[int] | None = None,
                    progress: bool = True, desc: str = "shards", unit: str = "shard") -> list[Any]:
    """The result of every shard 0..count-1, in shard order, whatever order they finish in."""
    weights = list(weights) if weights is not None else [1] * count
    indices = {future: index for index, future in submitted}
    results: dict[int, Any] = {}
    try:
        with tqdm(total=sum(weights), unit=unit, desc=desc, file=sys.stderr, disable=not progress,
                  leave=False) as bar:
            for future in as_completed(indices):
                index = indices[future]
                result = future.result()
                if index not in results:  # a shard that ran twice gives the same result: keep one
                    results[index] = result
                    bar.update(weights[index])
    except BaseException:
        for future in indices:
            future.cancel()
        raise
    missing = [i for i in range(count) if i not in results]
    if missing:
        raise ValueError(f"shards {missing} were never submitted")  # a caller's bug, not the user's
    return [results[i] for i in range(count)]
