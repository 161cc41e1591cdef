"""Atomic writes, one way for the whole toolkit: a reader (or a resumed run) sees the old file or the complete new
one, never a torn one. Temporary names are hidden, unique per writer, and end in `.partial`."""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nerfstudio_mobile.common.cli import UsageError

PARTIAL_SUFFIX = ".partial"
DISK_FULL = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
"""What a write fails with when the disk (or the process's file-size limit, or the user's quota) has no room."""


class WriteError(UsageError):
    """A folder that cannot be created or a write the disk refuses (full, a file in the way, no permission); the
    message says what to do."""


@contextmanager
def disk_full_as_usage_error(path: Path) -> Iterator[None]:
    """Turn a full disk while writing `path` into one clear WriteError (other OS errors pass through)."""
    try:
        yield
    except OSError as error:
        if error.errno not in DISK_FULL:
            raise
        raise WriteError(
            f"could not write {error.filename or path}: {error.strerror.lower()}. Free some space (or raise the "
            "file-size limit) and run the same command again: finished work is kept."
        ) from error


def make_dirs(path: Path) -> None:
    """`mkdir -p path`, or a WriteError that says why not (a file in the way, no permission, a full disk)."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        where = f" ({error.filename})" if error.filename and str(error.filename) != str(path) else ""
        raise WriteError(
            f"cannot create the folder {path}: {error.strerror.lower()}{where}. Pass a folder you can write to."
        ) from error


def temp_path(path: Path, directory: Path | None = None) -> Path:
    """A hidden, unique sibling of `path` (or a name in `directory`, on the same filesystem) to write first."""
    return (directory or path.parent) / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}"


@contextmanager
def atomic_path(path: Path, directory: Path | None = None) -> Iterator[Path]:
    """Yield a temporary path to write (by any library); on success it is renamed to `path`, on failure removed.

    `directory` puts the temporary file elsewhere on the same filesystem, for folders whose every name a reader
    parses (nerfstudio's checkpoint folder). No fsync: a killed process cannot leave a torn file behind a rename."""
    path = Path(path)
    temp = temp_path(path, directory)
    try:
        with disk_full_as_usage_error(path):
            yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write bytes or text to `path` atomically."""
    with atomic_path(path) as temp:
        temp.write_bytes(data) if isinstance(data, bytes) else temp.write_text(data)


def atomic_link(source: Path, path: Path) -> None:
    """Make `path` a hard link to `source` (no bytes copied: both names share the file, and every write replaces a
    file rather than changing it), or an atomic copy where hard links fail (another filesystem, no link support)."""
    try:
        os.link(source, path)
    except FileExistsError:
        pass  # a concurrent writer got there first, with the same content
    except OSError:
        atomic_write(path, Path(source).read_bytes())


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write(path, json.dumps(value, indent=2))


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a staging directory beside `path`; on success it replaces `path` by renames, on failure it is removed.

    Readers see either the old directory or the complete new one (a kill between the two renames leaves the
    previous one under a hidden `.<name>.old-*` name, never a partial directory at `path`)."""
    path = Path(path)
    make_dirs(path.parent)
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging = path.with_name(f".{path.name}.{token}{PARTIAL_SUFFIX}")
    make_dirs(staging)  # not tempfile.mkdtemp: its mode 0700 would stay on the result
    try:
        with disk_full_as_usage_error(path):
            yield staging
        if path.exists():
            previous = path.with_name(f".{path.name}.old-{token}")
            path.rename(previous)
            staging.rename(path)
            shutil.rmtree(previous)
        else:
            staging.rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def file_size(path: Path) -> int:
    """Bytes of a file, or of all files under a directory (an .mlpackage)."""
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
