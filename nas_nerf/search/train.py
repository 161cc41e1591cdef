"""One trial: a short `ns-train nas-nerf` run through nerfstudio's own Trainer, scored on the eval split at
given steps (the pruner's rungs). Knows nothing of Optuna: the caller decides what an evaluation means.

Each run is a complete nerfstudio run directory (config.yml, checkpoint, tensorboard events), so a winner can
be rendered, evaluated or fine-tuned with the usual ns-* tools.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rich
import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import Pipeline

from nas_nerf.configs import nas_nerf_trainer
from nas_nerf.search import SearchError
from nas_nerf.search.space import Architecture
from nerfstudio_mobile.common.metrics import image_metrics
from nerfstudio_mobile.common.trainer import fixed_run
from nerfstudio_mobile.data.formats import dataparser_for

Metrics = dict[str, float]


@dataclass
class TrialTraining:
    """How every trial (boundaries included) trains: vanilla-nerf's recipe, shortened."""

    steps: int = 1000
    """Base training steps of a trial; the largest architecture trains exactly this many."""
    # smaller cells are cheaper per step and slower to converge
    step_scaling: float = 0.5
    """Budget rule: P params train steps · (P_largest / P) ** step_scaling steps (0: all equal)."""
    max_step_factor: float = 2.0
    """Cap of the budget rule: no trial trains more than steps · max_step_factor steps."""
    rays_per_batch: int = 1024
    """Training rays per step."""
    num_coarse_samples: int = 32
    """Coarse samples per ray while searching (FLOPs are always reported at the paper's 64 + 128)."""
    num_importance_samples: int = 64
    """Fine (PDF) samples per ray while searching."""
    lr: float = 5e-3
    """RAdam learning rate (constant); higher than vanilla-nerf's 5e-4 because trials are short."""
    eval_images: int | None = 4
    """Eval-split images scored at every evaluation (None: all of them)."""
    seed: int = 42
    """Training seed, the same for every trial so that architectures are compared on equal terms."""

    def validate(self) -> None:
        if self.steps < 1 or self.rays_per_batch < 1 or self.lr <= 0:
            raise SearchError("--training.steps, --training.rays-per-batch and --training.lr must be positive.")
        if self.step_scaling < 0 or self.max_step_factor < 1:
            raise SearchError("--training.step-scaling must be >= 0 and --training.max-step-factor >= 1.")
        if min(self.num_coarse_samples, self.num_importance_samples) < 1:
            raise SearchError("--training.num-coarse-samples and --training.num-importance-samples must be >= 1.")
        if self.eval_images is not None and self.eval_images < 1:
            raise SearchError("--training.eval-images must be >= 1 (or None for the whole eval split).")

    def steps_for(self, params: int, largest_params: int) -> int:
        """The budget rule: smaller cells train longer, within [steps, steps · max_step_factor]."""
        factor = min(self.max_step_factor, max(1.0, (largest_params / params) ** self.step_scaling))
        return round(self.steps * factor)


def trainer_config(
    architecture: Architecture, training: TrialTraining, data: Path, output_dir: Path, name: str, steps: int
) -> TrainerConfig:
    """The `ns-train nas-nerf` recipe with the trial's cells, budget and run directory
    (<output_dir>/<name>/nas-nerf/run), reading `data` with the dataparser its format needs."""
    config = nas_nerf_trainer("nas-nerf", architecture.coarse, architecture.fine)
    model = config.pipeline.model
    model.num_coarse_samples = training.num_coarse_samples
    model.num_importance_samples = training.num_importance_samples
    config.pipeline.datamanager.dataparser, (near, far) = dataparser_for(data)
    config.pipeline.datamanager.data = data  # as `ns-train --data` sets it: tools reading the run look here
    model.collider_params = {"near_plane": near, "far_plane": far}  # LLFF's parser overrides it with its bounds
    config.pipeline.datamanager.train_num_rays_per_batch = training.rays_per_batch
    config.optimizers["fields"]["optimizer"].lr = training.lr
    config.logging.local_writer.enable = False
    config.machine.seed = training.seed
    return fixed_run(config, output_dir, name, steps, steps_per_save=steps)


def train(
    config: TrainerConfig,
    eval_steps: Sequence[int],
    eval_images: int | None,
    on_eval: Callable[[int, Metrics], None],
    on_step: Callable[[int], None],
) -> None:
    """Train; after `s` steps for each s in eval_steps, call on_eval(s, mean eval-split metrics). on_eval may raise
    (e.g. optuna.TrialPruned) to stop the training there; the exception propagates."""
    for seed in (random.seed, np.random.seed, torch.manual_seed):
        seed(config.machine.seed)
    with _quiet_nerfstudio():
        config.save_config()
        trainer = config.setup(local_rank=0, world_size=1)
        trainer.setup()
        views = eval_views(trainer.pipeline, eval_images)
        trainer.callbacks += [
            TrainingCallback(
                [TrainingCallbackLocation.AFTER_TRAIN_ITERATION],
                lambda step: on_eval(step + 1, evaluate(trainer.pipeline, views)),
                iters=tuple(s - 1 for s in eval_steps),
            ),
            TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], lambda step: on_step(step + 1)),
        ]
        trainer.train()


def eval_views(pipeline: Pipeline, count: int | None) -> list[tuple[Cameras, dict]]:
    """The first `count` eval-split images (all when None), loaded once per trial."""
    loader = pipeline.datamanager.fixed_indices_eval_dataloader  # type: ignore[attr-defined]
    total = len(loader.image_indices)
    return [loader.get_camera(i) for i in range(total if count is None else min(count, total))]


def evaluate(pipeline: Pipeline, views: list[tuple[Cameras, dict]]) -> Metrics:
    """Mean PSNR / SSIM of full-image renders, computed as ns-eval does (background blended into the ground truth)."""
    model = pipeline.model
    pipeline.eval()
    scores = []
    for camera, batch in views:
        rgb = model.get_outputs_for_camera(camera)["rgb"]
        scores.append(image_metrics(model.renderer_rgb.blend_background(batch["image"].to(rgb.device)), rgb))
    pipeline.train()
    return {name: float(np.mean([score[name] for score in scores])) for name in ("psnr", "ssim")}


@contextmanager
def _quiet_nerfstudio() -> Iterator[None]:
    """nerfstudio's console output and warnings, once per trial, would bury the search's progress display; its
    event writers are module globals, so each trial starts with none and closes its own."""
    from nerfstudio.utils import writer
    from nerfstudio.utils.rich_utils import CONSOLE

    writer.EVENT_WRITERS.clear()
    consoles = [CONSOLE, rich.get_console()]  # the second: progress bars nerfstudio's data loaders show
    for console in consoles:
        console.quiet = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for console in consoles:
            console.quiet = False
        for event_writer in writer.EVENT_WRITERS:
            if isinstance(event_writer, writer.TensorboardWriter):
                event_writer.tb_writer.close()
        writer.EVENT_WRITERS.clear()
