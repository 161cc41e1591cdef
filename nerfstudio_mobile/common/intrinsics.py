"""Pinhole intrinsics, one type for the whole toolkit: pseudo views, the student's ray grid, exports."""

from __future__ import annotations

import copy
from dataclasses import dataclass

from nerfstudio.cameras.cameras import Cameras, CameraType
from torch import Tensor


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels of an image of width x height (rays through pixel centres)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @classmethod
    def from_camera(cls, camera: Cameras) -> Intrinsics:
        """The intrinsics of a single nerfstudio camera (as it is: distortion is the caller's business)."""
        fx, fy, cx, cy = (float(getattr(camera, name).flatten()[0]) for name in ("fx", "fy", "cx", "cy"))
        return cls(fx, fy, cx, cy, int(camera.width.flatten()[0]), int(camera.height.flatten()[0]))

    def resized(self, width: int, height: int) -> Intrinsics:
        sx, sy = width / self.width, height / self.height
        return Intrinsics(self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, width, height)

    def downscaled(self, factor: int) -> Intrinsics:
        """The intrinsics of a grid `factor` times coarser (the student's low-resolution ray grid)."""
        return Intrinsics(
            self.fx / factor, self.fy / factor, self.cx / factor, self.cy / factor,
            self.width // factor, self.height // factor,
        )  # fmt: skip

    def cameras(self, c2w: Tensor) -> Cameras:
        """nerfstudio cameras with these intrinsics at camera-to-world poses c2w [B, 3, 4]."""
        return Cameras(
            camera_to_worlds=c2w.float(), fx=self.fx, fy=self.fy, cx=self.cx, cy=self.cy,
            width=self.width, height=self.height, camera_type=CameraType.PERSPECTIVE,
        )  # fmt: skip


def without_distortion(cameras: Cameras) -> Cameras:
    """The same cameras as pinholes: nerfstudio's full-image datamanager undistorts images and updates fx..cy but
    keeps the distortion parameters, which a renderer would apply a second time."""
    pinhole = copy.copy(cameras)
    pinhole.distortion_params = None
    return pinhole
