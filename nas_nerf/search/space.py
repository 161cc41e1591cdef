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
WidthSpacing = Literal["log", "linear"]
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
    """Widths are multiples of this step above the lower bound."""

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

    def width_grid(self, spacing: WidthSpacing) -> list[int]:
        """The widths searched, ascending: every step of the range ('linear'), or as many as that spaced evenly
        in log scale and snapped to the step ('log': 8, 16, 24, 32, 48, 64, 96, 128, 192, 256-like)."""
        low, high = self.widths
        count = (high - low) // self.width_step + 1
        if spacing == "linear" or count < 3:
            return list(range(low, high + 1, self.width_step))
        ideal = [low * (high / low) ** (i / (count - 1)) for i in range(count)]
        return sorted({low + self.width_step * round((w - low) / self.width_step) for w in ideal})


@dataclass
class SearchSpace:
    """Both field cells' ranges, the width rule and the budget."""

    coarse: Unprefixed[FieldSpace] = field(default_factory=FieldSpace)
    """Ranges of the coarse field cell."""
    fine: Unprefixed[FieldSpace] = field(default_factory=FieldSpace)
    """Ranges of the fine field cell."""
    width_rule: Unprefixed[WidthRule] = "expanding"
    """The paper's width rules: 'uniform' (C1 = C2 = C3), 'expanding' (C1 <= C2 <= C3) or 'free'."""
    # 'log' gives small cells as many choices as large ones: the tiers span an order of magnitude in FLOPs.
    width_spacing: Unprefixed[WidthSpacing] = "log"
    """Searched widths spread evenly in log scale over each range, or 'linear': every step."""
    max_params: Unprefixed[int | None] = None
    """Reject (never train) architectures with more parameters (coarse + fine)."""
    max_gflops: Unprefixed[float | None] = None
    """Reject (never train) architectures above this many GFLOPs (paper convention: 2048 rays × 257 samples)."""

    def validate(self) -> None:
        self.coarse.validate("coarse")
        self.fine.validate("fine")
        if self.width_rule not in ("free", "uniform", "expanding") or self.width_spacing not in ("log", "linear"):
            raise SearchError(
                f"--width-rule must be free, uniform or expanding and --width-spacing log or linear, got "
                f"{self.width_rule!r} and {self.width_spacing!r}."
            )
        if self.max_params is not None and self.max_params < 1:
            raise SearchError(f"--max-params must be positive, got {self.max_params}.")
        if self.max_gflops is not None and self.max_gflops <= 0:
            raise SearchError(f"--max-gflops must be positive, got {self.max_gflops}.")

    def _fields(self) -> dict[str, FieldSpace]:
        return {"coarse": self.coarse, "fine": self.fine}

    def _width_names(self, prefix: str) -> list[str]:
        return [f"{prefix}_c"] if self.width_rule == "uniform" else [f"{prefix}_c{i}" for i in (1, 2, 3)]

    def distributions(self) -> dict[str, tuple[int, int]]:
        """Optuna integer parameters (low, high): depths, and widths as indices into each field's width grid."""
        params: dict[str, tuple[int, int]] = {}
        for prefix, space in self._fields().items():
            params.update({f"{prefix}_d1": space.depth1, f"{prefix}_d3": space.depth3})
            last = len(space.width_grid(self.width_spacing)) - 1
            params.update({name: (0, last) for name in self._width_names(prefix)})
        return params

    def suggest(self, trial: optuna.Trial) -> dict[str, int]:
        return {name: trial.suggest_int(name, low, high) for name, (low, high) in self.distributions().items()}

    def decode(self, params: dict[str, int]) -> Architecture:
        """The cells that Optuna parameters stand for; 'expanding' sorts the three sampled widths."""

        def cell(prefix: str, space: FieldSpace) -> FieldCellConfig:
            grid = space.width_grid(self.width_spacing)
            widths = [grid[params[name]] for name in self._width_names(prefix)] * (
                3 if self.width_rule == "uniform" else 1
            )
            if self.width_rule == "expanding":
                widths.sort()
            return FieldCellConfig((params[f"{prefix}_d1"], 1, params[f"{prefix}_d3"]), tuple(widths))  # type: ignore[arg-type]

        return Architecture(*(cell(prefix, space) for prefix, space in self._fields().items()))

    def boundary_params(self, boundary: str) -> dict[str, int]:
        """Parameters of the smallest architecture (every depth and width at its minimum) or of the largest one
        within the budget (every depth at its maximum, uniform widths shrunk down the grid from the maximum)."""
        smallest = self._corner(largest=False)
        excess, why = self.over_budget(self.decode(smallest))
        if excess > 0:
            raise SearchError(f"Even the smallest architecture {self.decode(smallest)} is over budget: {why}.")
        if boundary == "smallest":
            return smallest
        most_steps = max(len(space.width_grid(self.width_spacing)) for space in self._fields().values())
        for shrink in range(most_steps):
            params = self._corner(largest=True, shrink=shrink)
            excess, why = self.over_budget(self.decode(params))
            if excess <= 0:
                return params
        raise SearchError(
            f"No architecture with the largest depths fits the budget ({why}): "
            "raise --max-params / --max-gflops or lower the depth ranges."
        )

    def diagonal(self) -> list[dict[str, int]]:
        """Parameters of the cells from the smallest to the largest of the ranges with every depth and the
        (uniform) widths growing together, one grid step at a time: a line through the space along which
        FLOPs grow, and SSIM mostly too, so that a target can be bracketed by bisection."""
        fields = self._fields()
        steps = max(len(space.width_grid(self.width_spacing)) for space in fields.values()) - 1
        points: list[dict[str, int]] = []
        for k in range(steps + 1):
            params: dict[str, int] = {}
            for prefix, space in fields.items():
                for name, (low, high) in (("d1", space.depth1), ("d3", space.depth3)):
                    params[f"{prefix}_{name}"] = round(low + (high - low) * k / max(steps, 1))
                width = round((len(space.width_grid(self.width_spacing)) - 1) * k / max(steps, 1))
                params.update({name: width for name in self._width_names(prefix)})
            if not points or params != points[-1]:
                points.append(params)
        return points

    def _corner(self, largest: bool, shrink: int = 0) -> dict[str, int]:
        """Depths at their maximum (largest) or minimum; each field's widths all equal to its largest less
        `shrink` grid steps (largest) or its smallest."""
        params: dict[str, int] = {}
        for prefix, space in self._fields().items():
            end = 1 if largest else 0
            width = max(0, len(space.width_grid(self.width_spacing)) - 1 - shrink) if largest else 0
            params.update({f"{prefix}_d1": space.depth1[end], f"{prefix}_d3": space.depth3[end]})
            params.update({name: width for name in self._width_names(prefix)})
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
