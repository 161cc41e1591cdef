"""Shared fixtures: a generated scene and a small nas-nerf run trained on it through `ns-train`.

Both are session-scoped: the NAS-NeRF, distillation and export tests reuse one teacher."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.pipelines.base_pipeline import Pipeline

from nerfstudio_mobile.data.scenes import SceneConfig, generate_scene

# A teacher small enough to train in about a minute on 2 CPU cores, big enough to learn the scene.
TEACHER_ITERATIONS = 600
TEACHER_ARGS = [
    "--pipeline.model.coarse-cell.depths",
    "1",
    "1",
    "1",
    "--pipeline.model.coarse-cell.channels",
    "32",
    "32",
    "32",
    "--pipeline.model.fine-cell.depths",
    "2",
    "1",
    "1",
    "--pipeline.model.fine-cell.channels",
    "64",
    "64",
    "64",
    "--pipeline.model.num-coarse-samples",
    "32",
    "--pipeline.model.num-importance-samples",
    "32",
    "--pipeline.datamanager.train-num-rays-per-batch",
    "512",
    "--optimizers.fields.optimizer.lr",
    "5e-3",
]


def ns_command(name: str) -> str:
    """An ns-* console script of this environment (tests may run without the venv on PATH)."""
    return str(Path(sys.executable).parent / name)


def viewer_camera(pipeline: Pipeline, height: int, width: int) -> Cameras:
    """Training camera 0 resized to height × width, aspect ratio included, as the viewer asks for."""
    camera = pipeline.datamanager.train_dataparser_outputs.cameras[0:1]
    sx, sy = width / camera.width.item(), height / camera.height.item()
    return Cameras(
        camera_to_worlds=camera.camera_to_worlds,
        fx=camera.fx * sx,
        fy=camera.fy * sy,
        cx=camera.cx * sx,
        cy=camera.cy * sy,
        width=width,
        height=height,
    ).to(pipeline.device)


def run_ns(args: list[str], cwd: Path, timeout: int = 1800) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="session")
def synthetic_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scene") / "scene"
    return generate_scene(SceneConfig(output_dir=root, image_size=48, num_train=40, num_val=4, num_test=4))


@pytest.fixture(scope="session")
def nas_nerf_run(synthetic_scene: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """config.yml of a nas-nerf run trained by the real `ns-train` (entry point, CPU default, checkpoints)."""
    workdir = tmp_path_factory.mktemp("nas_nerf_run")
    run_ns(
        [
            ns_command("ns-train"),
            "nas-nerf",
            "--data",
            str(synthetic_scene),
            "--output-dir",
            "outputs",
            "--experiment-name",
            "scene",
            "--timestamp",
            "run",
            "--vis",
            "tensorboard",
            "--max-num-iterations",
            str(TEACHER_ITERATIONS),
            "--steps-per-save",
            str(TEACHER_ITERATIONS),
            "--steps-per-eval-batch",
            "100000",
            "--steps-per-eval-image",
            "100000",
            "--steps-per-eval-all-images",
            "100000",
            *TEACHER_ARGS,
        ],
        cwd=workdir,
    )
    return workdir / "outputs" / "scene" / "nas-nerf" / "run" / "config.yml"


# A student small enough to distil in about a minute: 2 residual blocks of width 32.
STUDENT_PSEUDO_VIEWS = 40
STUDENT_ARGS = [
    "--pipeline.datamanager.num-pseudo-views", str(STUDENT_PSEUDO_VIEWS),
    "--pipeline.datamanager.images-per-batch", "8",
    "--pipeline.model.network.num-blocks", "2",
    "--pipeline.model.network.width", "32",
    "--optimizers.network.optimizer.lr", "2e-3",
]  # fmt: skip
STUDENT_ITERATIONS = 400
STUDENT_FINETUNE_STEPS = 50


@pytest.fixture(scope="session")
def mobile_r2l_run(nas_nerf_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """config.yml of a tiny MobileR2L student distilled from `nas_nerf_run` by the real `ns-train`."""
    workdir = tmp_path_factory.mktemp("mobile_r2l_run")
    run_ns(
        [ns_command("ns-train"), "mobile-r2l", "--pipeline.datamanager.teacher-config", str(nas_nerf_run),
         "--output-dir", "outputs", "--experiment-name", "scene", "--timestamp", "run", "--vis", "tensorboard",
         "--max-num-iterations", str(STUDENT_ITERATIONS), "--optimizers.network.scheduler.max-steps",
         str(STUDENT_ITERATIONS), "--pipeline.datamanager.finetune-steps", str(STUDENT_FINETUNE_STEPS),
         "--steps-per-save", str(STUDENT_ITERATIONS), "--steps-per-eval-image", "100000",
         "--steps-per-eval-all-images", "100000", *STUDENT_ARGS],
        cwd=workdir,
    )  # fmt: skip
    return workdir / "outputs" / "scene" / "mobile-r2l" / "run" / "config.yml"
