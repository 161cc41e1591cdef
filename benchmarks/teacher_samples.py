"""Cheaper teacher pixels: a trained NAS-NeRF teacher's test PSNR and seconds per view against the samples per ray it
renders with (coarse uniform samples, fine PDF samples). Pseudo views are teacher renders, so a setting that keeps
the teacher's PSNR at fewer samples makes every pseudo view cheaper by the same ratio.

    .venv/bin/python benchmarks/teacher_samples.py \
        --teacher benchmarks/work/distill_lego/runs/teacher/nas-nerf/run/config.yml

Writes benchmarks/results/teacher_samples.{json,md}. Every setting renders the same test views in one process;
the first row is the samples the teacher trained with.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import tyro
from common import cpu_model, machine, write_results

from nerfstudio_mobile.common.runs import load_run
from nerfstudio_mobile.common.timing import round_robin_seconds


@dataclass
class Args:
    teacher: Path
    """config.yml of a trained nas-nerf run."""
    samples: tuple[tuple[int, int], ...] = ((12, 24), (16, 32), (32, 64), (64, 128))
    """(coarse, fine) samples per ray besides the ones the teacher trained with (the reference row, first); the
    fine field also re-evaluates the coarse ones."""
    repeats: int = 3
    """Timed renders of one test view per setting (median)."""
    name: str = "teacher_samples"


def field_evaluations(coarse: int, fine: int) -> int:
    """Samples per ray the two fields evaluate: the coarse ones, then the fine ones with the coarse again."""
    return coarse + (coarse + fine)


def main(args: Args) -> None:
    config, pipeline, _ = load_run(args.teacher)
    if config.method_name != "nas-nerf":
        raise SystemExit(f"{args.teacher} is a {config.method_name} run: this benchmark varies nas-nerf's samplers.")
    model = pipeline.model
    trained = (model.config.num_coarse_samples, model.config.num_importance_samples)

    def use(coarse: int, fine: int) -> None:
        model.sampler_uniform.num_samples, model.sampler_pdf.num_samples = coarse, fine

    settings = [trained, *(setting for setting in args.samples if setting != trained)]
    rows = []
    for coarse, fine in settings:
        use(coarse, fine)
        torch.manual_seed(0)  # the PDF sampler jitters: the same draws for every setting
        metrics = pipeline.get_average_eval_image_metrics()
        rows.append(
            dict(coarse=coarse, fine=fine, evaluations=field_evaluations(coarse, fine), psnr=metrics["psnr"],
                 ssim=metrics["ssim"])
        )  # fmt: skip
    # Time apart from the metrics, one test view per setting, the settings interleaved (load hits all alike).
    camera, _ = next(iter(pipeline.datamanager.fixed_indices_eval_dataloader))

    def render(coarse: int, fine: int) -> None:
        use(coarse, fine)
        with torch.no_grad():
            model.get_outputs_for_camera(camera)

    times = round_robin_seconds(
        {f"{coarse}+{fine}": partial(render, coarse, fine) for coarse, fine in settings}, args.repeats, warmup=1
    )
    for row in rows:
        row["seconds_per_view"] = statistics.median(times[f"{row['coarse']}+{row['fine']}"])
    reference = rows[0]
    for row in rows:
        row["speedup"] = reference["seconds_per_view"] / row["seconds_per_view"]
        row["psnr_change"] = row["psnr"] - reference["psnr"]
        print(row)
    result = dict(
        teacher=str(args.teacher),
        trained_samples=trained,
        repeats=args.repeats,
        machine=machine(),
        cpu=cpu_model(),
        rows=rows,
    )
    write_results(args.name, result, markdown(result))


def markdown(result: dict) -> str:
    rows = result["rows"]
    lines = [
        f"## Teacher samples per ray against test PSNR ({result['cpu']}, {result['machine']})",
        "",
        f"Teacher: `{result['teacher']}`, trained with {result['trained_samples'][0]} coarse + "
        f"{result['trained_samples'][1]} fine samples. PSNR and SSIM over the test views; seconds: median of "
        f"{result['repeats']} renders of one test view, the settings interleaved in one run.",
        "",
        "| coarse | fine | field evaluations / ray | PSNR dB | change dB | SSIM | s / view | speed-up |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['coarse']} | {row['fine']} | {row['evaluations']} | {row['psnr']:.2f} | {row['psnr_change']:+.2f} "
            f"| {row['ssim']:.3f} | {row['seconds_per_view']:.2f} | {row['speedup']:.2f}× |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(tyro.cli(Args))
