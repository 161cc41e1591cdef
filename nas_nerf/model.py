"""NAS-NeRF: vanilla NeRF's coarse-to-fine renderer with two independent, configurable field cells.

rays ─► 64 uniform samples ─► coarse CellField ─► weights ─► 128 PDF samples (+ the 64) ─► fine CellField
                                  └► rgb/depth/accumulation_coarse          └► rgb/depth/accumulation
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from nerfstudio.cameras.rays import RayBundle, RaySamples
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.model_components.losses import MSELoss
from nerfstudio.model_components.ray_samplers import PDFSampler, UniformSampler
from nerfstudio.model_components.renderers import AccumulationRenderer, DepthRenderer, RGBRenderer
from nerfstudio.model_components.scene_colliders import NearFarCollider
from nerfstudio.models.base_model import Model, ModelConfig
from nerfstudio.utils import colormaps, misc
from torch import Tensor
from torch.nn import Parameter

from nas_nerf.cell import FieldCellConfig, load_architecture
from nas_nerf.field import CellField
from nerfstudio_mobile.common.compat import optional_lpips
from nerfstudio_mobile.common.metrics import image_metrics, psnr
from nerfstudio_mobile.common.precision import cpu_bf16_autocast


@dataclass
class NASNeRFModelConfig(ModelConfig):
    """A NeRF whose coarse and fine fields are field cells (defaults: the original 8×256 NeRF)."""

    _target: type = field(default_factory=lambda: NASNeRFModel)
    coarse_cell: FieldCellConfig = field(default_factory=FieldCellConfig)
    """Coarse field cell: depths [D1, 1, D3], channels [C1, C2, C3]."""
    fine_cell: FieldCellConfig = field(default_factory=FieldCellConfig)
    """Fine field cell: depths [D1, 1, D3], channels [C1, C2, C3]."""
    architecture_file: Path | None = None
    """JSON with 'coarse' and 'fine' cells (as ns-nas-search writes); replaces the two cells above when the run starts
    (config.yml then holds the cells themselves, not the file's name)."""
    num_coarse_samples: int = 64
    """Uniform samples per ray for the coarse field."""
    num_importance_samples: int = 128
    """PDF samples per ray for the fine field (it also re-evaluates the coarse ones)."""
    background_color: Literal["random", "last_sample", "black", "white"] = "white"
    """Background colour composited behind the rendered rays."""
    cpu_bf16: bool = True
    """On a CPU with AVX512-BF16/AMX, run the field MLPs in bfloat16 (faster; elsewhere fp32); sampling stays fp32."""

    def resolve_cells(self) -> None:
        """Read the architecture file into the two cells, once, and refuse cells that cannot be built
        (ArchitectureError). ns-train calls it before any data is loaded, through NASNeRFTrainerConfig: not while
        tyro builds this config, where an error would be tyro's boxed usage message."""
        if self.architecture_file is not None:
            self.coarse_cell, self.fine_cell = load_architecture(self.architecture_file)
            self.architecture_file = None  # read: a run resumed from config.yml no longer needs the file
        self.coarse_cell.validate("coarse cell")
        self.fine_cell.validate("fine cell")


class NASNeRFModel(Model):
    config: NASNeRFModelConfig

    def populate_modules(self) -> None:
        super().populate_modules()
        self.config.resolve_cells()  # a no-op after ns-train; here for callers that build the model from the config
        scene_near_far = self.kwargs.get("metadata", {}).get("near_far")
        if scene_near_far is not None:  # the dataparser knows its scene's depth range (e.g. llff-data)
            near, far = scene_near_far
            self.config.collider_params = {"near_plane": float(near), "far_plane": float(far)}
        near, far = self.config.collider_params["near_plane"], self.config.collider_params["far_plane"]  # type: ignore[index]
        # nerfstudio's collider moves the near plane to 0 outside training; our uniform samples would then spread
        # over untrained space in front of the camera, and a forward-facing scene renders far worse than it trained.
        self.collider = NearFarCollider(near_plane=float(near), far_plane=float(far), reset_near_plane=False)
        self.field_coarse = CellField(self.config.coarse_cell)
        self.field_fine = CellField(self.config.fine_cell)
        self.sampler_uniform = UniformSampler(num_samples=self.config.num_coarse_samples)
        self.sampler_pdf = PDFSampler(num_samples=self.config.num_importance_samples)
        self.renderer_rgb = RGBRenderer(background_color=self.config.background_color)
        self.renderer_accumulation = AccumulationRenderer()
        self.renderer_depth = DepthRenderer()
        self.rgb_loss = MSELoss()
        self.lpips = optional_lpips()

    def get_param_groups(self) -> dict[str, list[Parameter]]:
        return {"fields": list(self.field_coarse.parameters()) + list(self.field_fine.parameters())}

    def _render(self, field_: CellField, samples: RaySamples) -> tuple[dict[str, Tensor], Tensor]:
        with cpu_bf16_autocast(self.device, self.config.cpu_bf16):
            outputs = {name: value.float() for name, value in field_(samples).items()}
        weights = samples.get_weights(outputs[FieldHeadNames.DENSITY])
        rendered = {
            "rgb": self.renderer_rgb(rgb=outputs[FieldHeadNames.RGB], weights=weights),
            "accumulation": self.renderer_accumulation(weights),
            "depth": self.renderer_depth(weights, samples),
        }
        return rendered, weights

    def get_outputs(self, ray_bundle: RayBundle) -> dict[str, Tensor]:  # type: ignore[override]
        uniform_samples = self.sampler_uniform(ray_bundle)
        coarse, coarse_weights = self._render(self.field_coarse, uniform_samples)
        fine, _ = self._render(self.field_fine, self.sampler_pdf(ray_bundle, uniform_samples, coarse_weights))
        return {**fine, **{f"{name}_coarse": value for name, value in coarse.items()}}

    def _blended(self, outputs: dict[str, Tensor], image: Tensor, suffix: str) -> tuple[Tensor, Tensor]:
        return self.renderer_rgb.blend_background_for_loss_computation(
            pred_image=outputs[f"rgb{suffix}"],
            pred_accumulation=outputs[f"accumulation{suffix}"],
            gt_image=image,
        )

    def get_metrics_dict(self, outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        pred, image = self._blended(outputs, batch["image"].to(self.device), "")
        return {"psnr": psnr(image, pred)}

    def get_loss_dict(
        self, outputs: dict[str, Tensor], batch: dict[str, Tensor], metrics_dict: dict | None = None
    ) -> dict[str, Tensor]:
        image = batch["image"].to(self.device)
        loss_dict = {
            "rgb_loss_coarse": self.rgb_loss(*self._blended(outputs, image, "_coarse")),
            "rgb_loss_fine": self.rgb_loss(*self._blended(outputs, image, "")),
        }
        return misc.scale_dict(loss_dict, self.config.loss_coefficients)

    def get_image_metrics_and_images(
        self, outputs: dict[str, Tensor], batch: dict[str, Tensor]
    ) -> tuple[dict[str, float], dict[str, Tensor]]:
        image = self.renderer_rgb.blend_background(batch["image"].to(outputs["rgb"].device))
        metrics = image_metrics(image, outputs["rgb"], self.lpips)
        metrics["coarse_psnr"] = image_metrics(image, outputs["rgb_coarse"])["psnr"]
        near, far = self.config.collider_params["near_plane"], self.config.collider_params["far_plane"]  # type: ignore[index]
        images = {
            "img": torch.cat([image, outputs["rgb_coarse"], outputs["rgb"]], dim=1),
            "accumulation": colormaps.apply_colormap(outputs["accumulation"]),
            "depth": colormaps.apply_depth_colormap(
                outputs["depth"], accumulation=outputs["accumulation"], near_plane=near, far_plane=far
            ),
        }
        return metrics, images
