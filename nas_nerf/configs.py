"""Method specifications: `ns-train nas-nerf` and the paper's Lego tiers (S, XS, XXS)."""

from __future__ import annotations

from dataclasses import dataclass

from nerfstudio.configs.base_config import MachineConfig, ViewerConfig
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig
from nerfstudio.engine.optimizers import RAdamOptimizerConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification

from nas_nerf.cell import FieldCellConfig
from nas_nerf.model import NASNeRFModelConfig
from nerfstudio_mobile.common.compat import default_device_type
from nerfstudio_mobile.common.method_config import MethodTrainerConfig

# The paper's architectures for Lego (NAS-NeRF, Table 1): (coarse, fine) depths and channels.
PAPER_LEGO_CELLS: dict[str, tuple[FieldCellConfig, FieldCellConfig]] = {
    "nerf": (FieldCellConfig(), FieldCellConfig()),
    "s": (FieldCellConfig((2, 1, 1), (100, 104, 109)), FieldCellConfig((3, 1, 2), (214, 214, 214))),
    "xs": (FieldCellConfig((2, 1, 1), (12, 12, 12)), FieldCellConfig((4, 1, 3), (64, 64, 64))),
    "xxs": (FieldCellConfig((2, 1, 1), (16, 18, 20)), FieldCellConfig((2, 1, 1), (20, 20, 20))),
}


@dataclass
class NASNeRFTrainerConfig(MethodTrainerConfig):
    """A nas-nerf run: its cells (or the architecture file that names them) are read and checked when ns-train prints
    or saves the config, before any data is loaded."""

    def resolve(self) -> None:
        model = self.pipeline.model
        assert isinstance(model, NASNeRFModelConfig), f"a nas-nerf run trains a NASNeRFModelConfig, not {model}"
        model.resolve_cells()


def nas_nerf_trainer(method_name: str, coarse: FieldCellConfig, fine: FieldCellConfig) -> NASNeRFTrainerConfig:
    """vanilla-nerf's recipe (RAdam 5e-4, 1024 rays, 64 + 128 samples, near 2 / far 6, white background)
    on the paper's training budget (nerfstudio's Blender benchmark, ~16k steps), with two field cells."""
    return NASNeRFTrainerConfig(
        method_name=method_name,
        steps_per_eval_batch=500,
        steps_per_eval_image=500,
        steps_per_save=2000,
        max_num_iterations=16000,
        mixed_precision=False,
        pipeline=VanillaPipelineConfig(
            datamanager=VanillaDataManagerConfig(dataparser=BlenderDataParserConfig()),
            model=NASNeRFModelConfig(coarse_cell=coarse, fine_cell=fine),
        ),
        optimizers={"fields": {"optimizer": RAdamOptimizerConfig(lr=5e-4, eps=1e-08), "scheduler": None}},
        viewer=ViewerConfig(num_rays_per_chunk=1 << 14),
        vis="viewer",
        machine=MachineConfig(device_type=default_device_type()),  # type: ignore[arg-type]
    )


def _spec(tier: str, description: str) -> MethodSpecification:
    name = "nas-nerf" if tier == "nerf" else f"nas-nerf-{tier}"
    return MethodSpecification(config=nas_nerf_trainer(name, *PAPER_LEGO_CELLS[tier]), description=description)


nas_nerf = _spec(
    "nerf",
    "NAS-NeRF: NeRF with configurable coarse/fine field cells (--pipeline.model.coarse-cell/fine-cell or "
    "--pipeline.model.architecture-file); default cells = vanilla NeRF 8x256.",
)
nas_nerf_s = _spec("s", "NAS-NeRF S tier (paper's Lego cells, 0.39M params, ~2.2x fewer FLOPs than NeRF).")
nas_nerf_xs = _spec("xs", "NAS-NeRF XS tier (paper's Lego cells, 0.09M params, ~9.7x fewer FLOPs than NeRF).")
nas_nerf_xxs = _spec("xxs", "NAS-NeRF XXS tier (paper's Lego cells, 0.05M params, ~20x fewer FLOPs than NeRF).")
