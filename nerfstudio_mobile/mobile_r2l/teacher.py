"""The teacher: any trained nerfstudio run, frozen, rendering full-resolution pseudo views (RGB + depth).

The teacher is held in a plain object, never as a submodule of the student, so it stays out of the
student's checkpoints and out of `.train()`. What the student needs to know of it comes from what its model
really uses: a near/far collider (NeRF, nas-nerf), or nerfacto-style near/far planes and scene contraction.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import Pipeline
from torch import Tensor

from nerfstudio_mobile.common.checkpoints import latest_checkpoint
from nerfstudio_mobile.common.cli import UsageError
from nerfstudio_mobile.common.intrinsics import Intrinsics
from nerfstudio_mobile.common.runs import RunError, check_checkpoint, load_run, read_run_config
from nerfstudio_mobile.mobile_r2l.cache import teacher_identity
from nerfstudio_mobile.mobile_r2l.near_plane import contracted_near

# Output names across nerfstudio models (vanilla-nerf only has the *_fine ones).
OUTPUT_NAMES = {
    "rgb": ("rgb", "rgb_fine"),
    "depth": ("depth", "depth_fine"),
    "accumulation": ("accumulation", "accumulation_fine"),
}
RaySpace = Literal["bounded", "contracted"]


class TeacherError(UsageError, ValueError):
    """A teacher run the student cannot distil from as given; the message says what to do."""


def read_teacher_config(config_path: Path | None) -> TrainerConfig:
    """The teacher's training config (cheap: no model is built), with errors that say what to pass."""
    if config_path is None:
        raise TeacherError(
            "mobile-r2l distils a trained model: pass --pipeline.datamanager.teacher-config "
            "outputs/<experiment>/<method>/<timestamp>/config.yml (any nerfstudio method, e.g. nerfacto or nas-nerf)."
        )
    try:
        config = read_run_config(config_path)
    except RunError as err:
        raise TeacherError(f"--pipeline.datamanager.teacher-config: {err}") from err
    if config.method_name == "mobile-r2l":
        raise TeacherError(
            f"{config_path} is a mobile-r2l student, not a teacher: pass the config.yml of the run it was distilled "
            f"from ({config.pipeline.datamanager.teacher_config})."
        )
    if config.method_name.startswith("splatfacto") and not torch.cuda.is_available():
        raise TeacherError(
            f"{config_path} is a {config.method_name} run: it renders with gsplat, which needs a CUDA GPU. Distil it "
            "on a GPU machine (the same command), or train a nerfacto teacher here."
        )
    return config


def collider_near_far(config: TrainerConfig) -> tuple[float, float] | None:
    """The teacher's near/far when its rays are bounded by `collider_params` (NeRF, nas-nerf). Models with their
    own near/far planes (nerfacto, instant-ngp) ignore `collider_params`: None for them."""
    model = config.pipeline.model
    if hasattr(model, "near_plane") and hasattr(model, "far_plane"):
        return None
    params = getattr(model, "collider_params", None)
    if getattr(model, "enable_collider", False) and params and {"near_plane", "far_plane"} <= params.keys():
        return float(params["near_plane"]), float(params["far_plane"])
    return None


def teacher_ray_space(config: TrainerConfig) -> RaySpace:
    """'contracted' for teachers that see to infinity through scene contraction (nerfacto, instant-ngp)."""
    model = config.pipeline.model
    contracts = hasattr(model, "disable_scene_contraction") and not model.disable_scene_contraction
    return "contracted" if contracts else "bounded"


