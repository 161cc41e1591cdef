"""What `ns-nas-search` searches: depth and width ranges of the coarse and fine field cells, the paper's
structural width rules, and an analytic params / FLOPs budget that every architecture is checked against
before anything is trained.

FLOPs are always counted the paper's way (2048 rays × (64 + 193) samples, `nas_nerf.complexity`), whatever
sample counts the short search trainings use: they describe the architecture as `ns-train nas-nerf` deploys it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Literal, TypeVar

import optuna
import tyro

from nas_nerf.cell import FieldCellConfig
from nas_nerf.complexity import ModelComplexity, model_complexity
from nas_nerf.search import SearchError

WidthRule = Literal["free", "uniform", "expanding"]
FIELDS: tuple[str, str] = ("coarse", "fine")
BOUNDARIES: tuple[str, str] = ("largest", "smallest")

T = TypeVar("T")
Unprefixed = Annotated[T, tyro.conf.arg(prefix_name=False)]
"""Flags of the space read --max-params, --coarse.depth1, ... rather than --space.max-params, ..."""


@dataclass(frozen=True)
class Architecture:
    """A coarse and a fine field cell: one point of the search space."""

    coarse: FieldCellConfig
    fine: FieldCellConfig

    def to_dict(self) -> dict[str, dict[str, list[int]]]:
        return {"coarse": self.coarse.to_dict(), "fine": self.fine.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> Architecture:
        return cls(FieldCellConfig.from_dict(data["coarse"], "coarse"), FieldCellConfig.from_dict(data["fine"], "fine"))

    @property
    def key(self) -> str:
        """Identity of the architecture (the same cells are the same trial, whatever params produced them)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def cost(self) -> ModelComplexity:
        return model_complexity(self.coarse, self.fine)

    def __str__(self) -> str:
        return f"{self.coarse} / {self.fine}"


@dataclass
class FieldSpace:
    """Ranges of one field cell, depths [D1, 1, D3] and widths [C1, C2, C3]; all bounds inclusive."""

    depth1: tuple[int, int] = (1, 4)
    """Range of D1, the layers before NeRF's skip connection."""
    depth3: tuple[int, int] = (1, 3)
    """Range of D3, the layers after the skip layer."""
    widths: tuple[int, int] = (8, 256)
    """Range of each width C1, C2, C3."""
    width_step: int = 8
    """Widths are searched in steps of this size from the lower bound."""

    def validate(self, name: str) -> None:
        for label, bounds in (("depth1", self.depth1), ("depth3", self.depth3), ("widths", self.widths)):
            if len(bounds) != 2 or not all(isinstance(v, int) for v in bounds):
                raise SearchError(f"--{name}.{label} takes two integers LOW HIGH, got {bounds!r}.")
            low, high = bounds
            if low < 1 or low > high:
                raise SearchError(f"--{name}.{label} must satisfy 1 <= LOW <= HIGH, got {low} {high}.")
        low, high = self.widths
        if self.width_step < 1 or (high - low) % self.width_step:
            raise SearchError(
                f"--{name}.width-step {self.width_step} must be >= 1 and divide HIGH - LOW of --{name}.widths "
                f"({high} - {low} = {high - low}), so that both bounds are searched."
            )

    def distributions(self, prefix: str, rule: WidthRule) -> dict[str, tuple[int, int, int]]:
        """Optuna integer parameters (low, high, step) of this field."""
        width = (*self.widths, self.width_step)
        names = ["c"] if rule == "uniform" else ["c1", "c2", "c3"]
        return {
            f"{prefix}_d1": (*self.depth1, 1),
            f"{prefix}_d3": (*self.depth3, 1),
            **{f"{prefix}_{name}": width for name in names},
        }


