"""What a synthetic scene is made of: the config every other module of the generator reads, and its errors."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from nerfstudio_mobile.common.cli import UsageError

SPLITS: tuple[str, ...] = ("train", "val", "test")

Distortion = tuple[float, float, float, float]
"""OpenCV k1 k2 p1 p2."""


class SceneConfigError(UsageError, ValueError):
    """A config value that cannot produce a usable scene."""


class SceneExistsError(UsageError, FileExistsError):
    """The output directory holds something this run must not (or may not) replace."""


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise SceneConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass
class SceneConfig:
    """A synthetic scene: its cameras, lens, surroundings and on-disk format.

    Every field except output_dir and overwrite determines the rendered bytes (recorded in scene.json).
    """

    output_dir: Path = Path("data/nsm-synthetic")
    """Directory the scene is written to (created atomically)."""
    layout: Literal["360", "forward-facing"] = "360"
    """'360': cameras on the upper hemisphere looking at the origin (like Blender lego); 'forward-facing':
    cameras in a small rectangle in front of the scene, all looking the same way (like LLFF)."""
    image_size: int = 100
    """Square images, H = W = image_size."""
    num_train: int = 100
    """Number of training views."""
    num_val: int = 8
    """Number of validation views."""
    num_test: int = 8
    """Number of test views."""
    camera_angle_x: float = 0.6911112070083618
    """Horizontal field of view in radians of the pinhole camera (Blender lego's)."""
    supersample: int = 3
    """Antialiasing: supersample x supersample rays per pixel, so alpha edges are soft like real renders."""
    seed: int = 0
    """Seed of the training camera positions (the only random part of the scene)."""
    format: Literal["blender", "nerfstudio"] = "blender"
    """'blender': transforms_{train,val,test}.json and RGBA images; 'nerfstudio': one transforms.json with
    OpenCV intrinsics, images/frame_*.png and their depth maps depths/frame_*.png (uint16 millimetres, what
    depth-nerfacto reads), as ns-process-data writes an RGB-D capture."""
    distortion: Distortion = (0.0, 0.0, 0.0, 0.0)
    """OpenCV k1 k2 p1 p2 of the lens the images are rendered through (nerfstudio format only)."""
    unbounded: bool = False
    """Surround the scene with a far ground and sky, as in a real outdoor capture; images are then opaque RGB."""
    overwrite: bool = False
    """Replace an existing, different scene in output_dir."""

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        self.validate()

    def validate(self) -> None:
        """Raise SceneConfigError (a ValueError) on values that cannot produce a usable scene, before any work."""
        if self.layout not in ("360", "forward-facing"):
            raise SceneConfigError(f"layout must be '360' or 'forward-facing', got {self.layout!r}")
        if self.format not in ("blender", "nerfstudio"):
            raise SceneConfigError(f"format must be 'blender' or 'nerfstudio', got {self.format!r}")
        _check_int("image_size", self.image_size, 8)
        for name in ("num_train", "num_val", "num_test"):
            _check_int(name, getattr(self, name), 1)
        _check_int("supersample", self.supersample, 1)
        _check_int("seed", self.seed, 0)
        if not (0.0 < float(self.camera_angle_x) < math.pi):
            raise SceneConfigError(f"camera_angle_x must be in (0, pi) radians, got {self.camera_angle_x!r}")
        if len(self.distortion) != 4 or not all(math.isfinite(float(k)) for k in self.distortion):
            raise SceneConfigError(f"distortion must be four finite numbers k1 k2 p1 p2, got {self.distortion!r}")
        if self.format == "blender" and any(self.distortion):
            raise SceneConfigError("distortion needs format 'nerfstudio': the Blender format has no distortion")

    def content_dict(self) -> dict[str, Any]:
        """The fields that determine the rendered bytes, as JSON stores them (reuse of a scene compares these)."""
        d = asdict(self)
        d.pop("output_dir")
        d.pop("overwrite")
        d["camera_angle_x"] = float(d["camera_angle_x"])
        d["distortion"] = [float(k) for k in d["distortion"]]
        return d

    def split_sizes(self) -> dict[str, int]:
        return {"train": self.num_train, "val": self.num_val, "test": self.num_test}
