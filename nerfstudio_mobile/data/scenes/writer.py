"""Writing a synthetic scene to disk in a layout nerfstudio's dataparsers read, and the ``ns-make-scene`` command.

Blender format (``blender-data``)::

    <output_dir>/
        transforms_{train,val,test}.json   # {"camera_angle_x": ..., "frames": [{"file_path": "./train/r_0",
                                           #   "transform_matrix": 4x4 camera-to-world}, ...]}
        {train,val,test}/r_<i>.png         # RGBA, straight (non-premultiplied) alpha, background alpha = 0
        scene.json                         # the config that produced the scene (used for reuse checks)

nerfstudio format (``nerfstudio-data``), as ns-process-data writes an RGB-D capture (Record3D, Polycam)::

    <output_dir>/
        transforms.json          # camera_model "OPENCV", fl_x fl_y cx cy w h k1 k2 p1 p2, frames [{"file_path":
                                 #   "images/frame_00001.png", "depth_file_path": "depths/frame_00001.png",
                                 #   "transform_matrix": ...}], {train,val,test}_filenames
        images/frame_<n>.png     # RGBA, or RGB for an unbounded (opaque) scene
        depths/frame_<n>.png     # uint16 z-depth in millimetres (nerfstudio's default depth unit), 0 = nothing
        scene.json
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio.v2 as imageio
import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor

from nerfstudio_mobile.common.cli import run_cli
from nerfstudio_mobile.common.files import atomic_dir
from nerfstudio_mobile.data.scenes.cameras import camera_poses, focal_length
from nerfstudio_mobile.data.scenes.config import SPLITS, SceneConfig, SceneExistsError
from nerfstudio_mobile.data.scenes.render import render_depth, render_view

CONSOLE = Console()

SCENE_FORMAT_VERSION = 1
"""Bumped whenever the rendered content changes, so a stale scene on disk is never silently reused."""
DEPTH_UNIT = 1e-3
"""Metres per unit of a depth PNG: nerfstudio-data's default `depth_unit_scale_factor` (millimetres)."""


def _scene_record(config: SceneConfig) -> dict[str, Any]:
    return {
        "generator": "nerfstudio_mobile.data.scenes",
        "format_version": SCENE_FORMAT_VERSION,
        "config": config.content_dict(),
    }


def _image_paths(config: SceneConfig) -> dict[str, list[str]]:
    """Each split's image files, relative to the scene root, named as the format names them."""
    sizes = config.split_sizes()
    if config.format == "blender":
        return {split: [f"{split}/r_{i}.png" for i in range(sizes[split])] for split in SPLITS}
    number = itertools.count(1)  # ns-process-data numbers one folder of frames from 1
    return {split: [f"images/frame_{next(number):05d}.png" for _ in range(sizes[split])] for split in SPLITS}


def _depth_path(image_path: str) -> str:
    """The depth map of a nerfstudio-format image, named as ns-process-data names RGB-D captures' depths."""
    return image_path.replace("images/", "depths/", 1)


def _metadata(config: SceneConfig, poses: dict[str, np.ndarray]) -> dict[str, Any]:
    """The scene's camera files by name, with the content the format's dataparser reads."""
    paths = _image_paths(config)
    if config.format == "blender":
        return {
            f"transforms_{split}.json": {
                "camera_angle_x": float(config.camera_angle_x),
                "frames": [
                    {"file_path": "./" + path.removesuffix(".png"), "transform_matrix": c2w.tolist()}
                    for path, c2w in zip(paths[split], poses[split], strict=True)
                ],
            }
            for split in SPLITS
        }
    f = focal_length(config.image_size, config.camera_angle_x)
    k1, k2, p1, p2 = (float(k) for k in config.distortion)
    frames = [
        {"file_path": path, "depth_file_path": _depth_path(path), "transform_matrix": c2w.tolist()}
        for split in SPLITS
        for path, c2w in zip(paths[split], poses[split], strict=True)
    ]
    size, centre = config.image_size, 0.5 * config.image_size
    intrinsics = {"fl_x": f, "fl_y": f, "cx": centre, "cy": centre, "w": size, "h": size}
    lens = {"camera_model": "OPENCV", "k1": k1, "k2": k2, "p1": p1, "p2": p2}
    splits = {f"{split}_filenames": paths[split] for split in SPLITS}
    return {"transforms.json": {**lens, **intrinsics, "frames": frames, **splits}}


def _existing_state(path: Path, config: SceneConfig) -> tuple[str, str]:
    """Classify what is at ``path``: ("absent"|"complete"|"other", human-readable reason)."""
    if not path.exists():
        return "absent", ""
    if not path.is_dir():
        return "other", "it is a file, not a directory"
    if not any(path.iterdir()):
        return "absent", ""
    record_path = path / "scene.json"
    if not record_path.is_file():
        return "other", "it has no scene.json (not a scene made by this generator)"
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return "other", "its scene.json is unreadable"
    expected = _scene_record(config)
    if record != expected:
        old = record.get("config", {}) if isinstance(record, dict) else {}
        diffs = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in expected["config"].items() if old.get(k) != v] or [
            "generator format version"
        ]
        return "other", "it holds a scene made with a different config (" + "; ".join(diffs) + ")"
    for name, meta in _metadata(config, camera_poses(config)).items():
        try:
            if json.loads((path / name).read_text()) != meta:
                return "other", f"{name} differs from the one this config writes"
        except (OSError, ValueError):
            return "other", f"{name} is missing or unreadable"
    for image in itertools.chain.from_iterable(_image_paths(config).values()):
        for file in (image, _depth_path(image)) if config.format == "nerfstudio" else (image,):
            if not (path / file).is_file():
                return "other", f"{file} is missing"
    return "complete", ""


