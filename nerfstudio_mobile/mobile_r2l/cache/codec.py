"""One pseudo view as bytes: a zip archive (readable with `np.load`; `unzip` gives a viewable PNG) with members

    rgb.png          8-bit RGB PNG, stored as is (PNG is already compressed)
    depth.npy        float16 [H, W] depth along the ray in world units, deflated; 0 where there is no
                     surface (accumulation < 0.5, or a non-finite depth), which is what makes it compress
    accumulation.npy uint8 [H, W] (round(255 * accumulation)), deflated; only when the renderer gave one
    c2w.npy          float32 [3, 4] camera-to-world pose the view was rendered from

Archives are byte-deterministic (fixed member order and timestamps), so a resumed generation produces the
same files as an uninterrupted one when the renderer is deterministic.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

RGB_MEMBER, DEPTH_MEMBER, C2W_MEMBER = "rgb.png", "depth.npy", "c2w.npy"
ACCUMULATION_MEMBER = "accumulation.npy"
REQUIRED_MEMBERS = frozenset({RGB_MEMBER, DEPTH_MEMBER, C2W_MEMBER})
# Zip entries carry a modification time; a fixed one keeps archives byte-identical across runs.
ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)
FLOAT16_MAX = float(np.finfo(np.float16).max)
# What decoding a damaged view raises: zipfile (BadZipFile, EOFError), zlib, numpy (ValueError), PIL
# (OSError, SyntaxError for broken PNG chunks), a missing member (KeyError).
DECODE_ERRORS = (zipfile.BadZipFile, zlib.error, KeyError, ValueError, OSError, EOFError, SyntaxError)


@dataclass(frozen=True)
class PseudoView:
    """One decoded view. Depth is float16 (as stored) with 0 meaning "no surface"."""

    index: int
    rgb: Tensor
    """uint8 [H, W, 3]."""
    depth: Tensor
    """float16 [H, W]."""
    c2w: Tensor
    """float32 [3, 4]."""
    accumulation: Tensor | None = None
    """uint8 [H, W] (255 = opaque), when the renderer gave one."""


def encode_render(
    rgb: Tensor | np.ndarray,
    depth: Tensor | np.ndarray,
    c2w: Tensor | np.ndarray,
    accumulation: Tensor | np.ndarray | None,
    size: tuple[int, int],
) -> bytes:
    """Archive bytes of a render of `size` (H, W). rgb [H, W, 3] uint8 or float in [0, 1]; depth [H, W] (or
    [H, W, 1]); accumulation [H, W] (or [H, W, 1]) float in [0, 1] or uint8; c2w [3, 4]. Depth is zeroed where
    accumulation < 0.5 and where it is not finite. ValueError on a wrong shape."""
    rgb_np = _numpy(rgb)
    if rgb_np.shape != (*size, 3):
        raise ValueError(f"rgb must be [{size[0]}, {size[1]}, 3], got {rgb_np.shape}")
    depth_np = _single_channel(_numpy(depth), "depth", size).astype(np.float32)
    depth_np = np.where(np.isfinite(depth_np), depth_np, 0.0).clip(0.0, FLOAT16_MAX)
    accumulation_u8 = None
    if accumulation is not None:
        accumulation_u8 = _to_uint8(_single_channel(_numpy(accumulation), "accumulation", size))
        # 0.5 quantises to 128, so ">= 128" is "accumulation >= 0.5".
        depth_np = np.where(accumulation_u8 >= 128, depth_np, 0.0)
    c2w_np = _numpy(c2w).astype(np.float32)
    if c2w_np.shape != (3, 4):
        raise ValueError(f"c2w must be [3, 4], got {c2w_np.shape}")
    return encode_view(_to_uint8(rgb_np), depth_np.astype(np.float16), c2w_np, accumulation_u8)


def encode_view(rgb: np.ndarray, depth: np.ndarray, c2w: np.ndarray, accumulation: np.ndarray | None = None) -> bytes:
    """Archive bytes of one view (uint8 rgb [H, W, 3], float16 depth [H, W], float32 c2w [3, 4], uint8
    accumulation [H, W] or None); deterministic for equal inputs."""
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, format="PNG", compress_level=6)
    members = [
        (RGB_MEMBER, png.getvalue(), zipfile.ZIP_STORED),
        (DEPTH_MEMBER, _npy(depth), zipfile.ZIP_DEFLATED),
    ]
    if accumulation is not None:
        members.append((ACCUMULATION_MEMBER, _npy(accumulation), zipfile.ZIP_DEFLATED))
    members.append((C2W_MEMBER, _npy(c2w), zipfile.ZIP_STORED))
    archive_bytes = io.BytesIO()
    with zipfile.ZipFile(archive_bytes, "w") as archive:
        for name, payload, compression in members:
            info = zipfile.ZipInfo(name, date_time=ZIP_TIMESTAMP)
            info.compress_type = compression
            archive.writestr(info, payload)
    return archive_bytes.getvalue()


def decode_view(index: int, data: bytes) -> PseudoView:
    """Inverse of `encode_view`; zipfile verifies each member's CRC as it is read. Raises one of DECODE_ERRORS
    on damaged data."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = set(archive.namelist())
        with Image.open(io.BytesIO(archive.read(RGB_MEMBER))) as image:
            rgb = np.array(image.convert("RGB"))
        depth = _read_npy(archive.read(DEPTH_MEMBER), np.float16, ndim=2)
        c2w = _read_npy(archive.read(C2W_MEMBER), np.float32, ndim=2)
        accumulation = None
        if ACCUMULATION_MEMBER in names:
            accumulation = _read_npy(archive.read(ACCUMULATION_MEMBER), np.uint8, ndim=2)
    if c2w.shape != (3, 4):
        raise ValueError(f"c2w has shape {c2w.shape}")
    return PseudoView(
        index=index,
        rgb=torch.from_numpy(rgb),
        depth=torch.from_numpy(depth),
        c2w=torch.from_numpy(c2w),
        accumulation=None if accumulation is None else torch.from_numpy(accumulation),
    )


def check_archive(path: Path) -> None:
    """The cheap check of a view file: its zip directory, at the end of the file, lists every required member
    (catches truncation without decoding). Raises one of DECODE_ERRORS."""
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
    if not REQUIRED_MEMBERS <= names:
        raise ValueError(f"lacks members {sorted(REQUIRED_MEMBERS - names)}")


def _numpy(array: Tensor | np.ndarray) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, Tensor) else np.asarray(array)


def _single_channel(array: np.ndarray, name: str, size: tuple[int, int]) -> np.ndarray:
    """[H, W] from [H, W] or nerfstudio's [H, W, 1]."""
    if array.shape not in (size, (*size, 1)):
        raise ValueError(f"{name} must be [{size[0]}, {size[1]}] (or with a trailing 1), got {array.shape}")
    return array.reshape(size)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """uint8 as is; floats in [0, 1] rounded to 0..255."""
    if array.dtype == np.uint8:
        return array
    return np.round(np.clip(array.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _read_npy(data: bytes, dtype: type[np.generic], ndim: int) -> np.ndarray:
    array = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    if array.dtype != dtype or array.ndim != ndim:
        raise ValueError(f"expected {np.dtype(dtype)} with {ndim} dims, got {array.dtype} {array.shape}")
    # read_array wraps the (immutable) bytes; torch wants a writable array.
    return array.copy()
