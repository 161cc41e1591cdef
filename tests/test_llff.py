"""`llff-data`: an LLFF scene written from our own forward-facing renders loads back with its geometry."""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from nerfstudio_mobile.data.llff import LLFFDataParserConfig
from nerfstudio_mobile.data.scenes import SceneConfig, camera_poses, generate_scene
from nerfstudio_mobile.mobile_r2l.views import detect_layout

FULL_SIZE = 96  # the poses' focal refers to this resolution; images_2 holds half of it


def write_llff(tmp_path: Path) -> tuple[Path, np.ndarray]:
    config = SceneConfig(output_dir=tmp_path / "blender", layout="forward-facing", image_size=48, num_train=12,
                         num_val=1, num_test=1)  # fmt: skip
    blender = generate_scene(config)
    c2w = camera_poses(config)["train"][:, :3, :4]  # OpenGL [right, up, back]
    llff = tmp_path / "llff"
    (llff / "images_2").mkdir(parents=True)
    for i in range(len(c2w)):
        imageio.imwrite(llff / "images_2" / f"{i:03d}.png", imageio.imread(blender / "train" / f"r_{i}.png")[..., :3])
    focal = 0.5 * FULL_SIZE / np.tan(0.5 * config.camera_angle_x)
    llff_rotation = np.stack([-c2w[:, :, 1], c2w[:, :, 0], c2w[:, :, 2]], axis=2)  # [down, right, back]
    hwf = np.broadcast_to(np.array([FULL_SIZE, FULL_SIZE, focal])[None, :, None], (len(c2w), 3, 1))
    poses = np.concatenate([llff_rotation, c2w[:, :, 3:], hwf], axis=2).reshape(len(c2w), 15)
    depth = np.linalg.norm(c2w[:, :, 3], axis=1)
    np.save(llff / "poses_bounds.npy", np.concatenate([poses, np.stack([depth - 1.5, depth + 1.5], 1)], 1))
    return llff, c2w


def test_llff_scene_loads_with_its_geometry(tmp_path: Path) -> None:
    llff, c2w = write_llff(tmp_path)
    parser = LLFFDataParserConfig(data=llff, downscale_factor=2, hold_every=4).setup()
    train, test = parser.get_dataparser_outputs("train"), parser.get_dataparser_outputs("test")
    assert (len(train.image_filenames), len(test.image_filenames)) == (9, 3)
    cameras = train.cameras
    assert cameras.width[0].item() == 48 and cameras.fx[0].item() == pytest.approx(
        0.5 * 48 / np.tan(0.5 * SceneConfig.camera_angle_x), rel=1e-5
    )
    assert detect_layout(cameras.camera_to_worlds) == "forward-facing"
    near, far = train.metadata["near_far"]
    assert near == pytest.approx(1 / 0.75 * 0.9, rel=1e-5) and far > near
    # distances between camera centres are preserved up to the dataparser scale
    original = np.linalg.norm(c2w[1:, :, 3] - c2w[:1, :, 3], axis=1)
    all_views = torch.cat([test.cameras.camera_to_worlds[:1], cameras.camera_to_worlds[:3]])  # views 0, 1, 2, 3
    loaded = (all_views[1:, :, 3] - all_views[:1, :, 3]).norm(dim=1).numpy()
    assert loaded == pytest.approx(original[:3] * train.dataparser_scale, rel=1e-4)


def test_not_an_llff_scene(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="poses_bounds.npy"):
        LLFFDataParserConfig(data=tmp_path).setup().get_dataparser_outputs("train")
