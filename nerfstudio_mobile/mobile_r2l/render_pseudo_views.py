"""`ns-mobile-pseudo-views`: render a teacher's pseudo views into the shared cache, one shard per process.

Teacher rendering is where distillation spends its time; run this on several processes or machines with
`--shard k --num-shards n` (same arguments otherwise, cache on a shared disk), then `ns-train mobile-r2l`
with the same arguments finds the cache complete. A killed run resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from nerfstudio_mobile.common.cli import UsageError, run_cli
from nerfstudio_mobile.mobile_r2l.datamanager import (
    PseudoViewDataManager,
    PseudoViewDataManagerConfig,
    build_pseudo_view_cache,
    build_training_pose_cache,
)
from nerfstudio_mobile.mobile_r2l.teacher import TeacherRun


@dataclass
class RenderPseudoViews:
    """Render the pseudo views `ns-train mobile-r2l` distils from (same flags as its datamanager)."""

    datamanager: PseudoViewDataManagerConfig = field(default_factory=PseudoViewDataManagerConfig)
    """Teacher, view count, resolution, sampler: pass the values the training run will use."""
    shard: int = 0
    """Which shard this process renders (views i with i % num_shards == shard)."""
    num_shards: int = 1
    """How many processes share the work."""

    def main(self) -> Path:
        if not 0 <= self.shard < self.num_shards:
            raise UsageError(f"--shard must be in [0, --num-shards), got {self.shard} of {self.num_shards}.")
        config = PseudoViewDataManagerConfig(**{**vars(self.datamanager)})  # re-run __post_init__ (teacher data)
        datamanager = PseudoViewDataManager(config, test_mode="inference")
        teacher_run = TeacherRun(config.teacher_config)
        cache = build_pseudo_view_cache(config, datamanager, self.shard, self.num_shards, teacher_run)
        if config.depth_at_training_poses:
            build_training_pose_cache(config, datamanager, self.shard, self.num_shards, teacher_run)
        state = "complete" if cache.complete() else f"{len(cache)}/{cache.meta.num_views} views (other shards pending)"
        Console().print(f"[bold green]Pseudo views in {cache.root}: {state}")
        return cache.root


def entrypoint() -> None:
    run_cli(RenderPseudoViews, "ns-mobile-pseudo-views")
