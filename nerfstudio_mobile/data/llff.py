"""`llff-data`: the LLFF forward-facing format (poses_bounds.npy + images_N/) that nerfstudio 1.1.5 lacks.

Follows NeRF's `load_llff_data` without NDC: poses turned from LLFF's [down, right, back] to OpenGL's
[right, up, back], scaled so the nearest bound is 1/0.75, re-centred on the average pose; every 8th
image is a test view. The scene's near/far (from the bounds) travel in the outputs' metadata, which
nas-nerf and mobile-r2l use instead of Blender's 2/6.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.plugins.registry_dataparser import DataParserSpecification

from nerfstudio_mobile.data.errors import SceneError

BOUNDS_FACTOR = 0.75  # NeRF's bd_factor: the nearest bound lands at 1 / 0.75


@dataclass
class LLFFDataParserConfig(DataParserConfig):
    _target: type = field(default_factory=lambda: LLFF)
    data: Path = Path("data/nerf_llff_data/fern")
    downscale_factor: int = 8
    """Which images_N folder to read (the poses' focal is for full resolution)."""
    hold_every: int = 8
    """Every n-th image is a test view (LLFF convention)."""


class LLFF(DataParser):
    config: LLFFDataParserConfig

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs: object) -> DataparserOutputs:
        data = self.config.data
        if not (data / "poses_bounds.npy").is_file():
            raise SceneError(f"{data} has no poses_bounds.npy: not an LLFF scene.")
        image_dir = image_folder(data, self.config.downscale_factor)
        files = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
        poses_bounds = np.load(data / "poses_bounds.npy").astype(np.float64)
        if len(files) != len(poses_bounds):
            raise ValueError(f"{image_dir} holds {len(files)} images but poses_bounds.npy {len(poses_bounds)} poses.")
        poses, bounds = poses_bounds[:, :15].reshape(-1, 3, 5), poses_bounds[:, 15:]
        full_height, full_width, full_focal = poses[0, :, 4]
        c2w = np.concatenate([poses[:, :, 1:2], -poses[:, :, 0:1], poses[:, :, 2:4]], axis=2)
        scale = 1.0 / (bounds.min() * BOUNDS_FACTOR)
        c2w[:, :, 3] *= scale
        bounds = bounds * scale
        c2w, average = recentre(c2w)

        from PIL import Image

        width, height = Image.open(files[0]).size
        focal = full_focal * width / full_width
        indices = np.arange(len(files))
        test = indices[:: self.config.hold_every]
        chosen = test if split in ("val", "test") else np.setdiff1d(indices, test)
        cameras = Cameras(
            camera_to_worlds=torch.from_numpy(c2w[chosen]).float(), fx=focal, fy=focal,
            cx=width / 2.0, cy=height / 2.0, width=width, height=height, camera_type=CameraType.PERSPECTIVE,
        )  # fmt: skip
        near, far = float(bounds.min()) * 0.9, float(bounds.max())
        extent = float(np.abs(c2w[:, :, 3]).max()) + far
        return DataparserOutputs(
            image_filenames=[files[i] for i in chosen],
            cameras=cameras,
            scene_box=SceneBox(aabb=torch.tensor([[-extent] * 3, [extent] * 3], dtype=torch.float32)),
            metadata={"near_far": (near, far)},
            # nerfstudio's convention: scale after transform; ours scaled first, so the offset is divided back
            dataparser_transform=torch.from_numpy(np.linalg.inv(average)[:3] / np.array([1, 1, 1, scale])).float(),
            dataparser_scale=scale,
        )


def image_folder(data: Path, downscale_factor: int) -> Path:
    """images_N for the factor asked; else the largest images there are (a download often has images_N only).
    The focal follows whatever size is read, so any folder gives the same cameras."""
    preferred = data / ("images" if downscale_factor == 1 else f"images_{downscale_factor}")
    if preferred.is_dir():
        return preferred
    factors = sorted(int(p.name[7:]) for p in data.glob("images_*") if p.name[7:].isdigit() and p.is_dir())
    candidates = [data / "images"] * (data / "images").is_dir() + [data / f"images_{f}" for f in factors]
    if not candidates:
        raise SceneError(f"{data} has poses_bounds.npy but no images/ or images_N/ folder: put the images back.")
    return candidates[0]


def recentre(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Poses [N, 3, 4] relative to their average pose (NeRF's recenter_poses), and that average [4, 4]."""
    centre = c2w[:, :, 3].mean(axis=0)
    forward = c2w[:, :, 2].sum(axis=0)
    up = c2w[:, :, 1].sum(axis=0)
    z = forward / np.linalg.norm(forward)
    x = np.cross(up, z)
    x /= np.linalg.norm(x)
    average = np.eye(4)
    average[:3, :4] = np.stack([x, np.cross(z, x), z, centre], axis=1)
    homogeneous = np.concatenate([c2w, np.tile([[[0.0, 0.0, 0.0, 1.0]]], (len(c2w), 1, 1))], axis=1)
    return (np.linalg.inv(average) @ homogeneous)[:, :3, :4], average


llff_dataparser = DataParserSpecification(config=LLFFDataParserConfig(), description="LLFF forward-facing scenes")
