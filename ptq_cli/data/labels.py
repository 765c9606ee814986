"""--labels FILE: integer class indices, one per line or whitespace separated, in sample order."""

from __future__ import annotations

from pathlib import Path

from ptq_cli.errors import DataError


def read_labels(path: str | Path) -> tuple[int, ...]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read labels file {path} ({exc})") from None
    labels = []
    for number, line in enumerate(text.splitlines(), start=1):
        for token in line.split():
            try:
                labels.append(int(token))
            except ValueError:
                raise DataError(f"{path} line {number}: {token!r} is not an integer label; "
                                "write one class index per sample") from None
    if not labels:
        raise DataError(f"labels file {path} is empty; write one class index per sample")
    return tuple(labels)
