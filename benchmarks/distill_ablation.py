"""What each change to the distillation recipe buys at the demo's scale: one teacher (the demo's, on its generated
scene), then students that each differ from the demo's recipe in one knob; test-split PSNR/SSIM and training minutes.

    python benchmarks/distill_ablation.py     # resumable: finished students are read back, not retrained

Writes benchmarks/results/distill_ablation.{json,md}. Run it alone: the minutes are only comparable within one run
on an otherwise idle machine.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tyro
from common import WORK, machine, write_results

from nerfstudio_mobile.common.checkpoints import checkpoint_steps
from nerfstudio_mobile.common.files import atomic_write_json
from nerfstudio_mobile.common.runs import load_run
from nerfstudio_mobile.demo.demo import Demo

# The demo's recipe up to 0.2. The first variants change one knob of it; those after "demo-now" one knob of the
# recipe it led to (the demo's defaults now).
OLD_RECIPE: dict[str, Any] = {"network.width": 64, "network.num_blocks": 6, "optimizer.lr": 2e-3}
# name -> (what it changes, overrides as "<part>.<field>": value; parts: datamanager, network, optimizer, model,
# encoding, demo)
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
    "demo-now": ("the demo's recipe now: width 256, 8 blocks, lr 5e-3 (the defaults of `ns-mobile-demo`)", {}),
    "no-jitter": ("now, without jittered depths along the rays in training", {"model.jitter": False}),
    "no-depth-loss": ("now, without the distilled-depth loss", {"model.depth_loss_weight": 0.0}),
    "batch-4": ("now, 4 views a step for 3000 steps", {"datamanager.images_per_batch": 4, "demo.student_steps": 3000}),
    "views-200": ("now, 200 pseudo views", {"demo.pseudo_views": 200}),
    "views-300": ("now, 300 pseudo views", {"demo.pseudo_views": 300}),
    "points-16": ("now, K = 16 points per ray", {"encoding.num_points": 16}),
    "frequencies-8": ("now, L = 8 encoding frequencies", {"encoding.num_frequencies": 8}),
}
NOW = list(VARIANTS).index("demo-now")


@dataclass
class DistillAblation:
    output_dir: Path = WORK / "distill_ablation"
    """The demo's run folder: its teacher is trained once, each variant's student beside it."""
    variants: tuple[str, ...] = tuple(VARIANTS)

    def main(self) -> None:
        root = self.output_dir.resolve()
        teacher = self.teacher(root)
        rows = [self.student(root, teacher, name) for name in self.variants]
        result = {"machine": machine(), "teacher": teacher_metrics(teacher), "variants": rows}
        write_results("distill_ablation", result, markdown(result))

    def teacher(self, root: Path) -> Path:
        demo = Demo(output_dir=root)
        config = demo.teacher_config(demo.scene_data(root), root)
        train_once(config)
        return config.get_base_dir() / "config.yml"

    def student(self, root: Path, teacher: Path, name: str) -> dict[str, Any]:
        description, changes = VARIANTS[name]
        overrides = changes if list(VARIANTS).index(name) >= NOW else {**OLD_RECIPE, **changes}
        demo_fields = {key.split(".", 1)[1]: value for key, value in overrides.items() if key.startswith("demo.")}
        config = Demo(output_dir=root, **demo_fields).student_config(teacher, root)
        config.experiment_name = f"student-{name}"
        parts = {
            "datamanager": config.pipeline.datamanager,
            "network": config.pipeline.model.network,
            "optimizer": config.optimizers["network"]["optimizer"],
            "model": config.pipeline.model,
            "encoding": config.pipeline.model.encoding,
        }
        for key, value in overrides.items():
            part, field = key.split(".", 1)
            if part != "demo":
                setattr(parts[part], field, value)
        minutes = train_once(config)
        _, pipeline, _ = load_run(config.get_base_dir() / "config.yml")
        metrics = pipeline.get_average_eval_image_metrics()
        return {"name": name, "change": description, "psnr": metrics["psnr"], "ssim": metrics["ssim"],
                "minutes": minutes, "params": sum(p.numel() for p in pipeline.model.network.parameters())}  # fmt: skip


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


def teacher_metrics(config: Path) -> dict[str, float]:
    _, pipeline, _ = load_run(config)
    return {key: value for key, value in pipeline.get_average_eval_image_metrics().items() if key in ("psnr", "ssim")}


def markdown(result: dict[str, Any]) -> str:
    teacher = result["teacher"]
    rows = {row["name"]: row for row in result["variants"]}
    lines = [
        f"## Distillation recipe ablation at the demo's scale ({result['machine']})",
        "",
        f"Teacher: the demo's nas-nerf, {teacher['psnr']:.2f} dB / SSIM {teacher['ssim']:.3f} on the generated "
        "scene's test views (96×96). Each student above demo-now changes one thing from the demo's 0.2 recipe (1500 "
        "steps, 8 views per step, the last 150 on the real training images), each below it one thing from demo-now; "
        "'vs base' compares with that recipe. Train min includes rendering pseudo views not rendered before.",
        "",
        "| variant | change | student PSNR (dB) | gap to teacher | vs base | SSIM | train min | params |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["variants"]:
        base = rows.get("demo-now" if list(VARIANTS).index(row["name"]) > NOW else "demo-0.2", row)
        lines.append(
            f"| {row['name']} | {row['change']} | {row['psnr']:.2f} | {row['psnr'] - teacher['psnr']:+.2f} | "
            f"{row['psnr'] - base['psnr']:+.2f} | {row['ssim']:.3f} | {row['minutes']:.1f} | {row['params']:,} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    tyro.cli(DistillAblation).main()
