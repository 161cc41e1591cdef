"""MobileR2L's optimiser: AdamW, linear warm-up (1e-4 → 5e-4 over 200 steps), then a decay to 1% of the peak: the
paper's steps (×0.1 twice) or, our default, a cosine (benchmarks/results/distill_ablation_fit.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from nerfstudio.engine.optimizers import OptimizerConfig
from nerfstudio.engine.schedulers import Scheduler, SchedulerConfig
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler


@dataclass
class AdamWOptimizerConfig(OptimizerConfig):
    """nerfstudio 1.1.5 ships Adam and RAdam configs only."""

    _target: type = torch.optim.AdamW
    weight_decay: float = 0.0
    fused: bool = True
    """One kernel updates every parameter (torch loops over them on CPUs otherwise): the same update in less of the
    student's step (benchmarks/results/student_step.md)."""


@dataclass
class WarmupStepDecaySchedulerConfig(SchedulerConfig):
    _target: type = field(default_factory=lambda: WarmupStepDecayScheduler)
    lr_pre_warmup: float = 1e-4
    """Learning rate at step 0; it rises linearly to the optimizer's lr."""
    warmup_steps: int = 200
    max_steps: int = 600_000
    """Training length the decay points are fractions of (keep equal to --max-num-iterations)."""
    decay_at: tuple[float, ...] = (0.5, 0.8)
    """Fractions of max_steps where the learning rate is multiplied by gamma."""
    gamma: float = 0.1
    decay: Literal["steps", "cosine"] = "steps"
    """steps: x gamma at each of decay_at (the paper); cosine: from the peak down to the same final rate
    (gamma ** len(decay_at)) along half a cosine (mobile-r2l's default)."""


class WarmupStepDecayScheduler(Scheduler):
    config: WarmupStepDecaySchedulerConfig

    def get_scheduler(self, optimizer: Optimizer, lr_init: float) -> LRScheduler:
        config = self.config
        milestones = [round(fraction * config.max_steps) for fraction in config.decay_at]

        def factor(step: int) -> float:
            if step < config.warmup_steps:
                return (config.lr_pre_warmup + (lr_init - config.lr_pre_warmup) * step / config.warmup_steps) / lr_init
            if config.decay == "cosine":
                final = config.gamma ** len(milestones)
                progress = min(1.0, (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps))
                return final + (1 - final) * (1 + math.cos(math.pi * progress)) / 2
            return config.gamma ** sum(step >= milestone for milestone in milestones)

        return LambdaLR(optimizer, lr_lambda=factor)
