"""open_dataset: find out what a --data path holds and build the matching lazy Dataset.

Accepted, in this order of detection:
- a single .npy / .npz / .pb file;
- a test_data_set_* folder, or a folder of them (ONNX model-zoo layout, input_N.pb);
- a folder of .npy, .npz or .pb files (one kind per folder);
- a folder of images, or of class sub-folders of images (label = the sub-folder's sorted rank).
Files are taken in natural order (2.npy before 10.npy); hidden files and other extensions are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from ptq_cli.data.arrays import NpyReader, NpzReader, PbReader, ZooReader, zoo_entry
from ptq_cli.data.dataset import Dataset, Entry, Reader, with_labels
from ptq_cli.data.images import IMAGE_EXTENSIONS, ImagePreprocess, ImageReader
from ptq_cli.data.labels import read_labels
from ptq_cli.errors import DataError, UsageError
from ptq_cli.model.io import InputSpec

ARRAY_EXTENSIONS = (".npy", ".npz", ".pb")
ACCEPTED = ("a folder (or single file) of .npy (single-input models), .npz (one key per input) or "
            ".pb TensorProto files; test_data_set_*/input_N.pb folders; or images ("
            + " ".join(IMAGE_EXTENSIONS) + "), optionally in class sub-folders")
_ZOO_SET = "test_data_set_"


def natural_key(name: str) -> list:
    """Sort key that orders embedded numbers by value: img2 < img10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def open_dataset(path: str | Path, specs: Sequence[InputSpec], *,
                 image: ImagePreprocess | None = None,
                 labels: str | Path | None = None) -> Dataset:
    """A lazy Dataset over `path`, checked against the model inputs `specs` as it is read."""
    specs = tuple(specs)
    if not specs:
        raise DataError("the model has no inputs to feed")
    root = Path(path)
    if not root.exists():
        raise DataError(f"data path {path} does not exist")
    if root.is_file():
        entries, reader, kind = _single_file(root, specs)
        description = f"{kind} file {path}"
    else:
        entries, reader, kind = _folder(root, str(path), specs, image)
        unit = "images" if kind.startswith("image") else "samples" if kind == "model-zoo" else "files"
        description = f"{kind} folder {path} ({len(entries)} {unit})"
    if image is not None and not isinstance(reader, ImageReader):
        raise UsageError(f"image preprocessing options (--preset, --resize, ...) apply to image "
                         f"folders, but {path} holds {kind} data; drop them")
    if isinstance(reader, ImageReader):
        description += f", preprocess {image.describe()}"
    if labels is not None:
        values = read_labels(labels)
        entries = with_labels(entries, values, reader, str(path), str(labels))
        description += f", labels from {labels}"
    return Dataset(tuple(entries), reader, specs, description)


def _single_file(path: Path, specs: tuple[InputSpec, ...]) -> tuple[list[Entry], Reader, str]:
    ext = path.suffix.lower()
    if ext not in ARRAY_EXTENSIONS:
        hint = "; for images pass their folder" if ext in IMAGE_EXTENSIONS else ""
        raise DataError(f"{path}: a single data file must be .npy, .npz or .pb{hint}")
    return [Entry(str(path), (path,))], _array_reader(ext, specs, str(path)), ext[1:]


def _folder(root: Path, shown: str, specs: tuple[InputSpec, ...],
            image: ImagePreprocess | None) -> tuple[list[Entry], Reader, str]:
    if root.name.startswith(_ZOO_SET):
        return [zoo_entry(root, shown, specs)], ZooReader(specs), "model-zoo"
    children = sorted((p for p in root.iterdir() if not p.name.startswith(".")),
                      key=lambda p: natural_key(p.name))
    sets = [p for p in children if p.is_dir() and p.name.startswith(_ZOO_SET)]
    if sets:
        return [zoo_entry(p, _join(shown, p.name), specs) for p in sets], ZooReader(specs), "model-zoo"
    files = [p for p in children if p.is_file()
             and p.suffix.lower() in ARRAY_EXTENSIONS + IMAGE_EXTENSIONS]
    kinds = sorted({_kind(p) for p in files})
    if len(kinds) > 1:
        raise DataError(f"{shown} mixes {' and '.join(kinds)} files; keep one kind per folder")
    if kinds == ["image"]:
        entries = [Entry(_join(shown, p.name), (p,)) for p in files]
        return entries, _image_reader(specs, image, shown), "image"
    if files:
        entries = [Entry(_join(shown, p.name), (p,)) for p in files]
        ext = files[0].suffix.lower()
        return entries, _array_reader(ext, specs, shown), ext[1:]
    classes = [p for p in children if p.is_dir()]
    entries = _class_entries(classes, shown)
    if entries:
        return entries, _image_reader(specs, image, shown), "image class"
    raise DataError(f"{shown} holds no usable data files; ptq reads {ACCEPTED}")


def _class_entries(classes: list[Path], shown: str) -> list[Entry]:
    """Images of class sub-folders; the label is the folder's rank in plain sorted order."""
    entries = []
    for label, folder in enumerate(sorted(classes, key=lambda p: p.name)):
        images = sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                         and p.suffix.lower() in IMAGE_EXTENSIONS), key=lambda p: natural_key(p.name))
        entries.extend(Entry(_join(shown, folder.name, p.name), (p,), (label,)) for p in images)
    return entries


def _kind(path: Path) -> str:
    ext = path.suffix.lower()
    return "image" if ext in IMAGE_EXTENSIONS else ext


def _join(shown: str, *names: str) -> str:
    return "/".join([shown.rstrip("/"), *names])


def _array_reader(ext: str, specs: tuple[InputSpec, ...], shown: str) -> Reader:
    if ext == ".npz":
        return NpzReader(specs)
    if len(specs) != 1:
        names = ", ".join(s.name for s in specs)
        raise DataError(f"{shown} holds {ext} files but the model has {len(specs)} inputs ({names}); "
                        "save each sample as .npz with one array per input name, or use "
                        "test_data_set_*/input_N.pb folders")
    return NpyReader(specs[0]) if ext == ".npy" else PbReader(specs[0])


def _image_reader(specs: tuple[InputSpec, ...], image: ImagePreprocess | None,
                  shown: str) -> ImageReader:
    if len(specs) != 1:
        raise DataError(f"{shown} holds images but the model has {len(specs)} inputs; images can "
                        "feed single-input models only; save samples as .npz instead")
    if image is None:
        raise UsageError(f"{shown} holds images: say how to preprocess them with --preset "
                         "(imagenet-torch, imagenet-tf, caffe, raw, unit) or --scale/--mean/--std "
                         "(image=ImagePreprocess(...) in Python)")
    return ImageReader(specs[0], image)
