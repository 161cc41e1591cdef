"""Optional packages of the `export` extra, imported with an error that says what to install."""

import importlib
import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from types import ModuleType

from nerfstudio_mobile.export.errors import MissingDependencyError

INSTALL_EXTRA = "pip install 'nerfstudio-mobile[export]'"


def require(module: str, package: str, purpose: str) -> ModuleType:
    """Import `module`, or explain that `purpose` needs `package` and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingDependencyError(
            f"{purpose} needs the `{package}` package, which is not installed: pip install {package} "
            f"(or all export dependencies: {INSTALL_EXTRA})."
        ) from error


@contextmanager
def logger_level(name: str | None, level: int = logging.ERROR) -> Iterator[None]:
    """Set logger `name` (None: the root logger) to `level` for the duration, then restore its own level."""
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


def quiet_coremltools() -> AbstractContextManager[None]:
    """Silence coremltools' warnings that are expected here: on Linux it reports the macOS-only libraries it
    cannot load, torch / scikit-learn versions newer than it was tested with (conversion, compression and
    reading packages back work with this environment's), tuple outputs being flattened (we name each output)
    and int64 shape constants stored as int32. Errors still show."""
    return logger_level("coremltools")


def require_coremltools(purpose: str) -> ModuleType:
    with quiet_coremltools():
        return require("coremltools", "coremltools", purpose)
