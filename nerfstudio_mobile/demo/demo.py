"""`ns-mobile-demo`: the whole story in one command, offline, on a scene this package renders itself.

    generated scene ─► ns-train nas-nerf (teacher) ─► ns-train mobile-r2l (student, distilled)
        ─► eval both on the real test split ─► latency of one frame each ─► Core ML + ONNX export
        ─► summary table, ground truth | teacher | student picture, turntable GIF by the student

Every stage is resumable: finished stages are skipped, an interrupted training resumes from its last
checkpoint. `--data` takes a real Blender, nerfstudio or LLFF scene instead of the generated one, and trains on
a copy shrunk to `--max-image-size` (the teacher renders every pixel of every pseudo view, so pixels are time).
Before anything trains, it prints how long this run and the paper-scale run would take on this machine. Then
each stage shows a progress bar; what nerfstudio and the libraries print (config dumps, warnings) goes to
<output dir>/demo.log.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import imageio.v2 as imageio
import numpy as np
import torch
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import Pipeline
from nerfstudio.utils import colormaps
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from nas_nerf.cell import FieldCellConfig
from nas_nerf.configs import nas_nerf_trainer
from nerfstudio_mobile.common.checkpoints import checkpoint_steps
from nerfstudio_mobile.common.cli import UsageError, run_cli
from nerfstudio_mobile.common.compat import default_device_type
from nerfstudio_mobile.common.console_capture import output_to_log
from nerfstudio_mobile.common.intrinsics import without_distortion
from nerfstudio_mobile.common.runs import load_run
from nerfstudio_mobile.common.timing import median_seconds
from nerfstudio_mobile.common.trainer import fixed_run, train
from nerfstudio_mobile.data.formats import dataparser_for
from nerfstudio_mobile.data.scene_copies import downscaled_copy
from nerfstudio_mobile.data.scenes import SceneConfig, generate_scene
from nerfstudio_mobile.demo.run_estimate import CostRates, RunPlan, paper_plan, plan_line
from nerfstudio_mobile.export.errors import MissingDependencyError
from nerfstudio_mobile.mobile_r2l.cache import CacheMeta
from nerfstudio_mobile.mobile_r2l.cache.generate import VIEWS_RENDERED
from nerfstudio_mobile.mobile_r2l.configs import mobile_r2l_trainer
from nerfstudio_mobile.mobile_r2l.datamanager import MIN_RAYS_PER_SIDE, TRAINING_POSES, upscale_factors_for
from nerfstudio_mobile.mobile_r2l.network import LightFieldNetworkConfig
from nerfstudio_mobile.mobile_r2l.views import SphereViewSampler, detect_layout

CONSOLE = Console()
IMAGES_PER_BATCH = 8
"""Whole pseudo views per student step."""
DISPLAY_SIZE = 256
"""Pixels a panel of comparison.png is enlarged to (training frames are small on a CPU)."""
TEACHER, VIEWS, STUDENT = "teacher training", "pseudo views", "student training"
EVALUATION, EXPORT = "evaluation", "export"
"""The stages, in this order, each with its progress bar."""
EVALUATION_PARTS = 5
"""How many parts `evaluate` reports to its `part` callback."""
EXPORT_PARTS = 2
"""How many parts `export_student` reports: Core ML and ONNX."""


@dataclass
class Demo:
    """Teacher → student → phone, on a generated scene (or --data), with a summary a person can look at."""

    output_dir: Path = Path("demo")
    """Where everything goes (scene, runs, exports, pictures). Re-running resumes."""
    data: Path | None = None
    """A Blender (transforms_train.json), nerfstudio (transforms.json) or LLFF (poses_bounds.npy) scene; default:
    one rendered by this package."""
    max_image_size: int = 128
    """--data: train on a copy (in the output dir) whose images fit in N×N pixels; 0 keeps the originals."""
    max_test_views: int = 25
    """--data, Blender: evaluate on this many evenly spaced test views (lego has 200)."""
    scene: SceneConfig = field(default_factory=lambda: SceneConfig(image_size=96, num_train=60, num_test=8))
    """The generated scene (ignored with --data)."""
    teacher: Literal["nas-nerf", "nerfacto"] = "nas-nerf"
    """The teacher's method: nas-nerf (small field cells) or nerfstudio's nerfacto (real, unbounded captures)."""
    teacher_steps: int = 2000
    teacher_rays: int = 512
    """Rays per teacher training step."""
    teacher_samples: tuple[int, int] = (24, 48)
    """Coarse and importance samples per teacher ray (vanilla NeRF: 64, 128)."""
    student_steps: int = 3200
    """The student is step-starved at this budget: the narrower backbone's 3200 steps gave +0.92 dB over 2000 of width
    256, for 1.25× its minutes (benchmarks/results/distill_ablation_cheaper-steps.md)."""
    student_lr: float = 5e-3
    """The student's peak learning rate (benchmarks/results/distill_ablation.md); longer runs may need less."""
    student_finetune_fraction: float = 0.2
    """Share of the student's steps, at the end, on the real training images instead of pseudo views (a fifth: +0.23
    dB over a tenth on the test images, benchmarks/results/distill_ablation_shifts.md)."""
    student_real_share: float = 0.4
    """Share of the student's steps before the fine-tuning that train on the real training images instead of pseudo
    views, spread evenly (0: pseudo views only until the fine-tuning, as the paper; 2 in 5: +0.41 dB on the test
    images, benchmarks/results/distill_ablation_real.md)."""
    pseudo_views: int = 100
    """Teacher renders the student learns from (paper: 10k)."""
    teacher_coarse: FieldCellConfig = field(default_factory=lambda: FieldCellConfig((1, 1, 1), (32, 32, 32)))
    teacher_fine: FieldCellConfig = field(default_factory=lambda: FieldCellConfig((2, 1, 1), (64, 64, 64)))
    student: LightFieldNetworkConfig = field(default_factory=lambda: LightFieldNetworkConfig(width=192, num_blocks=8))
    """Student size (paper: width 256, 28 blocks): width 192 trains more steps in the demo's minutes
    (benchmarks/results/distill_ablation.md and distill_ablation_cheaper-steps.md compare others)."""

    def main(self) -> None:
        shares = {
            "--student-finetune-fraction": (self.student_finetune_fraction, "the share of the steps, at the end, on "
                                            "the real images (default 0.2); 1 would leave none on pseudo views"),
            "--student-real-share": (self.student_real_share, "the share of the steps before the fine-tuning on the "
                                     "real images (default 0.4)"),
        }  # fmt: skip
        for flag, (share, meaning) in shares.items():
            if not 0 <= share < 1:
                raise UsageError(f"{flag} {share} must lie in [0, 1): {meaning}.")
        started = time.perf_counter()
        root = self.output_dir.resolve()
        data = self.scene_data(root)
        teacher = self.teacher_config(data, root)  # a folder that is no scene fails here, before any log is written
        log = root / "demo.log"
        try:
            with output_to_log(log) as terminal:
                summary = self.run_stages(teacher, data, root, terminal)
        except UsageError:
            raise  # run_cli says what to do, on one line
        except KeyboardInterrupt:
            CONSOLE.print(f"[yellow]Interrupted: the same command resumes where it stopped. Log: {log}")
            sys.exit(130)
        except Exception as error:
            message = f"{type(error).__name__}: {error}".splitlines()[0]
            CONSOLE.print(f"[bold red]ns-mobile-demo:[/] {escape(message)} (traceback in {log})", soft_wrap=True)
            sys.exit(1)
        summary["total_minutes"] = (time.perf_counter() - started) / 60
        (root / "summary.json").write_text(json.dumps(summary, indent=2))
        CONSOLE.print(summary_table(summary))
        lines = [f"Pictures: {root / 'comparison.png'} and {root / 'turntable.gif'}",
                 f"Numbers: {root / 'summary.json'}", f"Full log (nerfstudio's output, warnings): {log}"]  # fmt: skip
        CONSOLE.print("\n".join(lines), soft_wrap=True)  # paths whole, to copy

    def run_stages(self, teacher: TrainerConfig, data: Path, root: Path, terminal: Console) -> dict:
        """The run estimate, then every stage under its progress bar. Returns the summary (main adds the total time)."""
        plans = {"this_run": self.plan(teacher), "paper": paper_plan(self.student.upscale_factors)}
        # the paper's vanilla-NeRF teacher is timed on 16² rays: 64² would take 20 s here
        rates = {"this_run": CostRates.measure(plans["this_run"]), "paper": CostRates.measure(plans["paper"], 16)}
        terminal.print(self.plan_text(plans, rates, data, root))
        totals = {TEACHER: self.teacher_steps, VIEWS: self.pseudo_views + plans["this_run"].training_pose_views,
                  STUDENT: self.student_steps, EVALUATION: EVALUATION_PARTS, EXPORT: EXPORT_PARTS}  # fmt: skip
        with StageBars(terminal, totals) as bars:
            teacher_config = train_stage(teacher, bars, TEACHER)

            # the student's datamanager renders what a previous run has not cached: pseudo views, then training cameras
            def views_rendered(meta: CacheMeta, rendered: int, todo: int) -> None:
                before = self.pseudo_views if meta.layout == TRAINING_POSES else 0
                bars.update(VIEWS, before + meta.num_views - todo + rendered)

            views = VIEWS_RENDERED.set(views_rendered)
            try:
                student_config = train_stage(self.student_config(teacher_config, root), bars, STUDENT)
            finally:
                VIEWS_RENDERED.reset(views)
            summary = evaluate(teacher_config, student_config, root, bars.parts(EVALUATION))
            bars.finish(EVALUATION)
            summary["estimated_hours"] = {name: plan.hours(rates[name]) for name, plan in plans.items()}
            try:
                frame, upscale = summary["frame"], summary["upscale"]
                summary["exports"] = export_student(student_config, root / "export", frame, upscale, bars.parts(EXPORT))
                bars.finish(EXPORT)
            except MissingDependencyError as error:  # the export extra is optional; the rest of the demo is not
                bars.finish(EXPORT, "skipped")
                terminal.print(f"[yellow]Export skipped: {escape(str(error))}")
                summary["exports"] = []
            summary["stage_minutes"] = bars.minutes()
        return summary

    def scene_data(self, root: Path) -> Path:
        """The generated scene, or --data (a shrunk copy of it when its images are larger than max_image_size)."""
        if self.data is None:
            return generate_scene(_with_dir(self.scene, root / "scene"))
        if self.max_image_size <= 0:  # a wrong path fails in dataparser_for, with what to do
            return self.data.resolve()
        return downscaled_copy(self.data, root / "data", self.max_image_size, self.max_test_views)

    def plan(self, teacher: TrainerConfig) -> RunPlan:
        parser = teacher.pipeline.datamanager.dataparser.setup()
        cameras = parser.get_dataparser_outputs("train").cameras
        frame = (int(cameras.height[0]), int(cameras.width[0]))
        factors = upscale_factors_for(detect_layout(cameras.camera_to_worlds), *frame, MIN_RAYS_PER_SIDE)
        return RunPlan(
            teacher=teacher.pipeline.model, teacher_steps=self.teacher_steps, teacher_rays=self.teacher_rays,
            student=replace(self.student, upscale_factors=factors), student_steps=self.student_steps,
            images_per_batch=IMAGES_PER_BATCH, frame=frame, pseudo_views=self.pseudo_views,
            test_views=len(parser.get_dataparser_outputs("test").image_filenames), training_pose_views=len(cameras),
        )  # fmt: skip

    def plan_text(self, plans: dict[str, RunPlan], rates: dict[str, CostRates], data: Path, root: Path) -> str:
        """How long this run takes here (and on the originals, for a shrunk copy), and the paper-scale run."""
        this_run, paper = plans["this_run"], plans["paper"]
        h, w = this_run.frame
        text = f"This run on this machine, from scratch: {plan_line(this_run.hours(rates['this_run']))} at {h}×{w}"
        if self.data is not None and data != self.data.resolve():
            original = self.plan(self.teacher_config(self.data.resolve(), root))
            oh, ow = original.frame
            text += f", on a copy of {self.data} shrunk from {oh}×{ow}; --max-image-size 0 would train on the "
            text += f"originals: {plan_line(original.hours(rates['this_run']))}"
        return (
            f"{text}.\nThe paper-scale run (vanilla-NeRF teacher 16k steps, {paper.pseudo_views:,} pseudo views, "
            f"N=28 student 600k steps) would take {plan_line(paper.hours(rates['paper']))}; the paper used 1–2 days "
            "on 4 V100s. Scale out: shard pseudo views with ns-mobile-pseudo-views --shard k --num-shards n, train on "
            "GPUs."
        )

    def teacher_config(self, data: Path, root: Path) -> TrainerConfig:
        dataparser, near_far = dataparser_for(data)
        if self.teacher == "nerfacto":
            config = nerfacto_trainer()
        else:
            config = nas_nerf_trainer("nas-nerf", self.teacher_coarse, self.teacher_fine)
            model = config.pipeline.model
            model.num_coarse_samples, model.num_importance_samples = self.teacher_samples
            model.collider_params = {"near_plane": near_far[0], "far_plane": near_far[1]}
            config.optimizers["fields"]["optimizer"].lr = 5e-3
        config.pipeline.datamanager.dataparser = dataparser
        config.pipeline.datamanager.data = data
        config.pipeline.datamanager.train_num_rays_per_batch = self.teacher_rays
        return fixed_run(config, root / "runs", "teacher", self.teacher_steps, max(100, self.teacher_steps // 4))

    def student_config(self, teacher: Path, root: Path) -> TrainerConfig:
        config = mobile_r2l_trainer(self.student_steps)
        datamanager = config.pipeline.datamanager
        datamanager.teacher_config = teacher
        datamanager.num_pseudo_views, datamanager.images_per_batch = self.pseudo_views, IMAGES_PER_BATCH
        datamanager.finetune_steps = round(self.student_steps * self.student_finetune_fraction)
        datamanager.real_image_share = self.student_real_share
        config.pipeline.model.network = self.student
        config.optimizers["network"]["optimizer"].lr = self.student_lr
        return fixed_run(config, root / "runs", "student", self.student_steps, max(100, self.student_steps // 4))


def nerfacto_trainer() -> TrainerConfig:
    """nerfstudio's own nerfacto recipe, on the device at hand (stock methods default to CUDA)."""
    from nerfstudio.configs.method_configs import method_configs  # after our plugins: it binds the method list

    config = copy.deepcopy(method_configs["nerfacto"])
    config.machine.device_type = default_device_type()  # type: ignore[assignment]
    return config


def _with_dir(scene: SceneConfig, output_dir: Path) -> SceneConfig:
    return SceneConfig(**{**vars(scene), "output_dir": output_dir})


class StageBars:
    """One progress bar per stage (steps done, elapsed, time left), all listed from the start. Stages run in order,
    so one that has not started when a later one does was finished by an earlier run: it is shown as such."""

    def __init__(self, console: Console, totals: dict[str, int]) -> None:
        self.progress = Progress(
            TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("left"), TimeRemainingColumn(), TextColumn("[dim]{task.fields[note]}"), console=console,
            redirect_stdout=False, redirect_stderr=False,  # what libraries print goes to the log, not above the bars
        )  # fmt: skip
        self.tasks = {stage: self.progress.add_task(stage, total=total, start=False, note="")
                      for stage, total in totals.items()}  # fmt: skip
        self.totals, self.started = totals, set[str]()

    def __enter__(self) -> StageBars:
        self.progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.stop()

    def update(self, stage: str, completed: int, note: str = "") -> None:
        if stage not in self.started:
            for earlier in itertools.takewhile(lambda name: name != stage, self.tasks):
                if earlier not in self.started:
                    self.finish(earlier)
            self.started.add(stage)
            self.progress.start_task(self.tasks[stage])
        self.progress.update(self.tasks[stage], completed=completed, note=note)

    def parts(self, stage: str) -> Callable[[str], None]:
        """A callback for a stage done in named parts: part(name) as each begins."""
        begun = itertools.count()
        return lambda name: self.update(stage, next(begun), name)

    def minutes(self) -> dict[str, float]:
        """Minutes each stage took in this invocation (0 for one an earlier run finished)."""
        tasks = {task.id: task for task in self.progress.tasks}
        return {stage: (tasks[task].finished_time or tasks[task].elapsed or 0.0) / 60
                for stage, task in self.tasks.items()}  # fmt: skip

    def finish(self, stage: str, note: str | None = None) -> None:
        if note is None:
            note = "" if stage in self.started else "done earlier"
        self.started.add(stage)
        self.progress.start_task(self.tasks[stage])  # a started task stops its clock when complete: 0:00:00 left
        self.progress.update(self.tasks[stage], completed=self.totals[stage], note=note)


def train_stage(config: TrainerConfig, bars: StageBars, stage: str) -> Path:
    """Train unless finished; resume from the last checkpoint if interrupted. Returns the config.yml."""
    config_path = config.get_base_dir() / "config.yml"
    steps = checkpoint_steps(config.get_checkpoint_dir())
    last_step = steps[-1] if steps else -1
    if last_step >= config.max_num_iterations - 1:
        bars.finish(stage)
        return config_path
    note = ""
    if steps:
        note = f"resumed after {last_step + 1} steps"
        config.load_dir = config.get_checkpoint_dir()
        # nerfstudio runs max_num_iterations steps *after* the loaded one: ask only for what is left
        config.max_num_iterations -= last_step + 1
    config.logging.local_writer.enable = False  # the bar replaces its step table, whose cursor moves garble the log
    train(config, lambda step: bars.update(stage, step + 1, note))
    bars.finish(stage, note)  # a resumed stage says so on its finished bar too
    return config_path


def evaluate(teacher_config: Path, student_config: Path, root: Path, part: Callable[[str], None]) -> dict:
    """Test-split metrics of both, one-frame latency of both, and the pictures; part(name) as each of the
    EVALUATION_PARTS begins."""
    part("loading the runs")
    teacher_run, teacher, _ = load_run(teacher_config)
    _, student, _ = load_run(student_config)
    part("test-split metrics")
    summary = {
        name: {key: value for key, value in run.get_average_eval_image_metrics().items() if math.isfinite(value)}
        for name, run in (("teacher", teacher), ("student", student))
    }  # an offline LPIPS stand-in scores NaN: left out
    summary["teacher_method"] = teacher_run.method_name
    summary["device"] = torch.cuda.get_device_name() if student.device.type == "cuda" else "CPU"
    part("latency")
    camera, _ = next(iter(student.datamanager.fixed_indices_eval_dataloader))
    with torch.no_grad():
        pinhole = without_distortion(camera)
        summary["teacher"]["ms_per_frame"] = 1000 * median_seconds(
            lambda: teacher.model.get_outputs_for_camera(pinhole)
        )
        model = student.model  # its eval renders go through the engine measured fastest here (engine_cache)
        summary["student"]["ms_per_frame"] = 1000 * median_seconds(lambda: model.get_outputs_for_camera(camera))
        chosen = model.engine_cache.chosen
        summary["student"]["engine"] = chosen.name if chosen is not None else "training network"
    summary["speedup"] = summary["teacher"]["ms_per_frame"] / summary["student"]["ms_per_frame"]
    summary["frame"] = [int(camera.height), int(camera.width)]
    summary["upscale"] = model.network.config.upscale
    summary["student"]["params"] = sum(p.numel() for p in model.network.parameters())
    part("comparison.png")
    write_comparison(teacher, student, root / "comparison.png")
    part("turntable.gif")
    write_turntable(student, root / "turntable.gif")
    return summary


def export_student(
    student_config: Path, directory: Path, frame: list[int], upscale: int, part: Callable[[str], None]
) -> list[dict]:
    """The phone packages: Core ML (fp16 and 4-bit palettized) and ONNX, pose input, each verified against torch,
    at the frame size rounded to whole super-resolution blocks (exported models have static shapes); part(name) as
    each of the EXPORT_PARTS begins. Raises MissingDependencyError without the export extra."""
    from nerfstudio_mobile.export.cli import CoreMLExport, OnnxExport
    from nerfstudio_mobile.export.sidecar import nearest_multiple

    size = (nearest_multiple(frame[0], upscale), nearest_multiple(frame[1], upscale))
    modes = ("pose",)  # re-running the demo refreshes the packages: overwrite
    coreml = CoreMLExport(student_config, directory / "coreml", modes, size, overwrite=True,
                          compressions=("none", "palettize4"))  # fmt: skip
    onnx = OnnxExport(student_config, directory / "onnx", modes, size, overwrite=True)
    exported = []
    for name, export in (("Core ML", coreml), ("ONNX", onnx)):
        part(name)
        exported += export.run()
    return [{"file": str(file.path), "weights": file.weights, "megabytes": file.size_bytes / 1e6,
             "verified": file.verification.passed} for file in exported]  # fmt: skip


def write_comparison(teacher: Pipeline, student: Pipeline, path: Path, count: int = 4) -> None:
    """For each test view, a row ground truth | teacher | student and under it their depths (the teacher's and the
    student's, coloured on one scale), each panel enlarged to about DISPLAY_SIZE pixels so a person can judge it."""
    rows = []
    for camera, batch in itertools.islice(student.datamanager.fixed_indices_eval_dataloader, count):
        with torch.no_grad():
            ours = teacher.model.get_outputs_for_camera(without_distortion(camera))
            theirs = student.model.get_outputs_for_camera(camera)
        depths = [ours["depth"].cpu(), theirs["depth"].cpu()]
        low, high = torch.quantile(
            depths[0].flatten()[:: max(1, depths[0].numel() // 10_000)], torch.tensor([0.02, 0.98])
        )
        coloured = [colormaps.apply_depth_colormap(d, near_plane=float(low), far_plane=float(high)) for d in depths]
        image = batch["image"][..., :3].cpu()
        rows.append(torch.cat([image, ours["rgb"].cpu(), theirs["rgb"].cpu()], dim=1))
        rows.append(torch.cat([torch.ones_like(image), *coloured], dim=1))
    picture = torch.cat(rows, dim=0).clamp(0, 1)
    scale = max(1, round(DISPLAY_SIZE / max(picture.shape[0] // len(rows), picture.shape[1] // 3)))
    picture = picture.repeat_interleave(scale, dim=0).repeat_interleave(scale, dim=1)  # nearest: no invented detail
    imageio.imwrite(path, (picture.numpy() * 255).round().astype(np.uint8))


def write_turntable(student: Pipeline, path: Path, frames: int = 36) -> None:
    """An orbit at the training cameras' mean distance and elevation, rendered by the student."""
    sampler = SphereViewSampler.fit(student.datamanager.train_dataparser_outputs.cameras.camera_to_worlds)
    images = []
    for c2w in sampler.orbit(frames):
        camera = student.datamanager.pinhole.cameras(c2w[None]).to(student.device)
        with torch.no_grad():
            rgb = student.model.get_outputs_for_camera(camera)["rgb"]
        images.append((rgb.cpu().clamp(0, 1).numpy() * 255).round().astype(np.uint8))
    imageio.mimsave(path, images, duration=0.08, loop=0)


def summary_table(summary: dict) -> Table:
    teacher, student = summary["teacher"], summary["student"]
    h, w = summary["frame"]
    title = f"nerfstudio-mobile demo ({summary['total_minutes']:.1f} min, {h}×{w} test frames, {summary['device']})"
    table = Table(title=title)
    for column in ["", "PSNR (dB)", "SSIM", f"ms / {h}×{w} frame", "params"]:
        table.add_column(column, justify="right")
    table.add_row(f"teacher ({summary['teacher_method']})", f"{teacher['psnr']:.2f}", f"{teacher['ssim']:.3f}",
                  f"{teacher['ms_per_frame']:.0f}", "")  # fmt: skip
    table.add_row(f"student (mobile-r2l, {student['engine']})", f"{student['psnr']:.2f}", f"{student['ssim']:.3f}",
                  f"{student['ms_per_frame']:.1f}", f"{student['params']:,}")  # fmt: skip
    table.add_row("student − teacher", f"{student['psnr'] - teacher['psnr']:+.2f}",
                  f"{student['ssim'] - teacher['ssim']:+.3f}", f"{summary['speedup']:.0f}× faster", "")  # fmt: skip
    packages = [f"{Path(e['file']).name} {e['megabytes']:.2f} MB{'' if e['verified'] else ' (FAILED check)'}"
                for e in summary["exports"]]  # fmt: skip
    table.caption = "Phone packages: " + (", ".join(packages) if packages else "none (export extra missing)")
    return table


def entrypoint() -> None:
    run_cli(Demo, "ns-mobile-demo", CONSOLE)