def _looks_like_dataset(path: Path) -> bool:
    """Only directories that look like scenes may be deleted by ``overwrite``."""
    return path.is_dir() and ((path / "scene.json").exists() or any(path.glob("transforms*.json")))


def _to_png_bytes_array(image: Tensor) -> np.ndarray:
    return (image.clamp(0.0, 1.0) * 255.0 + 0.5).floor().to(torch.uint8).numpy()


def _to_depth_png_array(depth: Tensor) -> np.ndarray:
    return (depth / DEPTH_UNIT).round().clamp(0, np.iinfo(np.uint16).max).numpy().astype(np.uint16)


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(exist_ok=True)
    # Our own file object: imageio's would raise a full disk's error again when it is garbage-collected
    with path.open("wb") as file:
        imageio.imwrite(file, array, format="png")


def _write_scene(config: SceneConfig, root: Path) -> None:
    poses = camera_poses(config)
    paths = _image_paths(config)
    channels = 3 if config.unbounded else 4  # an unbounded scene is opaque, like a photo
    progress = Progress(
        TextColumn("[bold blue]Rendering {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=CONSOLE,
    )
    with progress:
        task = progress.add_task(f"{config.layout} scene", total=sum(len(p) for p in paths.values()))
        for split in SPLITS:
            for path, c2w in zip(paths[split], poses[split], strict=True):
                rgba = render_view(
                    torch.from_numpy(c2w),
                    config.image_size,
                    config.camera_angle_x,
                    config.supersample,
                    distortion=config.distortion,
                    unbounded=config.unbounded,
                )
                _write_png(root / path, _to_png_bytes_array(rgba[..., :channels]))
                if config.format == "nerfstudio":
                    depth = render_depth(
                        torch.from_numpy(c2w),
                        config.image_size,
                        config.camera_angle_x,
                        distortion=config.distortion,
                        unbounded=config.unbounded,
                    )
                    _write_png(root / _depth_path(path), _to_depth_png_array(depth))
                progress.advance(task)
    for name, meta in _metadata(config, poses).items():
        (root / name).write_text(json.dumps(meta, indent=2) + "\n")
    (root / "scene.json").write_text(json.dumps(_scene_record(config), indent=2) + "\n")


def generate_scene(config: SceneConfig) -> Path:
    """Render the scene described by ``config`` into ``config.output_dir`` and return that path.

    The scene is written into a staging directory that replaces the output directory only when complete, so an
    interrupted run never leaves a half scene. If the output directory already holds a complete scene with the
    same config it is reused as is (generation is deterministic, so it would be byte-identical anyway). Anything
    else there raises SceneExistsError unless ``config.overwrite`` is set; even then, only directories that look
    like a dataset (scene.json or transforms*.json) are replaced, so a mistyped --output-dir cannot wipe
    unrelated files.

    Raises:
        SceneConfigError (a ValueError): invalid config values.
        SceneExistsError (a FileExistsError): output_dir holds something else and overwrite is False (or it is
            not a dataset).
    """
    config.validate()
    out = Path(config.output_dir)
    state, reason = _existing_state(out, config)
    if state == "complete":
        CONSOLE.print(f"[green]Reusing existing scene[/green] at {out} (same config).")
        return out
    if state == "other":
        if not config.overwrite:
            raise SceneExistsError(
                f"{out} already exists and {reason}. Pass --overwrite to replace it, or choose another --output-dir."
            )
        if not _looks_like_dataset(out):
            raise SceneExistsError(
                f"{out} already exists and does not look like a scene ({reason}); refusing to delete it even "
                f"with --overwrite. Remove it yourself or choose another --output-dir."
            )
    with atomic_dir(out) as staging:
        _write_scene(config, staging)

    counts = config.split_sizes()
    CONSOLE.print(
        f"[bold green]Scene written[/bold green] to {out} "
        f"({counts['train']} train / {counts['val']} val / {counts['test']} test views, "
        f"{config.image_size}x{config.image_size}, layout {config.layout}, {config.format} format)."
    )
    method = "nas-nerf" if config.format == "blender" else "nerfacto"  # nas-nerf reads the Blender format only
    CONSOLE.print(f"Next: [bold]ns-train {method} --data {out}[/bold]")
    return out


@dataclass
class MakeScene(SceneConfig):
    """Render a small synthetic scene fully offline: a Blender (NeRF-synthetic) scene, or a nerfstudio RGB-D capture
    as ns-process-data writes it (optionally through a phone-like lens distortion)."""

    def __post_init__(self) -> None:
        """No validation here: tyro would print an error raised now as a usage box; main() prints one red line."""

    def main(self) -> None:
        generate_scene(self)


def entrypoint() -> None:
    """Console script ``ns-make-scene``."""
    run_cli(MakeScene, "ns-make-scene")


if __name__ == "__main__":
    entrypoint()
