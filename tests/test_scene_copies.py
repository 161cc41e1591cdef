"""Demo-sized copies of real scenes: images shrunk, cameras matching, in each of the three layouts."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from support import FULL_SIZE, write_llff

from nerfstudio_mobile.data.errors import SceneError
from nerfstudio_mobile.data.llff import LLFFDataParserConfig
from nerfstudio_mobile.data.scene_copies import downscaled_copy
from nerfstudio_mobile.data.scenes import SceneConfig, generate_scene

SIZE = 32


@pytest.fixture(scope="module")
def blender(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("blender") / "scene"
    return generate_scene(SceneConfig(output_dir=root, image_size=SIZE, num_train=4, num_val=1, num_test=6))


def cameras(parser_config: object, split: str = "train") -> object:
    return parser_config.setup().get_dataparser_outputs(split).cameras  # type: ignore[attr-defined]


def test_blender_copy_halves_images_and_focal_and_keeps_evenly_spaced_test_views(blender: Path, tmp_path: Path) -> None:
    copy = downscaled_copy(blender, tmp_path, max_size=SIZE // 2, max_test_views=3)
    assert copy == tmp_path / f"scene_{SIZE // 2}px"
    assert imageio.imread(copy / "train" / "r_0.png").shape == (SIZE // 2, SIZE // 2, 4)  # alpha kept
    original, shrunk = cameras(BlenderDataParserConfig(data=blender)), cameras(BlenderDataParserConfig(data=copy))
    assert int(shrunk.height[0]) == SIZE // 2 and torch.allclose(shrunk.fx, original.fx / 2)
    assert torch.equal(shrunk.camera_to_worlds, original.camera_to_worlds)
    tests = cameras(BlenderDataParserConfig(data=blender), "test").camera_to_worlds
    assert torch.equal(cameras(BlenderDataParserConfig(data=copy), "test").camera_to_worlds, tests[::2])


def test_a_copy_is_reused_a_different_one_refused_and_a_fitting_scene_used_as_it_is(
    blender: Path, tmp_path: Path
) -> None:
    copy = downscaled_copy(blender, tmp_path, max_size=SIZE // 2, max_test_views=3)
    written = (copy / "train" / "r_0.png").stat().st_mtime_ns
    assert downscaled_copy(blender, tmp_path, SIZE // 2, 3) == copy
    assert (copy / "train" / "r_0.png").stat().st_mtime_ns == written
    with pytest.raises(SceneError, match="was made from"):
        downscaled_copy(blender, tmp_path, SIZE // 2, max_test_views=2)
    assert downscaled_copy(blender, tmp_path, max_size=SIZE, max_test_views=6) == blender.resolve()
    assert not list(tmp_path.glob("*.partial"))


def test_nerfstudio_copy_scales_intrinsics_masks_and_depths(blender: Path, tmp_path: Path) -> None:
    source = tmp_path / "capture"
    meta = json.loads((blender / "transforms_train.json").read_text())
    focal = 0.5 * SIZE / np.tan(0.5 * meta["camera_angle_x"])
    frames = []
    for i, frame in enumerate(meta["frames"]):
        rgba = imageio.imread(blender / f"{frame['file_path']}.png")
        for folder, name, array in (("images", f"{i}.png", rgba[..., :3]), ("masks", f"{i}.png", rgba[..., 3])):
            (source / folder).mkdir(parents=True, exist_ok=True)
            imageio.imwrite(source / folder / name, np.where(array > 127, 255, 0).astype(np.uint8)
                            if folder == "masks" else array)  # fmt: skip
        (source / "depths").mkdir(exist_ok=True)
        np.save(source / "depths" / f"{i}.npy", np.full((SIZE, SIZE), 3.5, np.float32))
        paths = {"file_path": f"images/{i}.png", "mask_path": f"masks/{i}.png", "depth_file_path": f"depths/{i}.npy"}
        frames.append({**paths, "transform_matrix": frame["transform_matrix"]})
    frames[0]["fl_x"] = focal * 1.1  # its own intrinsics (nerfstudio 1.1.5 reads them only without shared ones)
    frames[1]["file_path"] = str(source / "images" / "1.png")  # absolute paths are allowed too
    intrinsics = {"fl_x": focal, "fl_y": focal, "cx": SIZE / 2, "cy": SIZE / 2, "w": SIZE, "h": SIZE}
    (source / "transforms.json").write_text(json.dumps({**intrinsics, "camera_model": "OPENCV", "frames": frames}))

    copy = downscaled_copy(source, tmp_path / "copies", max_size=SIZE // 2, max_test_views=3)
    copied = json.loads((copy / "transforms.json").read_text())
    assert (copied["w"], copied["h"], copied["cx"]) == (SIZE // 2, SIZE // 2, SIZE / 4)
    assert copied["fl_x"] == pytest.approx(focal / 2) and copied["frames"][0]["fl_x"] == pytest.approx(focal * 0.55)
    assert set(np.unique(imageio.imread(copy / "masks" / "0.png"))) <= {0, 255}  # nearest, not blended
    assert np.load(copy / "depths" / "0.npy").shape == (SIZE // 2, SIZE // 2)
    assert copied["frames"][1]["file_path"] == "images/1.png"  # into the copy, the original left alone
    assert imageio.imread(source / "images" / "1.png").shape[:2] == (SIZE, SIZE)
    parser = NerfstudioDataParserConfig(data=copy, train_split_fraction=1.0)
    assert torch.allclose(cameras(parser).fx, torch.tensor(focal / 2, dtype=torch.float32))


def test_llff_copy_reads_as_images_at_factor_one_with_the_focal_scaled(tmp_path: Path) -> None:
    llff, _ = write_llff(tmp_path)  # images_2 holds FULL_SIZE / 2
    copy = downscaled_copy(llff, tmp_path / "copies", max_size=FULL_SIZE // 4, max_test_views=3)
    assert imageio.imread(copy / "images" / "000.png").shape[:2] == (FULL_SIZE // 4, FULL_SIZE // 4)
    original = cameras(LLFFDataParserConfig(data=llff, downscale_factor=2, hold_every=4))
    shrunk = cameras(LLFFDataParserConfig(data=copy, downscale_factor=1, hold_every=4))
    assert torch.allclose(shrunk.fx, original.fx / 2) and torch.allclose(shrunk.cx, original.cx / 2)
    assert torch.allclose(shrunk.camera_to_worlds, original.camera_to_worlds)


def test_a_folder_that_is_no_scene_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(SceneError, match="ns-process-data"):
        downscaled_copy(tmp_path / "missing", tmp_path, 128, 25)
