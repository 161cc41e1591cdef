"""The NAS-NeRF field cell: NeRF's density MLP cut into three searchable stages.

    γ(x) ──► stage 1: D1 × Linear(C1) ──┐
      │                                 ├─ concat ─► stage 2: 1 × Linear(C2) ─► stage 3: D3 × Linear(C3) ─►
      └─────────────────────────────────┘   (NeRF's skip connection)

All layers are followed by ReLU. The paper writes a cell as depths [D1, 1, D3] and channels
[C1, C2, C3]; (4, 1, 3) / (256, 256, 256) is exactly the 8×256 MLP of the original NeRF with its
skip at layer 4. The density and colour heads live in `field.py`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from nerfstudio_mobile.common.cli import UsageError


class ArchitectureError(UsageError, ValueError):
    """Field cells that cannot be built or read (a cell, an architecture file, a run); the message says how to
    fix it. A ValueError too, as Python's own checks of a wrong value raise."""


class ArchitectureFileNotFound(ArchitectureError, FileNotFoundError):
    """An architecture file or run config that does not exist."""


@dataclass
class FieldCellConfig:
    """One field cell: depths [D1, 1, D3] and channels [C1, C2, C3]."""

    depths: tuple[int, int, int] = (4, 1, 3)
    """Layers per stage; the middle stage is always one layer (the skip-concat layer)."""
    channels: tuple[int, int, int] = (256, 256, 256)
    """Width of each stage."""

    def validate(self, name: str = "cell") -> None:
        """Refuse a cell that cannot be built, with a message that says how to fix it."""
        depths, channels = tuple(self.depths), tuple(self.channels)
        if len(depths) != 3 or len(channels) != 3:
            raise ArchitectureError(
                f"{name}: a field cell needs exactly 3 depths [D1, 1, D3] and 3 channels [C1, C2, C3], "
                f"got depths={list(depths)} channels={list(channels)}."
            )
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in depths + channels):
            raise ArchitectureError(
                f"{name}: depths and channels must be integers, got {list(depths)} {list(channels)}."
            )
        if depths[0] < 1 or depths[2] < 1 or depths[1] != 1:
            raise ArchitectureError(
                f"{name}: depths must be [D1, 1, D3] with D1 >= 1 and D3 >= 1 (the middle stage is NeRF's "
                f"single skip-concat layer), got {list(depths)}."
            )
        if min(channels) < 1:
            raise ArchitectureError(f"{name}: every channel width must be >= 1, got {list(channels)}.")

    def layer_shapes(self, in_dim: int) -> list[tuple[int, int]]:
        """(in, out) of every linear layer of the cell, in order: the one description the module and
        the complexity accounting both read."""
        (d1, _, d3), (c1, c2, c3) = self.depths, self.channels
        stage1 = [(in_dim, c1)] + [(c1, c1)] * (d1 - 1)
        stage2 = [(in_dim + c1, c2)]
        stage3 = [(c2, c3)] + [(c3, c3)] * (d3 - 1)
        return stage1 + stage2 + stage3

    def to_dict(self) -> dict[str, list[int]]:
        return {"depths": list(self.depths), "channels": list(self.channels)}

    @classmethod
    def from_dict(cls, data: dict, name: str = "cell") -> FieldCellConfig:
        if not isinstance(data, dict) or "depths" not in data or "channels" not in data:
            raise ArchitectureError(f"{name}: expected an object with 'depths' and 'channels', got {data!r}.")
        cell = cls(depths=tuple(data["depths"]), channels=tuple(data["channels"]))  # type: ignore[arg-type]
        cell.validate(name)
        return cell

    def __str__(self) -> str:
        depths, channels = (",".join(map(str, v)) for v in (self.depths, self.channels))
        return f"[{depths}] × [{channels}]"


def load_architecture(path: Path) -> tuple[FieldCellConfig, FieldCellConfig]:
    """Read a coarse/fine architecture JSON, the format `ns-nas-search` writes:
    {"coarse": {"depths": [D1, 1, D3], "channels": [C1, C2, C3]}, "fine": {...}, ...}."""
    path = Path(path)
    if not path.is_file():
        raise ArchitectureFileNotFound(f"Architecture file {path} does not exist (expected a JSON from ns-nas-search).")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ArchitectureError(f"Architecture file {path} is not valid JSON: {err}") from err
    if not isinstance(data, dict) or "coarse" not in data or "fine" not in data:
        raise ArchitectureError(f"Architecture file {path} must hold 'coarse' and 'fine' cells.")
    coarse = FieldCellConfig.from_dict(data["coarse"], f"{path}: coarse cell")
    fine = FieldCellConfig.from_dict(data["fine"], f"{path}: fine cell")
    return coarse, fine


def save_architecture(path: Path, coarse: FieldCellConfig, fine: FieldCellConfig, **extra: object) -> None:
    """Write the coarse/fine JSON that `--pipeline.model.architecture-file` of `ns-train nas-nerf` loads."""
    Path(path).write_text(json.dumps({"coarse": coarse.to_dict(), "fine": fine.to_dict(), **extra}, indent=2))


class FieldCell(nn.Module):
    """The three-stage MLP. Input: encoded position; output: stage-3 features (C3 wide)."""

    def __init__(self, config: FieldCellConfig, in_dim: int) -> None:
        super().__init__()
        config.validate()
        shapes = config.layer_shapes(in_dim)
        d1 = config.depths[0]
        self.stage1 = nn.ModuleList(nn.Linear(i, o) for i, o in shapes[:d1])
        self.stage2 = nn.Linear(*shapes[d1])
        self.stage3 = nn.ModuleList(nn.Linear(i, o) for i, o in shapes[d1 + 1 :])
        self.out_dim = config.channels[2]

    def forward(self, encoded_position: Tensor) -> Tensor:
        x = encoded_position
        for layer in self.stage1:
            x = torch.relu(layer(x))
        x = torch.relu(self.stage2(torch.cat([encoded_position, x], dim=-1)))
        for layer in self.stage3:
            x = torch.relu(layer(x))
        return x
