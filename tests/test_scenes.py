"""Tests of the offline synthetic-scene generator (data/scenes): what users and other tests rely on."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import cv2
import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from nerfstudio.cameras import camera_utils
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.data.datasets.depth_dataset import DepthDataset

from nerfstudio_mobile.data.scenes import (
    SceneConfig,
    camera_poses,
    focal_length,
    generate_scene,
    render,
    render_depth,
    render_view,
    writer,
)
from nerfstudio_mobile.data.scenes.cameras import ray_directions

pytestmark = pytest.mark.unit

SMALL = dict(image_size=48, num_train=4, num_val=2, num_test=2, supersample=2)
TINY = dict(image_size=16, num_train=3, num_val=1, num_test=1, supersample=1)
DISTORTION = (-0.25, 0.06, 0.002, -0.003)
"""A wide phone lens: strong barrel distortion with a little tangential decentering."""
PHONE = SceneConfig(
    image_size=65, num_train=3, num_val=1, num_test=1, supersample=3, camera_angle_x=0.9,
    format="nerfstudio", distortion=DISTORTION, unbounded=True,
)  # fmt: skip
"""A distorted, unbounded nerfstudio capture; odd size and supersample: one ray of the centre pixel is the axis."""


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_scene(SceneConfig(output_dir=tmp_path_factory.mktemp("s") / "scene", **SMALL))


@pytest.fixture(scope="module")
def phone_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_scene(dataclasses.replace(PHONE, output_dir=tmp_path_factory.mktemp("p") / "phone"))


def _load_rgba(path: Path) -> np.ndarray:
    return imageio.imread(path)


def _hue_bins(rgb: np.ndarray, bins: int = 12) -> np.ndarray:
    """Hue histogram (fraction of pixels per bin) of reasonably saturated pixels; rgb in [0,1], [N,3]."""
    mx, mn = rgb.max(-1), rgb.min(-1)
    sat = (mx - mn) / np.maximum(mx, 1e-6)
    keep = (sat > 0.3) & (mx > 0.15)
    r, g, b = rgb[keep].T
    c = (mx - mn)[keep]
    hue = np.where(mx[keep] == r, ((g - b) / c) % 6, np.where(mx[keep] == g, (b - r) / c + 2, (r - g) / c + 4))
    hist = np.bincount(np.floor(hue / 6 * bins).astype(int) % bins, minlength=bins)
    return hist / len(rgb)


def _forward(c2w: np.ndarray) -> np.ndarray:
    return -c2w[..., :3, 2] / np.linalg.norm(c2w[..., :3, 2], axis=-1, keepdims=True)


def test_nerfstudio_blender_parser_loads_scene(scene_dir: Path) -> None:
    size, angle = SMALL["image_size"], SceneConfig().camera_angle_x
    for split, n in (("train", SMALL["num_train"]), ("val", SMALL["num_val"]), ("test", SMALL["num_test"])):
        out = BlenderDataParserConfig(data=scene_dir).setup().get_dataparser_outputs(split)
        assert len(out.image_filenames) == n
        assert all(Path(f).is_file() for f in out.image_filenames)
        cams = out.cameras
        assert cams.camera_to_worlds.shape == (n, 3, 4)
        assert torch.allclose(cams.fx, torch.full_like(cams.fx, 0.5 * size / math.tan(0.5 * angle)))
        assert int(cams.width[0]) == size and int(cams.height[0]) == size
        meta = json.loads((scene_dir / f"transforms_{split}.json").read_text())
        assert meta["frames"][0]["file_path"] == f"./{split}/r_0"
        assert np.allclose(np.array(meta["frames"][-1]["transform_matrix"])[3], [0, 0, 0, 1])


def test_images_are_rgba_with_background_soft_edges_and_textured_object(scene_dir: Path) -> None:
    img = _load_rgba(scene_dir / "train" / "r_0.png")
    assert img.shape == (SMALL["image_size"], SMALL["image_size"], 4) and img.dtype == np.uint8
    alpha = img[..., 3]
    assert (alpha == 0).mean() > 0.05, "expected transparent background"
    assert (alpha == 255).mean() > 0.2, "expected opaque object pixels"
    assert ((alpha > 0) & (alpha < 255)).any(), "supersampling should give soft (partial-alpha) edges"
    # Texture, not a flat blob: colour varies a lot inside the mask and covers several distinct hues.
    rgb = img[alpha == 255][:, :3].astype(np.float64) / 255.0
    assert rgb.std(axis=0).mean() > 0.12
    assert (_hue_bins(rgb) > 0.01).sum() >= 4


def test_generation_is_deterministic(tmp_path: Path) -> None:
    a = generate_scene(SceneConfig(output_dir=tmp_path / "a", **TINY))
    b = generate_scene(SceneConfig(output_dir=tmp_path / "b", **TINY))
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 3 + 5 + 1
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    c = generate_scene(SceneConfig(output_dir=tmp_path / "c", seed=1, **TINY))
    assert (c / "train" / "r_0.png").read_bytes() != (a / "train" / "r_0.png").read_bytes()


def test_identical_existing_scene_is_reused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = generate_scene(SceneConfig(output_dir=tmp_path / "s", **TINY))
    png = out / "train" / "r_0.png"
    before = png.stat().st_mtime_ns
    capsys.readouterr()
    assert generate_scene(SceneConfig(output_dir=tmp_path / "s", **TINY)) == out
    assert png.stat().st_mtime_ns == before
    assert "reusing" in capsys.readouterr().out.lower()


def test_differing_existing_dir_is_refused_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "s"
    generate_scene(SceneConfig(output_dir=out, **TINY))
    with pytest.raises(FileExistsError, match="--overwrite"):
        generate_scene(SceneConfig(output_dir=out, **{**TINY, "seed": 7}))
    assert json.loads((out / "scene.json").read_text())["config"]["seed"] == 0  # untouched

    generate_scene(SceneConfig(output_dir=out, overwrite=True, **{**TINY, "seed": 7}))
    assert json.loads((out / "scene.json").read_text())["config"]["seed"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"], "no temporary directories left behind"

    # A directory that is not a dataset is never deleted, even with overwrite.
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="--output-dir"):
            generate_scene(SceneConfig(output_dir=other, overwrite=overwrite, **TINY))
    assert (other / "notes.txt").read_text() == "keep me"


def test_interrupted_run_leaves_no_scene(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real_imwrite = writer.imageio.imwrite

    def failing_imwrite(*args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real_imwrite(*args, **kwargs)

    monkeypatch.setattr(writer.imageio, "imwrite", failing_imwrite)
    with pytest.raises(KeyboardInterrupt):
        generate_scene(SceneConfig(output_dir=tmp_path / "s", **TINY))
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(writer.imageio, "imwrite", real_imwrite)
    assert (generate_scene(SceneConfig(output_dir=tmp_path / "s", **TINY)) / "scene.json").is_file()


@pytest.mark.parametrize(
    "bad",
    [
        {"image_size": 7},
        {"num_train": 0},
        {"num_val": 0},
        {"num_test": -1},
        {"supersample": 0},
        {"image_size": 32.5},
        {"layout": "spiral"},
        {"camera_angle_x": 0.0},
        {"format": "colmap"},
        {"distortion": (0.1, 0.0, 0.0)},
        {"distortion": (0.1, 0.0, 0.0, 0.0)},  # the Blender format has no distortion
    ],
)
def test_invalid_config_raises_value_error(tmp_path: Path, bad: dict[str, object]) -> None:
    field = next(iter(bad))
    with pytest.raises(ValueError, match=field):
        SceneConfig(output_dir=tmp_path / "s", **bad)  # type: ignore[arg-type]
    cfg = SceneConfig(output_dir=tmp_path / "s", **TINY)
    setattr(cfg, field, bad[field])  # mutated after construction: generate_scene re-validates
    with pytest.raises(ValueError, match=field):
        generate_scene(cfg)
    assert not (tmp_path / "s").exists()


def test_360_layout_cameras_on_upper_hemisphere_looking_at_origin(scene_dir: Path) -> None:
    poses = camera_poses(SceneConfig(num_train=60, num_val=8, num_test=8))
    train = poses["train"]
    centres = train[:, :3, 3]
    assert np.allclose(np.linalg.norm(centres, axis=-1), 4.0, atol=1e-6)
    assert (centres[:, 2] > 0).all()
    assert np.allclose(_forward(train), -centres / 4.0, atol=1e-6)  # looking at the origin
    assert np.allclose(np.linalg.det(train[:, :3, :3]), 1.0, atol=1e-6)  # right-handed rotations
    for split in ("val", "test"):  # turntable ring at 30 degrees elevation
        c = poses[split][:, :3, 3]
        assert np.allclose(np.degrees(np.arcsin(c[:, 2] / 4.0)), 30.0, atol=1e-6)
    assert not np.allclose(poses["val"][:, :3, 3], poses["test"][:, :3, 3])
    # Cameras really surround the scene (unlike forward-facing): view directions spread widely.
    assert np.degrees(np.arccos(np.clip(_forward(train) @ _forward(train).T, -1, 1))).max() > 90
    # ...and the written transforms are these poses.
    written = json.loads((scene_dir / "transforms_train.json").read_text())["frames"]
    expected = camera_poses(SceneConfig(**SMALL))["train"]
    assert np.allclose([f["transform_matrix"] for f in written], expected)


def test_forward_facing_layout(tmp_path: Path) -> None:
    cfg = SceneConfig(output_dir=tmp_path / "ff", layout="forward-facing", **{**TINY, "num_train": 12})
    out = generate_scene(cfg)
    poses = np.concatenate(
        [
            np.array([f["transform_matrix"] for f in json.loads((out / f"transforms_{s}.json").read_text())["frames"]])
            for s in ("train", "val", "test")
        ]
    )
    centres = poses[:, :3, 3]
    rel = centres - centres.mean(0)
    sv = np.linalg.svd(rel, compute_uv=False)
    assert sv[1] > 0.3 and sv[2] < 1e-6, "camera centres should span a plane (and only a plane)"
    fwd = _forward(poses)
    mean = fwd.mean(0) / np.linalg.norm(fwd.mean(0))
    assert np.degrees(np.arccos(np.clip(fwd @ mean, -1, 1))).max() < 5.0, "views should be nearly parallel"
    normal = np.linalg.svd(rel)[2][2]
    assert abs(normal @ mean) > 0.99, "cameras look across the plane of their centres"
    assert np.all(np.linalg.norm(centres, axis=-1) > 3.5), "scene stays in front of the near plane"
    img = _load_rgba(out / "train" / "r_0.png")
    assert (img[..., 3] == 255).mean() > 0.3


def _top_down(height: float = 4.0) -> torch.Tensor:
    c2w = torch.eye(4)
    c2w[2, 3] = height  # camera axes = world axes: looks straight down -z at the origin
    return c2w


def test_render_view_matches_known_geometry() -> None:
    size = 33  # odd + supersample 1: the centre pixel's ray is exactly the optical axis
    rgba = render_view(_top_down(), size, 0.6911112070083618, supersample=1)
    assert rgba.shape == (size, size, 4)
    c = size // 2
    # The globe (radius 0.5, centred at the origin, nothing above it) fills the centre.
    assert rgba[c, c, 3] == 1.0
    # Corners look past the ground slab: background, alpha 0.
    assert rgba[0, 0, 3] == 0.0


def test_render_view_chunking_does_not_change_the_image(monkeypatch: pytest.MonkeyPatch) -> None:
    c2w = torch.from_numpy(camera_poses(SceneConfig(num_train=1))["train"][0])
    full = render_view(c2w, 24, 0.69, supersample=2)
    monkeypatch.setattr(render, "_MAX_SAMPLES_PER_CHUNK", 100)  # many chunks, as at 800x800
    assert torch.equal(full, render_view(c2w, 24, 0.69, supersample=2))


def test_cli_entrypoint_writes_scene(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "cli"
    args = ["--output-dir", str(out), "--image-size", "8", "--num-train", "2", "--num-val", "1"]
    monkeypatch.setattr(sys, "argv", ["ns-make-scene", *args, "--num-test", "1", "--supersample", "1"])
    writer.entrypoint()
    assert len(json.loads((out / "transforms_train.json").read_text())["frames"]) == 2


def test_cli_bad_input_is_one_red_line_and_exit_code_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    for args, reason in (
        (["--output-dir", str(tmp_path / "s"), "--image-size", "7"], "image_size"),
        (["--output-dir", str(tmp_path / "mine"), "--image-size", "8"], "--output-dir"),
    ):
        monkeypatch.setattr(sys, "argv", ["ns-make-scene", *args])
        with pytest.raises(SystemExit) as exit_info:
            writer.entrypoint()
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("ns-make-scene: ") and reason in err and err.count("\n") == 1, err
    assert not (tmp_path / "s").exists() and (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def _opencv_matrix(size: int, angle: float) -> np.ndarray:
    """OpenCV's camera matrix: its pixel centres are integers, nerfstudio's (and COLMAP's) are at +0.5."""
    f = focal_length(size, angle)
    return np.array([[f, 0.0, 0.5 * size - 0.5], [0.0, f, 0.5 * size - 0.5], [0.0, 0.0, 1.0]])


def test_distorted_capture_is_written_as_ns_process_data_does(phone_dir: Path) -> None:
    size = PHONE.image_size
    meta = json.loads((phone_dir / "transforms.json").read_text())
    assert not list(phone_dir.glob("transforms_*.json"))
    f = focal_length(size, PHONE.camera_angle_x)
    assert meta["camera_model"] == "OPENCV" and meta["w"] == meta["h"] == size
    assert meta["fl_x"] == meta["fl_y"] == f and meta["cx"] == meta["cy"] == size / 2
    assert (meta["k1"], meta["k2"], meta["p1"], meta["p2"]) == DISTORTION
    paths = [frame["file_path"] for frame in meta["frames"]]
    assert paths == [f"images/frame_{i:05d}.png" for i in range(1, 6)]
    assert [frame["depth_file_path"] for frame in meta["frames"]] == [f"depths/frame_{i:05d}.png" for i in range(1, 6)]
    splits = [meta[f"{split}_filenames"] for split in ("train", "val", "test")]
    assert splits == [paths[:3], paths[3:4], paths[4:]]
    poses = camera_poses(PHONE)
    expected = np.concatenate([poses["train"], poses["val"], poses["test"]])
    assert np.allclose([frame["transform_matrix"] for frame in meta["frames"]], expected)
    image = _load_rgba(phone_dir / paths[0])
    assert image.shape == (size, size, 3), "an unbounded capture is opaque RGB, like a photo"


def test_nerfstudio_parser_reads_the_distorted_capture(phone_dir: Path) -> None:
    parser = NerfstudioDataParserConfig(data=phone_dir).setup()
    outputs = {split: parser.get_dataparser_outputs(split) for split in ("train", "val", "test")}
    assert [len(out.image_filenames) for out in outputs.values()] == [3, 1, 1]
    assert all(Path(f).is_file() for out in outputs.values() for f in out.image_filenames)
    params = outputs["train"].cameras.distortion_params
    assert params is not None and params.abs().sum() > 0
    k1, k2, p1, p2 = DISTORTION
    assert torch.allclose(params[0], torch.tensor([k1, k2, 0.0, 0.0, p1, p2]))


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence")  # inside nerfstudio's generate_rays
def test_distorted_pixels_are_opencv_and_nerfstudio_rays() -> None:
    """The lens is OpenCV's, and a teacher trained by nerfstudio on the capture sees the rays it was rendered with."""
    size, angle = 21, 0.9
    c2w = torch.from_numpy(camera_poses(SceneConfig(num_train=1))["train"][0]).float()
    centres = torch.arange(size, dtype=torch.float32) + 0.5
    v, u = torch.meshgrid(centres, centres, indexing="ij")
    ours = ray_directions(u, v, size, angle, DISTORTION)
    pixels = torch.stack([u, v], -1).reshape(-1, 1, 2).double().numpy()
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)
    # nerfstudio's dependencies install both opencv-python 5 and opencv-python-headless 4, and either may end up
    # as `cv2`: OpenCV 5 folded undistortPointsIter into undistortPoints.
    undistort = getattr(cv2, "undistortPointsIter", None) or cv2.undistortPoints
    opencv = undistort(
        pixels - 0.5, _opencv_matrix(size, angle), np.array(DISTORTION), R=None, P=None, criteria=criteria
    )
    assert np.allclose(ours[..., :2].reshape(-1, 2) * torch.tensor([1.0, -1.0]), opencv[:, 0], atol=1e-5)

    f = focal_length(size, angle)
    k1, k2, p1, p2 = DISTORTION
    cameras = Cameras(
        camera_to_worlds=c2w[None, :3], fx=f, fy=f, cx=size / 2, cy=size / 2, width=size, height=size,
        distortion_params=camera_utils.get_distortion_params(k1=k1, k2=k2, p1=p1, p2=p2)[None],
    )  # fmt: skip
    expected = cameras.generate_rays(camera_indices=0).directions
    assert torch.allclose(torch.nn.functional.normalize(ours @ c2w[:3, :3].T, dim=-1), expected, atol=1e-5)


