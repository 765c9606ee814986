"""The one place ptq builds onnxruntime sessions: calibration, drift and compare, the latency
search's timings, the host-kernel probe and the load check before writing all come here.

A `SessionSpec` says how a session runs; `open_session` builds it for a model given as a
ModelProto (of any size, with weights that may still be on disk), as serialized bytes or as a
path. Errors are onnxruntime's own: each caller words them for what it was loading.
"""

from __future__ import annotations

import collections
import itertools
import os
import queue
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from ptq_cli.errors import UsageError
from ptq_cli.model.external import fits_in_protobuf, model_size, runtime_view
from ptq_cli.model.io import save_model

if TYPE_CHECKING:
    import onnxruntime as ort

# onnxruntime reads external data of a model given as bytes from this folder (1.17+).
_EXTERNAL_FOLDER = "session.model_external_initializers_file_folder_path"

CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class SessionSpec:
    """How a session runs. The defaults are what every ptq session shares: the CPU provider,
    onnxruntime's own threads and graph optimizations, and its warnings kept off the terminal."""

    # Tried in order; a provider that is not available here is a usage error, not a fallback.
    providers: tuple[str, ...] = (CPU,)
    threads: int = 0  # intra-op threads; 0 = onnxruntime's default (one per physical core)
    log_severity: int = 3  # onnxruntime's log level: 3 = errors only
    # No graph optimization at all: Q/DQ pairs run as written (exact fake quantization), and the
    # session loads several times faster.
    literal: bool = False
    # onnxruntime optimizers to leave out (e.g. the ones that fold a DequantizeLinear of a
    # constant into a float weight).
    disabled_optimizers: tuple[str, ...] = ()
    # Run nodes in priority order, each consumer right after its producer: reductions appended
    # to the graph then free each activation as plain inference would (calibration).
    priority_order: bool = False
    profile_prefix: str | None = None  # profile every run into files with this prefix

    def session_options(self) -> "ort.SessionOptions":
        # --help start-up: onnxruntime costs ~22 ms (this module is on its path)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = self.log_severity
        if self.threads:
            options.intra_op_num_threads = self.threads
        if self.literal:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if self.priority_order:
            options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
        if self.profile_prefix:
            options.enable_profiling = True
            options.profile_file_prefix = self.profile_prefix
        return options


def open_session(model: onnx.ModelProto | bytes | str | os.PathLike,
                 spec: SessionSpec = SessionSpec()) -> "ort.InferenceSession":
    """A session on `model` as `spec` says.

    A ModelProto goes as bytes, with the folder of its external weights (which onnxruntime
    maps itself); one whose in-memory part is 2 GB or more is saved once to a private temporary
    folder, weights streamed to external data, and loaded from there. Bytes and paths go to
    onnxruntime as they are."""
    # --help start-up: onnxruntime costs ~22 ms (this module is on its path)
    import onnxruntime as ort

    available = ort.get_available_providers()
    for provider in spec.providers:
        if provider not in available:
            raise UsageError(f"execution provider {provider!r} is not available here; "
                             f"choose one of {available}")
    options = spec.session_options()
    kwargs = {"providers": list(spec.providers),
              "disabled_optimizers": list(spec.disabled_optimizers) or None}
    if isinstance(model, bytes):
        return ort.InferenceSession(model, options, **kwargs)
    if not isinstance(model, onnx.ModelProto):
        return ort.InferenceSession(str(model), options, **kwargs)
    with runtime_view(model) as folder:
        if fits_in_protobuf(model):
            if folder:
                options.add_session_config_entry(_EXTERNAL_FOLDER, folder)
            return ort.InferenceSession(model.SerializeToString(), options, **kwargs)
    with tempfile.TemporaryDirectory(prefix="ptq-session-") as tmp:
        path = save_model(model, Path(tmp) / "model.onnx")
        return ort.InferenceSession(str(path), options, **kwargs)


# A model this large gets one session: each session holds its own copy of the weights.
ONE_SESSION_FROM = 256 << 20


def available_cores() -> int:
    """The cores this process may use (its affinity where the OS tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def parallel_sessions(model: onnx.ModelProto) -> int:
    """How many one-thread sessions should run `model`'s batches at once: one per core, up to 4,
    and one for a model of ONE_SESSION_FROM bytes or more. onnxruntime's CPU kernels split work
    across threads, not sums, so the outputs are the same bits for any number (checked on the
    shared models: 1 and 2 threads give identical outputs)."""
    if model_size(model).total >= ONE_SESSION_FROM:
        return 1
    return max(1, min(4, available_cores()))


def run_in_order(sessions: Sequence, call: Callable, items: Iterable) -> Iterator:
    """call(session, item) for every item, on as many threads as `sessions` (onnxruntime
    releases the GIL while it runs), each call on a session no other call is using; the results
    come in the items' order, at most one item per session ahead. Closing the generator early
    cancels what has not started."""
    sessions = list(sessions)
    if len(sessions) == 1:
        yield from (call(sessions[0], item) for item in items)
        return
    free: queue.SimpleQueue = queue.SimpleQueue()
    for session in sessions:
        free.put(session)

    def one(item):
        session = free.get()
        try:
            return call(session, item)
        finally:
            free.put(session)

    pending: collections.deque = collections.deque()
    todo = iter(items)
    with ThreadPoolExecutor(len(sessions)) as pool:
        try:
            for item in itertools.islice(todo, len(sessions)):
                pending.append(pool.submit(one, item))
            while pending:
                result = pending.popleft().result()
                for item in itertools.islice(todo, 1):
                    pending.append(pool.submit(one, item))
                yield result
        finally:
            for future in pending:
                future.cancel()
