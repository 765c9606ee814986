"""The engine types: how to ask for an engine (`EngineSpec`) and what one is (`Engine`).

Apart from the factory in __init__.py, so that the implementations (local.py, dask.py) and
the factory that imports them do not import each other."""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass

from ptq_cli.errors import UsageError

KINDS = ("local", "dask")


@dataclass(frozen=True)
class EngineSpec:
    """How to obtain an engine.

    kind: "local" (this process, one task at a time) or "dask".
    address: the Dask scheduler ("tcp://host:8786"), or "local" to start a LocalCluster of
        `workers` processes; None follows Dask's own configuration (DASK_SCHEDULER_ADDRESS or
        the `scheduler-address` key), and starts a LocalCluster when that names none.
    workers: processes of a LocalCluster (one task thread each).
    threads: onnxruntime threads per task on the workers (1: the workers are the parallelism).
    retries: how often Dask reruns a task whose worker died (the result stays exact: a task is
        a pure function of its file list).
    connect_timeout: seconds to wait for a remote scheduler before giving up.
    """

    kind: str = "local"
    address: str | None = None
    workers: int = 2
    threads: int = 1
    retries: int = 2
    connect_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"engine {self.kind!r} is not known; choose one of {', '.join(KINDS)}")
        if self.workers < 1 or self.threads < 1 or self.retries < 0 or self.connect_timeout <= 0:
            raise UsageError("an engine needs workers >= 1, threads >= 1, retries >= 0 and a positive "
                             f"connect timeout; got {self}")


class Engine:
    """An executor, how many tasks it runs at once, and what to close when done."""

    def __init__(self, executor: "Executor", slots: int, description: str, threads: int = 1,
                 closers: tuple = ()) -> None:
        self.executor = executor
        self.slots = slots  # tasks that run at the same time: the shard count is chosen from it
        self.description = description
        self.threads = threads  # onnxruntime threads per task
        self._closers = closers

    @property
    def distributed(self) -> bool:
        """Whether tasks run in other processes (and the data must be shipped as file lists)."""
        return bool(self._closers)

    def close(self) -> None:
        for close in self._closers:
            close()
        self._closers = ()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
