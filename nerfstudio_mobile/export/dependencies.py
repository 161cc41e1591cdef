"""Optional packages of the `export` extra, imported with an error that says what to install."""

import importlib
import logging
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


def require_coremltools(purpose: str) -> ModuleType:
    """coremltools, imported without its import-time warnings: on Linux it always reports the macOS-only
    libraries it cannot load and versions of torch / scikit-learn newer than it was tested with (conversion,
    compression and reading packages back work with this environment's versions)."""
    ct_logger = logging.getLogger("coremltools")
    level = ct_logger.level
    ct_logger.setLevel(logging.ERROR)
    try:
        return require("coremltools", "coremltools", purpose)
    finally:
        ct_logger.setLevel(level)
