"""`ns-mobile-demo`: the whole story in one command, offline, on a scene this package renders itself.

    generated scene ─► ns-train nas-nerf (teacher) ─► ns-train mobile-r2l (student, distilled)
        ─► eval both on the real test split ─► latency of one frame each ─► Core ML + ONNX export
        ─► summary table, ground truth | teacher | student picture, turntable GIF by the student

Every stage is resumable: finished stages are skipped, an interrupted training resumes from its last
checkpoint. `--data` takes a real Blender, nerfstudio or LLFF scene instead of the generated one.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch
import tyro
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.dataparsers.base_dataparser import DataParserConfig
from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import Pipeline
from rich.console import Console
from rich.table import Table

from nas_nerf.cell import FieldCellConfig
from nas_nerf.configs import nas_nerf_trainer
from nas_nerf.llff import LLFFDataParserConfig
from nas_nerf.model import NASNeRFModelConfig
from nas_nerf.runs import load_run
from nas_nerf.scenes import SceneConfig, generate_scene
from nerfstudio_mobile.configs import mobile_r2l_trainer
from nerfstudio_mobile.datamanager import pinhole_cameras
from nerfstudio_mobile.encoding import RayEncodingConfig
from nerfstudio_mobile.export.errors import MissingDependencyError
from nerfstudio_mobile.network import LightFieldNetwork, LightFieldNetworkConfig, prepare_for_inference
from nerfstudio_mobile.views import SphereViewSampler

CONSOLE = Console()


@dataclass
class Demo:
    """Teacher → student → phone, on a generated scene (or --data), with a summary a person can look at."""

    output_dir: Path = Path("demo")
    """Where everything goes (scene, runs, exports, pictures). Re-running resumes."""
    data: Path | None = None
    """A Blender (transforms_train.json), nerfstudio (transforms.json) or LLFF (poses_bounds.npy) scene; default:
    one rendered by this package."""
    llff_downscale: int = 8
    """LLFF scenes: read images_<N> (the poses are for full resolution)."""
    scene: SceneConfig = field(default_factory=lambda: SceneConfig(image_size=96, num_train=60, num_test=8))
    """The generated scene (ignored with --data)."""
    teacher_steps: int = 2000
    teacher_rays: int = 512
    """Rays per teacher training step."""
    teacher_samples: tuple[int, int] = (24, 48)
    """Coarse and importance samples per teacher ray (vanilla NeRF: 64, 128)."""
    student_steps: int = 1500
    pseudo_views: int = 100
    """Teacher renders the student learns from (paper: 10k)."""
    teacher_coarse: FieldCellConfig = field(default_factory=lambda: FieldCellConfig((1, 1, 1), (32, 32, 32)))
    teacher_fine: FieldCellConfig = field(default_factory=lambda: FieldCellConfig((2, 1, 1), (64, 64, 64)))
    student: LightFieldNetworkConfig = field(default_factory=lambda: LightFieldNetworkConfig(width=64, num_blocks=6))
    """Student size (paper: width 256, 28 blocks)."""

    def main(self) -> None:
        started = time.perf_counter()
        root = self.output_dir.resolve()
        data = self.data.resolve() if self.data else generate_scene(_with_dir(self.scene, root / "scene"))
        teacher_config = train_stage(self.teacher_config(data, root))
        student_config = train_stage(self.student_config(teacher_config, root))
        summary = evaluate(teacher_config, student_config, root)
        summary["exports"] = export_student(student_config, root / "export", summary["frame"], summary["upscale"])
        summary["total_minutes"] = (time.perf_counter() - started) / 60
        (root / "summary.json").write_text(json.dumps(summary, indent=2))
        CONSOLE.print(summary_table(summary))
        CONSOLE.print(full_scale_line(summary["full_scale_hours"]))
        CONSOLE.print(
            f"Pictures: {root / 'comparison.png'} and {root / 'turntable.gif'}; numbers: {root / 'summary.json'}"
        )

    def teacher_config(self, data: Path, root: Path) -> TrainerConfig:
        config = nas_nerf_trainer("nas-nerf", self.teacher_coarse, self.teacher_fine)
        model = config.pipeline.model
        model.num_coarse_samples, model.num_importance_samples = self.teacher_samples
        config.pipeline.datamanager.dataparser, near_far = dataparser_for(data, self.llff_downscale)
        model.collider_params = {"near_plane": near_far[0], "far_plane": near_far[1]}
        config.pipeline.datamanager.data = data
        config.pipeline.datamanager.train_num_rays_per_batch = self.teacher_rays
        config.optimizers["fields"]["optimizer"].lr = 5e-3
        return _quiet(config, root, "teacher", self.teacher_steps)

    def student_config(self, teacher: Path, root: Path) -> TrainerConfig:
        config = mobile_r2l_trainer(self.student_steps)
        datamanager = config.pipeline.datamanager
        datamanager.teacher_config = teacher
        datamanager.__post_init__()  # adopt the teacher's dataparser and data
        datamanager.num_pseudo_views, datamanager.images_per_batch = self.pseudo_views, 8
        datamanager.finetune_steps = self.student_steps // 10
        config.pipeline.model.network = self.student
        config.optimizers["network"]["optimizer"].lr = 2e-3
        return _quiet(config, root, "student", self.student_steps)


def dataparser_for(data: Path, llff_downscale: int = 8) -> tuple[DataParserConfig, tuple[float, float]]:
    """The dataparser a scene folder needs, and the near/far that suits its normalised frame."""
    if (data / "transforms_train.json").is_file():  # Blender: cameras at radius ~4 around the object
        return BlenderDataParserConfig(data=data), (2.0, 6.0)
    if (data / "transforms.json").is_file():  # nerfstudio / instant-ngp: poses scaled into [-1, 1]
        return NerfstudioDataParserConfig(data=data), (0.05, 4.0)
    if (data / "poses_bounds.npy").is_file():  # LLFF: the parser's bounds override this near/far
        return LLFFDataParserConfig(data=data, downscale_factor=llff_downscale), (1.0, 6.0)
    raise ValueError(
        f"{data} is not a Blender (transforms_train.json), nerfstudio (transforms.json) or LLFF (poses_bounds.npy) "
        "scene; convert it with ns-process-data first."
    )


def _with_dir(scene: SceneConfig, output_dir: Path) -> SceneConfig:
    return SceneConfig(**{**vars(scene), "output_dir": output_dir})


def _quiet(config: TrainerConfig, root: Path, name: str, steps: int) -> TrainerConfig:
    """Fixed run directory (so re-running resumes), tensorboard instead of a blocking viewer."""
    config.output_dir, config.experiment_name, config.timestamp = root / "runs", name, "run"
    config.max_num_iterations, config.steps_per_save = steps, max(100, steps // 4)
    config.steps_per_eval_image = config.steps_per_eval_batch = config.steps_per_eval_all_images = steps + 1
    config.vis = "tensorboard"
    scheduler = next(iter(config.optimizers.values())).get("scheduler")
    if scheduler is not None and hasattr(scheduler, "max_steps"):
        scheduler.max_steps = steps
    return config


def train_stage(config: TrainerConfig) -> Path:
    """Train unless finished; resume from the last checkpoint if interrupted. Returns the config.yml."""
    from nerfstudio.scripts.train import main as ns_train  # binds the method list: import after plugins load

    config_path = config.get_base_dir() / "config.yml"
    checkpoints = sorted(config.get_checkpoint_dir().glob("step-*.ckpt"))
    last_step = int(checkpoints[-1].stem.removeprefix("step-")) if checkpoints else -1
    if last_step >= config.max_num_iterations - 1:
        CONSOLE.print(f"[green]{config.experiment_name}: already trained ({config_path})")
        return config_path
    if checkpoints:
        CONSOLE.print(f"[yellow]{config.experiment_name}: resuming from {checkpoints[-1].name}")
        config.load_dir = config.get_checkpoint_dir()
        # nerfstudio runs max_num_iterations steps *after* the loaded one: ask only for what is left
        config.max_num_iterations -= last_step + 1
    CONSOLE.rule(f"training the {config.experiment_name} ({config.method_name}, {config.max_num_iterations} steps)")
    ns_train(config)
    return config_path


def frame_seconds(render: object, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        render()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def evaluate(teacher_config: Path, student_config: Path, root: Path) -> dict:
    """Test-split metrics of both, one-frame latency of both, and the pictures."""
    _, teacher, _ = load_run(teacher_config)
    _, student, _ = load_run(student_config)
    summary = {"teacher": teacher.get_average_eval_image_metrics(), "student": student.get_average_eval_image_metrics()}
    camera, _ = next(iter(student.datamanager.fixed_indices_eval_dataloader))
    with torch.no_grad():
        summary["teacher"]["ms_per_frame"] = 1000 * frame_seconds(lambda: teacher.model.get_outputs_for_camera(camera))
        model = student.model
        fast = prepare_for_inference(model.network)
        encoded, _ = model.encode(camera, jitter=False)
        fast(encoded)  # warm-up
        summary["student"]["ms_per_frame"] = 1000 * frame_seconds(lambda: fast(model.encode(camera, jitter=False)[0]))
    summary["speedup"] = summary["teacher"]["ms_per_frame"] / summary["student"]["ms_per_frame"]
    summary["frame"] = [int(camera.height), int(camera.width)]
    summary["upscale"] = model.network.config.upscale
    summary["student"]["params"] = sum(p.numel() for p in model.network.parameters())
    summary["full_scale_hours"] = full_scale_hours(model.network.config.upscale_factors)
    write_comparison(teacher, student, root / "comparison.png")
    write_turntable(student, root / "turntable.gif")
    return summary


def export_student(student_config: Path, directory: Path, frame: list[int], upscale: int) -> list[dict]:
    """The phone packages: Core ML (fp16 and 4-bit palettized) and ONNX, pose input, each verified against torch,
    at the frame size rounded to whole super-resolution blocks (exported models have static shapes)."""
    from nerfstudio_mobile.export.cli import CoreMLExport, OnnxExport
    from nerfstudio_mobile.export.sidecar import nearest_multiple

    size = (nearest_multiple(frame[0], upscale), nearest_multiple(frame[1], upscale))
    modes = ("pose",)  # re-running the demo refreshes the packages: overwrite
    coreml = CoreMLExport(student_config, directory / "coreml", modes, size, overwrite=True,
                          compressions=("none", "palettize4"))  # fmt: skip
    exports = [coreml, OnnxExport(student_config, directory / "onnx", modes, size, overwrite=True)]
    try:
        exported = [file for export in exports for file in export.run()]
    except MissingDependencyError as error:  # the export extra is optional; the rest of the demo is not
        CONSOLE.print(f"[yellow]Export skipped: {error}")
        return []
    return [{"file": str(file.path), "weights": file.weights, "megabytes": file.size_bytes / 1e6,
             "verified": file.verification.passed} for file in exported]  # fmt: skip


# The paper's recipe (DESIGN.md): a vanilla-NeRF teacher trained nerfstudio's Blender budget, 10k pseudo
# views (8k forward-facing), a width-256 N=28 student trained 600k steps on 54 images (36 forward-facing).
PAPER_TEACHER_STEPS, PAPER_TEACHER_RAYS = 16_000, 1024
PAPER_VIEWS = {8: 10_000, 12: 8_000}
PAPER_BATCH = {8: 54, 12: 36}
PAPER_FRAME = {8: (800, 800), 12: (756, 1008)}
PAPER_STUDENT_STEPS = 600_000
TRAIN_COST = 3  # a training step costs ~3 forward passes (forward, and backward to inputs and weights)


def full_scale_hours(upscale_factors: tuple[int, ...]) -> dict[str, float]:
    """How long the paper-scale run would take on this machine: the paper's networks timed here (a vanilla-NeRF
    teacher on a 32×32 patch, since its cost per ray is the same everywhere; the N=28 student on a whole frame)."""
    scale = int(np.prod(upscale_factors))
    full_h, full_w = PAPER_FRAME[scale]
    box = SceneBox(torch.tensor([[-1.5] * 3, [1.5] * 3]))
    vanilla = NASNeRFModelConfig().setup(scene_box=box, num_train_data=1).eval()  # the collider's near 2 / far 6
    c2w = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 4.0]]])  # looks at the origin
    patch = pinhole_cameras(c2w, 32, 32, 1111.0, 1111.0, 16.0, 16.0)
    with torch.no_grad():
        seconds_per_ray = frame_seconds(lambda: vanilla.get_outputs_for_camera(patch), repeats=1) / 32**2
    render = prepare_for_inference(LightFieldNetwork(LightFieldNetworkConfig(upscale_factors=upscale_factors)))
    grid = torch.zeros(1, RayEncodingConfig().num_channels, full_h // scale, full_w // scale)
    render(grid)  # warm-up
    student_frame = frame_seconds(lambda: render(grid), repeats=1)
    seconds = {
        "teacher": PAPER_TEACHER_STEPS * PAPER_TEACHER_RAYS * TRAIN_COST * seconds_per_ray,
        "pseudo_views": PAPER_VIEWS[scale] * full_h * full_w * seconds_per_ray,
        "student": PAPER_STUDENT_STEPS * PAPER_BATCH[scale] * TRAIN_COST * student_frame,
    }
    return {stage: value / 3600 for stage, value in seconds.items()}


def _duration(hours: float) -> str:
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.0f} days" if hours < 24 * 365 else f"{hours / 24 / 365:.1f} years"


def full_scale_line(hours: dict[str, float]) -> str:
    stages = ", ".join(f"{stage.replace('_', ' ')} {_duration(value)}" for stage, value in hours.items())
    return (
        f"The paper-scale run (vanilla-NeRF teacher 16k steps, 10k pseudo views or 8k forward-facing, N=28 student "
        f"600k steps) would take "
        f"~{_duration(sum(hours.values()))} on this machine ({stages}); the paper used 1–2 days on 4 V100s. "
        "Scale out: shard pseudo views with ns-mobile-pseudo-views --shard k --num-shards n, train on GPUs."
    )


def write_comparison(teacher: Pipeline, student: Pipeline, path: Path, count: int = 4) -> None:
    """Rows of ground truth | teacher | student on test views."""
    rows = []
    for camera, batch in itertools.islice(student.datamanager.fixed_indices_eval_dataloader, count):
        with torch.no_grad():
            images = [batch["image"][..., :3], teacher.model.get_outputs_for_camera(camera)["rgb"],
                      student.model.get_outputs_for_camera(camera)["rgb"]]  # fmt: skip
        rows.append(torch.cat([image.cpu().clamp(0, 1) for image in images], dim=1))
    imageio.imwrite(path, (torch.cat(rows, dim=0).numpy() * 255).round().astype(np.uint8))


def write_turntable(student: Pipeline, path: Path, frames: int = 36) -> None:
    """An orbit at the training cameras' mean distance and elevation, rendered by the student."""
    cameras = student.datamanager.train_dataparser_outputs.cameras
    sampler = SphereViewSampler.fit(cameras.camera_to_worlds)
    h, w, fx, fy, cx, cy = (int(cameras.height[0]), int(cameras.width[0]), float(cameras.fx[0]), float(cameras.fy[0]),
                            float(cameras.cx[0]), float(cameras.cy[0]))  # fmt: skip
    images = []
    for c2w in sampler.orbit(frames):
        camera: Cameras = pinhole_cameras(c2w[None], h, w, fx, fy, cx, cy).to(student.device)
        with torch.no_grad():
            rgb = student.model.get_outputs_for_camera(camera)["rgb"]
        images.append((rgb.cpu().clamp(0, 1).numpy() * 255).round().astype(np.uint8))
    imageio.mimsave(path, images, duration=0.08, loop=0)


