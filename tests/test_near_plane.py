"""The near plane of a contracted teacher's student: bounded by the training cameras, chosen within those bounds by
the teacher's renders, so teachers of one capture agree however converged, and a converged one loses no content."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.dataparsers.base_dataparser import DataparserOutputs
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.models.nerfacto import NerfactoModelConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from support import NERFACTO_ITERATIONS, look_at, stock_run
from torch import Tensor

from nerfstudio_mobile.data.scenes import SceneConfig, generate_scene, render_depth
from nerfstudio_mobile.data.scenes.cameras import ray_directions
from nerfstudio_mobile.mobile_r2l.near_plane import CAP_TO_FLOOR, contracted_near, geometric_near_range
from nerfstudio_mobile.mobile_r2l.teacher import Teacher

F64 = torch.float64
ORIGIN = torch.zeros(3, dtype=F64)
NERFACTO_NEAR = NerfactoModelConfig().near_plane


def ring(radius: float, count: int = 12, outward: bool = False) -> Tensor:
    """Cameras on a horizontal circle around the origin, looking at it (or straight away from it)."""
    azimuth = 2 * math.pi * torch.arange(count, dtype=F64) / count
    positions = radius * torch.stack([azimuth.cos(), azimuth.sin(), torch.zeros_like(azimuth)], dim=-1)
    return torch.stack([look_at(p, 2 * p if outward else ORIGIN) for p in positions]).float()


def parallel_rig() -> Tensor:
    """A forward-facing rig: cameras spread over [-1, 1]^2 in the plane z = 0, all looking along -z."""
    xy = torch.cartesian_prod(torch.linspace(-1, 1, 4, dtype=F64), torch.linspace(-1, 1, 3, dtype=F64))
    positions = torch.cat([xy, torch.zeros(len(xy), 1, dtype=F64)], dim=-1)
    return torch.cat([torch.eye(3, dtype=F64).expand(len(xy), 3, 3), positions[:, :, None]], dim=-1).float()


@pytest.mark.parametrize(
    ("rig", "cap"),
    [
        (ring(0.8), 0.8),  # inside the contracted cube, looking at the origin: where they look
        (ring(4.0), 4.0),  # outside it (Blender-like): where they look, before the cube's far side (at 5)
        (parallel_rig(), 1.0),  # parallel axes meet nowhere: where they leave the cube
        (ring(0.5, count=4, outward=True), 0.5),  # their focus is behind them: where they leave the cube
    ],
)
def test_the_cameras_cap_the_near_plane_and_floor_it_a_fixed_factor_below(rig: Tensor, cap: float) -> None:
    floor, found_cap = geometric_near_range(rig, NERFACTO_NEAR)
    assert found_cap == pytest.approx(cap, rel=1e-5)
    assert floor == pytest.approx(cap / CAP_TO_FLOOR, rel=1e-5)


def test_the_teachers_renders_choose_within_the_cameras_range() -> None:
    rig = ring(0.8)
    assert contracted_near(rig, 0.5, NERFACTO_NEAR) == 0.5  # its nearest surface, when the cameras allow it
    assert contracted_near(rig, 0.01, NERFACTO_NEAR) == pytest.approx(0.8 / CAP_TO_FLOOR)  # a floater on the lens
    assert contracted_near(rig, 7.7, NERFACTO_NEAR) == pytest.approx(0.8)  # opaque only far away
    assert contracted_near(rig, None, NERFACTO_NEAR) == pytest.approx(0.8)  # opaque nowhere
    assert geometric_near_range(ring(0.1), NERFACTO_NEAR) == pytest.approx((NERFACTO_NEAR, 0.1))  # its own near
    # cameras outside the cube looking away from it, with no common focus: only the renders can tell
    away = ring(4.0, outward=True)
    assert geometric_near_range(away, NERFACTO_NEAR) == (NERFACTO_NEAR, math.inf)
    assert contracted_near(away, 2.0, NERFACTO_NEAR) == 2.0 and contracted_near(away, None, NERFACTO_NEAR) is None


CAPTURE = SceneConfig(image_size=24, num_train=12, num_val=1, num_test=1, supersample=1, format="nerfstudio",
                      unbounded=True)  # fmt: skip


class SceneTeacherModel:
    """A teacher that renders the generated scene's true geometry (a perfectly converged one), in the dataparser's
    normalised frame, optionally with a floater before the lens or transparent wherever the scene is near."""

    def __init__(self, outputs: DataparserOutputs, floater: bool = False, transparent_within: float = 0.0) -> None:
        self.outputs, self.floater, self.transparent_within = outputs, floater, transparent_within

    def get_outputs_for_camera(self, camera: Cameras) -> dict[str, Tensor]:
        size = CAPTURE.image_size
        c2w = self.outputs.transform_poses_to_original_space(camera.camera_to_worlds, camera_convention="opengl")
        z = render_depth(c2w[0], size, CAPTURE.camera_angle_x, unbounded=True)
        centres = torch.arange(size, dtype=torch.float32) + 0.5
        v, u = torch.meshgrid(centres, centres, indexing="ij")
        norms = ray_directions(u, v, size, CAPTURE.camera_angle_x, CAPTURE.distortion).norm(dim=-1)
        depth = z * norms * self.outputs.dataparser_scale  # ray distances, as nerfacto renders its depth
        if self.floater:
            depth[: size // 4, : size // 4] = NERFACTO_NEAR  # 6% of every view
        accumulation = (depth > self.transparent_within).float()
        return {"rgb": torch.zeros(size, size, 3), "depth": depth[..., None], "accumulation": accumulation[..., None]}


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> DataparserOutputs:
    scene = generate_scene(dataclasses.replace(CAPTURE, output_dir=tmp_path_factory.mktemp("c") / "capture"))
    return NerfstudioDataParserConfig(data=scene).setup().get_dataparser_outputs("train")


def scene_teacher(outputs: DataparserOutputs, floater: bool = False, transparent_within: float = 0.0) -> Teacher:
    """A nerfacto teacher (its config: contracted, its near and far planes) that renders with `SceneTeacherModel`."""
    config = TrainerConfig(method_name="nerfacto", pipeline=VanillaPipelineConfig(model=NerfactoModelConfig()))
    pipeline = SimpleNamespace(
        model=SceneTeacherModel(outputs, floater, transparent_within), device=torch.device("cpu")
    )
    return Teacher(Path("config.yml"), config, pipeline)  # type: ignore[arg-type]


def test_teachers_agree_however_converged_and_a_converged_one_cuts_no_content_off(
    capture: DataparserOutputs,
) -> None:
    cameras = capture.cameras
    converged = scene_teacher(capture)
    true_nearest = min(
        float(converged.render(cameras[i : i + 1])[1].min()) for i in range(len(cameras))
    )  # every training view, not only the few the estimate renders
    near, far = converged.estimate_near_far(cameras)
    assert far == NerfactoModelConfig().far_plane
    assert 0.5 * true_nearest < near <= true_nearest, (near, true_nearest)
    assert converged.estimate_near_far(cameras)[0] == near  # deterministic for a given teacher
    with_floaters = scene_teacher(capture, floater=True).estimate_near_far(cameras)[0]
    opaque_only_far = scene_teacher(capture, transparent_within=5 * true_nearest).estimate_near_far(cameras)[0]
    nears = [near, with_floaters, opaque_only_far]
    assert max(nears) / min(nears) <= CAP_TO_FLOOR, nears
    assert opaque_only_far < 2 * true_nearest, "a teacher still transparent nearby keeps the scene in front of it"


def test_nerfacto_teachers_at_different_convergence_agree_on_the_near_plane(
    nerfacto_run: Path, phone_capture: Path, tmp_path: Path
) -> None:
    """The same capture, a tenth of the training: its floaters and low opacity move the near plane little."""
    early_run = stock_run("nerfacto", "nerfstudio-data", phone_capture, tmp_path, NERFACTO_ITERATIONS // 10)
    nears = []
    for run in (nerfacto_run, early_run):
        teacher = Teacher.load(run)
        nears.append(teacher.estimate_near_far(teacher.pipeline.datamanager.train_dataparser_outputs.cameras)[0])
    assert max(nears) / min(nears) < 2, nears
