"""`PseudoViewCache`: the sharded, resumable on-disk store of the teacher's pseudo-view renders.

Layout of a cache directory::

    meta.json               CacheMeta: what the views are (teacher, count, resolution, intrinsics, sampler)
    views/00001234.npz      one file per view, written atomically (temp file + os.replace)
    views/.*.tmp            in-flight writes; never counted as views, stale ones are removed
    views/*.npz.corrupt     views that failed validation, set aside so they are rendered again

A view file is a zip archive (readable with `np.load`; `unzip` gives a viewable PNG) with members:

    rgb.png          8-bit RGB PNG, stored as is (PNG is already compressed)
    depth.npy        float16 [H, W] depth along the ray in world units, deflated; 0 where there is no
                     surface (accumulation < 0.5, or a non-finite depth), which is what makes it compress
    accumulation.npy uint8 [H, W] (round(255 * accumulation)), deflated; only when the renderer gave one
    c2w.npy          float32 [3, 4] camera-to-world pose the view was rendered from

Archives are byte-deterministic (fixed member order and timestamps), so a resumed generation produces the
same files as an uninterrupted one when the renderer is deterministic. An 800×800 render of an object
over a white background takes about 0.5 MB.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
import uuid
import warnings
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from torch import Tensor
from torch.utils.data import Dataset

from nerfstudio_mobile.common.intrinsics import Intrinsics

CACHE_FORMAT_VERSION = 1
META_FILENAME = "meta.json"
VIEWS_DIRNAME = "views"
VIEW_FILENAME = re.compile(r"^(\d+)\.npz$")
TEMP_PREFIX, TEMP_SUFFIX = ".", ".tmp"
CORRUPT_SUFFIX = ".corrupt"
RGB_MEMBER, DEPTH_MEMBER, C2W_MEMBER = "rgb.png", "depth.npy", "c2w.npy"
ACCUMULATION_MEMBER = "accumulation.npy"
REQUIRED_MEMBERS = frozenset({RGB_MEMBER, DEPTH_MEMBER, C2W_MEMBER})
# Zip entries carry a modification time; a fixed one keeps archives byte-identical across runs.
ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)
# Writes take milliseconds; a temp file this old was left by a killed process, not a live writer.
STALE_TEMP_AGE_S = 3600.0
FLOAT16_MAX = float(np.finfo(np.float16).max)
# What decoding a damaged view raises: zipfile (BadZipFile, EOFError), zlib, numpy (ValueError), PIL
# (OSError, SyntaxError for broken PNG chunks), a missing member (KeyError).
DECODE_ERRORS = (zipfile.BadZipFile, zlib.error, KeyError, ValueError, OSError, EOFError, SyntaxError)

# What render functions return: rgb [H, W, 3], depth [H, W] (or [H, W, 1]), accumulation or None.
RenderOutput = tuple[Tensor | np.ndarray, Tensor | np.ndarray, Tensor | np.ndarray | None]


class CorruptViewError(RuntimeError):
    """A view file exists but cannot be decoded (truncated, bit rot, wrong shape)."""

    def __init__(self, index: int, path: Path, reason: str) -> None:
        super().__init__(f"pseudo view {index} at {path} is corrupt ({reason})")
        self.index = index
        self.path = path


@dataclass(frozen=True)
class CacheMeta:
    """Everything that identifies the views of a cache; two caches with equal meta hold the same views."""

    num_views: int
    height: int
    width: int
    fx: float
    fy: float
    cx: float
    cy: float
    layout: str
    """Pseudo-view layout, see `nerfstudio_mobile.mobile_r2l.views.Layout`."""
    seed: int
    teacher_config: str = ""
    """Path of the teacher's nerfstudio config.yml."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else that determines the views (JSON-serialisable), e.g. the fitted sampler's `to_dict()`."""
    format_version: int = CACHE_FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.num_views < 1 or self.height < 1 or self.width < 1:
            raise ValueError(f"num_views, height and width must be positive: {self}")
        # Hold `extra` as JSON gives it back (tuples become lists), so a meta equals its reloaded self.
        object.__setattr__(self, "extra", json.loads(json.dumps(self.extra)))

    @property
    def intrinsics(self) -> Intrinsics:
        return Intrinsics(self.fx, self.fy, self.cx, self.cy, self.width, self.height)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> CacheMeta:
        return cls(**json.loads(text))

    def differences(self, other: CacheMeta) -> list[str]:
        """Human-readable 'field: ours vs theirs' for every field that differs (compared as JSON, so a
        tuple equals the list it becomes)."""
        ours, theirs = json.loads(self.to_json()), json.loads(other.to_json())
        return [f"{key}: {ours[key]!r} vs {theirs[key]!r}" for key in ours if ours[key] != theirs[key]]


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


@dataclass(frozen=True)
class PseudoViewBatch:
    """B views stacked; accumulation only when every view has one."""

    indices: Tensor
    """int64 [B]."""
    rgb: Tensor
    """uint8 [B, H, W, 3]."""
    depth: Tensor
    """float16 [B, H, W]."""
    c2w: Tensor
    """float32 [B, 3, 4]."""
    accumulation: Tensor | None = None
    """uint8 [B, H, W]."""


def collate_views(views: Sequence[PseudoView]) -> PseudoViewBatch:
    """`collate_fn` for a `DataLoader` over a `PseudoViewDataset`."""
    accumulations = [view.accumulation for view in views if view.accumulation is not None]
    return PseudoViewBatch(
        indices=torch.tensor([view.index for view in views], dtype=torch.int64),
        rgb=torch.stack([view.rgb for view in views]),
        depth=torch.stack([view.depth for view in views]),
        c2w=torch.stack([view.c2w for view in views]),
        accumulation=torch.stack(accumulations) if len(accumulations) == len(views) else None,
    )


class PseudoViewCache:
    """A directory of teacher renders, one file per pseudo view; safe for concurrent writers of disjoint
    views (shards) and for being killed at any point."""

    def __init__(self, root: Path | str, meta: CacheMeta) -> None:
        """Create the cache at `root`, or open it if it exists with the same `meta`."""
        self.root = Path(root)
        self.meta = meta
        self.views_dir = self.root / VIEWS_DIRNAME
        self.views_dir.mkdir(parents=True, exist_ok=True)
        meta_path = self.root / META_FILENAME
        if not meta_path.exists():
            self._create_meta(meta_path)
        existing = self._load_meta(self.root)
        if differences := existing.differences(meta):
            raise ValueError(
                f"The pseudo-view cache at {self.root} was made with different settings "
                f"(cache vs requested): {'; '.join(differences)}. "
                f"Pass a new cache directory, or delete {self.root} to regenerate it."
            )

    @classmethod
    def open(cls, root: Path | str) -> PseudoViewCache:
        """Open an existing cache with whatever meta it has."""
        return cls(root, cls._load_meta(Path(root)))

    def view_path(self, index: int) -> Path:
        return self.views_dir / f"{index:08d}.npz"

    def indices(self) -> list[int]:
        """Sorted indices of the views present (one directory listing; files are not opened)."""
        present = []
        with os.scandir(self.views_dir) as entries:
            for entry in entries:
                match = VIEW_FILENAME.match(entry.name)
                if match and int(match.group(1)) < self.meta.num_views:
                    present.append(int(match.group(1)))
        return sorted(present)

    def __len__(self) -> int:
        return len(self.indices())

    def missing(self, shard: int = 0, num_shards: int = 1) -> list[int]:
        """Indices i with i % num_shards == shard whose file does not exist yet, ascending."""
        _check_shard(shard, num_shards)
        present = set(self.indices())
        return [i for i in range(shard, self.meta.num_views, num_shards) if i not in present]

    def complete(self) -> bool:
        return not self.missing()

    def write(
        self,
        index: int,
        rgb: Tensor | np.ndarray,
        depth: Tensor | np.ndarray,
        c2w: Tensor | np.ndarray,
        accumulation: Tensor | np.ndarray | None = None,
    ) -> None:
        """Store view `index` atomically. rgb [H, W, 3] uint8 or float in [0, 1]; depth [H, W] (or [H, W, 1]);
        accumulation [H, W] (or [H, W, 1]) float in [0, 1] or uint8; c2w [3, 4]. Depth is zeroed where
        accumulation < 0.5 and where it is not finite."""
        if not 0 <= index < self.meta.num_views:
            raise IndexError(f"pseudo view index {index} outside [0, {self.meta.num_views})")
        size = (self.meta.height, self.meta.width)
        rgb_np = _numpy(rgb)
        if rgb_np.shape != (*size, 3):
            raise ValueError(f"rgb must be [{size[0]}, {size[1]}, 3], got {rgb_np.shape}")
        rgb_u8 = _to_uint8(rgb_np)
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
        data = encode_view(rgb_u8, depth_np.astype(np.float16), c2w_np, accumulation_u8)
        _write_atomically(self.view_path(index), data)

    def read(self, index: int) -> PseudoView:
        """Decode view `index`, validating checksums and shapes; raises FileNotFoundError if it was never
        written and CorruptViewError if it cannot be decoded."""
        path = self.view_path(index)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(
                f"pseudo view {index} is not in the cache at {self.root} "
                f"({len(self)} of {self.meta.num_views} views present); generate the missing views first"
            ) from None
        try:
            view = decode_view(index, data)
        except DECODE_ERRORS as error:
            raise CorruptViewError(index, path, str(error) or type(error).__name__) from error
        size = (self.meta.height, self.meta.width)
        if view.rgb.shape[:2] != size or view.depth.shape != size:
            shapes = f"rgb {tuple(view.rgb.shape)}, depth {tuple(view.depth.shape)}"
            raise CorruptViewError(index, path, f"{shapes} instead of {size}")
        return view

    def quarantine(self, index: int, reason: str) -> None:
        """Set a bad view file aside (`*.npz.corrupt`) so it counts as missing and is rendered again."""
        path = self.view_path(index)
        message = f"pseudo view {index} at {path} is corrupt ({reason}); it will be re-rendered"
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        try:
            path.replace(path.with_name(path.name + CORRUPT_SUFFIX))
        except FileNotFoundError:
            pass  # another reader (e.g. a DataLoader worker) set it aside first

    def verify(self, shard: int = 0, num_shards: int = 1, deep: bool = False) -> list[int]:
        """Quarantine and return the corrupt views of a shard. The default check reads each archive's
        directory, at its end, so it catches truncated files cheaply; `deep` also decodes every view and
        checks its CRCs."""
        _check_shard(shard, num_shards)
        corrupt = []
        for index in self.indices():
            if index % num_shards != shard:
                continue
            try:
                if deep:
                    self.read(index)
                else:
                    _check_archive(index, self.view_path(index))
            except CorruptViewError as error:
                self.quarantine(index, str(error.__cause__ or error))
                corrupt.append(index)
        return corrupt

    def remove_stale_temp_files(self, max_age_s: float = STALE_TEMP_AGE_S) -> int:
        """Delete temp files left by killed writers (older than `max_age_s`); returns how many."""
        now, removed = time.time(), 0
        for directory in (self.root, self.views_dir):
            for path in directory.glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
                try:
                    if now - path.stat().st_mtime > max_age_s:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    pass  # another process cleaned it up or finished the write meanwhile
        return removed

    def _create_meta(self, meta_path: Path) -> None:
        temp_path = _temp_path(meta_path)
        temp_path.write_text(self.meta.to_json())
        try:
            # A hard link creates meta.json atomically and only if it is absent, so concurrent creators
            # with different settings cannot overwrite each other; the loser is compared and rejected.
            os.link(temp_path, meta_path)
        except FileExistsError:
            pass
        except OSError:
            # Filesystems without hard links: atomic replace (last writer wins; the comparison after it
            # still catches a conflicting creator unless both race within microseconds).
            os.replace(temp_path, meta_path)
        finally:
            temp_path.unlink(missing_ok=True)

    @staticmethod
    def _load_meta(root: Path) -> CacheMeta:
        path = root / META_FILENAME
        try:
            return CacheMeta.from_json(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{root} is not a pseudo-view cache: {path} does not exist") from None
        except (json.JSONDecodeError, TypeError) as error:
            raise ValueError(f"{path} is not a valid pseudo-view cache meta file ({error})") from error


def generate_views(
    cache: PseudoViewCache,
    render_fn: Callable[[Tensor], RenderOutput],
    poses_fn: Callable[[Sequence[int]], Tensor],
    shard: int = 0,
    num_shards: int = 1,
    progress: bool = True,
) -> int:
    """Render and store the views of `shard` that are missing (or corrupt); returns how many were rendered.

    render_fn: c2w [3, 4] -> (rgb [H, W, 3], depth [H, W], accumulation [H, W] or None).
    poses_fn: view indices -> their c2w [len, 3, 4], a pure function of the index (see
    `ViewSampler.poses`), so a killed run resumes where it stopped and shards can run in separate processes.
    """
    cache.remove_stale_temp_files()
    cache.verify(shard, num_shards)
    todo = cache.missing(shard, num_shards)
    if not todo:
        return 0
    poses = poses_fn(todo)
    columns = (
        TextColumn("[bold]pseudo views[/bold] shard {task.fields[shard]}"),
        BarColumn(),
        MofNCompleteColumn(),
        _ViewsPerSecondColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress) as bar, torch.no_grad():
        task = bar.add_task("render", total=len(todo), shard=f"{shard}/{num_shards}")
        for index, c2w in zip(todo, poses, strict=True):
            rgb, depth, accumulation = render_fn(c2w)
            cache.write(index, rgb, depth, c2w, accumulation)
            bar.advance(task)
    return len(todo)


class PseudoViewDataset(Dataset[PseudoView]):
    """Views of a cache for training: all decoded in RAM when they fit in `ram_budget_bytes`, otherwise
    decoded from disk on access with an LRU of decoded views filling the budget.

    Use `sample` in the training loop, or a `DataLoader(dataset, collate_fn=collate_views, num_workers=k)`
    to decode in parallel when the views do not fit (in RAM mode workers would each copy everything).
    A view found corrupt is quarantined (so the next generation re-renders it) and another one is served.
    """

    def __init__(
        self,
        cache: PseudoViewCache,
        indices: Sequence[int] | None = None,
        ram_budget_bytes: int = 4 * 2**30,
    ) -> None:
        self.cache = cache
        self.indices = list(cache.indices() if indices is None else indices)
        if not self.indices:
            raise ValueError(f"the pseudo-view cache at {cache.root} has no views to train on")
        meta = cache.meta
        # rgb + float16 depth + accumulation + pose, i.e. the decoded size of one view.
        view_bytes = meta.height * meta.width * (3 + 2 + 1) + 3 * 4 * 4
        self.in_ram = view_bytes * len(self.indices) <= ram_budget_bytes
        self._lru_capacity = 0 if self.in_ram else ram_budget_bytes // view_bytes
        self._decoded: OrderedDict[int, PseudoView] = OrderedDict()
        if self.in_ram:
            for index in self.indices:
                if (view := self._read_or_quarantine(index)) is not None:
                    self._decoded[index] = view
            self.indices = list(self._decoded)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> PseudoView:
        if not 0 <= position < len(self.indices):
            raise IndexError(f"position {position} outside [0, {len(self.indices)})")
        for offset in range(len(self.indices)):
            index = self.indices[(position + offset) % len(self.indices)]
            if (view := self._get(index)) is not None:
                return view
        raise RuntimeError(f"every view of the pseudo-view cache at {self.cache.root} is corrupt")

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> PseudoViewBatch:
        """`batch_size` random whole views, distinct while the dataset has that many."""
        if batch_size <= len(self):
            positions = torch.randperm(len(self), generator=generator)[:batch_size]
        else:
            positions = torch.randint(len(self), (batch_size,), generator=generator)
        return collate_views([self[position] for position in positions.tolist()])

    def _get(self, index: int) -> PseudoView | None:
        if index in self._decoded:
            self._decoded.move_to_end(index)
            return self._decoded[index]
        view = self._read_or_quarantine(index)
        if view is not None and self._lru_capacity > 0:
            self._decoded[index] = view
            if len(self._decoded) > self._lru_capacity:
                self._decoded.popitem(last=False)
        return view

    def _read_or_quarantine(self, index: int) -> PseudoView | None:
        try:
            return self.cache.read(index)
        except CorruptViewError as error:
            self.cache.quarantine(index, str(error.__cause__ or error))
        except FileNotFoundError:
            pass  # quarantined earlier (possibly by another worker)
        return None


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
    """Inverse of `encode_view`; zipfile verifies each member's CRC as it is read."""
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


class _ViewsPerSecondColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("? views/s" if speed is None else f"{speed:.2f} views/s")


def _check_shard(shard: int, num_shards: int) -> None:
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard must be in [0, num_shards={num_shards}), got {shard}")


def _check_archive(index: int, path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise CorruptViewError(index, path, str(error) or type(error).__name__) from error
    if not REQUIRED_MEMBERS <= names:
        raise CorruptViewError(index, path, f"lacks members {sorted(REQUIRED_MEMBERS - names)}")


def _temp_path(path: Path) -> Path:
    # Unique per writer, hidden, and not matching VIEW_FILENAME, so it never counts as a view.
    return path.with_name(f"{TEMP_PREFIX}{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")


def _write_atomically(path: Path, data: bytes) -> None:
    # No fsync: a killed process cannot leave a torn file behind an os.replace; what a power cut might
    # leave is caught by verify() (the archive directory sits at the end of the file).
    temp_path = _temp_path(path)
    try:
        temp_path.write_bytes(data)
        os.replace(temp_path, path)
    finally:
        temp_path.unlink(missing_ok=True)


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
