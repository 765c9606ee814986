"""Writing report files through the one write path (ptq_cli.files: atomic, never over an input,
an existing file only with --force), and the GitHub step summary, which is appended to because
every step of a job shares that file."""

from __future__ import annotations

import os
from pathlib import Path

from ptq_cli.errors import PtqError, UsageError
from ptq_cli.files import describe_os_error, write_text


def write_report(path: str | os.PathLike, text: str, *, force: bool = False,
                 protect: tuple[str | os.PathLike | None, ...] = ()) -> Path:
    """Write a report file; `protect` holds the inputs (models, data, labels) it must never replace."""
    return write_text(path, text, force=force, protect=protect)


def append_step_summary(path: str | os.PathLike, markdown: str, *,
                        protect: tuple[str | os.PathLike | None, ...] = ()) -> None:
    """Append to $GITHUB_STEP_SUMMARY, separated from what earlier steps wrote; never to an input."""
    for p in protect:
        if p is not None and Path(p).is_file() and Path(path).exists() and os.path.samefile(path, p):
            raise UsageError(f"GITHUB_STEP_SUMMARY names the input {p}; refusing to append the summary to it")
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write("\n" + markdown)
    except OSError as exc:
        raise PtqError(describe_os_error(exc, f"cannot append to the GITHUB_STEP_SUMMARY file {path}")) from None
