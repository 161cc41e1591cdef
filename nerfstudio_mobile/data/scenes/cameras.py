"""Cameras of a synthetic scene: the lens (a pinhole, optionally seen through OpenCV distortion) and the layouts
of the views around the scene.

Cameras follow the Blender/OpenGL convention: the columns of the camera-to-world rotation are camera right, up and
back, so a camera looks along -z of its own frame. World +z is up.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from nerfstudio.cameras import camera_utils
from torch import Tensor

from nerfstudio_mobile.data.scenes.config import SPLITS, Distortion, SceneConfig

CAMERA_RADIUS = 4.0
"""Distance of the cameras from the origin; matches Blender lego (nerfstudio uses near 2, far 6)."""


def focal_length(image_size: int, camera_angle_x: float) -> float:
    """Focal length in pixels exactly as nerfstudio's Blender dataparser derives it."""
    return 0.5 * image_size / math.tan(0.5 * camera_angle_x)


def ray_directions(u: Tensor, v: Tensor, image_size: int, camera_angle_x: float, distortion: Distortion) -> Tensor:
    """Camera-frame directions [..., 3] (not normalised) through image positions u (right), v (down) in pixels.

    The principal point is the image centre, with pixel (i, j) covering [j, j+1] x [i, i+1] as in nerfstudio and
    COLMAP. A distorted image is rendered exactly: each position is undistorted (nerfstudio's own OpenCV solver,
    the one its cameras use for training rays) before it becomes a ray.
    """
    f = focal_length(image_size, camera_angle_x)
    x, y = (u - 0.5 * image_size) / f, (v - 0.5 * image_size) / f
    if any(distortion):
        k1, k2, p1, p2 = (float(k) for k in distortion)
        params = camera_utils.get_distortion_params(k1=k1, k2=k2, p1=p1, p2=p2)
        x, y = camera_utils.radial_and_tangential_undistort(torch.stack([x, y], -1), params).unbind(-1)
    return torch.stack([x, -y, -torch.ones_like(x)], -1)


def _c2w_from_forward(position: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """4x4 Blender-convention camera-to-world looking along ``forward`` with world +z as up."""
    back = -forward / np.linalg.norm(forward)
    right = np.cross(np.array([0.0, 0.0, 1.0]), back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, back, position
    return c2w


def _spherical(azimuth: float, elevation: float, radius: float = CAMERA_RADIUS) -> np.ndarray:
    ce = math.cos(elevation)
    return radius * np.array([ce * math.cos(azimuth), ce * math.sin(azimuth), math.sin(elevation)])


def camera_poses(config: SceneConfig) -> dict[str, np.ndarray]:
    """Camera-to-world matrices [N,4,4] (float64) per split for ``config``'s layout and seed.

    360: train cameras uniformly (by area) on the band of the upper hemisphere between 5 and 80 degrees
    of elevation, radius 4, looking at the origin; val/test on a 30-degree turntable ring, test azimuths
    offset half a step from val's so the two splits are distinct views.

    forward-facing: the central camera sits at radius 4, 20 degrees above the -y side, looking at the
    origin; train centres are uniform in a 0.9 x 0.6 rectangle in that camera's image plane with up to
    1.5 degrees of yaw/pitch jitter; val/test centres are evenly spaced on an ellipse inside the same
    rectangle (interleaved with the train centres) with the central camera's orientation.
    """
    rng = np.random.default_rng(config.seed)
    n = config.split_sizes()
    poses: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    if config.layout == "360":
        z_lo, z_hi = math.sin(math.radians(5.0)), math.sin(math.radians(80.0))
        for _ in range(n["train"]):
            azimuth = rng.uniform(0.0, 2.0 * math.pi)
            elevation = math.asin(rng.uniform(z_lo, z_hi))
            pos = _spherical(azimuth, elevation)
            poses["train"].append(_c2w_from_forward(pos, -pos))
        for split, phase in (("val", 0.0), ("test", 0.5)):
            for i in range(n[split]):
                pos = _spherical(2.0 * math.pi * (i + phase) / n[split], math.radians(30.0))
                poses[split].append(_c2w_from_forward(pos, -pos))
    else:
        centre = _spherical(-0.5 * math.pi, math.radians(20.0))
        base = _c2w_from_forward(centre, -centre)
        right, up, forward = base[:3, 0], base[:3, 1], -base[:3, 2]
        half_w, half_h = 0.45, 0.3
        max_jitter = math.tan(math.radians(1.5))
        for _ in range(n["train"]):
            u, v = rng.uniform(-1.0, 1.0, size=2)
            yaw, pitch = rng.uniform(-max_jitter, max_jitter, size=2)
            pos = centre + u * half_w * right + v * half_h * up
            poses["train"].append(_c2w_from_forward(pos, forward + yaw * right + pitch * up))
        for split, phase in (("val", 0.0), ("test", 0.5)):
            for i in range(n[split]):
                a = 2.0 * math.pi * (i + phase) / n[split]
                pos = centre + 0.7 * (math.cos(a) * half_w * right + math.sin(a) * half_h * up)
                poses[split].append(_c2w_from_forward(pos, forward))
    return {split: np.stack(p) for split, p in poses.items()}
