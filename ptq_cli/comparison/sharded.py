"""compare()'s output figures on an Engine: contiguous parts on the workers, folded in batch order.

Every part starts where one of the single run's batches starts (data/split.py), so each batch a
worker feeds both models is a batch of the single run. A worker returns one small state per
batch (sums, counts, top-k hits, decoded steps: never outputs), and the client folds them in the
order of the batches: counts, max and min merge exactly anyway, and the float64 sums (SQNR,
mean abs error, RMSE, cosine) get the very additions the single run makes, so `--json` gives the
same figures whatever the number of workers or parts.

Not here: --per-layer (it needs the models' intermediate tensors side by side, and its
sensitivity runs build dozens of sessions: it stays a single-process feature), and --latency,
which times the models on this machine (the client) on the first batches it reads itself.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from ptq_cli.comparison.engine import Measured
from ptq_cli.data import Dataset, iter_batches
from ptq_cli.data.split import Part, split_contiguous
from ptq_cli.drift.kinds import OutputKind
from ptq_cli.drift.outputs import OutputState
from ptq_cli.drift.runtime import make_session, run
from ptq_cli.engine import Engine
from ptq_cli.engine.gather import gather_in_order, submit_shards
from ptq_cli.errors import ModelError
from ptq_cli.model.io import load_model, sha256_file


@dataclass(frozen=True)
class ComparePart:
    """What a worker needs for one part: the two model files, their sha256, the part's files."""

    reference: str
    candidate: str
    shas: tuple[str, str]
    part: Part
    pairs: tuple[tuple[str, str], ...]
    kinds: dict[str, OutputKind]
    batch_size: int
    threads: int


@dataclass(frozen=True)
class PartFigures:
    """One part's per-batch states, in batch order, and its sample counts."""

    batches: tuple[tuple[OutputState, ...], ...]
    samples: int
    labelled: int


def measure_on(engine: Engine, reference: str, candidate: str, dataset: Dataset, pairs: list[tuple[str, str]],
               kinds: dict[str, OutputKind], *, batch_size: int, max_samples: int | None, parts: int | None,
               progress: bool, keep_inputs: int = 0) -> Measured:
    """The output figures `compare` measures in one process, from tasks on `engine`."""
    reference, candidate = str(Path(reference).absolute()), str(Path(candidate).absolute())
    shas = (sha256_file(reference), sha256_file(candidate))
    shards = split_contiguous(dataset, dataset.specs, parts or 2 * engine.slots, batch_size=batch_size,
                              max_samples=max_samples)
    tasks = [ComparePart(reference, candidate, shas, p, tuple(pairs), dict(kinds), batch_size, engine.threads)
             for p in shards]
    figures = gather_in_order(submit_shards(engine.executor, compare_part, tasks), len(tasks),
                              weights=[p.rows for p in shards], progress=progress,
                              desc=f"compare on {engine.description}", unit="sample")
    states = [OutputState(r, c, kinds.get(r, OutputKind.TENSOR)) for r, c in pairs]
    for part in figures:
        for batch in part.batches:
            for state, one in zip(states, batch):
                state.merge(one)
    kept = _first_feeds(dataset, batch_size, max_samples, keep_inputs)
    return Measured(tuple(s.report() for s in states), None, sum(p.samples for p in figures),
                    sum(p.labelled for p in figures), kept)


def _first_feeds(dataset: Dataset, batch_size: int, max_samples: int | None, count: int) -> tuple:
    """The first `count` batches' feeds, read here (for --latency, which times this machine)."""
    kept = []
    if count:
        for batch in iter_batches(dataset, dataset.specs, batch_size=batch_size, max_samples=max_samples):
            kept.append(batch.feeds)
            if len(kept) >= count:
                break
    return tuple(kept)


_SESSIONS: dict[tuple, tuple] = {}  # per worker process: the last (reference, candidate) sessions
_OPENING = threading.Lock()  # a worker runs several tasks at once: one opens, the others wait


def compare_part(task: ComparePart) -> PartFigures:
    """Run on a worker: both models over one part, one fresh state per batch."""
    ref_session, cand_session = _sessions(task)
    names_ref, names_cand = [r for r, _ in task.pairs], [c for _, c in task.pairs]
    batches, samples, labelled = [], 0, 0
    for batch in iter_batches(task.part.dataset, task.part.dataset.specs, batch_size=task.batch_size,
                              max_samples=task.part.max_samples):
        ref = run(ref_session, batch.feeds, "reference", names_ref)
        cand = run(cand_session, batch.feeds, "candidate", names_cand)
        states = tuple(OutputState(r, c, task.kinds.get(r, OutputKind.TENSOR)) for r, c in task.pairs)
        for state in states:
            state.update(ref[state.name], cand[state.cand_name], batch.size, batch.labels)
        batches.append(states)
        samples += batch.size
        labelled += sum(1 for label in (batch.labels or ()) if label is not None)
    return PartFigures(tuple(batches), samples, labelled)


def _sessions(task: ComparePart) -> tuple:
    key = (task.reference, task.candidate, task.shas, task.threads)
    with _OPENING:
        pair = _SESSIONS.get(key)
        if pair is None:
            for path, sha in zip((task.reference, task.candidate), task.shas):
                if sha256_file(path) != sha:
                    raise ModelError(f"the worker reads another model at {path} than the client; give the "
                                     "workers the same files")
            pair = (make_session(load_model(task.reference), "reference", threads=task.threads),
                    make_session(load_model(task.candidate), "candidate", threads=task.threads))
            _SESSIONS.clear()  # one pair at a time
            _SESSIONS[key] = pair
    return pair
