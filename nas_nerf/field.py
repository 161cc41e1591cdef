"""A NeRF field whose density MLP is a `FieldCell`; heads are nerfstudio's `NeRFField` heads.

x ─► γ(x) (63) ─► FieldCell ─► features (C3) ─┬─► Linear → softplus ─► density
                                              └─► [γ(d) (27), features] ─► 2 × Linear(128) ─► Linear → sigmoid
"""

from __future__ import annotations

from nerfstudio.cameras.rays import RaySamples
from nerfstudio.field_components.encodings import NeRFEncoding
from nerfstudio.field_components.field_heads import DensityFieldHead, FieldHeadNames, RGBFieldHead
from nerfstudio.field_components.mlp import MLP
from nerfstudio.fields.base_field import Field
from torch import Tensor, cat, nn

from nas_nerf.cell import FieldCell, FieldCellConfig

# vanilla NeRF's encodings and colour head, as nerfstudio builds them
POSITION_FREQUENCIES = 10
DIRECTION_FREQUENCIES = 4
POSITION_DIM = 3 + 3 * 2 * POSITION_FREQUENCIES  # 63
DIRECTION_DIM = 3 + 3 * 2 * DIRECTION_FREQUENCIES  # 27
HEAD_LAYERS = 2
HEAD_WIDTH = 128


def field_layer_shapes(cell: FieldCellConfig) -> list[tuple[int, int]]:
    """(in, out) of every linear layer a `CellField` evaluates per sample: cell, density head, colour head."""
    features = cell.channels[2]
    colour_mlp = [(features + DIRECTION_DIM, HEAD_WIDTH)] + [(HEAD_WIDTH, HEAD_WIDTH)] * (HEAD_LAYERS - 1)
    return cell.layer_shapes(POSITION_DIM) + [(features, 1)] + colour_mlp + [(HEAD_WIDTH, 3)]


class CellField(Field):
    """Density from a configurable cell, colour from nerfstudio's NeRF colour head."""

    def __init__(self, cell: FieldCellConfig) -> None:
        super().__init__()
        self.position_encoding = NeRFEncoding(
            in_dim=3,
            num_frequencies=POSITION_FREQUENCIES,
            min_freq_exp=0.0,
            max_freq_exp=8.0,
            include_input=True,
        )
        self.direction_encoding = NeRFEncoding(
            in_dim=3,
            num_frequencies=DIRECTION_FREQUENCIES,
            min_freq_exp=0.0,
            max_freq_exp=4.0,
            include_input=True,
        )
        self.cell = FieldCell(cell, in_dim=self.position_encoding.get_out_dim())
        self.field_output_density = DensityFieldHead(in_dim=self.cell.out_dim)
        self.mlp_head = MLP(
            in_dim=self.cell.out_dim + self.direction_encoding.get_out_dim(),
            num_layers=HEAD_LAYERS,
            layer_width=HEAD_WIDTH,
            out_activation=nn.ReLU(),
        )
        self.field_output_rgb = RGBFieldHead(in_dim=self.mlp_head.get_out_dim())

    def get_density(self, ray_samples: RaySamples) -> tuple[Tensor, Tensor]:
        features = self.cell(self.position_encoding(ray_samples.frustums.get_positions()))
        return self.field_output_density(features), features

    def get_outputs(
        self, ray_samples: RaySamples, density_embedding: Tensor | None = None
    ) -> dict[FieldHeadNames, Tensor]:
        assert density_embedding is not None
        encoded_dir = self.direction_encoding(ray_samples.frustums.directions)
        mlp_out = self.mlp_head(cat([encoded_dir, density_embedding], dim=-1))
        return {FieldHeadNames.RGB: self.field_output_rgb(mlp_out)}
