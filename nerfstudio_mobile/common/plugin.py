"""Plugin-wide set-up, done once when `nerfstudio_mobile` is imported: every entry point (ns-train's method and
dataparser plugins, our ns-* commands, nas_nerf) imports it before it reads a checkpoint or renders."""

from __future__ import annotations

from nerfstudio_mobile.common.compat import allow_numpy_in_checkpoints, keep_freed_memory, stock_models_work_offline


def set_up() -> None:
    allow_numpy_in_checkpoints()
    keep_freed_memory()
    stock_models_work_offline()
