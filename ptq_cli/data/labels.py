"""--labels FILE: one integer class index per sample, in sample order, in the formats people have:

- text: integers separated by whitespace, newlines or commas (.txt, or any other name);
- .npy: a 1-D integer array (or N x 1), or one-hot / score rows (N x C, argmax taken);
- .npz: the one array it holds, or the one named labels / label / y / targets / target;
- .csv: one column, or the column named label / labels / class / class_id / target / y (a header
  row is recognised by not being integers);
- .json: a list of integers, or an object with such a list under "labels".
"""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import numpy as np

from ptq_cli.errors import DataError

_NAMES = ("labels", "label", "y", "targets", "target", "class", "class_id", "classes")


def read_labels(path: str | Path) -> tuple[int, ...]:
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".npy", ".npz"):
            labels = _from_array(_load_array(path), path)
        else:
            text = path.read_bytes().decode("utf-8-sig")
            reader = {".csv": _from_csv, ".json": _from_json}.get(suffix, _from_text)
            labels = reader(text, path)
    except UnicodeDecodeError:
        raise DataError(f"labels file {path} is not UTF-8 text; write integers (text, CSV, JSON) or save "
                        "a .npy/.npz array") from None
    except OSError as exc:
        raise DataError(f"cannot read labels file {path} ({exc.strerror or exc})") from None
    if not labels:
        raise DataError(f"labels file {path} is empty; write one class index per sample")
    negative = next((i for i, label in enumerate(labels) if label < 0), None)
    if negative is not None:
        raise DataError(f"{path}: label {labels[negative]} of sample {negative} is negative; labels are 0-based "
                        "class indices")
    return tuple(labels)


def _from_text(text: str, path: Path) -> list[int]:
    labels = []
    for number, line in enumerate(text.splitlines(), start=1):
        for token in line.replace(",", " ").split():
            labels.append(_integer(token, f"{path} line {number}"))
    return labels


def _from_csv(text: str, path: Path) -> list[int]:
    try:
        rows = [row for row in csv.reader(text.splitlines()) if any(cell.strip() for cell in row)]
    except csv.Error as exc:
        raise DataError(f"{path} is not a readable CSV file ({exc})") from None
    if not rows:
        return []
    header = None
    if not all(_is_integer(cell) for cell in rows[0]):
        header, rows = [cell.strip().lower() for cell in rows[0]], rows[1:]
    column = _csv_column(header, rows, path)
    return [_integer(row[column] if column < len(row) else "", f"{path} row {i + (2 if header else 1)}")
            for i, row in enumerate(rows)]


def _csv_column(header: list[str] | None, rows: list[list[str]], path: Path) -> int:
    if header is not None:
        for name in _NAMES:
            if name in header:
                return header.index(name)
    width = max((len(row) for row in rows), default=0)
    integral = [c for c in range(width) if all(c < len(row) and _is_integer(row[c]) for row in rows)]
    if width == 1 or len(integral) == 1:
        return 0 if width == 1 else integral[0]
    raise DataError(f"{path}: cannot tell which column holds the labels (columns {header or width}); "
                    f"name it one of {', '.join(_NAMES[:5])} in a header row")


def _from_json(text: str, path: Path) -> list[int]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"labels file {path} is not valid JSON ({exc})") from None
    if isinstance(data, dict):
        key = next((k for k in _NAMES if k in data), None)
        if key is None:
            raise DataError(f"{path}: a JSON object of labels needs a \"labels\" list; found keys {sorted(data)[:5]}")
        data = data[key]
    if not isinstance(data, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in data):
        raise DataError(f"{path}: labels must be a JSON list of integers (or {{\"labels\": [...]}})")
    return list(data)


def _load_array(path: Path) -> np.ndarray:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"labels file {path} is not a plain numpy array ({str(exc)[:100] or 'empty'}); "
                        "save integers with np.save") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            keys = list(loaded.files)
            key = keys[0] if len(keys) == 1 else next((k for k in _NAMES if k in keys), None)
            if key is None:
                raise DataError(f"{path} holds arrays {keys}; name the labels array one of "
                                f"{', '.join(_NAMES[:4])}")
            return loaded[key]
    return loaded


def _from_array(array: np.ndarray, path: Path) -> list[int]:
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    elif array.ndim == 2 and array.shape[1] > 1:
        array = np.argmax(array, axis=1)  # one-hot or score rows
    if array.ndim != 1:
        raise DataError(f"{path}: labels must be a 1-D array (one class per sample), got shape {list(array.shape)}")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise DataError(f"{path}: labels must be integer class indices, got non-integer values")
    elif array.dtype.kind not in "iub":
        raise DataError(f"{path}: labels must be integers, got an array of {array.dtype}")
    return [int(v) for v in array]


def _integer(token: str, where: str) -> int:
    if not _is_integer(token):
        raise DataError(f"{where}: {token.strip()!r} is not an integer label; write one class index per sample")
    return int(float(token))


def _is_integer(token: str) -> bool:
    token = token.strip()
    try:
        return float(token) == int(float(token))
    except (ValueError, OverflowError):
        return False
