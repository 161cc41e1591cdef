"""CPU latency of one 800×800 frame, in one run: the MobileR2L student across render paths, and the NeRF teachers
it replaces (vanilla NeRF and the paper's NAS-NeRF S / XS / XXS Lego cells).

    .venv/bin/python benchmarks/render_latency.py [--repeats 10] [--teacher-crop 48]

Student: each path renders the same encoded 100×100 ray grid to 800×800; median of `repeats` timed calls taken
round-robin across paths after warm-up (compilation included in warm-up), the speed-up over eager fp32 and the
largest RGB difference from it. Teachers: a NeRF frame costs the same per ray everywhere (64 + 128 samples per
ray, no early exit), and an 800×800 frame takes minutes to hours here, so each renders a `teacher_crop`² patch
of the frame through `get_outputs_for_camera` (bf16 fields, the training default on CPU), scaled by the pixel
ratio. Results: benchmarks/results/render_latency.{json,md}.
"""

import os
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import tyro
from common import RESULTS, timed, write_results
from nerfstudio.data.scene_box import SceneBox
from torch import Tensor

from nas_nerf.complexity import model_complexity
from nas_nerf.configs import PAPER_LEGO_CELLS
from nas_nerf.model import NASNeRFModelConfig
from nerfstudio_mobile.common.intrinsics import Intrinsics
from nerfstudio_mobile.common.timing import round_robin_seconds
from nerfstudio_mobile.demo.run_estimate import looking_at_origin
from nerfstudio_mobile.mobile_r2l.encoding import RayEncodingConfig, encode_rays, pinhole_rays
from nerfstudio_mobile.mobile_r2l.network import (
    LightFieldNetwork,
    LightFieldNetworkConfig,
    count_macs,
    prepare_for_inference,
)

FRAME = 800
FOCAL = 1111.0  # Blender lego at 800×800


@dataclass
class Args:
    network: LightFieldNetworkConfig = field(
        default_factory=lambda: LightFieldNetworkConfig(width=256, num_blocks=28, predict_depth=False)
    )
    repeats: int = 10
    warmup: int = 2
    teacher_crop: int = 48
    """Side of the centre patch each teacher renders (the frame time is scaled from it)."""
    teacher_repeats: int = 3
    threads: int | None = None
    """torch intra-op threads (default: torch's choice, one per core)."""
    output_dir: Path = RESULTS


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def example_rays(grid: int, config: RayEncodingConfig) -> Tensor:
    """The encoded low-res ray grid of the 800×800 frame (the frame's intrinsics scaled to the grid)."""
    intrinsics = Intrinsics(FOCAL, FOCAL, FRAME / 2, FRAME / 2, FRAME, FRAME).resized(grid, grid)
    fx, fy, cx, cy = (torch.tensor([value]) for value in (intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy))
    origins, directions = pinhole_rays(looking_at_origin()[None], fx, fy, cx, cy, height=grid, width=grid)
    return encode_rays(origins, directions, 2.0, 6.0, config)


