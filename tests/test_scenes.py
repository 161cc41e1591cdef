"""Tests of the offline synthetic-scene generator (data/scenes): what users and other tests rely on."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig

from nerfstudio_mobile.data import scenes
from nerfstudio_mobile.data.scenes import SceneConfig, camera_poses, generate_scene, render_view

SMALL = dict(image_size=48, num_train=4, num_val=2, num_test=2, supersample=2)
TINY = dict(image_size=16, num_train=3, num_val=1, num_test=1, supersample=1)


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_scene(SceneConfig(output_dir=tmp_path_factory.mktemp("s") / "scene", **SMALL))


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
    real_imwrite = scenes.imageio.imwrite

    def failing_imwrite(*args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real_imwrite(*args, **kwargs)

    monkeypatch.setattr(scenes.imageio, "imwrite", failing_imwrite)
    with pytest.raises(KeyboardInterrupt):
        generate_scene(SceneConfig(output_dir=tmp_path / "s", **TINY))
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(scenes.imageio, "imwrite", real_imwrite)
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


def test_render_view_depth_matches_known_geometry() -> None:
    size = 33  # odd + supersample 1: the centre pixel's ray is exactly the optical axis
    rgba, depth = render_view(_top_down(), size, 0.6911112070083618, supersample=1)
    assert rgba.shape == (size, size, 4) and depth.shape == (size, size)
    c = size // 2
    # The globe (radius 0.5, centred at the origin, nothing above it): top at z = 0.5.
    assert rgba[c, c, 3] == 1.0 and depth[c, c].item() == pytest.approx(3.5, abs=1e-4)
    # Corners look past the ground slab: background, alpha 0, depth inf.
    assert rgba[0, 0, 3] == 0.0 and math.isinf(depth[0, 0].item())
    # z-depth vs ray distance at an off-centre pixel.
    _, ray = render_view(_top_down(), size, 0.6911112070083618, supersample=1, depth_mode="ray")
    f = 0.5 * size / math.tan(0.5 * 0.6911112070083618)
    i, j = c + 5, c - 3
    scale = math.sqrt(1 + ((j + 0.5 - size / 2) / f) ** 2 + ((i + 0.5 - size / 2) / f) ** 2)
    assert ray[i, j].item() == pytest.approx(depth[i, j].item() * scale, rel=1e-5)


def test_render_view_depth_is_multiview_consistent() -> None:
    """Unproject view A with its z-depth, reproject into view B: depths agree where the point is visible."""
    size, angle = 64, 0.6911112070083618
    f = 0.5 * size / math.tan(0.5 * angle)
    ring = camera_poses(SceneConfig(num_val=16))["val"]  # neighbours on the ring are 22.5 degrees apart
    a, b = (torch.from_numpy(p).float() for p in ring[:2])
    rgba_a, depth_a = render_view(a, size, angle, supersample=1)
    _, depth_b = render_view(b, size, angle, supersample=1)
    ii, jj = torch.nonzero(rgba_a[..., 3] == 1.0, as_tuple=True)
    z = depth_a[ii, jj]
    cam = torch.stack([(jj + 0.5 - size / 2) / f * z, -(ii + 0.5 - size / 2) / f * z, -z], -1)
    world = cam @ a[:3, :3].T + a[:3, 3]
    assert world.abs().max() < 1.2, "surface points lie inside the scene bounds"
    cam_b = (world - b[:3, 3]) @ b[:3, :3]
    zb = -cam_b[:, 2]
    # Continuous pixel position in B; interpolate 1/z bilinearly (exact on planes, so slanted ground works).
    x = cam_b[:, 0] / zb * f + size / 2 - 0.5
    y = -cam_b[:, 1] / zb * f + size / 2 - 0.5
    x0, y0 = torch.floor(x).long(), torch.floor(y).long()
    inside = (x0 >= 0) & (x0 < size - 1) & (y0 >= 0) & (y0 < size - 1)
    x, y, x0, y0, zb = x[inside], y[inside], x0[inside], y0[inside], zb[inside]
    inv, wx, wy = 1.0 / depth_b, x - x0, y - y0
    inv_b = (inv[y0, x0] * (1 - wx) + inv[y0, x0 + 1] * wx) * (1 - wy) + (
        inv[y0 + 1, x0] * (1 - wx) + inv[y0 + 1, x0 + 1] * wx
    ) * wy
    err = (1.0 / inv_b - zb).abs()
    assert len(err) > 1000
    # Points hidden in B (about a quarter here) disagree; the visible ones agree to millimetres. With
    # ray distances instead of z-depth only ~25% would pass and the median error would be ~2 cm.
    assert err.median() < 0.005 and (err < 0.005).float().mean() > 0.6, f"median error {err.median():.4f}"


def test_render_view_chunking_does_not_change_the_image(monkeypatch: pytest.MonkeyPatch) -> None:
    c2w = torch.from_numpy(camera_poses(SceneConfig(num_train=1))["train"][0])
    full = render_view(c2w, 24, 0.69, supersample=2)
    monkeypatch.setattr(scenes, "_MAX_SAMPLES_PER_CHUNK", 100)  # many chunks, as at 800x800
    chunked = render_view(c2w, 24, 0.69, supersample=2)
    assert torch.equal(full[0], chunked[0]) and torch.equal(full[1], chunked[1])


def test_cli_entrypoint_writes_scene(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "cli"
    args = ["--output-dir", str(out), "--image-size", "8", "--num-train", "2", "--num-val", "1"]
    monkeypatch.setattr(sys, "argv", ["ns-make-scene", *args, "--num-test", "1", "--supersample", "1"])
    scenes.entrypoint()
    assert len(json.loads((out / "transforms_train.json").read_text())["frames"]) == 2
