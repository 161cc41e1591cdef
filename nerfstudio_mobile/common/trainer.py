"""A training config for our own commands: a fixed run directory (re-running resumes) and no blocking viewer."""

from __future__ import annotations

from pathlib import Path

from nerfstudio.engine.trainer import TrainerConfig


def fixed_run(config: TrainerConfig, output_dir: Path, name: str, steps: int, steps_per_save: int) -> TrainerConfig:
    """Train `steps` steps in <output_dir>/<name>/<method>/run with tensorboard logs; nerfstudio's own evaluations
    are off (they would cost as much as the training: the callers evaluate themselves)."""
    config.output_dir, config.experiment_name, config.timestamp = output_dir, name, "run"
    config.max_num_iterations, config.steps_per_save = steps, steps_per_save
    config.steps_per_eval_batch = config.steps_per_eval_image = config.steps_per_eval_all_images = steps + 1
    config.vis = "tensorboard"
    config.logging.profiler = "none"
    for optimizer in config.optimizers.values():
        scheduler = optimizer.get("scheduler")
        if scheduler is not None and hasattr(scheduler, "max_steps"):
            scheduler.max_steps = steps
    return config
