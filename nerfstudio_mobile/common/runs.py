"""Load a trained nerfstudio run from its config.yml, from any working directory, with clear errors."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Literal

import yaml
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import Pipeline

from nerfstudio_mobile.common.checkpoints import checkpoint_steps
from nerfstudio_mobile.common.cli import UsageError


class RunError(UsageError):
    """A run directory that cannot be loaded as asked; the message says what to do."""


def read_run_config(config_path: Path) -> TrainerConfig:
    """Read a run's config.yml and make its relative paths (output dir, data) absolute.

    nerfstudio stores paths relative to where `ns-train` ran; the run directory is
    <output_dir>/<experiment>/<method>/<timestamp>/, so that place is recoverable from the file itself."""
    config_path = Path(config_path).expanduser().resolve()
    if not config_path.is_file():
        raise RunError(
            f"{config_path} does not exist: pass the config.yml that ns-train wrote "
            "(outputs/<experiment>/<method>/<timestamp>/config.yml)."
        )
    try:
        config = yaml.load(config_path.read_text(), Loader=yaml.Loader)
    except (yaml.YAMLError, ModuleNotFoundError, AttributeError) as error:
        raise RunError(
            f"{config_path} cannot be read ({type(error).__name__}: {error}). A run trained with "
            "nerfstudio-mobile 0.1 needs its class paths updated: see the README's 'Upgrading from 0.1'."
        ) from None
    if not isinstance(config, TrainerConfig):
        raise RunError(f"{config_path} is not a nerfstudio training config (got {type(config).__name__}).")
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
        raise RunError(
            f"The data of {config_path} ({data}) no longer exists. Put the scene back there, or edit "
            "pipeline.datamanager.data in that config.yml to where the scene is now."
        )
    steps = checkpoint_steps(config.get_checkpoint_dir())
    if not steps:
        raise RunError(
            f"{config_path} has no checkpoint in {config.get_checkpoint_dir()}: was training interrupted early?"
        )
    checkpoint = config.get_checkpoint_dir() / f"step-{steps[-1]:09d}.ckpt"
    if not zipfile.is_zipfile(checkpoint):  # torch.save writes a zip whose directory sits at the end
        raise RunError(
            f"{checkpoint} is truncated or not a checkpoint: delete it to use an earlier one, or train again."
        )
    config.load_step = steps[-1]
    config, pipeline, _, step = eval_setup(
        Path(config_path), test_mode=test_mode, update_config_callback=lambda _: config
    )
    return config, pipeline, step
