"""`PseudoViewCache`: a directory of view files, safe for concurrent writers of disjoint views (shards) and
for being killed at any point.

    meta.json               CacheMeta: what the views are (teacher, count, resolution, intrinsics, sampler)
    views/00001234.npz      one file per view (see `codec`), written atomically (temp file + rename)
    views/.*.partial        in-flight writes; never counted as views, stale ones are removed
    views/*.npz.corrupt     views that failed validation, set aside so they are rendered again
"""

from __future__ import annotations

import os
import re
import time
import warnings
from pathlib import Path

import numpy as np
from torch import Tensor

from nerfstudio_mobile.common.cli import UsageError
from nerfstudio_mobile.common.files import (
    PARTIAL_SUFFIX,
    atomic_link,
    atomic_write,
    disk_full_as_usage_error,
    make_dirs,
    temp_path,
)
from nerfstudio_mobile.mobile_r2l.cache.codec import (
    DECODE_ERRORS,
    PseudoView,
    check_archive,
    decode_view,
    encode_render,
)
from nerfstudio_mobile.mobile_r2l.cache.identity import CacheMeta

META_FILENAME = "meta.json"
VIEWS_DIRNAME = "views"
VIEW_FILENAME = re.compile(r"^(\d+)\.npz$")
CORRUPT_SUFFIX = ".corrupt"
# Writes take milliseconds; a temp file this old was left by a killed process, not a live writer.
STALE_TEMP_AGE_S = 3600.0


class CacheMismatchError(UsageError, ValueError):
    """A cache directory that cannot serve the requested views (other settings, an older format, an unreadable
    meta.json); the message says what to do."""


class CorruptViewError(UsageError, RuntimeError):
    """A view file exists but cannot be decoded (truncated, bit rot, wrong shape)."""

    def __init__(self, index: int, path: Path, reason: str) -> None:
        super().__init__(
            f"pseudo view {index} at {path} is corrupt ({reason}): generate the views again "
            "(ns-mobile-pseudo-views or ns-train mobile-r2l), which sets it aside and renders it anew"
        )
        self.index = index
        self.path = path
        self.reason = reason


class PseudoViewCache:
    """A directory of teacher renders, one file per pseudo view."""

    def __init__(self, root: Path | str, meta: CacheMeta) -> None:
        """Create the cache at `root`, or open it if it exists with the same `meta`."""
        self.root = Path(root)
        self.meta = meta
        self.views_dir = self.root / VIEWS_DIRNAME
        make_dirs(self.views_dir)
        meta_path = self.root / META_FILENAME
        if not meta_path.exists():
            self._create_meta(meta_path)
        existing = self._load_meta(self.root)
        if differences := existing.differences(meta):
            raise CacheMismatchError(
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
        check_shard(shard, num_shards)
        present = set(self.indices())
        return [i for i in range(shard, self.meta.num_views, num_shards) if i not in present]

    def complete(self) -> bool:
        return not self.missing()

    def adopt_views(self, other: PseudoViewCache) -> int:
        """Link in the views this cache is missing that `other` holds, where `other` is a cache of the same teacher,
        sampler and frame with another number of views (`CacheMeta.shares_views_with`): a cache grown to more views
        renders only the new ones. Returns how many it adopted."""
        if not self.meta.shares_views_with(other.meta):
            raise ValueError(f"the views of {other.root} are not those of {self.root}")
        adopted = sorted(set(self.missing()) & set(other.indices()))
        for index in adopted:
            atomic_link(other.view_path(index), self.view_path(index))
        return len(adopted)

    def write(
        self,
        index: int,
        rgb: Tensor | np.ndarray,
        depth: Tensor | np.ndarray,
        c2w: Tensor | np.ndarray,
        accumulation: Tensor | np.ndarray | None = None,
    ) -> None:
        """Store view `index` atomically; arguments as `codec.encode_render` takes them."""
        if not 0 <= index < self.meta.num_views:
            raise IndexError(f"pseudo view index {index} outside [0, {self.meta.num_views})")
        data = encode_render(rgb, depth, c2w, accumulation, (self.meta.height, self.meta.width))
        # What a power cut might leave behind the rename is caught by verify() (the archive directory sits at
        # the end of the file).
        atomic_write(self.view_path(index), data)

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
            raise self._corrupt(index, error) from error
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
        check_shard(shard, num_shards)
        corrupt = []
        for index in self.indices():
            if index % num_shards != shard:
                continue
            try:
                if deep:
                    self.read(index)
                else:
                    self._check_archive(index)
            except CorruptViewError as error:
                self.quarantine(index, error.reason)
                corrupt.append(index)
        return corrupt

    def remove_stale_temp_files(self, max_age_s: float = STALE_TEMP_AGE_S) -> int:
        """Delete temp files left by killed writers (older than `max_age_s`); returns how many."""
        now, removed = time.time(), 0
        for directory in (self.root, self.views_dir):
            for path in directory.glob(f".*{PARTIAL_SUFFIX}"):
                try:
                    if now - path.stat().st_mtime > max_age_s:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    pass  # another process cleaned it up or finished the write meanwhile
        return removed

    def _check_archive(self, index: int) -> None:
        try:
            check_archive(self.view_path(index))
        except DECODE_ERRORS as error:
            raise self._corrupt(index, error) from error

    def _corrupt(self, index: int, error: Exception) -> CorruptViewError:
        return CorruptViewError(index, self.view_path(index), str(error) or type(error).__name__)

    def _create_meta(self, meta_path: Path) -> None:
        temp = temp_path(meta_path)
        try:
            with disk_full_as_usage_error(meta_path):
                temp.write_text(self.meta.to_json())
            # A hard link creates meta.json atomically and only if it is absent, so concurrent creators
            # with different settings cannot overwrite each other; the loser is compared and rejected.
            os.link(temp, meta_path)
        except FileExistsError:
            pass
        except OSError:
            # Filesystems without hard links: atomic replace (last writer wins; the comparison after it
            # still catches a conflicting creator unless both race within microseconds).
            os.replace(temp, meta_path)
        finally:
            temp.unlink(missing_ok=True)

    @staticmethod
    def _load_meta(root: Path) -> CacheMeta:
        path = root / META_FILENAME
        try:
            return CacheMeta.from_json(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{root} is not a pseudo-view cache: {path} does not exist") from None
        except ValueError as error:  # json.JSONDecodeError included
            raise CacheMismatchError(
                f"The pseudo-view cache at {root} cannot be used ({path}: {error}). "
                f"Pass a new cache directory, or delete {root} to regenerate it."
            ) from error


def check_shard(shard: int, num_shards: int) -> None:
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard must be in [0, num_shards={num_shards}), got {shard}")


def caches_beside(root: Path) -> list[PseudoViewCache]:
    """The readable caches in the directories next to `root` (a teacher's caches of different view counts sit side
    by side), largest first."""
    caches = []
    for meta_path in Path(root).parent.glob(f"*/{META_FILENAME}"):
        if meta_path.parent != Path(root):
            try:
                caches.append(PseudoViewCache.open(meta_path.parent))
            except (OSError, CacheMismatchError):
                continue  # another format, or not ours to read: nothing to take from it
    return sorted(caches, key=lambda cache: -cache.meta.num_views)
