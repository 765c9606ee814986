"""Class 1 (data loss): every file any command writes goes through ptq_cli.files — never over an
input, never over an existing file without --force, atomic, permissions from the umask."""

from __future__ import annotations

import os
import stat

import pytest

from ptq_cli.errors import PtqError
from ptq_cli.files import staged, write_text
from tests.robustness.harness import invoke

REPORTS = ("--html", "--junit", "--markdown")


def _compare(work, quantized, *extra):
    return ("compare", work / "model.onnx", quantized, "--data", work / "data", "-q", *extra)


@pytest.mark.parametrize("option", REPORTS)
@pytest.mark.parametrize("victim", ["model.onnx", "model.int8.onnx", "labels.txt", "data/0.npy"])
def test_compare_never_writes_a_report_over_an_input(work, quantized, option, victim):
    for force in ((), ("--force",)):
        run = invoke(work, *_compare(work, quantized, "--labels", work / "labels.txt", option, work / victim, *force))
        run.refused(2, "refusing to write over the input", victim.split("/")[-1])


def test_compare_reports_need_force_and_distinct_names(work, quantized):
    (work / "old.html").write_text("mine")
    invoke(work, *_compare(work, quantized, "--html", work / "old.html")).refused(2, "--force")
    invoke(work, *_compare(work, quantized, "--html", work / "r", "--junit", work / "r")).refused(2, "two outputs")
    assert invoke(work, *_compare(work, quantized, "--html", work / "old.html", "--force")).code == 0
    assert (work / "old.html").read_text().startswith("<!DOCTYPE html>")


def test_step_summary_is_never_appended_to_an_input(work, quantized):
    run = invoke(work, *_compare(work, quantized), env={"GITHUB_STEP_SUMMARY": str(work / "model.onnx")})
    run.refused(2, "GITHUB_STEP_SUMMARY")


@pytest.mark.parametrize("command", ["quantize", "calibrate"])
@pytest.mark.parametrize("victim", ["model.onnx", "data/0.npy", "labels.txt"])
def test_model_and_table_outputs_never_replace_inputs(work, command, victim):
    run = invoke(work, command, work / "model.onnx", "--data", work / "data", "--labels", work / "labels.txt",
                 "-o", work / victim, "--force", "-q")
    run.refused(2, "refusing to write over the input")


def test_merge_never_replaces_a_table_it_reads(work):
    assert invoke(work, "calibrate", work / "model.onnx", "--data", work / "data", "-q").code == 0
    table = work / "model.calib.json"
    invoke(work, "calibrate", "merge", table, table, "-o", table, "--force").refused(2, "input")


def test_symlink_and_hard_link_to_an_input_are_the_input(work, quantized):
    os.symlink(work / "model.onnx", work / "alias.onnx")
    os.link(work / "model.onnx", work / "hard.onnx")
    for alias in ("alias.onnx", "hard.onnx"):
        run = invoke(work, "quantize", work / "model.onnx", "--dynamic", "-o", work / alias, "--force", "-q")
        run.refused(2, "refusing to write over the input")


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_new_outputs_follow_the_umask_and_replaced_ones_keep_their_mode(work, mask):
    old = os.umask(mask)
    try:
        assert invoke(work, "quantize", work / "model.onnx", "--dynamic", "-o", work / "d.onnx", "-q").code == 0
        assert invoke(work, "calibrate", work / "model.onnx", "--data", work / "data", "-q").code == 0
    finally:
        os.umask(old)
    for name in ("d.onnx", "model.calib.json"):
        assert stat.S_IMODE((work / name).stat().st_mode) == 0o666 & ~mask
    os.chmod(work / "d.onnx", 0o640)
    assert invoke(work, "quantize", work / "model.onnx", "--dynamic", "-o", work / "d.onnx", "-q", "--force").code == 0
    assert stat.S_IMODE((work / "d.onnx").stat().st_mode) == 0o640


def test_os_errors_are_one_line_and_leave_nothing(work, quantized):
    (work / "afile").write_text("x")
    cases = [(work / "afile" / "out.onnx", "is a file, not a folder"),
             (work / ("n" * 300 + ".onnx"), "too long"),
             ("/proc/ptq-out.onnx", "cannot write")]
    for target, words in cases:
        run = invoke(work, "quantize", work / "model.onnx", "--dynamic", "-o", target, "-q")
        assert run.code in (2, 3)
        run.refused(run.code, words)
        run = invoke(work, *_compare(work, quantized, "--html", target))
        run.refused(run.code, words)


def test_read_only_folder(work, tmp_path_factory):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    locked = work / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        invoke(work, "quantize", work / "model.onnx", "--dynamic", "-o", locked / "m.onnx", "-q").refused(3, "permission")
    finally:
        locked.chmod(0o700)


def test_a_failure_or_interrupt_while_writing_leaves_nothing(tmp_path):
    for error in (KeyboardInterrupt, OSError(28, "No space left on device"), ValueError("boom")):
        with pytest.raises((KeyboardInterrupt, PtqError, ValueError)) as caught:
            with staged(tmp_path / "deep" / "er" / "out.bin") as tmp:
                tmp.write_bytes(b"half")
                raise error
        if isinstance(error, OSError):
            assert "no space left" in str(caught.value)
        assert list(tmp_path.iterdir()) == []   # no temp file, no folder created for it


def test_replacing_is_atomic_and_needs_force(tmp_path):
    target = tmp_path / "t.txt"
    write_text(target, "one")
    with pytest.raises(PtqError, match="--force"):
        write_text(target, "two")
    with pytest.raises(KeyboardInterrupt):
        with staged(target, force=True) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert target.read_text() == "one" and [p.name for p in tmp_path.iterdir()] == ["t.txt"]
    write_text(target, "two", force=True)
    assert target.read_text() == "two"


def test_the_external_data_of_an_input_model_is_an_input_too(work):
    import copy

    import onnx

    model = onnx.load(work / "model.onnx")
    onnx.save_model(copy.deepcopy(model), work / "ext.onnx", save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    run = invoke(work, "quantize", work / "ext.onnx", "--dynamic", "-o", work / "weights.bin", "--force", "-q")
    run.refused(2, "refusing to write over the input", "weights.bin")
