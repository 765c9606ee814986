"""The in-process engine: every task runs at submit time, in order, in this process.

It keeps the single-machine path free of threads and processes (and so of any difference in
results), while code written against an Executor runs unchanged on it."""

from __future__ import annotations

from concurrent.futures import Executor, Future

from ptq_cli.engine.base import Engine


class InlineExecutor(Executor):
    """An Executor whose `submit` runs the call before returning its (finished) Future."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # the caller sees it from future.result(), as with any executor
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            future.set_exception(exc)
        return future


def local_engine() -> Engine:
    return Engine(InlineExecutor(), slots=1, description="this process", threads=0)