def test_distorted_image_undistorts_to_the_pinhole_image(phone_dir: Path) -> None:
    size, angle = PHONE.image_size, PHONE.camera_angle_x
    c2w = torch.from_numpy(camera_poses(PHONE)["train"][0])
    pinhole = render_view(c2w, size, angle, PHONE.supersample, unbounded=True)[..., :3]
    pinhole = (pinhole * 255.0 + 0.5).floor().double().numpy() / 255.0  # as a PNG stores it
    distorted = _load_rgba(phone_dir / "images" / "frame_00001.png").astype(np.float64) / 255.0
    c = size // 2
    assert np.array_equal(distorted[c, c], pinhole[c, c]), "no distortion on the optical axis"
    diff = np.abs(distorted - pinhole).mean(-1)
    assert all(corner.mean() > 0.01 for corner in (diff[:8, :8], diff[:8, -8:], diff[-8:, :8], diff[-8:, -8:]))
    # OpenCV's undistortion of the written image recovers the pinhole render, up to its resampling (which a blur
    # hides, while a lens left uncorrected would not be hidden).
    undistorted = cv2.undistort(distorted, _opencv_matrix(size, angle), np.array(DISTORTION))
    inner = (slice(8, -8), slice(8, -8))

    def error(image: np.ndarray) -> float:
        return float(np.abs(cv2.GaussianBlur(image - pinhole, (0, 0), 1.5))[inner].mean())

    assert error(undistorted) < 0.4 * error(distorted), (error(undistorted), error(distorted))


