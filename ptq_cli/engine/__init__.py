"""Where ptq runs independent pieces of work: in this process, or on a Dask cluster.

An `Engine` is a plain `concurrent.futures.Executor` (submit/map) plus how many tasks it runs
at once, so one code path serves the in-process default and a cluster: calibration and compare
split their data into shards (file lists) and submit one task per shard; the accuracy search
can submit one trial per task. Dask is imported only when `kind="dask"` is asked for, so the
default start-up imports nothing more.

    with open_engine(EngineSpec("dask", address="local", workers=2)) as engine:
        table = calibrate("model.onnx", "calib/", engine=engine)
"""

from __future__ import annotations

from ptq_cli.engine.base import KINDS, Engine, EngineSpec
from ptq_cli.engine.dask import dask_engine
from ptq_cli.engine.local import local_engine

__all__ = ["KINDS", "Engine", "EngineSpec", "open_engine"]


def open_engine(spec: EngineSpec = EngineSpec()) -> Engine:
    """The engine `spec` describes; close it (or use it as a context manager) when done."""
    if spec.kind == "local":
        return local_engine()
    return dask_engine(spec)
