"""Load a trained nerfstudio run from its config.yml, from any working directory, with clear errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from unittest import mock

import torch
import yaml
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.pipelines.base_pipeline import Pipeline


def read_run_config(config_path: Path) -> TrainerConfig:
    """Read a run's config.yml and make its relative paths (output dir, data) absolute.

    nerfstudio stores paths relative to where `ns-train` ran; the run directory is
    <output_dir>/<experiment>/<method>/<timestamp>/, so that place is recoverable from the file itself."""
    config_path = Path(config_path).expanduser().resolve()
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} does not exist: pass the config.yml that ns-train wrote "
            "(outputs/<experiment>/<method>/<timestamp>/config.yml)."
        )
    config = yaml.load(config_path.read_text(), Loader=yaml.Loader)
    if not isinstance(config, TrainerConfig):
        raise ValueError(f"{config_path} is not a nerfstudio training config (got {type(config).__name__}).")
    run_dir = config_path.parent
    datamanager = config.pipeline.datamanager
    if not config.output_dir.is_absolute() and datamanager.data is not None and not datamanager.data.is_absolute():
        training_cwd = run_dir.parents[len(config.get_base_dir().parts) - 1]
        if not datamanager.data.exists():
            datamanager.data = training_cwd / datamanager.data
    # Checkpoints live next to the file, wherever the run directory was moved to.
    config.output_dir, config.experiment_name, config.timestamp = (
        run_dir.parents[2],
        run_dir.parents[1].name,
        run_dir.name,
    )
    return config


def load_run(
    config_path: Path, test_mode: Literal["test", "val", "inference"] = "test"
) -> tuple[TrainerConfig, Pipeline, int]:
    """`eval_setup` that works from any directory and says what is wrong in words: returns the config,
    the pipeline in eval mode on the best device, and the checkpoint step."""
    # Imported here: importing eval_utils at module level binds nerfstudio's method list before plugins merge.
    from nerfstudio.utils.eval_utils import eval_setup

    config = read_run_config(config_path)
    data = config.pipeline.datamanager.data
    if test_mode != "inference" and data is not None and not data.exists():
        raise FileNotFoundError(
            f"The data of {config_path} ({data}) no longer exists. Put the scene back there, or edit "
            "pipeline.datamanager.data in that config.yml to where the scene is now."
        )
    checkpoints = config.get_checkpoint_dir()
    if not checkpoints.is_dir() or not any(checkpoints.glob("step-*.ckpt")):
        raise FileNotFoundError(f"{config_path} has no checkpoint in {checkpoints}: was training interrupted early?")
    config, pipeline, _, step = eval_setup(
        Path(config_path), test_mode=test_mode, update_config_callback=lambda _: config
    )
    return config, pipeline, step


class AtomicCheckpointTrainer(Trainer):
    """nerfstudio's trainer, but a kill while saving never leaves a truncated checkpoint.

    nerfstudio writes step-N.ckpt in place and then deletes the older ones, so a kill mid-write can leave
    nothing loadable. Here the write goes to a temporary name renamed into place, so the deletion only
    ever follows a complete file, and `--load-dir` resumes from it."""

    def save_checkpoint(self, step: int) -> None:
        write = torch.save

        def atomic_write(obj: object, path: Path, *args: object, **kwargs: object) -> None:
            partial = Path(path).with_name(Path(path).name + ".partial")
            write(obj, partial, *args, **kwargs)  # type: ignore[arg-type]
            os.replace(partial, path)

        with mock.patch.object(torch, "save", atomic_write):
            super().save_checkpoint(step)
