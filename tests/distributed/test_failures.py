"""The failure paths of --engine dask: no scheduler, no extra, Ctrl-C. No file is ever left."""

from __future__ import annotations

import socket
import sys
from concurrent.futures import Future

import pytest
from click.testing import CliRunner

from ptq_cli.cli import main

from .conftest import ON_A_CLUSTER
from ptq_cli.engine.gather import gather_in_order


pytestmark = ON_A_CLUSTER

def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


def test_an_unreachable_scheduler_is_one_line_exit_3_and_no_file(conv_model, data_dir, tmp_path):
    out = tmp_path / "t.json"
    result = _run("calibrate", conv_model, "--data", data_dir, "-o", out, "--engine", "dask",
                  "--address", f"tcp://127.0.0.1:{_closed_port()}", "--connect-timeout", "0.5")
    assert result.exit_code == 3
    assert result.stderr.startswith("ptq: error: cannot reach the Dask scheduler at tcp://127.0.0.1:")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_missing_extra_tells_how_to_install_it_exit_2(conv_model, data_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` now fails
    result = _run("calibrate", conv_model, "--data", data_dir, "-o", tmp_path / "t.json", "--engine", "dask")
    assert result.exit_code == 2
    assert result.stderr.strip() == ("ptq: error: --engine dask needs Dask's distributed scheduler: "
                                     "pip install 'ptq-cli[dask]'")
    assert list(tmp_path.iterdir()) == []


def test_dask_flags_without_the_dask_engine_are_refused(conv_model, data_dir, tmp_path):
    result = _run("calibrate", conv_model, "--data", data_dir, "-o", tmp_path / "t.json", "--parts", "3")
    assert result.exit_code == 2 and "--parts only work with --engine dask" in result.stderr


def test_ctrl_c_on_the_cluster_leaves_no_file(scheduler_address, conv_model, data_dir, tmp_path, monkeypatch):
    import ptq_cli.calibration.sharded as sharded

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sharded, "gather_in_order", interrupted)
    result = _run("calibrate", conv_model, "--data", data_dir, "-o", tmp_path / "t.json", "--engine", "dask",
                  "--address", scheduler_address)
    assert result.exit_code == 130 and "no output was written" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_while_gathering_cancels_the_pending_futures():
    interrupted, pending = Future(), Future()
    interrupted.set_exception(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        gather_in_order([(0, interrupted), (1, pending)], 2, progress=False)
    assert pending.cancelled()
