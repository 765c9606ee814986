"""Writing report files: atomically (a half-written JUnit file would mislead CI), and the GitHub
step summary, which is appended to because every step of a job shares that file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ptq_cli.errors import PtqError


def write_report(path: str | os.PathLike, text: str) -> Path:
    """Write (or replace) a report file; reports are regenerated on every run, so no --force."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a report is an ordinary file
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise PtqError(f"cannot write the report {path}: {exc.strerror or exc}; check the folder "
                       "exists and is writable") from None
    return path


def append_step_summary(path: str | os.PathLike, markdown: str) -> None:
    """Append to $GITHUB_STEP_SUMMARY, separated from what earlier steps wrote."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write("\n" + markdown)
    except OSError as exc:
        raise PtqError(f"cannot append to GITHUB_STEP_SUMMARY file {path}: {exc.strerror or exc}") from None


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
