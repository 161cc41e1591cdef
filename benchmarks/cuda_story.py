"""The whole story on a CUDA GPU: the demo at its own small scale, then lego at 400×400.

    python benchmarks/cuda_story.py    # needs a CUDA GPU (CI has none and never runs it)

1. `ns-mobile-demo` at its defaults: the generated scene, teacher → pseudo views → student → evaluation →
   Core ML and ONNX packages, as the README's first command runs it on a CPU.
2. lego at 400×400 through benchmarks/distill_quality.py (label `cuda-400`, GPU-sized ray batches), which also
   writes results/distill_lego_cuda-400.{json,md}.

Writes results/cuda_story.{json,md} and each stage's comparison picture (ground truth | teacher | student, and the
depths). A stage that fails is recorded with its error and the next one still runs: a GPU lease is short.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import imageio.v2 as imageio
import torch
import tyro
from common import RESULTS, WORK, machine, write_results
from distill_quality import DistillQuality

from nerfstudio_mobile.demo.demo import Demo


@dataclass
class CudaStory:
    lego_teacher_steps: int = 3000
    lego_teacher_rays: int = 4096
    lego_pseudo_views: int = 200
    lego_student_steps: int = 3000
    lego_student_lr: float = 2e-3

    def main(self) -> None:
        if not torch.cuda.is_available():
            print("cuda_story.py: no CUDA GPU here; run it on a GPU machine (CPU numbers: distill_quality.py).")
            sys.exit(2)
        lego = DistillQuality(
            scene="lego", max_image_size=400, teacher_steps=self.lego_teacher_steps,
            teacher_rays=self.lego_teacher_rays, pseudo_views=self.lego_pseudo_views,
            student_steps=self.lego_student_steps, student_lr=self.lego_student_lr, label="cuda-400",
        )  # fmt: skip
        stages = {
            "demo": (Demo(output_dir=WORK / "cuda_demo").main, WORK / "cuda_demo"),
            "lego-400": (lego.main, WORK / "distill_lego_cuda-400"),
        }
        story: dict = {"gpu": torch.cuda.get_device_name(), "machine": machine(), "stages": {}}
        for name, (run, directory) in stages.items():
            story["stages"][name] = run_stage(name, run, directory.resolve())
            write_results("cuda_story", story, markdown(story))  # after each stage: a cut lease keeps the first


def run_stage(name: str, run: Callable[[], None], directory: Path) -> dict:
    """Run one stage; its summary and picture, or the error it ended with (the traceback is printed)."""
    started = time.perf_counter()
    try:
        run()
    except (Exception, SystemExit) as error:  # the demo exits 1 after printing where its traceback is
        traceback.print_exc()
        return {"error": f"{type(error).__name__}: {error}", "minutes": (time.perf_counter() - started) / 60}
    summary = json.loads((directory / "summary.json").read_text())
    summary["minutes"] = (time.perf_counter() - started) / 60
    picture = imageio.imread(directory / "comparison.png")
    half = picture[: picture.shape[0] // 2]  # the first two test views: the whole picture at 400² is megabytes
    imageio.imwrite(RESULTS / f"cuda_story_{name}.jpg", half, quality=90)
    return summary


def markdown(story: dict) -> str:
    lines = [
        f"## The whole story on a CUDA GPU ({story['gpu']}; {story['machine']})",
        "",
        "| stage | frame | min | teacher dB | student dB | gap dB | teacher ms | student ms | speed-up | packages |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, stage in story["stages"].items():
        if "error" in stage:
            lines.append(f"| {name} | | {stage['minutes']:.1f} | failed: {stage['error'][:200]} | | | | | | |")
            continue
        teacher, student = stage["teacher"], stage["student"]
        packages = ", ".join(f"{Path(e['file']).name} {e['megabytes']:.2f} MB" for e in stage["exports"])
        cells = (
            name, "×".join(map(str, stage["frame"])), f"{stage['minutes']:.1f}", f"{teacher['psnr']:.2f}",
            f"{student['psnr']:.2f}", f"{student['psnr'] - teacher['psnr']:+.2f}", f"{teacher['ms_per_frame']:.1f}",
            f"{student['ms_per_frame']:.2f}", f"{stage['speedup']:.0f}×", packages,
        )  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Pictures: `cuda_story_<stage>.jpg` (two test views: ground truth | teacher | student, depths below). "
        "Settings: the demo's defaults; lego as `distill_lego_cuda-400.md` lists them.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    tyro.cli(CudaStory).main()
