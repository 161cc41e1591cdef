"""MobileR2L as a nerfstudio model: a whole frame per forward pass, for any camera at any resolution.

camera (H×W, fx, fy, cx, cy, pose) ─► ray grid at H/s × W/s (focal / s, rays through block centres)
    ─► K points between near and far, positional encoding (fp32) ─► [B, 312, h, w]
    ─► LightFieldNetwork (bf16 on CPUs with AMX) ─► [B, 3 + 1, h·s, w·s] ─► crop to H×W ─► rgb, depth

A frame asking for finer rays than any the student trained on (a viewer's larger frame) renders at the finest
trained spacing and is upsampled (bicubic) to its size. Evaluation and viewer renders on a CPU run the network
through the engine measured fastest on this machine (`engine_cache`: once the weights stop changing; the training
network while they change).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.models.base_model import Model, ModelConfig
from nerfstudio.utils import colormaps
from torch import Tensor, nn
from torch.nn import Parameter

from nerfstudio_mobile.common.cli import UsageError
from nerfstudio_mobile.common.compat import optional_lpips
from nerfstudio_mobile.common.metrics import image_metrics, psnr
from nerfstudio_mobile.common.precision import cpu_bf16_autocast
from nerfstudio_mobile.mobile_r2l.encoding import RayEncodingConfig, encode_rays, pinhole_rays
from nerfstudio_mobile.mobile_r2l.engine_cache import EngineCache
from nerfstudio_mobile.mobile_r2l.network import (
    TRAINING_LAYOUT,
    LightFieldNetwork,
    LightFieldNetworkConfig,
    upscale_factors_of,
)


@dataclass
class MobileR2LModelConfig(ModelConfig):
    """The MobileR2L student (paper defaults: K=8, L=6, width 256, 28 residual blocks)."""

    _target: type = field(default_factory=lambda: MobileR2LModel)
    encoding: RayEncodingConfig = field(default_factory=RayEncodingConfig)
    """Points per ray and encoding frequencies."""
    network: LightFieldNetworkConfig = field(default_factory=LightFieldNetworkConfig)
    """Backbone and super-resolution (input channels follow the encoding; upscale factors the scene layout)."""
    depth_loss_weight: float = 0.1
    """Weight of the distilled-depth loss (depth / far, on pixels where the teacher saw a surface, and on the
    others by `far_where_no_surface`)."""
    far_where_no_surface: bool = True
    """In a bounded scene, the depth loss also asks for the far plane where the teacher saw no surface (the cache's
    depth 0): without it the student's depth of an empty background is unconstrained and came out near, in front of
    the scene (benchmarks/results/distill_ablation_depth.md), which would hide everything behind it in an app that
    occludes with it. A contracted scene keeps skipping those pixels (its far plane, 1000, is no target beside
    surfaces metres away)."""
    edge_loss_weight: float = 0.0
    """Weight of an L1 loss between the frame's and the target's horizontal and vertical pixel differences: MSE
    alone forgives a blur, this term charges every edge the student smooths away (0: MSE only, as the paper; it lost
    PSNR at the demo's scale: benchmarks/results/distill_ablation_edge.md)."""
    jitter: bool = True
    """Training draws each ray's K depths at random inside their bins (R2L's perturb); evaluation uses bin edges."""
    cpu_bf16: bool = True
    """On CPUs with AVX512-BF16/AMX, run the network in bfloat16 (the ray encoding always stays fp32)."""
    fastest_cpu_engine: bool = True
    """On CPUs, evaluation and viewer renders go through the engine measured fastest on this machine (compiled bf16,
    ONNX Runtime, ...; `engines.py`), chosen once the weights stop changing; off: the training network."""
    upsample_finer_frames: bool = True
    """Outside training, a frame asking for finer rays than the finest the student trained on (a viewer's frame
    larger than the training images) is rendered at that ray spacing and upsampled (bicubic): on finer rays the
    super-resolution shows a checkerboard (benchmarks/results/distill_ablation.md). Off: every frame renders
    natively."""
    enable_collider: bool = False
    collider_params: dict[str, float] | None = None
    loss_coefficients: dict[str, float] = field(default_factory=lambda: {"rgb_loss": 1.0, "depth_loss": 1.0})


class MobileR2LModel(Model):
    config: MobileR2LModelConfig

    def populate_modules(self) -> None:
        super().populate_modules()
        scene = self.kwargs.get("metadata", {}).get("mobile_r2l", {})
        self.network_config = replace(
            self.config.network,
            in_channels=self.config.encoding.num_channels,
            upscale_factors=tuple(scene.get("upscale_factors", self.config.network.upscale_factors)),
        )
        self.network = LightFieldNetwork(self.network_config).to(memory_format=TRAINING_LAYOUT)
        self.encoding_config = replace(self.config.encoding, space=scene.get("ray_space", self.config.encoding.space))
        near, far = scene.get("near_far") or (0.0, 1.0)  # without a teacher (eval), the checkpoint restores them
        self.register_buffer("near_far", torch.tensor([near, far], dtype=torch.float32))
        # Focal length (pixels) of the finest rays it trains on; 0: unknown (no upsampling)
        self.register_buffer("finest_focal", torch.tensor(float(scene.get("finest_focal", 0.0))))
        self.lpips = optional_lpips()
        self.engine_cache = EngineCache()

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """A checkpoint whose network upscales otherwise than the factors this model was built with (a run from before
        the student fitted its ray grid to the frame size, or one given other factors): to render, evaluate or export
        it, the network is rebuilt as the checkpoint has it; resuming its training needs those factors given."""
        factors = upscale_factors_of(state_dict, prefix="network.")
        if factors is not None and factors != tuple(self.network_config.upscale_factors):
            if self.training:
                raise UsageError(
                    f"the checkpoint's student upscales {'×'.join(map(str, factors))} per stage, not "
                    f"{'×'.join(map(str, self.network_config.upscale_factors))}: pass --pipeline.datamanager."
                    f"upscale-factors {' '.join(map(str, factors))} to resume it."
                )
            self.network_config = replace(self.network_config, upscale_factors=factors)
            self.network = LightFieldNetwork(self.network_config).to(
                self.near_far.device, memory_format=TRAINING_LAYOUT
            )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @property
    def upscale(self) -> int:
        return self.network_config.upscale

    def get_param_groups(self) -> dict[str, list[Parameter]]:
        return {"network": list(self.network.parameters())}

    def encode(self, cameras: Cameras, jitter: bool) -> tuple[Tensor, tuple[int, int]]:
        """Cameras (one size) -> network input [B, C, ceil(H/s), ceil(W/s)] and the (H, W) to crop to."""
        height, width, s = int(cameras.height.flatten()[0]), int(cameras.width.flatten()[0]), self.upscale
        origins, directions = pinhole_rays(
            cameras.camera_to_worlds.reshape(-1, 3, 4).to(self.device),
            *(getattr(cameras, name).reshape(-1).to(self.device) / s for name in ("fx", "fy", "cx", "cy")),
            height=math.ceil(height / s),
            width=math.ceil(width / s),
        )
        near, far = self.near_far.tolist()
        return encode_rays(origins, directions, near, far, self.encoding_config, jitter=jitter), (height, width)

    def run_network(self, encoded: Tensor, network: nn.Module | None = None) -> Tensor:
        """The training network (or `network`, e.g. a copy being fine-tuned for export) on encoded rays (bf16
        autocast on CPUs with native bf16 unless `cpu_bf16` is off)."""
        with cpu_bf16_autocast(self.device, self.config.cpu_bf16):
            return (self.network if network is None else network)(encoded.contiguous(memory_format=TRAINING_LAYOUT))

    def uses_engine(self) -> bool:
        """Renders that need no gradient, in eval mode on a CPU, may go through the fastest engine."""
        cpu_eval = not self.training and self.device.type == "cpu"
        return self.config.fastest_cpu_engine and cpu_eval and not torch.is_grad_enabled()

    def zoom_beyond_training(self, cameras: Cameras) -> float:
        """How many times finer than the finest trained rays `cameras` ask for (1: not finer, or not upsampled)."""
        finest = float(self.finest_focal)
        if self.training or not self.config.upsample_finer_frames or finest <= 0:
            return 1.0
        zoom = max(1.0, float(cameras.fx.max()) / finest)
        return float(round(zoom)) if abs(zoom - round(zoom)) < 1e-4 else zoom  # 3× the size is 3, not 3.0000001

    def get_outputs(self, cameras: Cameras) -> dict[str, Tensor]:  # type: ignore[override]
        """[B] cameras -> rgb [B, H, W, 3], depth [B, H, W, 1]; frames asking for finer rays than the student
        trained on are rendered at its finest spacing and upsampled."""
        zoom = self.zoom_beyond_training(cameras)
        if zoom > 1 + 1e-6:
            return upsampled(self.render(coarser(cameras, zoom)), zoom, cameras)
        return self.render(cameras)

    def render(self, cameras: Cameras) -> dict[str, Tensor]:
        """The network's frame for [B] cameras at their own ray spacing. A grid that overshoots H×W is cropped: the
        block of low-res pixel (i, j) covers the same pixels as in the requested camera."""
        encoded, (height, width) = self.encode(cameras, jitter=self.training and self.config.jitter)
        if self.uses_engine():
            out = self.engine_cache.render(self.network, encoded, self.run_network)
        else:
            out = self.run_network(encoded)
        return self.frame_outputs(out, height, width)

    def frame_outputs(self, out: Tensor, height: int, width: int) -> dict[str, Tensor]:
        """The network's [B, 3 (+1), h*s, w*s] cropped to H×W: rgb [B, H, W, 3] (, depth [B, H, W, 1])."""
        out = out.float()[:, :, :height, :width].permute(0, 2, 3, 1)
        outputs = {"rgb": out[..., :3]}
        if self.network_config.predict_depth:
            outputs["depth"] = out[..., 3:4]
        return outputs

    @torch.no_grad()
    def get_outputs_for_camera(self, camera: Cameras, obb_box: object = None) -> dict[str, Tensor]:
        """One camera at any resolution in one forward pass (the viewer asks for many sizes). Always an inference
        render: nerfstudio leaves the model in training mode after its eval loops, where rays would be jittered."""
        was_training = self.training
        self.eval()
        try:
            outputs = {name: value[0] for name, value in self.get_outputs(camera[0:1]).items()}
        finally:
            self.train(was_training)
        outputs.setdefault("depth", torch.zeros_like(outputs["rgb"][..., :1]))
        return outputs

    def get_metrics_dict(self, outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"psnr": psnr(batch["image"][..., :3].to(self.device), outputs["rgb"].detach())}

    def get_loss_dict(
        self, outputs: dict[str, Tensor], batch: dict[str, Tensor], metrics_dict: dict | None = None
    ) -> dict[str, Tensor]:
        image = batch["image"][..., :3].to(self.device)
        losses = {"rgb_loss": torch.mean((outputs["rgb"] - image) ** 2)}
        if self.config.edge_loss_weight > 0:
            losses["edge_loss"] = self.config.edge_loss_weight * edge_difference(outputs["rgb"], image)
        if "depth" in batch and "depth" in outputs and self.config.depth_loss_weight > 0:
            target = batch["depth"].to(self.device)[..., None]
            surface = target > 0  # the cache stores 0 where the teacher saw no surface
            if self.config.far_where_no_surface and self.encoding_config.space != "contracted":
                target, surface = torch.where(surface, target, self.near_far[1]), torch.ones_like(surface)
            if self.encoding_config.space == "contracted":
                # depths span the near plane to the far one (1000 for nerfacto): relative error, made robust
                # (Geman-McClure, below 1 per pixel) since a floater at 5 cm before a 1 m surface would weigh
                # 400 times a surface pixel, and such outliers diverged a student of a phone capture
                relative = (outputs["depth"] - target) / target.clamp_min(1e-3)
                error = relative**2 / (1 + relative**2)
            else:
                error = ((outputs["depth"] - target) / self.near_far[1]) ** 2
            losses["depth_loss"] = self.config.depth_loss_weight * (error * surface).sum() / surface.sum().clamp_min(1)
        return {name: value * self.config.loss_coefficients.get(name, 1.0) for name, value in losses.items()}

    def get_image_metrics_and_images(
        self, outputs: dict[str, Tensor], batch: dict[str, Tensor]
    ) -> tuple[dict[str, float], dict[str, Tensor]]:
        image = batch["image"][..., :3].to(outputs["rgb"].device)
        near, far = self.near_far.tolist()
        depth = colormaps.apply_depth_colormap(outputs["depth"], near_plane=near, far_plane=far)
        return image_metrics(image, outputs["rgb"], self.lpips), {
            "img": torch.cat([image, outputs["rgb"]], dim=1),
            "depth": depth,
        }


def edge_difference(frames: Tensor, targets: Tensor) -> Tensor:
    """Mean L1 distance between the pixel differences along x and along y of [B, H, W, C] frames and targets."""
    along_x = (frames.diff(dim=2) - targets.diff(dim=2)).abs().mean()
    along_y = (frames.diff(dim=1) - targets.diff(dim=1)).abs().mean()
    return along_x + along_y


def coarser(cameras: Cameras, zoom: float) -> Cameras:
    """`cameras` with rays `zoom` times coarser: focal and principal point divided by `zoom`, sides rounded up."""
    height, width = int(cameras.height.flatten()[0]), int(cameras.width.flatten()[0])
    return Cameras(
        camera_to_worlds=cameras.camera_to_worlds,
        fx=cameras.fx / zoom,
        fy=cameras.fy / zoom,
        cx=cameras.cx / zoom,
        cy=cameras.cy / zoom,
        width=math.ceil(width / zoom),
        height=math.ceil(height / zoom),
        camera_type=cameras.camera_type,
    )


def upsampled(outputs: dict[str, Tensor], zoom: float, cameras: Cameras) -> dict[str, Tensor]:
    """Outputs of `coarser(cameras, zoom)` upsampled `zoom` times (bicubic; pixel centres where the finer camera
    has them) and cropped to the size of `cameras`."""
    height, width = int(cameras.height.flatten()[0]), int(cameras.width.flatten()[0])
    result = {}
    for name, value in outputs.items():
        image = value.permute(0, 3, 1, 2)
        image = torch.nn.functional.interpolate(
            image, scale_factor=zoom, mode="bicubic", align_corners=False, recompute_scale_factor=False
        )
        result[name] = image[:, :, :height, :width].permute(0, 2, 3, 1)
    result["rgb"] = result["rgb"].clamp(0, 1)  # bicubic overshoots at edges
    return result
