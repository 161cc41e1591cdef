"""Checkpoints that survive a kill: written under a temporary name outside the checkpoint folder, renamed in."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Literal

import torch
from nerfstudio.engine.trainer import Trainer
from nerfstudio.utils.rich_utils import CONSOLE
from rich.markup import escape

from nerfstudio_mobile.common.cli import UsageError
from nerfstudio_mobile.common.files import atomic_path

CHECKPOINT_NAME = re.compile(r"step-(\d+)\.ckpt")


def checkpoint_steps(checkpoint_dir: Path) -> list[int]:
    """Steps of the complete checkpoints in a run's nerfstudio_models/, sorted (other names are ignored)."""
    if not checkpoint_dir.is_dir():
        return []
    return sorted(int(m.group(1)) for p in checkpoint_dir.iterdir() if (m := CHECKPOINT_NAME.fullmatch(p.name)))


def latest_checkpoint(checkpoint_dir: Path) -> tuple[int, Path] | None:
    """Step and path of the newest complete checkpoint in a run's nerfstudio_models/ (the one a resume or an eval
    loads), or None when there is none."""
    steps = checkpoint_steps(checkpoint_dir)
    return (steps[-1], checkpoint_dir / f"step-{steps[-1]:09d}.ckpt") if steps else None


class AtomicCheckpointTrainer(Trainer):
    """nerfstudio's trainer, but a kill at any moment leaves the checkpoint folder resumable, and a usage error
    (a wrong teacher, a missing scene) is one red line and exit status 2 in `ns-train`, not a traceback.

    nerfstudio writes step-N.ckpt in place, then deletes the older ones, and on resume takes the highest number
    among *all* names in the folder. Here each checkpoint is written beside the folder and renamed into it, so the
    folder only ever holds complete checkpoints, and a resume picks the latest complete one by its name."""

    def setup(self, test_mode: Literal["test", "val", "inference"] = "val") -> None:
        try:
            super().setup(test_mode)
        except UsageError as error:
            CONSOLE.print(f"[bold red]ns-train {self.config.method_name}:[/] {escape(str(error))}", soft_wrap=True)
            sys.exit(2)

    def save_checkpoint(self, step: int) -> None:
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.checkpoint_dir / f"step-{step:09d}.ckpt"
        pipeline = self.pipeline.module if hasattr(self.pipeline, "module") else self.pipeline
        state = {
            "step": step,
            "pipeline": pipeline.state_dict(),  # type: ignore[union-attr]
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.optimizers.items()},
            "schedulers": {k: v.state_dict() for k, v in self.optimizers.schedulers.items()},
            "scalers": self.grad_scaler.state_dict(),
        }
        with atomic_path(path, directory=self.checkpoint_dir.parent) as temp:
            torch.save(state, temp)
        if self.config.save_only_latest_checkpoint:
            for older in self.checkpoint_dir.glob("step-*.ckpt"):
                if older != path:
                    older.unlink()

    def _load_checkpoint(self) -> None:
        if self.config.load_dir is not None and self.config.load_step is None:
            steps = checkpoint_steps(self.config.load_dir)
            if steps:  # never a stray name (a 0.1 `.partial`, an editor's backup) nerfstudio would parse
                self.config.load_step = steps[-1]
        super()._load_checkpoint()