def student_rows(args: Args) -> list[dict]:
    x = example_rays(FRAME // args.network.upscale, RayEncodingConfig())
    net = LightFieldNetwork(args.network).eval()

    @torch.inference_mode()
    def eager(x: Tensor) -> Tensor:
        return net(x)

    # Factories, so a path's setup (fold, cast, compile) is timed on its own.
    paths: dict[str, Callable[[], Callable[[Tensor], Tensor]]] = {
        "eager fp32": lambda: eager,
        "channels-last fp32": lambda: prepare_for_inference(net, channels_last=True, bf16=False),
        "channels-last bf16": lambda: prepare_for_inference(net, channels_last=True, bf16=True),
        "compiled bf16 + channels-last + freezing": lambda: prepare_for_inference(net, bf16=True, compile=True),
    }

    def set_up(build: Callable[[], Callable[[Tensor], Tensor]]) -> tuple[Callable[[Tensor], Tensor], Tensor]:
        render = build()
        return render, render(x)  # the first call compiles where applicable

    reference = eager(x)
    renders, rows = {}, []
    for name, build in paths.items():
        (render, out), setup_s = timed(lambda build=build: set_up(build))
        renders[name] = lambda render=render: render(x)
        rows.append(dict(path=name, setup_s=setup_s, max_abs_rgb_error=(out - reference)[:, :3].abs().max().item()))
    times = round_robin_seconds(renders, args.repeats, warmup=args.warmup)
    macs = count_macs(args.network, FRAME // args.network.upscale, FRAME // args.network.upscale)
    for row in rows:
        row["median_ms"] = 1e3 * statistics.median(times[row["path"]])
        row["min_ms"] = 1e3 * min(times[row["path"]])
        row["speedup_vs_eager_fp32"] = rows[0]["median_ms"] / row["median_ms"]
        row["gmac_per_s"] = macs / 1e9 / (row["median_ms"] / 1e3)
    return rows


def teacher_rows(args: Args) -> list[dict]:
    crop = args.teacher_crop
    camera = Intrinsics(FOCAL, FOCAL, crop / 2, crop / 2, crop, crop).cameras(looking_at_origin()[None])
    scene_box = SceneBox(torch.tensor([[-1.5] * 3, [1.5] * 3]))
    renders, rows = {}, []
    for tier, (coarse, fine) in PAPER_LEGO_CELLS.items():
        model = NASNeRFModelConfig(coarse_cell=coarse, fine_cell=fine).setup(scene_box=scene_box, num_train_data=1)
        model.eval()
        renders[tier] = torch.inference_mode()(lambda model=model: model.get_outputs_for_camera(camera))
        cost = model_complexity(coarse, fine)
        rows.append(dict(path=f"NAS-NeRF {tier.upper()}" if tier != "nerf" else "vanilla NeRF",
                         params=cost.params, gflops_per_frame=cost.frame_flops(FRAME, FRAME) / 1e9))  # fmt: skip
    times = round_robin_seconds(renders, args.teacher_repeats, warmup=1)
    for row, tier in zip(rows, renders, strict=True):
        row["median_ms"] = 1e3 * statistics.median(times[tier]) * (FRAME / crop) ** 2
        row["speedup_vs_vanilla"] = rows[0]["median_ms"] / row["median_ms"]
    return rows


def main(args: Args) -> None:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()
    students = student_rows(args)
    teachers = teacher_rows(args)
    fastest = min(row["median_ms"] for row in students)
    for row in teachers:
        row["student_speedup"] = row["median_ms"] / fastest
    result = dict(
        frame=f"{FRAME}x{FRAME}",
        network=asdict(args.network),
        gmacs_per_frame=count_macs(args.network, FRAME // args.network.upscale, FRAME // args.network.upscale) / 1e9,
        repeats=args.repeats,
        teacher_crop=args.teacher_crop,
        machine=dict(
            cpu=cpu_model(),
            cores=os.cpu_count(),
            torch_threads=torch.get_num_threads(),
            torch=torch.__version__,
            cpu_capability=torch.backends.cpu.get_cpu_capability(),
            avx512_bf16=torch.cpu._is_avx512_bf16_supported(),
            amx=torch.cpu._is_amx_tile_supported(),
            load_average_before=load_before,
            load_average_after=os.getloadavg(),
        ),
        student=students,
        teachers=teachers,
    )
    write_results("render_latency", result, markdown(result), args.output_dir)


def markdown(result: dict) -> str:
    machine = result["machine"]
    lines = [
        f"## Render latency of one {result['frame']} frame ({machine['cpu']}, {machine['torch_threads']} threads)",
        "",
        f"torch {machine['torch']}, {machine['cpu_capability']}, avx512_bf16={machine['avx512_bf16']}, "
        f"amx={machine['amx']}; load average {machine['load_average_before'][0]:.2f} before / "
        f"{machine['load_average_after'][0]:.2f} after.",
        "",
        f"Student (MobileR2L, {result['gmacs_per_frame']:.1f} GMAC/frame), median of {result['repeats']} frames:",
        "",
        "| path | median ms | min ms | vs eager fp32 | GMAC/s | max abs RGB error | setup s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["student"]:
        lines.append(
            f"| {r['path']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['speedup_vs_eager_fp32']:.2f}× "
            f"| {r['gmac_per_s']:.0f} | {r['max_abs_rgb_error']:.1e} | {r['setup_s']:.1f} |"
        )
    lines += [
        "",
        f"Teachers (64 + 128 samples per ray, bf16 fields; a {result['teacher_crop']}² patch scaled to the frame):",
        "",
        "| teacher | params | GFLOPs / frame | s / frame | vs vanilla | fastest student is |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["teachers"]:
        lines.append(
            f"| {r['path']} | {r['params'] / 1e6:.3f} M | {r['gflops_per_frame']:,.0f} | {r['median_ms'] / 1e3:.1f} "
            f"| {r['speedup_vs_vanilla']:.1f}× | {r['student_speedup']:,.0f}× faster |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(tyro.cli(Args))
