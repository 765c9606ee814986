"""The one write path for every file ptq writes: models, calibration tables, reports.

Every output goes through `check_output` (early, before the long work, so that a refusal costs
nothing) and `staged` (when the bytes are ready):

- never over an input: `protect` lists the files (and folders) the command reads;
- never over an existing file without `force`, never over a folder or a device;
- atomic: the bytes go to a temporary file in the target folder, renamed over the target only
  when complete; on any failure or interrupt the temporary file (and any folder created for
  it) is removed, so a failed command leaves nothing behind;
- created with the permissions of the user's umask, like any other tool's output (a replaced
  file keeps its mode);
- an OS error (permission, disk full, name too long, a parent that is a file) becomes a
  PtqError naming the file and what to do.

    with staged(path, force=force, protect=(model_path,)) as tmp:
        tmp.write_bytes(data)            # or any writer that takes a path
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from ptq_cli.errors import OutputExistsError, PtqError, UsageError
from ptq_cli.model.external import external_data_files

PathLike = str | os.PathLike

_NAME_MAX = 255


def check_output(path: PathLike, *, force: bool = False,
                 protect: Iterable[PathLike | None] = ()) -> Path:
    """Refuse a path ptq must not write: an input, an existing file without `force`, a folder,
    a device, a name the file system cannot hold, a folder that cannot be created."""
    path = Path(path)
    if str(path) in ("", "."):
        raise UsageError("the output path is empty; name a file")
    if len(os.fsencode(path.name)) > _name_max(path.parent):
        raise PtqError(f"cannot write {str(path)[:80]}...: the file name is too long "
                       f"({len(os.fsencode(path.name))} bytes, the file system allows "
                       f"{_name_max(path.parent)}); choose a shorter name")
    try:
        _check_target(path, force, protect)
    except OSError as exc:
        raise PtqError(describe_os_error(exc, f"cannot write {path}")) from None
    return path


def _check_target(path: Path, force: bool, protect: Iterable[PathLike | None]) -> None:
    if path.is_dir():
        raise UsageError(f"{path} is a folder; name a file inside it")
    for protected in protect:
        if protected is not None and _is_inside_or_same(path, Path(protected)):
            where = "" if not Path(protected).is_dir() else f" (a file of the input folder {protected})"
            raise UsageError(f"refusing to write over the input {path}{where}; choose another output")
    if path.exists() or path.is_symlink():
        if path.exists() and not stat.S_ISREG(path.stat().st_mode):
            raise UsageError(f"{path} exists and is not a regular file; choose another output")
        if not force:
            raise OutputExistsError(f"{path} already exists; pass --force to replace it or choose another output")
    folder = _existing_ancestor(path.parent)
    if not folder.is_dir():
        raise PtqError(f"cannot write {path}: {folder} is a file, not a folder; choose another output")
    if folder == path.parent.absolute() and not os.access(folder, os.W_OK | os.X_OK):
        raise PtqError(f"cannot write {path}: permission denied in {folder}; choose a folder you can write")


def check_distinct(paths: Sequence[PathLike | None]) -> None:
    """Two outputs of one command must not name the same file (the second would replace the first)."""
    seen: dict[str, Path] = {}
    for p in paths:
        if p is None:
            continue
        key = os.path.normcase(os.path.abspath(p))
        if key in seen:
            raise UsageError(f"{seen[key]} is given for two outputs; give each output its own file")
        seen[key] = Path(p)


@contextmanager
def staged(path: PathLike, *, force: bool = False,
           protect: Iterable[PathLike | None] = ()) -> Iterator[Path]:
    """Yield a temporary path in `path`'s folder; rename it to `path` when the block succeeds.

    The checks of `check_output` run again here (files may have appeared since)."""
    path = check_output(path, force=force, protect=tuple(protect))
    created = _make_parents(path)
    tmp: Path | None = None
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name[:40]}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        yield tmp
        os.chmod(tmp, _mode_for(path))
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise PtqError(describe_os_error(exc, f"cannot write {path}")) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if tmp is not None or not path.exists():
            for folder in created:
                _rmdir_quietly(folder)


@contextmanager
def staged_many(paths: Sequence[PathLike], *, force: bool = False,
                protect: Iterable[PathLike | None] = ()) -> Iterator[list[Path]]:
    """`staged` for files written together (a model and its external data): all or none."""
    protect = tuple(protect)
    for p in paths:
        check_output(p, force=force, protect=protect)
    with ExitStack() as stack:
        # Exits run in reverse: the last file (the model, which names the others) lands last.
        yield [stack.enter_context(staged(p, force=force, protect=protect)) for p in paths]


def write_bytes(path: PathLike, data: bytes, *, force: bool = False,
                protect: Iterable[PathLike | None] = ()) -> Path:
    with staged(path, force=force, protect=protect) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: PathLike, text: str, *, force: bool = False,
               protect: Iterable[PathLike | None] = ()) -> Path:
    return write_bytes(path, text.encode("utf-8"), force=force, protect=protect)


def describe_os_error(exc: OSError, action: str) -> str:
    """One line: what failed, why in words, and what to do."""
    hints = {
        errno.EACCES: "permission denied; choose a location you can write or fix its permissions",
        errno.EPERM: "operation not permitted; choose another location",
        errno.ENOSPC: "no space left on the device; free some space or write elsewhere",
        errno.EDQUOT: "disk quota exceeded; free some space or write elsewhere",
        errno.ENAMETOOLONG: "the file name is too long; choose a shorter one",
        errno.ENOTDIR: "a parent of the path is a file, not a folder; choose another path",
        errno.EEXIST: "a parent of the path is a file, not a folder; choose another path",
        errno.EROFS: "the file system is read-only; write elsewhere",
        errno.ENOENT: "no such file or folder; check the path",
        errno.EISDIR: "it is a folder; name a file",
        errno.EXDEV: "the temporary file and the target are on different devices",
    }
    reason = hints.get(exc.errno or -1) or f"{exc.strerror or exc}"
    return f"{action}: {reason}"


def _is_inside_or_same(path: Path, protected: Path) -> bool:
    if not protected.exists():
        return False
    if protected.is_dir():
        # An existing file inside a data folder is an input too; a new file there is not.
        return path.exists() and protected.resolve() in path.resolve().parents
    if not path.exists():
        return False
    try:
        if os.path.samefile(path, protected):  # also hard links and symlinks
            return True
    except OSError:
        return False
    if protected.suffix.lower() == ".onnx":  # a model's external data files are inputs too
        return any(f.exists() and os.path.samefile(path, f) for f in external_data_files(protected))
    return False


def _existing_ancestor(folder: Path) -> Path:
    folder = folder.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(_existing_ancestor(folder), "PC_NAME_MAX")
    except (OSError, ValueError):
        return _NAME_MAX


def _make_parents(path: Path) -> list[Path]:
    """Create the missing folders of `path`; return them, deepest first, for the cleanup."""
    missing = []
    folder = path.parent.absolute()
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        for made in missing:
            _rmdir_quietly(made)
        raise PtqError(describe_os_error(exc, f"cannot create the folder of {path}")) from None
    return missing


def _rmdir_quietly(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def _mode_for(path: Path) -> int:
    """A replaced file keeps its mode; a new one gets what the umask allows (mkstemp makes 0600)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~current_umask()


def current_umask() -> int:
    current = os.umask(0o22)
    os.umask(current)
    return current
