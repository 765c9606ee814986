"""The Dask engine: `distributed`'s Client executor on a scheduler, or on a LocalCluster.

Imported only when --engine dask is asked for (the `ptq-cli[dask]` extra). Tasks are submitted
with pure=False, so a shard submitted twice runs twice (and must give the same result, which
the shard functions guarantee), and with `retries`, so Dask reruns a task whose worker died.
"""

from __future__ import annotations

import logging

from ptq_cli.engine.base import Engine, EngineSpec
from ptq_cli.errors import EngineError, UsageError

INSTALL_HINT = "pip install 'ptq-cli[dask]'"


def dask_engine(spec: EngineSpec) -> Engine:
    try:  # optional: the dask extra, imported only when asked for
        import dask
        from distributed import Client, LocalCluster
    except ImportError as exc:
        if exc.name in (None, "dask", "distributed"):  # None: a module set to None (absent)
            raise UsageError(f"--engine dask needs Dask's distributed scheduler: {INSTALL_HINT}") from None
        raise EngineError(f"Dask is installed but does not import ({exc}); reinstall it: {INSTALL_HINT}") from None
    address = spec.address or dask.config.get("scheduler-address", None)
    if address in (None, "", "local"):
        return _local_cluster(spec, Client, LocalCluster)
    try:
        client = Client(address, timeout=spec.connect_timeout, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EngineError(f"cannot reach the Dask scheduler at {address} ({reason}); start one "
                          "(`dask scheduler`) or give --address local for a cluster on this machine") from None
    slots = max(1, sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values()))
    return Engine(client.get_executor(retries=spec.retries, pure=False), slots,
                  f"Dask scheduler {address} ({slots} task slots)", spec.threads, (client.close,))


def _local_cluster(spec: EngineSpec, Client, LocalCluster) -> Engine:
    try:
        cluster = LocalCluster(n_workers=spec.workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.ERROR)
    except (OSError, TimeoutError, RuntimeError) as exc:
        raise EngineError(f"cannot start a local Dask cluster of {spec.workers} workers ({exc})") from None
    client = Client(cluster, set_as_default=False)
    return Engine(client.get_executor(retries=spec.retries, pure=False), spec.workers,
                  f"local Dask cluster ({spec.workers} workers)", spec.threads, (client.close, cluster.close))
