"""Exact params / FLOPs of NAS-NeRF cells, and `ns-nas-complexity` to show them as the paper does.

FLOPs convention (the one that reproduces the paper's 574.14 G for NeRF): each linear layer costs
2·in·out + out per sample; a paper figure is 2048 rays × (64 coarse + 193 fine samples), because
nerfstudio's PDF sampler re-evaluates the 64 coarse samples next to its 128 new ones (+1 bin edge).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from rich.console import Console
from rich.table import Table

from nas_nerf.cell import ArchitectureError, ArchitectureFileNotFound, FieldCellConfig, load_architecture
from nas_nerf.field import field_layer_shapes
from nerfstudio_mobile.common.cli import run_cli

PAPER_RAYS = 2048


@dataclass(frozen=True)
class FieldComplexity:
    params: int
    flops_per_sample: int


def field_complexity(cell: FieldCellConfig) -> FieldComplexity:
    shapes = field_layer_shapes(cell)
    return FieldComplexity(
        params=sum(i * o + o for i, o in shapes), flops_per_sample=sum(2 * i * o + o for i, o in shapes)
    )


@dataclass(frozen=True)
class ModelComplexity:
    coarse: FieldComplexity
    fine: FieldComplexity
    coarse_samples: int = 64
    fine_samples: int = 193

    @property
    def params(self) -> int:
        return self.coarse.params + self.fine.params

    @property
    def flops_per_ray(self) -> int:
        return self.coarse_samples * self.coarse.flops_per_sample + self.fine_samples * self.fine.flops_per_sample

    @property
    def paper_flops(self) -> int:
        """The paper's figure: one batch of 2048 rays."""
        return PAPER_RAYS * self.flops_per_ray

    def frame_flops(self, height: int = 800, width: int = 800) -> int:
        return height * width * self.flops_per_ray


def model_complexity(
    coarse: FieldCellConfig,
    fine: FieldCellConfig,
    num_coarse_samples: int = 64,
    num_importance_samples: int = 128,
) -> ModelComplexity:
    return ModelComplexity(
        coarse=field_complexity(coarse),
        fine=field_complexity(fine),
        coarse_samples=num_coarse_samples,
        fine_samples=num_coarse_samples + num_importance_samples + 1,
    )


def cells_from_run(config_path: Path) -> tuple[FieldCellConfig, FieldCellConfig, int, int]:
    """The cells and sample counts of a trained `nas-nerf` run, read from its config.yml."""
    if not Path(config_path).is_file():
        raise ArchitectureFileNotFound(f"{config_path} does not exist: pass the config.yml of a trained nas-nerf run.")
    try:
        config = yaml.load(Path(config_path).read_text(), Loader=yaml.Loader)
    except yaml.YAMLError as error:
        raise ArchitectureError(
            f"{config_path} is not valid YAML ({' '.join(str(error).split())}): pass the config.yml of a trained "
            "nas-nerf run."
        ) from None
    model = getattr(getattr(config, "pipeline", None), "model", None)
    if not hasattr(model, "coarse_cell"):
        raise ArchitectureError(
            f"{config_path} is not a nas-nerf run (its model has no field cells): pass the config.yml of a nas-nerf "
            "run (outputs/<experiment>/nas-nerf/<timestamp>/config.yml), or --architecture-file."
        )
    return model.coarse_cell, model.fine_cell, model.num_coarse_samples, model.num_importance_samples


@dataclass
class ComplexityReport:
    """Params and FLOPs of NAS-NeRF cells next to vanilla NeRF (and the paper's Lego tiers)."""

    load_config: Path | None = None
    """config.yml of a trained nas-nerf run."""
    architecture_file: Path | None = None
    """Architecture JSON (as written by ns-nas-search)."""
    presets: tuple[Literal["nerf", "s", "xs", "xxs"], ...] = ("nerf", "s", "xs", "xxs")
    """Paper Lego tiers to list for comparison (pass none to hide them)."""
    frame: tuple[int, int] = (800, 800)
    """Frame size (H W) for the per-frame FLOPs column."""

    def main(self) -> None:
        from nas_nerf.configs import PAPER_LEGO_CELLS

        rows = [(f"paper {tier.upper()}", *PAPER_LEGO_CELLS[tier], 64, 128) for tier in self.presets]
        if self.architecture_file is not None:
            rows.append((self.architecture_file.name, *load_architecture(self.architecture_file), 64, 128))
        if self.load_config is not None:
            rows.append((str(self.load_config.parent), *cells_from_run(self.load_config)))
        Console().print(complexity_table(rows, self.frame))


def complexity_table(
    rows: list[tuple[str, FieldCellConfig, FieldCellConfig, int, int]], frame: tuple[int, int]
) -> Table:
    """One row per (name, coarse cell, fine cell, coarse samples, importance samples), ratios against NeRF."""
    vanilla = model_complexity(FieldCellConfig(), FieldCellConfig())
    h, w = frame
    table = Table(title="NAS-NeRF complexity (FLOPs: 2·in·out + out per layer; paper = 2048 rays × (64 + 193))")
    columns = [
        "architecture",
        "coarse cell",
        "fine cell",
        "params (coarse / fine)",
        "params",
        "× fewer",
        "FLOPs/sample (c / f)",
        "GFLOPs (paper)",
        "× fewer",
        f"GFLOPs / {h}×{w} frame",
    ]
    for column in columns:
        table.add_column(column, justify="left" if "cell" in column or column == "architecture" else "right")
    for name, coarse, fine, n_coarse, n_importance in rows:
        c = model_complexity(coarse, fine, n_coarse, n_importance)
        table.add_row(
            name,
            str(coarse),
            str(fine),
            f"{c.coarse.params:,} / {c.fine.params:,}",
            f"{c.params / 1e6:.3f} M",
            f"{vanilla.params / c.params:.1f}×",
            f"{c.coarse.flops_per_sample:,} / {c.fine.flops_per_sample:,}",
            f"{c.paper_flops / 1e9:.2f}",
            f"{vanilla.paper_flops / c.paper_flops:.1f}×",
            f"{c.frame_flops(h, w) / 1e9:,.0f}",
        )
    return table


def entrypoint() -> None:
    run_cli(ComplexityReport, "ns-nas-complexity")
