"""Load a trained nerfstudio run from its config.yml, from any working directory, with clear errors."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Literal

import yaml
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import Pipeline

from nerfstudio_mobile.common.checkpoints import latest_checkpoint
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
    except (yaml.scanner.ScannerError, yaml.parser.ParserError, UnicodeDecodeError) as error:
        raise RunError(
            f"{config_path} is not valid YAML ({' '.join(str(error).split())}): pass the config.yml that ns-train "
            "wrote, unedited, or fix the edit."
        ) from None
    except (yaml.YAMLError, ModuleNotFoundError, AttributeError) as error:
        raise RunError(
            f"{config_path} cannot be read ({type(error).__name__}: {' '.join(str(error).split())}). A run trained "
            "with nerfstudio-mobile 0.1 needs its class paths updated: see the README's 'Upgrading from 0.1'."
        ) from None
    if not isinstance(config, TrainerConfig):
        raise RunError(f"{config_path} is not a nerfstudio training config (got {type(config).__name__}).")
    run_dir = config_path.parent
    if not config.output_dir.is_absolute():
        training_cwd = run_dir.parents[len(config.get_base_dir().parts) - 1]
        _resolve_paths(config, training_cwd)
    # Checkpoints live next to the file, wherever the run directory was moved to.
    config.output_dir, config.experiment_name, config.timestamp = (
        run_dir.parents[2],
        run_dir.parents[1].name,
        run_dir.name,
    )
    return config


def check_checkpoint(checkpoint: Path) -> None:
    """Refuse a truncated checkpoint in words (torch.save writes a zip whose directory sits at the end)."""
    if not zipfile.is_zipfile(checkpoint):
        raise RunError(f"{checkpoint} is truncated or not a checkpoint: delete it to resume from an earlier one.")


def run_data(config: TrainerConfig) -> Path | None:
    """Where a run's scene is: `ns-train <method> --data` stores it in the datamanager, `ns-train <method>
    <dataparser> --data` in the dataparser."""
    datamanager = config.pipeline.datamanager
    return datamanager.data or getattr(datamanager.dataparser, "data", None)


def load_run(
    config_path: Path, test_mode: Literal["test", "val", "inference"] = "test"
) -> tuple[TrainerConfig, Pipeline, int]:
    """`eval_setup` that works from any directory and says what is wrong in words: returns the config,
    the pipeline in eval mode on the best device, and the checkpoint step."""
    # Imported here: importing eval_utils at module level binds nerfstudio's method list before plugins merge.
    from nerfstudio.utils.eval_utils import eval_setup

    config = read_run_config(config_path)
    data = run_data(config)
    if test_mode != "inference" and data is not None and not data.exists():
        raise RunError(
            f"The data of {config_path} ({data}) no longer exists. Put the scene back there, or edit "
            "pipeline.datamanager.data (or its dataparser's data) in that config.yml to where the scene is now."
        )
    latest = latest_checkpoint(config.get_checkpoint_dir())
    if latest is None:
        raise RunError(
            f"{config_path} has no checkpoint in {config.get_checkpoint_dir()}: was training interrupted early?"
        )
    config.load_step, checkpoint = latest
    check_checkpoint(checkpoint)
    config, pipeline, _, step = eval_setup(
        Path(config_path), test_mode=test_mode, update_config_callback=lambda _: config
    )
    return config, pipeline, step


# Paths that ns-train stores as given on its command line: the scene (in the datamanager or its dataparser,
# depending on how the method was called) and a student's teacher.
RUN_PATH_FIELDS = (("data",), ("dataparser", "data"), ("teacher_config",))


def _resolve_paths(config: TrainerConfig, training_cwd: Path) -> None:
    """Make relative paths absolute against the directory ns-train ran in (found from where config.yml is now,
    so a run moved together with what it points to keeps working)."""
    for fields in RUN_PATH_FIELDS:
        owner = config.pipeline.datamanager
        for name in fields[:-1]:
            owner = getattr(owner, name, None)
        path = getattr(owner, fields[-1], None)
        if isinstance(path, Path) and not path.is_absolute() and (training_cwd / path).exists():
            setattr(owner, fields[-1], training_cwd / path)
