"""`llff-data`: an LLFF scene written from our own forward-facing renders loads back with its geometry."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from support import write_llff

from nerfstudio_mobile.data.errors import SceneError
from nerfstudio_mobile.data.llff import LLFFDataParserConfig
from nerfstudio_mobile.data.scenes import SceneConfig
from nerfstudio_mobile.mobile_r2l.views import detect_layout

pytestmark = pytest.mark.unit


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
    with pytest.raises(SceneError, match="poses_bounds.npy"):
        LLFFDataParserConfig(data=tmp_path).setup().get_dataparser_outputs("train")


def test_a_download_with_images_n_only_reads_the_largest_it_has(tmp_path: Path) -> None:
    """A common LLFF download has images_8/ but no full-resolution images/: factor 1 (the originals) reads the
    largest images there are, with the focal scaled to them, instead of failing."""
    llff, _ = write_llff(tmp_path)
    assert not (llff / "images").exists()
    originals = LLFFDataParserConfig(data=llff, downscale_factor=1).setup().get_dataparser_outputs("train")
    halves = LLFFDataParserConfig(data=llff, downscale_factor=2).setup().get_dataparser_outputs("train")
    assert originals.image_filenames == halves.image_filenames
    assert torch.equal(originals.cameras.fx, halves.cameras.fx)
    for name in ("images_2", "images"):
        shutil.rmtree(llff / name, ignore_errors=True)
    with pytest.raises(SceneError, match="no images/ or images_N/"):
        LLFFDataParserConfig(data=llff).setup().get_dataparser_outputs("train")
