"""The --engine family of flags shared by calibrate and compare.

    @engine_options
    def calibrate(model, **kwargs):
        spec, parts = engine_spec_from_options(**pop_engine_options(kwargs))   # None, None: local

Nothing here imports Dask: the dask engine is opened, and Dask imported, only when asked for.
"""

from __future__ import annotations

from typing import Any

import click

from ptq_cli.engine import KINDS, EngineSpec

ENGINE_OPTION_NAMES = ("engine", "address", "workers", "worker_threads", "parts", "connect_timeout")


def engine_options(command):
    options = [
        click.option("--engine", type=click.Choice(KINDS), default="local", show_default=True,
                     help="Where the work runs: this process, or a Dask cluster (pip install 'ptq-cli[dask]'). "
                          "The result is the same, byte for byte."),
        click.option("--address", metavar="URL|local",
                     help="Dask scheduler (tcp://host:8786), or `local` for a cluster of --workers processes "
                          "on this machine [default: Dask's own DASK_SCHEDULER_ADDRESS, else local]."),
        click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
                     help="Worker processes of a local Dask cluster."),
        click.option("--worker-threads", type=click.IntRange(min=1), default=1, show_default=True,
                     help="onnxruntime threads per task on the Dask workers."),
        click.option("--parts", type=click.IntRange(min=1), metavar="N",
                     help="Split the data into N runs of consecutive files (cut where a batch starts) "
                          "[default: 2 per worker thread]."),
        click.option("--connect-timeout", type=click.FloatRange(min=0, min_open=True), default=10.0,
                     show_default=True, metavar="SECONDS", help="How long to wait for the Dask scheduler."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def pop_engine_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {name: kwargs.pop(name) for name in ENGINE_OPTION_NAMES}


def engine_spec_from_options(engine: str, address: str | None, workers: int, worker_threads: int,
                             parts: int | None, connect_timeout: float) -> tuple[EngineSpec | None, int | None]:
    """(spec, parts), or (None, None) for the in-process default; dask-only flags given without
    --engine dask are refused rather than ignored."""
    if engine == "local":
        given = [flag for flag, value in (("--address", address), ("--parts", parts)) if value is not None]
        if given:
            raise click.UsageError(f"{', '.join(given)} only work with --engine dask")
        return None, None
    return EngineSpec("dask", address=address, workers=workers, threads=worker_threads,
                      connect_timeout=connect_timeout), parts
