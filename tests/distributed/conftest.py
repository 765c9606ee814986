"""A real 2-worker Dask LocalCluster (one per module) and tiny models with .npy folders.

Skipped without the `dask` extra, and under CI's qemu pass (.ci/run sets PTQ_TEST_UNDER_QEMU):
there the client runs emulated but the worker processes Dask spawns run the interpreter
natively, so the two sides would not compute on the same (emulated) CPU.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import onnx
import pytest

from tests.conftest import tiny_conv_relu

UNDER_QEMU = bool(os.environ.get("PTQ_TEST_UNDER_QEMU"))  # read by the tests only, never by ptq

# Every module here starts with `pytestmark = ON_A_CLUSTER`.
ON_A_CLUSTER = [
    pytest.mark.skipif(UNDER_QEMU, reason="under qemu the Dask workers run natively while the client is "
                       "emulated: the two sides would compute on different CPUs"),
    pytest.mark.skipif(importlib.util.find_spec("distributed") is None,
                       reason="the dask extra is not installed (pip install -e '.[dask]')"),
]


@pytest.fixture(scope="module")
def engine():
    pytest.importorskip("distributed", reason="the dask extra is not installed (pip install -e '.[dask]')")
    from ptq_cli.engine import EngineSpec, open_engine

    with open_engine(EngineSpec("dask", address="local", workers=2)) as engine:
        yield engine


@pytest.fixture(scope="module")
def scheduler_address(engine) -> str:
    """The fixture cluster's address, for the command line's --address."""
    return engine.executor._client.scheduler.address


@pytest.fixture(scope="module")
def conv_model(tmp_path_factory):
    """Conv -> Relu -> MaxPool -> Conv -> GAP -> Gemm(10): channel means, Gram matrices, classes."""
    path = tmp_path_factory.mktemp("model") / "conv.onnx"
    onnx.save(tiny_conv_relu(np.random.default_rng(1)), str(path))
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """23 files of 1 to 3 rows (45 rows): parts can only be cut where a batch starts."""
    folder = tmp_path_factory.mktemp("data") / "calib"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for i in range(23):
        rows = 1 + i % 3
        np.save(folder / f"s{i:03d}.npy", (rng.standard_normal((rows, 3, 8, 8)) * (1 + i % 5)).astype(np.float32))
    return folder


def folder_bytes(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}
