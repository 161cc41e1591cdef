"""Demo-sized copies of real scenes: the images shrunk to fit N×N pixels, the cameras to match.

A teacher renders every pixel of every pseudo view and test view ray by ray, so the cost of a run grows with the
pixel count: 800×800 lego takes hours on a laptop CPU where 128×128 takes minutes. Rather than asking each
dataparser to downscale (Blender's can't, LLFF's only reads prepared images_N folders), the demo trains on a copy:

    Blender     transforms_{train,val,test}.json + images   camera_angle_x is resolution-free: images only
    nerfstudio  transforms.json + images (masks, depths)    fl_x, fl_y, cx, cy, w, h scaled with the images
    LLFF        poses_bounds.npy + images/                  the parser scales the focal by the image width

The copy is written beside its target and renamed into place, so an interrupted copy is redone, never half-used;
`copy.json` records what it was made from, and a copy made from something else is refused, not reused.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from nerfstudio_mobile.data.errors import SceneError
from nerfstudio_mobile.data.formats import SceneFormat, scene_format

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
INTRINSICS_X, INTRINSICS_Y = ("fl_x", "cx", "w"), ("fl_y", "cy", "h")


def downscaled_copy(source: Path, parent: Path, max_size: int, max_test_views: int) -> Path:
    """`source` itself when its images fit in max_size×max_size (and, for Blender, its test split in
    max_test_views); else a copy under `parent` that does. The copy is reused when it is complete."""
    if max_size < 1 or max_test_views < 1:
        raise SceneError(f"max image size and max test views must be at least 1, got {max_size} and {max_test_views}.")
    source = source.resolve()
    kind = scene_format(source)
    largest = largest_side(source, kind)
    too_many_tests = kind == "blender" and _count_frames(source / "transforms_test.json") > max_test_views
    if largest <= max_size and not too_many_tests:
        return source
    target = parent / f"{source.name}_{max_size}px"
    recipe = {"source": str(source), "max_image_size": max_size, "max_test_views": max_test_views}
    if (target / "copy.json").is_file():
        made_from = json.loads((target / "copy.json").read_text())
        if made_from != recipe:
            raise SceneError(f"{target} was made from {made_from}, not {recipe}: delete it or use another output dir.")
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    if kind == "blender":
        _copy_blender(source, partial, max_size, max_test_views)
    elif kind == "nerfstudio":
        _copy_nerfstudio(source, partial, max_size)
    else:
        _copy_llff(source, partial, max_size)
    (partial / "copy.json").write_text(json.dumps(recipe, indent=2))
    partial.rename(target)
    return target


def _copy_blender(source: Path, target: Path, max_size: int, max_test_views: int) -> None:
    for split in ("train", "val", "test"):
        path = source / f"transforms_{split}.json"
        if not path.is_file():
            continue
        meta = json.loads(path.read_text())
        if split != "train":  # evenly spaced, so a 200-view test split at cap 25 is every 8th view
            meta["frames"] = meta["frames"][:: math.ceil(len(meta["frames"]) / max_test_views)]
        for frame in meta["frames"]:
            name = _blender_image(source, frame["file_path"]).relative_to(source)
            _shrink(source / name, target / name, max_size)
        (target / path.name).write_text(json.dumps(meta, indent=2))


def _copy_nerfstudio(source: Path, target: Path, max_size: int) -> None:
    meta = json.loads((source / "transforms.json").read_text())
    for index, frame in enumerate(meta["frames"]):
        for key, folder in (("file_path", "images"), ("mask_path", "masks"), ("depth_file_path", "depths")):
            if key not in frame:
                continue
            copied = _inside(frame[key], folder)
            # per-pixel labels and metric depths: nearest neighbour, never blended
            resample = Image.Resampling.LANCZOS if key == "file_path" else Image.Resampling.NEAREST
            scale = _shrink(source / frame[key], target / copied, max_size, resample)
            frame[key] = copied
            if key == "file_path":
                if index == 0:  # shared intrinsics are those of every frame that has none of its own
                    _scale_intrinsics(meta, *scale)
                _scale_intrinsics(frame, *scale)
    if "ply_file_path" in meta:
        copied = _inside(meta["ply_file_path"], ".")
        shutil.copy(source / meta["ply_file_path"], target / copied)
        meta["ply_file_path"] = copied
    (target / "transforms.json").write_text(json.dumps(meta, indent=2))


def _inside(path: str, folder: str) -> str:
    """Where a file goes in the copy: where it was, unless that is outside the scene folder (an absolute or ../
    path, which nerfstudio allows); then into folder/, so the copy never writes outside itself."""
    file = Path(path)
    return path if not file.is_absolute() and ".." not in file.parts else f"{folder}/{file.name}"


def _copy_llff(source: Path, target: Path, max_size: int) -> None:
    """Into images/ (read with downscale factor 1), from the smallest images_N that is still large enough."""
    for image in _llff_images(_llff_folder(source, max_size)):
        _shrink(image, target / "images" / image.name, max_size)
    shutil.copy(source / "poses_bounds.npy", target / "poses_bounds.npy")


def _scale_intrinsics(camera: dict[str, Any], sx: float, sy: float) -> None:
    for keys, scale in ((INTRINSICS_X, sx), (INTRINSICS_Y, sy)):
        for key in keys:
            if key in camera:
                camera[key] = round(camera[key] * scale) if key in ("w", "h") else camera[key] * scale


def _shrink(
    source: Path, target: Path, max_size: int, resample: Image.Resampling = Image.Resampling.LANCZOS
) -> tuple[float, float]:
    """Resize to fit max_size×max_size, keeping the aspect ratio; returns the x and y scale."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.suffix == ".npy":  # nerfstudio also takes depths as .npy: nearest neighbour by indexing
        array = np.load(source)
        height, width = array.shape[:2]
        size = _fitted(width, height, max_size)
        np.save(target, array[np.arange(size[1]) * height // size[1]][:, np.arange(size[0]) * width // size[0]])
        return size[0] / width, size[1] / height
    image = Image.open(source)
    width, height = image.size
    size = _fitted(width, height, max_size)
    if size == image.size:
        shutil.copy(source, target)
    else:
        image.resize(size, resample).save(target, quality=95)
    return size[0] / width, size[1] / height


def _fitted(width: int, height: int, max_size: int) -> tuple[int, int]:
    scale = min(1.0, max_size / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def largest_side(source: Path, kind: SceneFormat) -> int:
    """Of the first training image (LLFF: of the full resolution its poses are for)."""
    if kind == "llff":
        return int(max(_llff_full_size(source)))
    if kind == "blender":
        frame = json.loads((source / "transforms_train.json").read_text())["frames"][0]
        return max(Image.open(_blender_image(source, frame["file_path"])).size)
    frame = json.loads((source / "transforms.json").read_text())["frames"][0]
    return max(Image.open(source / frame["file_path"]).size)


def _blender_image(source: Path, file_path: str) -> Path:
    """Blender file paths usually leave out the .png."""
    path = source / file_path
    return path if path.suffix.lower() in IMAGE_SUFFIXES else path.with_name(path.name + ".png")


def _count_frames(path: Path) -> int:
    return len(json.loads(path.read_text())["frames"]) if path.is_file() else 0


def _llff_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise SceneError(f"{folder} does not exist: an LLFF scene keeps its full-resolution images there.")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _llff_full_size(source: Path) -> tuple[float, float]:
    height, width = np.load(source / "poses_bounds.npy")[0, :15].reshape(3, 5)[:2, 4]
    return float(height), float(width)


def _llff_folder(source: Path, max_size: int) -> Path:
    factors = [int(p.name.removeprefix("images_")) for p in source.glob("images_*") if p.name[7:].isdigit()]
    full = max(_llff_full_size(source))
    large_enough = [f for f in factors if full / f >= max_size]
    return source / f"images_{max(large_enough)}" if large_enough else source / "images"
