"""`generate_views`: render a shard's missing views into a cache; a killed run resumes where it stopped."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextvars import ContextVar

import numpy as np
import torch
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

from nerfstudio_mobile.mobile_r2l.cache.identity import CacheMeta
from nerfstudio_mobile.mobile_r2l.cache.store import PseudoViewCache

# What render functions return: rgb [H, W, 3], depth [H, W] (or [H, W, 1]), accumulation or None.
RenderOutput = tuple[Tensor | np.ndarray, Tensor | np.ndarray, Tensor | np.ndarray | None]

VIEWS_RENDERED: ContextVar[Callable[[CacheMeta, int, int], None] | None] = ContextVar("views_rendered", default=None)
"""Told (the cache's meta, views rendered, views to render) after each view. A context variable, not an argument:
callers such as ns-mobile-demo's progress bars sit above the datamanager that calls generate_views."""


def generate_views(
    cache: PseudoViewCache,
    render_fn: Callable[[int, Tensor], RenderOutput],
    poses_fn: Callable[[Sequence[int]], Tensor],
    shard: int = 0,
    num_shards: int = 1,
    progress: bool = True,
    description: str = "pseudo views",
) -> int:
    """Render and store the views of `shard` that are missing (or corrupt); returns how many were rendered.

    render_fn: (view index, c2w [3, 4]) -> (rgb [H, W, 3], depth [H, W], accumulation [H, W] or None).
    poses_fn: view indices -> their c2w [len, 3, 4], a pure function of the index (see
    `ViewSampler.poses`), so a killed run resumes where it stopped and shards can run in separate processes.
    """
    cache.remove_stale_temp_files()
    cache.verify(shard, num_shards)
    todo = cache.missing(shard, num_shards)
    if not todo:
        return 0
    poses = poses_fn(todo)
    views_rendered = VIEWS_RENDERED.get()
    columns = (
        TextColumn(f"[bold]{description}[/bold] shard {{task.fields[shard]}}"),
        BarColumn(),
        MofNCompleteColumn(),
        _ViewsPerSecondColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress) as bar, torch.no_grad():
        task = bar.add_task("render", total=len(todo), shard=f"{shard}/{num_shards}")
        for rendered, (index, c2w) in enumerate(zip(todo, poses, strict=True), 1):
            rgb, depth, accumulation = render_fn(index, c2w)
            cache.write(index, rgb, depth, c2w, accumulation)
            bar.advance(task)
            if views_rendered is not None:
                views_rendered(cache.meta, rendered, len(todo))
    return len(todo)


class _ViewsPerSecondColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("? views/s" if speed is None else f"{speed:.2f} views/s")
