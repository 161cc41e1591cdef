"""A trained MobileR2L student, loaded for export: its network and encoding, its scene frame, its test views."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from nerfstudio.cameras.cameras import Cameras
from torch import Tensor

from nerfstudio_mobile.common.intrinsics import Intrinsics
from nerfstudio_mobile.common.runs import load_run, read_run_config
from nerfstudio_mobile.export.errors import NotAStudentError
from nerfstudio_mobile.mobile_r2l.cache import CacheMeta
from nerfstudio_mobile.mobile_r2l.cache.store import META_FILENAME
from nerfstudio_mobile.mobile_r2l.encoding import RayEncodingConfig
from nerfstudio_mobile.mobile_r2l.model import MobileR2LModel, MobileR2LModelConfig
from nerfstudio_mobile.mobile_r2l.network import LightFieldNetworkConfig
from nerfstudio_mobile.mobile_r2l.teacher import read_teacher_config

if TYPE_CHECKING:
    from nerfstudio_mobile.mobile_r2l.datamanager import PseudoViewDataManager


@dataclass
class EvalView:
    """A view of the scene's test split."""

    camera: Cameras
    """One camera in the student's (dataparser-normalised) frame."""
    image: Tensor
    """Ground truth [H, W, 3] in [0, 1]."""


@dataclass
class Student:
    config_path: Path
    name: str
    """The run's experiment name; exported files are named after it."""
    step: int
    model: MobileR2LModel
    dataparser_transform: Tensor
    """[3, 4]: student pose = transform @ world pose, then translation * scale (nerfstudio's convention)."""
    dataparser_scale: float
    train_intrinsics: Intrinsics
    """Pinhole intrinsics of the training images (undistorted): the export's, rescaled to the export size."""
    test_views: list[EvalView]
    """The test split (the views `ns-eval` scores)."""
    pseudo_views: Path | None
    """The pseudo-view cache the student was distilled from (None when it is gone): int8 activations are
    calibrated on its poses."""

    @property
    def source(self) -> dict[str, str | int]:
        """Where an export came from, for its sidecar."""
        return {"config": str(self.config_path), "experiment": self.name, "step": self.step}

    @property
    def network_config(self) -> LightFieldNetworkConfig:
        return self.model.network_config

    @property
    def encoding(self) -> RayEncodingConfig:
        return self.model.encoding_config

    @property
    def near_far(self) -> tuple[float, float]:
        near, far = self.model.near_far.tolist()
        return near, far

    @torch.no_grad()
    def render(self, camera: Cameras) -> tuple[Tensor, ...]:
        """The torch student every export is compared with: fp32, BN unfolded, no bf16 autocast.
        One camera whose size divides into whole blocks -> rgb [1, 3, H, W] (+ depth [1, 1, H, W])."""
        encoded, _ = self.model.encode(camera, jitter=False)
        out = self.model.network(encoded).float()
        return (out[:, :3], out[:, 3:]) if self.network_config.predict_depth else (out,)


def _distil_hint(config_path: Path) -> str:
    return (
        "Only a distilled MobileR2L student exports to a phone: distil this run first with "
        f"`ns-train mobile-r2l --pipeline.datamanager.teacher-config {config_path}`, then export the config.yml of "
        "that student run (outputs/<experiment>/mobile-r2l/<timestamp>/config.yml)."
    )


def find_pseudo_views(datamanager: PseudoViewDataManager, near_far: tuple[float, float]) -> Path | None:
    """The student's pseudo-view cache: --pipeline.datamanager.pseudo-view-dir if it was given, else the cache in
    the teacher run with the student's view count, seed, layout and near/far. Caches that differ only in
    resolution hold the same poses (a view's pose is a function of the seed and its index)."""
    config = datamanager.config
    if config.pseudo_view_dir is not None:
        return Path(config.pseudo_view_dir)
    caches = Path(read_teacher_config(config.teacher_config).get_base_dir()) / "pseudo_views"
    for directory in sorted(caches.iterdir()) if caches.is_dir() else ():
        try:
            meta = CacheMeta.from_json((directory / META_FILENAME).read_text())
        except (OSError, ValueError):
            continue  # not a cache, or one of another format
        ours = (config.num_pseudo_views, config.sampler.seed, datamanager.view_sampler.layout)
        near, far = meta.extra.get("near_far", (math.nan, math.nan))
        # near/far as the student's fp32 buffer holds them
        same_planes = math.isclose(near, near_far[0], rel_tol=1e-6) and math.isclose(far, near_far[1], rel_tol=1e-6)
        if (meta.num_views, meta.seed, meta.layout) == ours and same_planes:
            return directory
    return None


def load_student(config_path: Path) -> Student:
    """Load a trained student run on the CPU; anything else fails with what to do instead."""
    config = read_run_config(config_path)  # cheap: reject a teacher run before loading any checkpoint
    if not isinstance(config.pipeline.model, MobileR2LModelConfig):
        raise NotAStudentError(
            f"{config_path} is a {config.method_name!r} run, not a MobileR2L student. {_distil_hint(config_path)}"
        )
    _, pipeline, step = load_run(config_path, test_mode="test")
    model = pipeline.model
    if not isinstance(model, MobileR2LModel):
        raise NotAStudentError(f"{config_path} built a {type(model).__name__}. {_distil_hint(config_path)}")
    model.cpu().eval()  # tracing, conversion and verification all run on the CPU
    datamanager = pipeline.datamanager
    outputs = datamanager.train_dataparser_outputs
    near_far = tuple(model.near_far.tolist())
    return Student(
        config_path=Path(config_path),
        name=config.experiment_name,
        step=step,
        model=model,
        dataparser_transform=outputs.dataparser_transform.float().cpu(),
        dataparser_scale=float(outputs.dataparser_scale),
        train_intrinsics=datamanager.pinhole,
        test_views=[
            EvalView(camera.to("cpu"), batch["image"][..., :3].float().cpu())
            for camera, batch in datamanager.fixed_indices_eval_dataloader
        ],
        pseudo_views=find_pseudo_views(datamanager, near_far),
    )
