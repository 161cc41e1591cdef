"""Helpers the tests share (imported as `support`; no test imports another test file or conftest)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.pipelines.base_pipeline import Pipeline

from nerfstudio_mobile.data.scenes import SceneConfig, camera_poses, generate_scene

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


# A nerfacto small enough to train in about a minute on 2 CPU cores (its hash grid runs in torch here).
NERFACTO_ITERATIONS = 150
NERFACTO_ARGS = [
    "--pipeline.datamanager.train-num-rays-per-batch", "256",
    "--pipeline.model.eval-num-rays-per-chunk", "4096",
    "--pipeline.model.num-levels", "8",
    "--pipeline.model.log2-hashmap-size", "15",
    "--pipeline.model.hidden-dim", "32",
    "--pipeline.model.num-nerf-samples-per-ray", "24",
    "--pipeline.model.num-proposal-samples-per-ray", "32", "16",
]  # fmt: skip


def stock_run(method: str, dataparser: str, scene: Path, workdir: Path) -> Path:
    """config.yml of a stock nerfstudio method trained on `scene` by the real `ns-train`, CPU flags as a user
    passes them here, data given to the dataparser subcommand as nerfstudio's docs show."""
    run_ns(
        [ns_command("ns-train"), method, "--machine.device-type", "cpu", "--output-dir", "outputs",
         "--experiment-name", "scene", "--timestamp", "run", "--vis", "tensorboard",
         "--max-num-iterations", str(NERFACTO_ITERATIONS), "--steps-per-save", str(NERFACTO_ITERATIONS),
         "--steps-per-eval-batch", "100000", "--steps-per-eval-image", "100000",
         "--steps-per-eval-all-images", "100000", *NERFACTO_ARGS, dataparser, "--data", str(scene)],
        cwd=workdir,
    )  # fmt: skip
    return workdir / "outputs" / "scene" / method / "run" / "config.yml"


def run_ns(args: list[str], cwd: Path, timeout: int = 1800) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


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


FULL_SIZE = 96  # the poses' focal refers to this resolution; images_2 holds half of it


def write_llff(tmp_path: Path) -> tuple[Path, np.ndarray]:
    config = SceneConfig(output_dir=tmp_path / "blender", layout="forward-facing", image_size=48, num_train=12,
                         num_val=1, num_test=1)  # fmt: skip
    blender = generate_scene(config)
    c2w = camera_poses(config)["train"][:, :3, :4]  # OpenGL [right, up, back]
    llff = tmp_path / "llff"
    (llff / "images_2").mkdir(parents=True)
    for i in range(len(c2w)):
        imageio.imwrite(llff / "images_2" / f"{i:03d}.png", imageio.imread(blender / "train" / f"r_{i}.png")[..., :3])
    focal = 0.5 * FULL_SIZE / np.tan(0.5 * config.camera_angle_x)
    llff_rotation = np.stack([-c2w[:, :, 1], c2w[:, :, 0], c2w[:, :, 2]], axis=2)  # [down, right, back]
    hwf = np.broadcast_to(np.array([FULL_SIZE, FULL_SIZE, focal])[None, :, None], (len(c2w), 3, 1))
    poses = np.concatenate([llff_rotation, c2w[:, :, 3:], hwf], axis=2).reshape(len(c2w), 15)
    depth = np.linalg.norm(c2w[:, :, 3], axis=1)
    np.save(llff / "poses_bounds.npy", np.concatenate([poses, np.stack([depth - 1.5, depth + 1.5], 1)], 1))
    return llff, c2w
