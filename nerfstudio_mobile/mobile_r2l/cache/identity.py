"""What identifies a cache's views: `CacheMeta`, stored as the cache's meta.json.

Identity comes from what decides the views' content (the teacher's checkpoint bytes, the view sampler,
intrinsics, near/far), never from where files sit, so a run moved or copied elsewhere keeps its cache."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from nerfstudio_mobile.common.intrinsics import Intrinsics

# 2: the teacher is identified by its checkpoint's content (format 1 held the path of its config.yml).
CACHE_FORMAT_VERSION = 2


def teacher_identity(method: str, step: int, checkpoint: Path) -> dict[str, Any]:
    """The teacher as far as its renders go: its method, the checkpoint's step, and the sha256 of the checkpoint's
    bytes (a copy of the run has the same; a retrained or further trained teacher does not)."""
    with Path(checkpoint).open("rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()
    return {"method": method, "step": step, "sha256": digest}


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
    teacher: dict[str, Any] = field(default_factory=dict)
    """The teacher's content identity, see `teacher_identity`."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else that determines the views (JSON-serialisable), e.g. the fitted sampler's `to_dict()`."""
    format_version: int = CACHE_FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.num_views < 1 or self.height < 1 or self.width < 1:
            raise ValueError(f"num_views, height and width must be positive: {self}")
        # Hold the dicts as JSON gives them back (tuples become lists), so a meta equals its reloaded self.
        for name in ("teacher", "extra"):
            object.__setattr__(self, name, json.loads(json.dumps(getattr(self, name))))

    @property
    def intrinsics(self) -> Intrinsics:
        return Intrinsics(self.fx, self.fy, self.cx, self.cy, self.width, self.height)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> CacheMeta:
        """Parse a meta.json; ValueError when it is not JSON, not a meta, or of another format version."""
        fields = json.loads(text)
        version = fields.get("format_version") if isinstance(fields, dict) else None
        if version != CACHE_FORMAT_VERSION:
            raise ValueError(
                f"cache format {version}, while this version of nerfstudio-mobile reads format {CACHE_FORMAT_VERSION}"
            )
        try:
            return cls(**fields)
        except TypeError as error:
            raise ValueError(str(error)) from error

    def shares_views_with(self, other: CacheMeta) -> bool:
        """Whether view i of `other` is view i of this cache wherever both hold it: all but the number of views is
        equal, and a view's pose is a function of the sampler, its seed and i alone."""
        return not replace(self, num_views=other.num_views).differences(other)

    def differences(self, other: CacheMeta) -> list[str]:
        """Human-readable 'field: ours vs theirs' for every value that differs, nested ones named by their dotted
        path (e.g. `teacher.sha256`); compared as JSON, so a tuple equals the list it becomes."""
        ours, theirs = _leaves(json.loads(self.to_json())), _leaves(json.loads(other.to_json()))
        keys = [*ours, *(key for key in theirs if key not in ours)]
        return [f"{key}: {ours.get(key)!r} vs {theirs.get(key)!r}" for key in keys if ours.get(key) != theirs.get(key)]


def _leaves(value: Any, path: str = "") -> dict[str, Any]:
    """{dotted path: value} of the non-dict values in nested dicts (an empty dict is a value)."""
    if not isinstance(value, dict) or not value:
        return {path: value}
    items = ((f"{path}.{key}" if path else key, item) for key, item in value.items())
    return {leaf_path: leaf for item_path, item in items for leaf_path, leaf in _leaves(item, item_path).items()}
