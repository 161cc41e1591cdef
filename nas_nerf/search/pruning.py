"""Early stopping of a tier's trials: successive halving on intermediate eval scores, at rungs that are also
when every trial is evaluated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import optuna
from optuna.pruners import BasePruner, NopPruner, SuccessiveHalvingPruner
from optuna.trial import FrozenTrial

from nas_nerf.search import SearchError


@dataclass
class PrunerConfig:
    """Early stopping on intermediate eval SSIM; its rungs are also when every trial is evaluated."""

    kind: Literal["successive-halving", "none"] = "successive-halving"
    """Stop trials behind their tier's pace at each rung, or train every trial to its end."""
    reduction_factor: int = 2
    """η: 1/η of the trials go on at each rung, and rungs are η times apart."""
    # Early rungs only help once SSIM has left its first plateau (the background is learnt first).
    rungs: int = 1
    """Evaluations before the base step count (at steps / η^rungs, ..., steps / η); 0 judges trials from steps on."""

    def validate(self) -> None:
        if self.reduction_factor < 2 or self.rungs < 0:
            raise SearchError("--pruner.reduction-factor must be >= 2 and --pruner.rungs >= 0.")

    def first_step(self, base_steps: int) -> int:
        return max(1, base_steps // self.reduction_factor**self.rungs)

    def eval_steps(self, base_steps: int, total_steps: int) -> list[int]:
        """Evaluation steps of a trial: the rungs from `first_step` on, η times apart, and its last step."""
        step, steps = self.first_step(base_steps), []
        while step < total_steps:
            steps.append(step)
            step *= self.reduction_factor
        return [*steps, total_steps]

    def make(self, base_steps: int) -> BasePruner:
        if self.kind == "none":
            return NopPruner()
        first, eta = self.first_step(base_steps), self.reduction_factor
        return BehindOnly(SuccessiveHalvingPruner(min_resource=first, reduction_factor=eta))


class BehindOnly(BasePruner):
    """Successive halving that stops only trials behind their tier's pace (a negative intermediate score). One
    keeping pace but costlier than others is kept: only its final SSIM tells whether it wins, and proposals
    costlier than a finished trial meeting the target are never trained anyway."""

    def __init__(self, pruner: BasePruner) -> None:
        self.pruner = pruner

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        # asked every time: it records the trial in its rungs, for later trials to compete with
        stop = self.pruner.prune(study, trial)
        return stop and trial.intermediate_values[trial.last_step] < 0
