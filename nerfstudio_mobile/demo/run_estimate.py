"""How long a teacher → student run takes on this machine, from the run's own networks timed here.

Three rates, each linear in its count, so one short timing serves any frame size and step count:

    teacher training    seconds per ray of a training step (forward + backward, as ns-train runs it)
    teacher rendering   seconds per rendered ray (eval mode): every pixel of every pseudo view and test view
    student training    seconds per output pixel of a training step (forward + backward, bf16 on CPUs)

The demo prints its own plan before it starts, and the paper's (vanilla-NeRF teacher, N=28 student) beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from nerfstudio.data.scene_box import SceneBox

from nas_nerf.model import NASNeRFModelConfig
from nerfstudio_mobile.common.compat import default_device_type
from nerfstudio_mobile.common.intrinsics import Intrinsics
from nerfstudio_mobile.common.precision import cpu_bf16_autocast
from nerfstudio_mobile.common.timing import median_seconds
from nerfstudio_mobile.mobile_r2l.network import TRAINING_LAYOUT, LightFieldNetwork, LightFieldNetworkConfig
from nerfstudio_mobile.mobile_r2l.optimization import AdamWOptimizerConfig

MAX_TIMED_TRAINING_RAYS = 256
MAX_TIMED_STUDENT_SIDE, MAX_TIMED_STUDENT_BATCH = 256, 8
"""The student's rate is timed on the frame shrunk to fit this (the paper's 800×800 backward pass is slow)."""


@dataclass(frozen=True)
class RunPlan:
    teacher: NASNeRFModelConfig
    teacher_steps: int
    teacher_rays: int
    student: LightFieldNetworkConfig
    student_steps: int
    images_per_batch: int
    frame: tuple[int, int]
    """Height, width of the training images (= pseudo views and test views)."""
    pseudo_views: int
    test_views: int
    training_pose_views: int = 0
    """Training cameras the teacher renders too (their depth for the real images' batches)."""

    def hours(self, rates: CostRates) -> dict[str, float]:
        """Hours per stage; stages with nothing to do are left out."""
        pixels = self.frame[0] * self.frame[1]
        seconds = {
            "teacher": self.teacher_steps * self.teacher_rays * rates.teacher_train_ray,
            "pseudo_views": (self.pseudo_views + self.training_pose_views) * pixels * rates.teacher_render_ray,
            "student": self.student_steps * self.images_per_batch * pixels * rates.student_train_pixel,
            "eval": self.test_views * pixels * rates.teacher_render_ray,
        }
        return {stage: value / 3600 for stage, value in seconds.items() if value > 0}


@dataclass(frozen=True)
class CostRates:
    teacher_train_ray: float
    teacher_render_ray: float
    student_train_pixel: float

    @classmethod
    def measure(cls, plan: RunPlan, render_patch: int = 64) -> CostRates:
        """Teacher rendering is timed on a render_patch² camera (a ray costs the same anywhere in a frame); the
        default, 64², is one of the 4096-ray chunks nerfstudio renders a frame in. Timed on the device the run
        trains on."""
        device = torch.device(default_device_type())
        teacher_train_ray, teacher_render_ray = _teacher_rates(plan.teacher, plan.teacher_rays, render_patch, device)
        student_batch = min(plan.images_per_batch, MAX_TIMED_STUDENT_BATCH)
        student_pixel = _student_rate(plan.student, plan.frame, student_batch, device)
        return cls(teacher_train_ray, teacher_render_ray, student_pixel)


# The paper's recipe: a vanilla-NeRF teacher trained nerfstudio's Blender budget, 10k pseudo views
# (8k forward-facing), a width-256 N=28 student trained 600k steps on batches of 54 images (36 forward-facing).
PAPER_VIEWS = {8: 10_000, 12: 8_000}
PAPER_BATCH = {8: 54, 12: 36}
PAPER_FRAME = {8: (800, 800), 12: (756, 1008)}


def paper_plan(upscale_factors: tuple[int, ...]) -> RunPlan:
    scale = math.prod(upscale_factors)
    return RunPlan(
        teacher=NASNeRFModelConfig(),  # vanilla NeRF: 8×256 cells, 64 + 128 samples, near 2 / far 6
        teacher_steps=16_000,
        teacher_rays=1024,
        student=LightFieldNetworkConfig(upscale_factors=upscale_factors),
        student_steps=600_000,
        images_per_batch=PAPER_BATCH[scale],
        frame=PAPER_FRAME[scale],
        pseudo_views=PAPER_VIEWS[scale],
        test_views=0,
    )


def duration(hours: float) -> str:
    if hours < 1:
        return f"{hours * 60:.1f} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.0f} days" if hours < 24 * 365 else f"{hours / 24 / 365:.1f} years"


def plan_line(hours: dict[str, float]) -> str:
    """'~9.1 min (teacher 3.4 min, pseudo views 2.2 min, …)'."""
    stages = ", ".join(f"{stage.replace('_', ' ')} {duration(value)}" for stage, value in hours.items())
    return f"~{duration(sum(hours.values()))} ({stages})"


def looking_at_origin() -> torch.Tensor:
    """A camera-to-world 4 units from the origin looking at it, as in a 360 capture (nerfstudio's OpenGL axes)."""
    return torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 4.0]])


def _teacher_rates(config: NASNeRFModelConfig, rays: int, patch: int, device: torch.device) -> tuple[float, float]:
    box = SceneBox(torch.tensor([[-1.5] * 3, [1.5] * 3]))
    model = config.setup(scene_box=box, num_train_data=1).to(device)
    intrinsics = Intrinsics(1111.0, 1111.0, patch / 2, patch / 2, patch, patch)
    camera = intrinsics.cameras(looking_at_origin()[None]).to(device)
    timed_rays = min(rays, MAX_TIMED_TRAINING_RAYS, patch**2)
    rays_of_camera = camera.generate_rays(camera_indices=0).flatten()

    def train_step() -> None:
        # a new bundle per step, as in training: nerfacto's camera optimizer replaces a bundle's origins in place
        outputs = model(rays_of_camera[:timed_rays])
        sum(value.mean() for name, value in outputs.items() if name.startswith("rgb")).backward()

    model.train()
    train_ray = median_seconds(train_step, repeats=1) / timed_rays
    model.eval()
    with torch.no_grad():
        render_ray = median_seconds(lambda: model.get_outputs_for_camera(camera), repeats=1) / patch**2
    return train_ray, render_ray


def _student_rate(config: LightFieldNetworkConfig, frame: tuple[int, int], batch: int, device: torch.device) -> float:
    shrink = min(1.0, MAX_TIMED_STUDENT_SIDE / max(frame))
    grid = [max(1, round(side * shrink / config.upscale)) for side in frame]
    network = LightFieldNetwork(config).train().to(device, memory_format=TRAINING_LAYOUT)
    encoded = torch.randn(batch, config.in_channels, *grid, device=device).contiguous(memory_format=TRAINING_LAYOUT)

    optimizer = AdamWOptimizerConfig().setup(network.parameters())  # as mobile-r2l trains

    def train_step() -> None:
        with cpu_bf16_autocast(device):  # as MobileR2LModel trains
            out = network(encoded)
        optimizer.zero_grad(set_to_none=True)
        out.float().square().mean().backward()
        optimizer.step()

    return median_seconds(train_step, repeats=1) / (batch * grid[0] * grid[1] * config.upscale**2)
