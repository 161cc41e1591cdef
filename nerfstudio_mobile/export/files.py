"""Output files: an output directory written atomically (never half-written, never silently replaced)."""

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nerfstudio_mobile.export.errors import OutputExistsError


def check_output_dir(path: Path, overwrite: bool) -> None:
    """Refuse a non-empty existing output directory unless `overwrite` (checked before any slow work)."""
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"--output-dir {path} is a file: pass a directory path.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"--output-dir {path} exists and is not empty: pass --overwrite to replace it, or choose another directory."
        )


@contextmanager
def atomic_output_dir(path: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a staging directory beside `path`; on success it replaces `path` by renames, on failure it is removed.

    Readers see either the old directory or the complete new one (the two renames are separate, so a crash
    between them leaves the previous outputs under a hidden `.<name>.old-*` name, never a partial directory)."""
    check_output_dir(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging = path.with_name(f".{path.name}.tmp-{token}")
    staging.mkdir()
    try:
        yield staging
        check_output_dir(path, overwrite)  # again: something may have written there meanwhile
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
