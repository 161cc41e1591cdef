"""Test-only fault injection: tests/support.py copies this file as sitecustomize.py into a folder on a child's
PYTHONPATH, so Python's site imports it before the command starts (or runs it, in a child of the fork server that
support.start_forked starts, before the command). Not a test module, and no product code knows it.

NSM_KILL_AT="<point>:<name>" SIGKILLs the process at the first file operation on a name that contains <name>:
    replace:<name>        just before os.replace / os.rename / os.link puts a file there (the temporary file is
                          written, never renamed)
    after-replace:<name>  just after that rename
    write:<name>          half-way through Path.write_bytes / write_text of it (the file holds the first half)
NSM_RECORD_BATCHES=<file> appends "<step> real|pseudo" for each training batch the mobile-r2l datamanager serves
(pseudo-view batches carry the teacher's depth, real images none).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import pathlib
import signal
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

POINT, _, NAME = os.environ.get("NSM_KILL_AT", "").partition(":")
RECORD = os.environ.get("NSM_RECORD_BATCHES")
DATAMANAGER = "nerfstudio_mobile.mobile_r2l.datamanager"


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def renaming(original: Callable[..., Any]) -> Callable[..., Any]:
    def wrapped(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
        hit = NAME in os.path.basename(os.fspath(dst))
        if hit and POINT == "replace":
            die()
        result = original(src, dst, *args, **kwargs)
        if hit and POINT == "after-replace":
            die()
        return result

    return wrapped


def writing(original: Callable[..., Any]) -> Callable[..., Any]:
    def wrapped(self: pathlib.Path, data: Any, *args: Any, **kwargs: Any) -> Any:
        if POINT == "write" and NAME in self.name:
            original(self, data[: len(data) // 2], *args, **kwargs)
            die()
        return original(self, data, *args, **kwargs)

    return wrapped


def record_batches(module: ModuleType) -> None:
    next_train = module.PseudoViewDataManager.next_train

    def recorded(self: Any, step: int) -> Any:
        cameras, batch = next_train(self, step)
        with open(RECORD, "a") as log:  # type: ignore[arg-type]
            poses, training_poses = cameras.camera_to_worlds.flatten(1), self.train_cameras.camera_to_worlds.flatten(1)
            real = bool((poses[:, None] == training_poses[None]).all(-1).any())
            log.write(f"{step} {'real' if real else 'pseudo'}\n")
        return cameras, batch

    module.PseudoViewDataManager.next_train = recorded


class RecordDatamanager(importlib.abc.MetaPathFinder):
    """Imports the datamanager module as usual, then wraps its `next_train` with `record_batches`."""

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name != DATAMANAGER:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        assert spec is not None and spec.loader is not None
        execute = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            record_batches(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if NAME:
    for function in ("replace", "rename", "link"):
        setattr(os, function, renaming(getattr(os, function)))
    for method in ("write_bytes", "write_text"):
        setattr(pathlib.Path, method, writing(getattr(pathlib.Path, method)))
if RECORD and DATAMANAGER in sys.modules:  # run in a process that imported it already (tests/support.py forks one)
    record_batches(sys.modules[DATAMANAGER])
elif RECORD:
    sys.meta_path.insert(0, RecordDatamanager())