def summary_table(summary: dict) -> Table:
    teacher, student = summary["teacher"], summary["student"]
    h, w = summary["frame"]
    table = Table(title=f"nerfstudio-mobile demo ({summary['total_minutes']:.1f} min, {h}×{w} test frames, CPU)")
    for column in ["", "PSNR (dB)", "SSIM", f"ms / {h}×{w} frame", "params"]:
        table.add_column(column, justify="right")
    table.add_row("teacher (nas-nerf)", f"{teacher['psnr']:.2f}", f"{teacher['ssim']:.3f}",
                  f"{teacher['ms_per_frame']:.0f}", "")  # fmt: skip
    table.add_row("student (mobile-r2l)", f"{student['psnr']:.2f}", f"{student['ssim']:.3f}",
                  f"{student['ms_per_frame']:.1f}", f"{student['params']:,}")  # fmt: skip
    table.add_row("student − teacher", f"{student['psnr'] - teacher['psnr']:+.2f}",
                  f"{student['ssim'] - teacher['ssim']:+.3f}", f"{summary['speedup']:.0f}× faster", "")  # fmt: skip
    packages = [f"{Path(e['file']).name} {e['megabytes']:.2f} MB{'' if e['verified'] else ' (FAILED check)'}"
                for e in summary["exports"]]  # fmt: skip
    table.caption = "Phone packages: " + (", ".join(packages) if packages else "none (export extra missing)")
    return table


def entrypoint() -> None:
    tyro.extras.set_accent_color("bright_yellow")
    tyro.cli(Demo).main()