def test_depth_maps_are_the_z_depth_nerfstudio_reads(phone_dir: Path) -> None:
    """An RGB-D capture: depth-nerfacto reads each frame's depth map (uint16 millimetres) and scales it with the
    poses; it is the distance along the optical axis to what the pixel sees, through the same lens as the image."""
    size, c = PHONE.image_size, PHONE.image_size // 2
    raw = cv2.imread(str(phone_dir / "depths" / "frame_00001.png"), cv2.IMREAD_ANYDEPTH)
    assert raw.dtype == np.uint16 and raw.shape == (size, size) and (raw > 0).all(), "unbounded: every pixel sees"
    c2w = camera_poses(PHONE)["train"][0]
    assert raw[c, c] == round(1000 * (np.linalg.norm(c2w[:3, 3]) - 0.5)), "the axis meets the globe (radius 0.5)"
    outputs = NerfstudioDataParserConfig(data=phone_dir).setup().get_dataparser_outputs("train")
    dataset = DepthDataset(outputs)
    depth = dataset[0]["depth_image"][..., 0]
    assert torch.allclose(depth, torch.from_numpy(raw.astype(np.float32)) * 1e-3 * outputs.dataparser_scale)
    # the depth of a pixel is along the ray nerfstudio shoots through it (distorted lens): same z as a pinhole
    # render's only on the axis, where the lens does not bend rays
    pinhole = render_depth(torch.from_numpy(c2w), size, PHONE.camera_angle_x, unbounded=True)
    assert abs(float(pinhole[c, c]) - raw[c, c] * 1e-3) < 1e-3
    assert (np.abs(pinhole.numpy() - raw * 1e-3) > 0.01).any()