def pinhole_intrinsics(cameras: Cameras, index: int = 0) -> Intrinsics:
    """The pinhole intrinsics of one camera once its image is undistorted as nerfstudio's full-image datamanager
    undistorts it (OpenCV, cropped to valid pixels): pseudo views, real images and exports all share them."""
    from nerfstudio.data.datamanagers.full_images_datamanager import _undistort_image

    camera = cameras[index : index + 1].reshape(())
    if int(camera.camera_type) != CameraType.PERSPECTIVE.value:
        raise TeacherError(
            "mobile-r2l needs a perspective (pinhole) teacher dataset; fisheye/equirect are not supported."
        )
    height, width = int(camera.height), int(camera.width)
    distortion = camera.distortion_params
    if distortion is None or not bool((distortion != 0).any()):
        return Intrinsics.from_camera(camera)
    blank = np.zeros((height, width, 3), dtype=np.uint8)  # only the new camera matrix and crop are wanted
    matrix, image, _ = _undistort_image(camera, distortion.numpy(), {}, blank, camera.get_intrinsics_matrices().numpy())
    return Intrinsics(
        float(matrix[0, 0]),
        float(matrix[1, 1]),
        float(matrix[0, 2]),
        float(matrix[1, 2]),
        image.shape[1],
        image.shape[0],
    )


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
        except RunError as err:
            raise TeacherError(f"--pipeline.datamanager.teacher-config: {err}") from err
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
                raise TeacherError(
                    f"the teacher ({self.config.method_name}) renders no {name!r} output: {list(outputs)}"
                )
            found[name] = outputs[key].float().cpu()
        return found["rgb"].clamp(0, 1), found["depth"][..., 0], found["accumulation"][..., 0]

    def rendered_depth_range(self, cameras: Cameras) -> tuple[float, float] | None:
        """1st and 99th percentiles of the ray distances of the opaque pixels (accumulation > 0.5) the teacher renders
        on up to 8 training views; None when there are none."""
        depths = []
        for index in torch.linspace(0, len(cameras) - 1, min(8, len(cameras))).long().tolist():
            camera = cameras[index : index + 1]
            _, depth, accumulation = self.render(pinhole_intrinsics(cameras, index).cameras(camera.camera_to_worlds))
            depths.append(depth[accumulation > 0.5])
        surface = torch.cat(depths)
        if surface.numel() == 0:
            return None
        low, high = torch.quantile(surface[:: max(1, surface.numel() // 100_000)], torch.tensor([0.01, 0.99]))
        return float(low), float(high)

    def estimate_near_far(self, cameras: Cameras, margin: float = 0.1) -> tuple[float, float]:
        """Near/far for a teacher without a collider (e.g. nerfacto). One that contracts space keeps its own far plane
        (the student samples to it in disparity, so the background is covered too) and gets a near plane its
        training cameras bound (near_plane.py). Otherwise: the range of its rendered surface depths on a few training
        views, widened by `margin`."""
        rendered = self.rendered_depth_range(cameras)
        model = self.config.pipeline.model
        if teacher_ray_space(self.config) == "contracted":
            nearest = rendered[0] * (1 - margin) if rendered else None
            near = contracted_near(cameras.camera_to_worlds, nearest, float(model.near_plane))
            if near is not None:
                return near, float(model.far_plane)
        if rendered is None:
            raise TeacherError("the teacher renders no opaque surface on its training views: is it trained?")
        return rendered[0] * (1 - margin), rendered[1] * (1 + margin)


class TeacherRun:
    """The teacher run the caches of one student are rendered from, each part read at most once however many caches
    ask: its config (cheap), the identity of its renders (hashes the checkpoint) and the teacher itself (builds its
    pipeline), the latter only when a view is missing."""

    def __init__(self, config_path: Path | None) -> None:
        self.config_path = config_path

    @cached_property
    def config(self) -> TrainerConfig:
        return read_teacher_config(self.config_path)

    @cached_property
    def identity(self) -> dict[str, Any]:
        """`teacher_identity` of the latest checkpoint, checked readable first."""
        latest = latest_checkpoint(self.config.get_checkpoint_dir())
        if latest is None:
            raise TeacherError(
                f"The teacher {self.config_path} has no checkpoint in {self.config.get_checkpoint_dir()}: "
                "train it first (or let its training finish)."
            )
        try:
            check_checkpoint(latest[1])  # before its digest becomes the identity of a new cache
        except RunError as error:
            raise TeacherError(f"--pipeline.datamanager.teacher-config: {error}") from error
        # The teacher by its checkpoint's content, not by where its run sits: a moved or copied run keeps its cache.
        return teacher_identity(self.config.method_name, *latest)

    @cached_property
    def teacher(self) -> Teacher:
        assert self.config_path is not None  # read_teacher_config refuses None
        return Teacher.load(self.config_path)
