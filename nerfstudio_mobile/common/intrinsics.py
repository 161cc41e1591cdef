"""Pinhole intrinsics, one type for the whole toolkit: pseudo views, the student's ray grid, exports."""

from __future__ import annotations

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
