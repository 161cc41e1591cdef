"""A training config for our own commands: a fixed run directory (re-running resumes) and no blocking viewer; and
`train`, which runs it in this process with a per-step callback."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.utils import writer


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


def train(config: TrainerConfig, on_step: Callable[[int], None]) -> None:
    """Train in this process as `ns-train` does on one device (config printed and saved, seeded, set up, trained),
    calling on_step(step) after each training step. Unlike ns-train's launcher, an interrupt is not swallowed: a
    caller that goes on to use the run must not find it half trained."""
    config.set_timestamp()
    config.print_to_terminal()
    config.save_config()
    seed = config.machine.seed
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # nerfstudio's event writers are module globals: without this, a second training in the process would also
    # write its events into the first one's tensorboard log
    writer.EVENT_WRITERS.clear()
    try:
        trainer = config.setup(local_rank=0, world_size=1)
        trainer.setup()
        # TrainingCallback passes the step as a keyword argument named `step`
        trainer.callbacks.append(
            TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], lambda step: on_step(step))
        )
        trainer.train()
    finally:
        for event_writer in writer.EVENT_WRITERS:
            if isinstance(event_writer, writer.TensorboardWriter):
                event_writer.tb_writer.close()
        writer.EVENT_WRITERS.clear()
