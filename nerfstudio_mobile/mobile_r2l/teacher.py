"""The teacher: any trained nerfstudio run, frozen, rendering full-resolution pseudo views (RGB + depth).

The teacher is held in a plain object, never as a submodule of the student, so it stays out of the
student's checkpoints and out of `.train()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import Pipeline
from torch import Tensor

from nerfstudio_mobile.common.runs import load_run, read_run_config

# Output names across nerfstudio models (vanilla-nerf only has the *_fine ones).
OUTPUT_NAMES = {
    "rgb": ("rgb", "rgb_fine"),
    "depth": ("depth", "depth_fine"),
    "accumulation": ("accumulation", "accumulation_fine"),
}


def read_teacher_config(config_path: Path | None) -> TrainerConfig:
    """The teacher's training config (cheap: no model is built), with errors that say what to pass."""
    if config_path is None:
        raise ValueError(
            "mobile-r2l distils a trained model: pass --pipeline.datamanager.teacher-config "
            "outputs/<experiment>/<method>/<timestamp>/config.yml (any nerfstudio method, e.g. nas-nerf or nerfacto)."
        )
    try:
        return read_run_config(config_path)
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(f"--pipeline.datamanager.teacher-config: {err}") from err


def collider_near_far(config: TrainerConfig) -> tuple[float, float] | None:
    """The teacher's own near/far when its rays are bounded by a near/far collider (NeRF, nas-nerf)."""
    model = config.pipeline.model
    params = getattr(model, "collider_params", None)
    if getattr(model, "enable_collider", False) and params and {"near_plane", "far_plane"} <= params.keys():
        return float(params["near_plane"]), float(params["far_plane"])
    return None


@dataclass
class Teacher:
    config_path: Path
    config: TrainerConfig
    pipeline: Pipeline

    @classmethod
    def load(cls, config_path: Path) -> Teacher:
        read_teacher_config(config_path)  # the clear errors first
        try:
            config, pipeline, _ = load_run(config_path, test_mode="inference")
        except FileNotFoundError as err:
            raise ValueError(f"--pipeline.datamanager.teacher-config: {err}") from err
        pipeline.eval()
        for parameter in pipeline.parameters():
            parameter.requires_grad_(False)
        return cls(Path(config_path), config, pipeline)

    @property
    def device(self) -> torch.device:
        return self.pipeline.device

    @torch.no_grad()
    def render(self, camera: Cameras) -> tuple[Tensor, Tensor, Tensor]:
        """One camera -> rgb [H, W, 3], depth [H, W] (ray distance), accumulation [H, W], on the CPU."""
        outputs = self.pipeline.model.get_outputs_for_camera(camera.to(self.device))
        found = {}
        for name, candidates in OUTPUT_NAMES.items():
            key = next((k for k in candidates if k in outputs), None)
            if key is None:
                raise ValueError(f"the teacher ({self.config.method_name}) renders no {name!r} output: {list(outputs)}")
            found[name] = outputs[key].float().cpu()
        return found["rgb"].clamp(0, 1), found["depth"][..., 0], found["accumulation"][..., 0]

    def estimate_near_far(self, cameras: Cameras, margin: float = 0.1) -> tuple[float, float]:
        """Near/far for a teacher without a collider (e.g. nerfacto, splatfacto): the range of its rendered
        surface depths on a few training views, widened by `margin`."""
        depths = []
        for index in torch.linspace(0, len(cameras) - 1, min(8, len(cameras))).long().tolist():
            _, depth, accumulation = self.render(cameras[index : index + 1])
            depths.append(depth[accumulation > 0.5])
        surface = torch.cat(depths)
        if surface.numel() == 0:
            raise ValueError("the teacher renders no opaque surface on its training views: is it trained?")
        low, high = torch.quantile(surface[:: max(1, surface.numel() // 100_000)], torch.tensor([0.01, 0.99]))
        return float(low) * (1 - margin), float(high) * (1 + margin)


def pinhole_intrinsics(cameras: Cameras, index: int = 0) -> tuple[int, int, float, float, float, float]:
    """(H, W, fx, fy, cx, cy) of one camera; the student renders undistorted pinhole cameras only."""
    camera = cameras[index : index + 1]
    if int(camera.camera_type.flatten()[0]) != CameraType.PERSPECTIVE.value:
        raise ValueError(
            "mobile-r2l needs a perspective (pinhole) teacher dataset; fisheye/equirect are not supported."
        )
    if camera.distortion_params is not None and bool((camera.distortion_params != 0).any()):
        raise ValueError("mobile-r2l needs undistorted images: undistort the dataset first (e.g. ns-process-data).")
    return (
        int(camera.height),
        int(camera.width),
        float(camera.fx),
        float(camera.fy),
        float(camera.cx),
        float(camera.cy),
    )
