"""The one error of the data folder: a scene that can't be used as it is."""

from nerfstudio_mobile.common.cli import UsageError


class SceneError(UsageError, ValueError):
    """A scene folder that can't be used as it is; the message says what to do."""