@dataclass
class SearchSpace:
    """Both field cells' ranges, the width rule and the budget."""

    coarse: Unprefixed[FieldSpace] = field(default_factory=FieldSpace)
    """Ranges of the coarse field cell."""
    fine: Unprefixed[FieldSpace] = field(default_factory=FieldSpace)
    """Ranges of the fine field cell."""
    width_rule: Unprefixed[WidthRule] = "expanding"
    """The paper's structural constraints: 'uniform' (C1 = C2 = C3), 'expanding' (C1 <= C2 <= C3; uniform
    cells included) or 'free'."""
    max_params: Unprefixed[int | None] = None
    """Reject (never train) architectures with more parameters (coarse + fine)."""
    max_gflops: Unprefixed[float | None] = None
    """Reject (never train) architectures above this many GFLOPs (paper convention: 2048 rays × 257 samples)."""

    def validate(self) -> None:
        self.coarse.validate("coarse")
        self.fine.validate("fine")
        if self.width_rule not in ("free", "uniform", "expanding"):
            raise SearchError(f"--width-rule must be free, uniform or expanding, got {self.width_rule!r}.")
        if self.max_params is not None and self.max_params < 1:
            raise SearchError(f"--max-params must be positive, got {self.max_params}.")
        if self.max_gflops is not None and self.max_gflops <= 0:
            raise SearchError(f"--max-gflops must be positive, got {self.max_gflops}.")

    def distributions(self) -> dict[str, tuple[int, int, int]]:
        return {
            **self.coarse.distributions("coarse", self.width_rule),
            **self.fine.distributions("fine", self.width_rule),
        }

    def suggest(self, trial: optuna.Trial) -> dict[str, int]:
        return {
            name: trial.suggest_int(name, low, high, step=step)
            for name, (low, high, step) in self.distributions().items()
        }

    def decode(self, params: dict[str, int]) -> Architecture:
        """The cells that Optuna parameters stand for; 'expanding' sorts the three sampled widths."""

        def cell(prefix: str) -> FieldCellConfig:
            if self.width_rule == "uniform":
                widths = [params[f"{prefix}_c"]] * 3
            else:
                widths = [params[f"{prefix}_c{i}"] for i in (1, 2, 3)]
            if self.width_rule == "expanding":
                widths.sort()
            return FieldCellConfig((params[f"{prefix}_d1"], 1, params[f"{prefix}_d3"]), tuple(widths))  # type: ignore[arg-type]

        return Architecture(cell("coarse"), cell("fine"))

    def boundary_params(self, boundary: str) -> dict[str, int]:
        """Parameters of the smallest architecture (every depth and width at its minimum) or of the largest one
        within the budget (every depth at its maximum, uniform widths shrunk step by step from the maximum)."""
        smallest = self._corner(largest=False)
        excess, why = self.over_budget(self.decode(smallest))
        if excess > 0:
            raise SearchError(f"Even the smallest architecture {self.decode(smallest)} is over budget: {why}.")
        if boundary == "smallest":
            return smallest
        most_steps = max((space.widths[1] - space.widths[0]) // space.width_step for space in (self.coarse, self.fine))
        for shrink in range(most_steps + 1):
            params = self._corner(largest=True, shrink=shrink)
            excess, why = self.over_budget(self.decode(params))
            if excess <= 0:
                return params
        raise SearchError(
            f"No architecture with the largest depths fits the budget ({why}): "
            "raise --max-params / --max-gflops or lower the depth ranges."
        )

    def _corner(self, largest: bool, shrink: int = 0) -> dict[str, int]:
        """Depths at their maximum (largest) or minimum; each field's widths all equal to its maximum less
        `shrink` steps (largest) or its minimum."""
        params: dict[str, int] = {}
        for prefix, space in zip(FIELDS, (self.coarse, self.fine), strict=True):
            end = 1 if largest else 0
            low, high = space.widths
            width = max(low, high - shrink * space.width_step) if largest else low
            params.update({f"{prefix}_d1": space.depth1[end], f"{prefix}_d3": space.depth3[end]})
            params.update({name: width for name in self.distributions() if name.startswith(f"{prefix}_c")})
        return params

    def over_budget(self, architecture: Architecture) -> tuple[float, str]:
        """(excess, why): how far over the budget as a fraction, which is Optuna's constraint value (<= 0: it
        fits), and the reason in words."""
        cost = architecture.cost()
        checks = [(-1.0, "")]
        if self.max_params is not None:
            checks.append(
                (cost.params / self.max_params - 1.0, f"{cost.params:,} params > --max-params {self.max_params:,}")
            )
        if self.max_gflops is not None:
            gflops = cost.paper_flops / 1e9
            checks.append((gflops / self.max_gflops - 1.0, f"{gflops:.3f} GFLOPs > --max-gflops {self.max_gflops}"))
        excess, why = max(checks)
        return excess, why if excess > 0 else ""

    def ceiling_gflops(self) -> float:
        """GFLOPs of the largest cells of the ranges, budget ignored: no architecture of the space costs more."""
        return self.decode(self._corner(largest=True)).cost().paper_flops / 1e9
