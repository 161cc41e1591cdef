"""Problems a user can fix: the CLI prints their message, which says what to do, instead of a traceback."""

from nerfstudio_mobile.common.cli import UsageError


class ExportError(UsageError):
    """Base of the errors `ns-export-mobile` reports as a message."""


class NotAStudentError(ExportError, ValueError):
    """The run to export is not a trained MobileR2L student."""


class MissingDependencyError(ExportError, ImportError):
    """An optional package of the `export` extra is not installed."""


class OutputExistsError(ExportError, FileExistsError):
    """The output directory holds files and --overwrite was not given."""


class GridShapeError(ExportError, ValueError):
    """The requested output size does not split into whole super-resolution blocks."""


class CompressionError(ExportError, ValueError):
    """A --compressions name that is not a weight format, or a palette group size the network cannot split into."""


class CalibrationError(ExportError, FileNotFoundError):
    """Int8 activations need the student's pseudo-view cache (their calibration poses), and it is not there."""