def test_unbounded_scene_has_far_opaque_surroundings(tmp_path: Path) -> None:
    out = generate_scene(SceneConfig(output_dir=tmp_path / "u", unbounded=True, **TINY))
    image = _load_rgba(out / "train" / "r_0.png")
    assert image.shape == (16, 16, 3), "no transparent background left"
    assert len(BlenderDataParserConfig(data=out).setup().get_dataparser_outputs("train").image_filenames) == 3
    bounded = _load_rgba(generate_scene(SceneConfig(output_dir=tmp_path / "b", **TINY)) / "train" / "r_0.png")
    background = bounded[..., 3] == 0
    assert background.any() and (image[background].astype(int).sum(-1) > 150).all(), "sky or ground, not black"
    # Looking level from just above the far ground (0.1), away from the scene: the ray one pixel below the axis
    # meets the ground at 0.1 f, far outside the cameras' sphere, and the ground is still there; above it, sky.
    c2w = torch.eye(4)
    c2w[:3, :3] = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # right x, up z: looks along +y
    c2w[:3, 3] = torch.tensor([0.0, 3.0, -0.9])
    size, angle = 65, 0.3
    assert 0.1 * focal_length(size, angle) > 20.0
    column = render_view(c2w, size, angle, supersample=1, unbounded=True)[:, size // 2, :3]
    below, above = column[size // 2 + 1], column[size // 2 - 1]
    assert below[1] > below[2] and above[2] > above[1], "greenish ground under a bluish sky"
