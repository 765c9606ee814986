"""Where a probe's samples run: onnxruntime sessions in this process (one, or several in
threads), or tasks on a cluster's workers (ptq_cli.engine, --engine dask).

Both yield each chunk's outputs in the order the chunks were given out, and both give the same
bits: onnxruntime's CPU kernels split work across threads, not sums (checked on the shared
models: 1 and 2 threads give identical outputs), and a worker runs the very model bytes and
chunk arrays the client has.

    with contextlib.closing(Sessions(model, "candidate", workers=2).run(chunks, order, names)) as outputs:
        for index, got in outputs: ...     # leaving early cancels what has not started
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import math
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import onnx

from ptq_cli.drift.runtime import make_session, run
from ptq_cli.model.external import serialized
from ptq_cli.model.sessions import run_in_order

if TYPE_CHECKING:
    from ptq_cli.engine import Engine

Outputs = Iterator[tuple[int, dict]]


class Sessions:
    """`workers` sessions of one model in this process: one with onnxruntime's own threads, or
    one thread each, run in as many threads (onnxruntime releases the GIL while it runs)."""

    def __init__(self, model: onnx.ModelProto | bytes, what: str, workers: int = 1) -> None:
        threads = 1 if workers > 1 else 0
        self.what = what
        self.sessions = [make_session(model, what, threads=threads) for _ in range(max(1, workers))]

    def run(self, chunks: Sequence[dict], order: Sequence[int], names: list[str]) -> Outputs:
        def one(session, index: int) -> tuple[int, dict]:
            return index, run(session, chunks[index], self.what, names)
        return run_in_order(self.sessions, one, order)


class OnEngine:
    """One model's chunks as tasks on an engine's workers. The model's bytes go with each task
    and a worker keeps a session per model (run_chunks), so a task carries several chunks: at
    least 4 tasks per task slot, for the early stop to cut in."""

    def __init__(self, engine: "Engine", model: onnx.ModelProto | bytes, what: str) -> None:
        self.engine, self.what = engine, what
        self.model = model if isinstance(model, bytes) else serialized(model)

    def run(self, chunks: Sequence[dict], order: Sequence[int], names: list[str]) -> Outputs:
        order = list(order)
        per_task = max(1, math.ceil(len(order) / (4 * self.engine.slots)))
        groups = [order[i:i + per_task] for i in range(0, len(order), per_task)]

        def submit(_, group):
            return self.engine.executor.submit(run_chunks, self.model, [chunks[i] for i in group], names,
                                               self.engine.threads, self.what)

        for group, outputs in zip(groups, _in_order(submit, None, groups, 2 * self.engine.slots)):
            yield from zip(group, outputs)


def _in_order(submit, fn, items: Sequence, in_flight: int):
    """Results of fn(item) for every item, in order, with at most `in_flight` submitted ahead;
    closing the generator cancels the rest."""
    pending = collections.deque()
    todo = iter(items)
    try:
        for item in itertools.islice(todo, in_flight):
            pending.append(submit(fn, item))
        while pending:
            result = pending.popleft().result()
            for item in itertools.islice(todo, 1):
                pending.append(submit(fn, item))
            yield result
    finally:
        for future in pending:
            future.cancel()


# On a worker: the sessions of the last models asked for, by digest (a trial's tasks share one).
_WORKER_SESSIONS: collections.OrderedDict = collections.OrderedDict()
_OPENING = threading.Lock()  # a worker runs several tasks at once: one opens, the others wait


def run_chunks(model: bytes, chunks: Sequence[dict], names: list[str], threads: int, what: str) -> list[dict]:
    """A task: `model`'s outputs `names` on each chunk (runs on a worker, or wherever called)."""
    key = hashlib.blake2b(model, digest_size=20).digest()
    with _OPENING:
        session = _WORKER_SESSIONS.get(key)
        if session is None:
            session = _WORKER_SESSIONS[key] = make_session(model, what, threads=threads)
            while len(_WORKER_SESSIONS) > 2:
                _WORKER_SESSIONS.popitem(last=False)
    return [run(session, chunk, what, names) for chunk in chunks]
