"""Checkpoints that survive a kill: written under a temporary name outside the checkpoint folder, renamed in."""

from __future__ import annotations

import io
import random
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from nerfstudio.engine.trainer import Trainer
from nerfstudio.utils.rich_utils import CONSOLE

from nerfstudio_mobile.common.cli import usage_errors_in_one_line
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
    folder only ever holds complete checkpoints, and a resume picks the latest complete one by its name.

    Each checkpoint also holds the random state (torch, numpy, Python, and the datamanager's own generators), restored
    on resume: nerfstudio seeds once at start, so a resumed run would otherwise draw other rays and views than an
    uninterrupted one, and end with other weights."""

    def setup(self, test_mode: Literal["test", "val", "inference"] = "val") -> None:
        with usage_errors_in_one_line(f"ns-train {self.config.method_name}", CONSOLE):
            self._check_scene()
            super().setup(test_mode)

    def train(self) -> None:
        with usage_errors_in_one_line(f"ns-train {self.config.method_name}", CONSOLE):  # e.g. a full disk
            super().train()

    def _check_scene(self) -> None:
        """A missing scene folder or an unreadable transforms*.json of `--data` in words, before nerfstudio's
        dataparser reads them (a student has no --data: its scene is its teacher's, checked when the teacher is
        read)."""
        from nerfstudio_mobile.data.formats import scene_format  # imported here: it imports nerfstudio's dataparsers

        data = self.config.pipeline.datamanager.data
        if data is not None:
            scene_format(Path(data))

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
            "random_state": random_state(pipeline),
        }
        # Serialised in memory first: torch's own file writer reports a full disk as an opaque RuntimeError, a plain
        # write as the OSError atomic_path turns into a clear message.
        buffer = io.BytesIO()
        torch.save(state, buffer)
        with atomic_path(path, directory=self.checkpoint_dir.parent) as temp:
            temp.write_bytes(buffer.getbuffer())
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
        path = self.config.load_checkpoint
        if self.config.load_dir is not None and self.config.load_step is not None:
            path = self.config.load_dir / f"step-{self.config.load_step:09d}.ckpt"
        if path is not None:  # mmap: only the few random-state bytes are read again
            saved = torch.load(path, map_location="cpu", mmap=True).get("random_state")
            if saved is not None:  # checkpoints written by 0.1 have none
                set_random_state(self.pipeline.module if hasattr(self.pipeline, "module") else self.pipeline, saved)


def _generators(pipeline: Any) -> dict[str, torch.Generator]:
    """The torch generators a pipeline's datamanager draws batches from (e.g. mobile-r2l's pseudo-view order)."""
    attributes = getattr(getattr(pipeline, "datamanager", None), "__dict__", {})
    return {name: value for name, value in attributes.items() if isinstance(value, torch.Generator)}


def random_state(pipeline: Any) -> dict[str, Any]:
    """Everything a training step draws random numbers from, as tensors and plain values (what nerfstudio's
    `torch.load`, weights only, accepts)."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian],
        "python": random.getstate(),
        "generators": {name: generator.get_state() for name, generator in _generators(pipeline).items()},
    }


def set_random_state(pipeline: Any, state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    random.setstate(state["python"])
    for name, generator in _generators(pipeline).items():
        if name in state["generators"]:
            generator.set_state(state["generators"][name])
