"""Downscaled working copies of the scenes in ../shared/data, made under benchmarks/work/ (git-ignored).

The copies are never shipped (lego is CC-BY-NC; see ../shared/data/SOURCES.md). Each is written beside its
target and renamed into place, so an interrupted copy is redone, never half-used.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def downscale_blender(source: Path, target: Path, size: int, test_stride: int) -> Path:
    """A Blender scene resized to size×size (camera_angle_x is resolution-free) with every test_stride-th test view."""
    if (target / "transforms_test.json").is_file():
        return target
    partial = _fresh_partial(target)
    for split in ("train", "val", "test"):
        meta = json.loads((source / f"transforms_{split}.json").read_text())
        if split == "test":
            meta["frames"] = meta["frames"][::test_stride]
        for frame in meta["frames"]:
            _resize(source / f"{frame['file_path']}.png", partial / f"{frame['file_path']}.png", (size, size))
        (partial / f"transforms_{split}.json").write_text(json.dumps(meta))
    partial.rename(target)
    return target


def downscale_llff(source: Path, target: Path, factor: int) -> Path:
    """An LLFF scene with an `images_<factor>` folder made from its smallest existing `images_N` (N < factor).

    poses_bounds.npy keeps the full-resolution focal; the llff-data parser scales it by `--downscale-factor`.
    """
    if (target / "poses_bounds.npy").is_file():
        return target
    folders = sorted((p for p in source.glob("images_*") if int(p.name.split("_")[1]) <= factor), key=_factor)
    if not folders:
        raise FileNotFoundError(f"{source} has no images_N folder with N <= {factor}.")
    folder = folders[-1]
    full_height, full_width = np.load(source / "poses_bounds.npy")[0, :15].reshape(3, 5)[:2, 4]
    size = (round(full_width / factor), round(full_height / factor))
    partial = _fresh_partial(target)
    for image in sorted(folder.iterdir()):
        _resize(image, partial / f"images_{factor}" / f"{image.stem}.png", size)
    shutil.copy(source / "poses_bounds.npy", partial / "poses_bounds.npy")
    partial.rename(target)
    return target


def _factor(folder: Path) -> int:
    return int(folder.name.split("_")[1])


def _fresh_partial(target: Path) -> Path:
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def _resize(source: Path, target: Path, size: tuple[int, int]) -> None:
    image = Image.open(source).resize(size, Image.Resampling.LANCZOS)
    target.parent.mkdir(parents=True, exist_ok=True)
    imageio.imwrite(target, np.asarray(image))
