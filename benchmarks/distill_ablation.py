"""What each change to the distillation recipe buys at the demo's scale: one teacher (the demo's, on its generated
scene), then students that each differ from the demo's recipe in one knob; test-split PSNR/SSIM and training minutes.

    python benchmarks/distill_ablation.py     # resumable: finished students are read back, not retrained
    python benchmarks/distill_ablation.py --variants demo-now edge-loss-0.05 --label edge   # a few, on their own

A viewer asks a student for frames larger than those it learnt from (finer ray spacing), where the super-resolution
stages can show a checkerboard: each student is also compared with the teacher on a few test poses rendered at 1×, 2×
and 4× the training resolution, natively and upsampled from the trained spacing (the model's default), and the centre
of one pose at 4× is saved as a picture, teacher | native | upsampled.

Writes benchmarks/results/distill_ablation[_<label>].{json,md} and distill_ablation[_<label>]_4x/<variant>.png. Run it
alone: the minutes are only comparable within one run on an otherwise idle machine, and PSNRs only within one
teacher (a teacher trained on another CPU differs a little): compare a variant with the demo-now of its own run.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import tyro
from common import RESULTS, WORK, machine, results_name, write_results
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.pipelines.base_pipeline import Pipeline
from PIL import Image
from torch import Tensor

from nerfstudio_mobile.common.checkpoints import checkpoint_steps
from nerfstudio_mobile.common.files import atomic_path, atomic_write_json, make_dirs
from nerfstudio_mobile.common.intrinsics import without_distortion
from nerfstudio_mobile.common.metrics import psnr
from nerfstudio_mobile.common.runs import load_run
from nerfstudio_mobile.demo.demo import Demo

# The demo's recipe up to 0.2. The first variants change one knob of it; those after "demo-now" one knob of the
# recipe it led to (the learning rate still stepped down), those after "cosine" one knob of the recipe with the cosine
# decay (its real-image fine-tuning the last tenth of the steps; the demo's defaults now fine-tune the last fifth).
# Every recipe measured here trained 1500 steps (the demo's default until "steps-2000"), and those before
# "real-share-0.2" on pseudo views only until the fine-tuning (the demo's default since); every one before
# "defaults-upscale-4x" on a 12² ray grid upscaled 8× (the paper's factors, the demo's until the student chose a finer
# ray grid for small frames).
# Every one before "depth-at-training-poses" gave the real images' batches no depth target, and every one before
# "now-width-192" trained a width-256 student (2000 steps unless its recipe says otherwise).
# Each recipe is the one on the line above it with its own knobs set on top.
NO_TRAINING_POSE_DEPTH: dict[str, Any] = {"datamanager.depth_at_training_poses": False}
WIDTH_256: dict[str, Any] = {**NO_TRAINING_POSE_DEPTH, "network.width": 256, "demo.student_steps": 2000}
PAPER_GRID: dict[str, Any] = {**WIDTH_256, "datamanager.upscale_factors": (2, 2, 2)}
STEPS_1500: dict[str, Any] = {**PAPER_GRID, "demo.student_steps": 1500}
PSEUDO_VIEWS_ONLY: dict[str, Any] = {**STEPS_1500, "demo.student_real_share": 0.0}
FINETUNE_TENTH: dict[str, Any] = {**PSEUDO_VIEWS_ONLY, "demo.student_finetune_fraction": 0.1}
STEP_DECAY: dict[str, Any] = {**FINETUNE_TENTH, "scheduler.decay": "steps"}
OLD_RECIPE: dict[str, Any] = {**STEP_DECAY, "network.width": 64, "network.num_blocks": 6, "optimizer.lr": 2e-3}
# name -> (what it changes, overrides as "<part>.<field>": value; parts: datamanager, network, optimizer, scheduler,
# model, encoding, sampler, demo)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "demo-0.2": ("the demo's recipe up to 0.2: paper 8× upscale, width 64 × 6 blocks, 100 whole views, lr 2e-3", {}),
    "upscale-4x": ("4× super-resolution (24² ray grid instead of 12²)", {"datamanager.upscale_factors": (1, 2, 2)}),
    "width-128": ("backbone width 128, 8 blocks", {"network.width": 128, "network.num_blocks": 8}),
    "width-256": ("backbone width 256, 8 blocks", {"network.width": 256, "network.num_blocks": 8}),
    "lr-5e-3": ("learning rate 5e-3", {"optimizer.lr": 5e-3}),
    "no-finetune": ("no real-image fine-tuning (all steps on pseudo views)", {"datamanager.finetune_steps": 0}),
    "crops-400": (
        "400 half-side crops instead of 100 whole views (same teacher pixels), 8 per step",
        {"datamanager.crop_fraction": 0.5, "demo.pseudo_views": 400},
    ),
    "crops-400-32": (
        "400 half-side crops, 32 per step (the demo's pixels per step)",
        {"datamanager.crop_fraction": 0.5, "demo.pseudo_views": 400, "datamanager.images_per_batch": 32},
    ),
    "demo-now": (
        "the demo's recipe before the cosine decay: width 256, 8 blocks, lr 5e-3 ×0.1 at 50% and 80% of the steps",
        {},
    ),
    "no-jitter": ("now, without jittered depths along the rays in training", {"model.jitter": False}),
    "no-depth-loss": ("now, without the distilled-depth loss", {"model.depth_loss_weight": 0.0}),
    "near-background": (
        "now, the depth loss skipping the pixels where the teacher saw no surface (the recipe before: the student's "
        "depth of the empty background is free, and came out near)",
        {"model.far_where_no_surface": False},
    ),
    "edge-loss-0.05": (
        "now, plus an L1 loss on pixel differences along x and y, weight 0.05",
        {"model.edge_loss_weight": 0.05},
    ),
    "edge-loss-0.2": ("now, plus the same edge loss at weight 0.2", {"model.edge_loss_weight": 0.2}),
    "batch-4": ("now, 4 views a step for 3000 steps", {"datamanager.images_per_batch": 4, "demo.student_steps": 3000}),
    "views-200": ("now, 200 pseudo views", {"demo.pseudo_views": 200}),
    "views-300": ("now, 300 pseudo views", {"demo.pseudo_views": 300}),
    "points-16": ("now, K = 16 points per ray", {"encoding.num_points": 16}),
    "frequencies-8": ("now, L = 8 encoding frequencies", {"encoding.num_frequencies": 8}),
    "zoom-1-2": (
        "now, each pseudo view at zoom 1× or 2× (a window of 1/z of the frame at z× the focal length)",
        {"datamanager.zoom_levels": (1.0, 2.0)},
    ),
    "zoom-1-2-4": ("now, each pseudo view at zoom 1×, 2× or 4×", {"datamanager.zoom_levels": (1.0, 2.0, 4.0)}),
    "zoom-1-2-4-views-300": (
        "now, zoom 1×, 2× or 4× on 300 pseudo views (about 100 at 1×, as demo-now)",
        {"datamanager.zoom_levels": (1.0, 2.0, 4.0), "demo.pseudo_views": 300},
    ),
    "zero-init": (
        "now, every residual block starting as the identity (its last BN scale 0)",
        {"network.zero_init_residual": True},
    ),
    "quasi-random": (
        "now, pseudo-view poses from a low-discrepancy sequence instead of independent draws",
        {"sampler.quasi_random": True},
    ),
    "cosine": (
        "now, a cosine learning-rate decay instead of steps (the defaults of `ns-mobile-demo` since)",
        {"scheduler.decay": "cosine"},
    ),
    "cosine-quasi-random": ("cosine, and quasi-random poses", {"sampler.quasi_random": True}),
    "cosine-lr-1e-2": ("cosine, from a peak learning rate of 1e-2", {"optimizer.lr": 1e-2}),
    "zero-init-cosine": ("cosine, and zero-initialised blocks", {"network.zero_init_residual": True}),
    "cosine-finetune-300": (
        "cosine, the last 300 steps on the real training images (20%, instead of 150; the demo's default since)",
        {"datamanager.finetune_steps": 300},
    ),
    "grid-shifts": (
        "cosine, each batch's frames through a window one block smaller, shifted by a random whole number of pixels "
        "inside a block: the ray grid moves with it (s² distinct ray grids per teacher render)",
        {"datamanager.grid_shifts": True},
    ),
    "grid-shifts-finetune-300": (
        "cosine, grid shifts and the last 300 steps on the real training images",
        {"datamanager.grid_shifts": True, "datamanager.finetune_steps": 300},
    ),
    "real-share-0.2": (
        "the demo's defaults (cosine, the last fifth on the real images), and every fifth step before that on the real "
        "training images instead of pseudo views",
        {"datamanager.real_image_share": 0.2},
    ),
    "real-share-0.4": (
        "the demo's defaults, and 2 steps in 5 before the last fifth on the real images",
        {"datamanager.real_image_share": 0.4},
    ),
    "real-share-0.6": (
        "the demo's defaults, and 3 steps in 5 before the last fifth on the real images",
        {"datamanager.real_image_share": 0.6},
    ),
    "finetune-450": ("the demo's defaults, but the last 30% on the real images", {"datamanager.finetune_steps": 450}),
    "real-only": ("no distillation: every step on the real training images", {"datamanager.finetune_steps": 1500}),
    "steps-2000": (
        "the demo's defaults (2 in 5 steps, then the last fifth, on the real images), 2000 steps instead of 1500: the "
        "minutes the channels-last training layout saved",
        {"demo.student_steps": 2000},
    ),
    "defaults-views-200": ("the demo's defaults, 200 pseudo views", {"demo.pseudo_views": 200}),
    "steps-2000-views-200": (
        "the demo's defaults, 2000 steps and 200 pseudo views",
        {"demo.student_steps": 2000, "demo.pseudo_views": 200},
    ),
    "defaults-upscale-4x": (
        "the demo's defaults then, a 24² ray grid upscaled 4× instead of 12² upscaled 8× (four times the backbone's "
        "rays; the default since, for frames this small)",
        {"datamanager.upscale_factors": (1, 2, 2)},
    ),
    "defaults-frequencies-4": (
        "the demo's defaults then, L = 4 encoding frequencies (smoother in the ray, to interpolate between views)",
        {"encoding.num_frequencies": 4},
    ),
    "defaults-points-4": ("the demo's defaults then, K = 4 points per ray", {"encoding.num_points": 4}),
    "now-steps-2500": (
        "the demo's defaults now (the 24² ray grid), 2500 student steps instead of 2000",
        {"demo.student_steps": 2500},
    ),
    "now-views-200": ("the demo's defaults now, 200 pseudo views instead of 100", {"demo.pseudo_views": 200}),
    # More, cheaper steps in about the minutes of the defaults' 2000 (the student is step-starved on its 24² grid)
    "now-again": ("the demo's defaults now, trained again beside the variants below (their hour's minutes)", {}),
    "now-batch-4": (
        "the demo's defaults now, 4 views a step instead of 8, for 4000 steps",
        {"datamanager.images_per_batch": 4, "demo.student_steps": 4000},
    ),
    "now-blocks-6": (
        "the demo's defaults now, 6 residual blocks instead of 8, for 2600 steps",
        {"network.num_blocks": 6, "demo.student_steps": 2600},
    ),
    "now-width-192": (
        "the demo's defaults now, backbone width 192 instead of 256, for 3200 steps",
        {"network.width": 192, "demo.student_steps": 3200},
    ),
    "now-width-192-steps-2600": (
        "the demo's defaults now, backbone width 192 instead of 256, for 2600 steps",
        {"network.width": 192, "demo.student_steps": 2600},
    ),
    "now-width-192-blocks-6": (
        "the demo's defaults now, backbone width 192 and 6 residual blocks instead of 256 and 8, for 3200 steps",
        {"network.width": 192, "network.num_blocks": 6, "demo.student_steps": 3200},
    ),
    "depth-at-training-poses": (
        "the demo's defaults (width 192, 3200 steps), the real images' batches with the teacher's depth at their "
        "cameras as depth target (the default since)",
        {"datamanager.depth_at_training_poses": True},
    ),
}
# Groups of variants: (its first variant, the row of the recipe its variants change one knob of, that recipe)
GROUPS: list[tuple[str, str, dict[str, Any]]] = [
    ("demo-0.2", "demo-0.2", OLD_RECIPE),
    ("demo-now", "demo-now", STEP_DECAY),
    ("cosine", "cosine", FINETUNE_TENTH),
    ("real-share-0.2", "cosine-finetune-300", PSEUDO_VIEWS_ONLY),  # the demo's defaults then
    ("steps-2000", "real-share-0.4", STEPS_1500),  # the demo's defaults then
    ("defaults-upscale-4x", "steps-2000", PAPER_GRID),  # the demo's defaults then
    ("now-steps-2500", "defaults-upscale-4x", WIDTH_256),  # the demo's defaults then
    ("now-again", "now-again", WIDTH_256),  # the same defaults, again: the base of the same hour
    # the defaults then (now-width-192's)
    (
        "depth-at-training-poses",
        "now-width-192",
        {**NO_TRAINING_POSE_DEPTH, "network.width": 192, "demo.student_steps": 3200},
    ),
]


def base_recipe(name: str) -> tuple[str, dict[str, Any]]:
    """The row a variant is compared with ("vs base": its recipe's row; that row itself, with the recipe before) and
    the overrides of the recipe it changes one knob of."""
    index = list(VARIANTS).index(name)
    group = max(i for i, (first, _, _) in enumerate(GROUPS) if list(VARIANTS).index(first) <= index)
    _, row, recipe = GROUPS[group]
    return (GROUPS[group - 1][1] if name == row and group > 0 else row), recipe


VIEWER_ZOOMS = (1, 2, 4)
"""Multiples of the training resolution the test poses are rendered at, by the teacher and by each student."""


@dataclass
class DistillAblation:
    output_dir: Path = WORK / "distill_ablation"
    """The demo's run folder: its teacher is trained once, each variant's student beside it."""
    variants: tuple[str, ...] = tuple(VARIANTS)
    viewer_poses: int = 3
    """Test poses the students are compared with the teacher on, at each of VIEWER_ZOOMS."""
    label: str = ""
    """Results as distill_ablation_<label> (e.g. a few variants on another machine), beside the full table."""

    def main(self) -> None:
        root = self.output_dir.resolve()
        teacher = self.teacher(root)
        _, teacher_pipeline, _ = load_run(teacher)
        metrics = teacher_pipeline.get_average_eval_image_metrics()
        frames = viewer_frames(teacher_pipeline, self.viewer_poses)
        name = results_name("distill_ablation", self.label)
        pictures = RESULTS / f"{name}_4x"
        rows = [self.student(root, teacher, variant, frames, pictures) for variant in self.variants]
        result = {"machine": machine(), "teacher": {key: metrics[key] for key in ("psnr", "ssim")},
                  "viewer_poses": self.viewer_poses, "pictures": pictures.name, "variants": rows}  # fmt: skip
        write_results(name, result, markdown(result))

    def teacher(self, root: Path) -> Path:
        demo = Demo(output_dir=root)
        config = demo.teacher_config(demo.scene_data(root), root)
        train_once(config)
        return config.get_base_dir() / "config.yml"

    def student(
        self, root: Path, teacher: Path, name: str, frames: list[ViewerFrame], pictures: Path
    ) -> dict[str, Any]:
        description, changes = VARIANTS[name]
        overrides = {**base_recipe(name)[1], **changes}
        demo_fields = {key.split(".", 1)[1]: value for key, value in overrides.items() if key.startswith("demo.")}
        config = Demo(output_dir=root, **demo_fields).student_config(teacher, root)
        config.experiment_name = f"student-{name}"
        parts = {
            "datamanager": config.pipeline.datamanager,
            "network": config.pipeline.model.network,
            "optimizer": config.optimizers["network"]["optimizer"],
            "scheduler": config.optimizers["network"]["scheduler"],
            "model": config.pipeline.model,
            "encoding": config.pipeline.model.encoding,
            "sampler": config.pipeline.datamanager.sampler,
        }
        for key, value in overrides.items():
            part, field = key.split(".", 1)
            if part != "demo":
                setattr(parts[part], field, value)
        minutes = train_once(config)
        _, pipeline, _ = load_run(config.get_base_dir() / "config.yml")
        metrics = pipeline.get_average_eval_image_metrics()
        return {"name": name, "change": description, "psnr": metrics["psnr"], "ssim": metrics["ssim"],
                "minutes": minutes, "params": sum(p.numel() for p in pipeline.model.network.parameters()),
                "vs_teacher_psnr": compare_with_teacher(pipeline, frames, pictures / f"{name}.png")}  # fmt: skip


@dataclass(frozen=True)
class ViewerFrame:
    """A test pose as a viewer asks for it at `zoom`× the training resolution, and the teacher's render of it."""

    zoom: int
    camera: Cameras
    teacher_rgb: Tensor
    teacher_depth: Tensor
    teacher_surface: Tensor
    """Where the teacher is opaque (accumulation > 0.9): the pixels the depth ratio is taken on."""


def viewer_frames(teacher: Pipeline, poses: int) -> list[ViewerFrame]:
    """The first `poses` test cameras at each of VIEWER_ZOOMS (sizes and intrinsics scaled as nerfstudio's viewer
    scales them), rendered by the teacher once for every student."""
    frames = []
    for camera, _ in itertools.islice(teacher.datamanager.fixed_indices_eval_dataloader, poses):
        for zoom in VIEWER_ZOOMS:
            zoomed = without_distortion(camera)  # a copy: rescaling replaces its intrinsics, not the test camera's
            zoomed.rescale_output_resolution(zoom)
            with torch.no_grad():
                outputs = {name: value.cpu() for name, value in teacher.model.get_outputs_for_camera(zoomed).items()}
            surface = outputs["accumulation"][..., 0] > 0.9
            frames.append(ViewerFrame(zoom, zoomed, outputs["rgb"], outputs["depth"][..., 0], surface))
    return frames


def compare_with_teacher(student: Pipeline, frames: list[ViewerFrame], picture: Path) -> dict[str, Any]:
    """Mean PSNR of the student against the teacher at each zoom, rendered natively (rays as fine as the frame asks
    for) and as the model renders now (frames finer than training upsampled from the trained spacing):
    {"native": {"1": dB, ...}, "upsampled": {...}}, and "depth_ratio": the median of the student's depth over the
    teacher's on the teacher's opaque pixels at 1×. The centre (half of each side) of the first pose at the largest
    zoom is written to `picture` as teacher | native | upsampled (the whole frame would add megabytes of pictures to
    the repository at each run of the ablation)."""
    model = student.model
    renders: dict[str, list[Tensor]] = {}
    depth_ratios = []
    for policy, upsample in (("native", False), ("upsampled", True)):
        model.config.upsample_finer_frames = upsample
        renders[policy] = []
        for frame in frames:
            with torch.no_grad():
                outputs = model.get_outputs_for_camera(frame.camera)
            renders[policy].append(outputs["rgb"].cpu().clamp(0, 1))
            if policy == "native" and frame.zoom == 1:
                depth = outputs["depth"][..., 0].cpu()
                depth_ratios.append(depth[frame.teacher_surface] / frame.teacher_depth[frame.teacher_surface])
    scores: dict[str, Any] = {"depth_ratio": float(torch.cat(depth_ratios).median())}
    for policy, images in renders.items():
        values = [(f.zoom, float(psnr(f.teacher_rgb, rgb))) for f, rgb in zip(frames, images, strict=True)]
        scores[policy] = {str(zoom): float(np.mean([v for z, v in values if z == zoom])) for zoom in VIEWER_ZOOMS}
    largest = next(i for i, frame in enumerate(frames) if frame.zoom == max(VIEWER_ZOOMS))
    height, width = frames[largest].teacher_rgb.shape[:2]
    centre = (slice(height // 4, height - height // 4), slice(width // 4, width - width // 4))
    panels = [frames[largest].teacher_rgb, renders["native"][largest], renders["upsampled"][largest]]
    side_by_side = torch.cat([panel[centre] for panel in panels], dim=1)
    make_dirs(picture.parent)
    with atomic_path(picture) as temp:
        Image.fromarray((side_by_side.numpy() * 255).round().astype(np.uint8)).save(temp, format="PNG")
    return scores


def train_once(config: Any) -> float:
    """Train a run from scratch unless its last checkpoint exists; returns the minutes its training took (kept in
    <run>/minutes.json, so a re-run reports the first one's time)."""
    from nerfstudio.scripts.train import main as ns_train  # binds the method list: import after plugins load

    record = config.get_base_dir() / "minutes.json"
    steps = checkpoint_steps(config.get_checkpoint_dir())
    if steps and steps[-1] >= config.max_num_iterations - 1 and record.is_file():
        return json.loads(record.read_text())["minutes"]
    started = time.perf_counter()
    ns_train(config)
    minutes = (time.perf_counter() - started) / 60
    atomic_write_json(record, {"minutes": minutes})
    return minutes


def markdown(result: dict[str, Any]) -> str:
    teacher = result["teacher"]
    rows = {row["name"]: row for row in result["variants"]}
    lines = [
        f"## Distillation recipe ablation at the demo's scale ({result['machine']})",
        "",
        f"Teacher: the demo's nas-nerf, {teacher['psnr']:.2f} dB / SSIM {teacher['ssim']:.3f} on the generated "
        "scene's test views (96×96). Each student above demo-now changes one thing from the demo's 0.2 recipe (1500 "
        "steps, 8 views per step, the last 150 on the real training images), each below it up to cosine one thing from "
        "demo-now, each below cosine (the demo's defaults until they fine-tuned the last fifth) up to real-share-0.2 "
        "one thing from cosine, each from real-share-0.2 up to steps-2000 one thing from the demo's defaults "
        "(cosine-finetune-300), each from steps-2000 up to defaults-upscale-4x one thing from the defaults then "
        "(real-share-0.4), each from defaults-upscale-4x up to now-steps-2500 one thing from those of steps-2000, each "
        "from now-steps-2500 up to now-again one thing from the defaults now (defaults-upscale-4x), each from "
        "now-again up to depth-at-training-poses one thing from the same defaults, trained again in the same hour "
        "(now-again), and depth-at-training-poses one thing from the defaults of now-width-192; 'vs base' compares "
        "with that recipe (–: not in this table). Train min includes rendering the teacher's views not rendered "
        "before.",
        "",
        f"vs teacher at 1× / 2× / 4×: the student's PSNR against the teacher on {result['viewer_poses']} test poses "
        "rendered at 1×, 2× and 4× the training resolution, as a viewer asks for larger frames (finer rays than any "
        "the student learnt from, where its super-resolution can show a checkerboard); the centre of the first pose at "
        f"4×, teacher | student native | student upsampled, is in {result.get('pictures', 'distill_ablation_4x')}/"
        "<variant>.png. Native: the student renders the rays the frame asks for; upsampled (the model's default now, "
        "`upsample_finer_frames`): a frame finer than training renders at the trained spacing and is upsampled "
        "(bicubic). depth / teacher's: the median ratio of the student's depth to the teacher's on the teacher's "
        "opaque pixels (accumulation > 0.9) of those poses at 1×.",
        "",
        "| variant | change | student PSNR (dB) | gap to teacher | vs base | SSIM | vs teacher at 1× / 2× / 4×, "
        "native (dB) | upsampled (dB) | depth / teacher's | train min | params |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["variants"]:
        base = rows.get(base_recipe(row["name"])[0])
        versus = "–" if base is None else f"{row['psnr'] - base['psnr']:+.2f}"
        native, upsampled = (
            " / ".join(f"{row['vs_teacher_psnr'][policy][str(zoom)]:.2f}" for zoom in VIEWER_ZOOMS)
            for policy in ("native", "upsampled")
        )
        ratio = row["vs_teacher_psnr"].get("depth_ratio")
        depth_ratio = "–" if ratio is None else f"{ratio:.3f}"
        lines.append(
            f"| {row['name']} | {row['change']} | {row['psnr']:.2f} | {row['psnr'] - teacher['psnr']:+.2f} | "
            f"{versus} | {row['ssim']:.3f} | {native} | {upsampled} | {depth_ratio} | "
            f"{row['minutes']:.1f} | {row['params']:,} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    tyro.cli(DistillAblation).main()
