"""What the student's training layout buys: one training step (forward, backward, Adam; bf16 autocast where the CPU
has native bf16, as MobileR2LModel trains) with weights and activations channels-first (PyTorch's default) and
channels-last (`TRAINING_LAYOUT`), for the demo's student and lego's, the layouts interleaved in one process so the
machine's noise hits both.

    python benchmarks/student_step.py      # writes benchmarks/results/student_step.{json,md}
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
from common import cpu_model, machine, markdown_table, write_results

from nerfstudio_mobile.common.precision import cpu_bf16_autocast
from nerfstudio_mobile.common.timing import round_robin_seconds
from nerfstudio_mobile.demo.demo import IMAGES_PER_BATCH, Demo
from nerfstudio_mobile.mobile_r2l.network import TRAINING_LAYOUT, LightFieldNetwork

# ray grids of the demo's 96×96 frames and distill_quality.py's 128×128 lego, both 8× upscaled
GRIDS = {"demo (96×96 frames)": (12, 12), "lego (128×128 frames)": (16, 16)}
LAYOUTS = {"channels-first": torch.contiguous_format, "channels-last": TRAINING_LAYOUT}
ROUNDS = 10


def training_step(grid: tuple[int, int], layout: torch.memory_format) -> Callable[[], None]:
    torch.manual_seed(0)
    config = Demo().student
    network = LightFieldNetwork(config).train().to(memory_format=layout)
    encoded = torch.randn(IMAGES_PER_BATCH, config.in_channels, *grid).contiguous(memory_format=layout)
    target = torch.rand(IMAGES_PER_BATCH, 4, grid[0] * config.upscale, grid[1] * config.upscale)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
    device = torch.device("cpu")

    def step() -> None:
        with cpu_bf16_autocast(device):
            out = network(encoded)
        optimizer.zero_grad(set_to_none=True)
        (out.float() - target).square().mean().backward()
        optimizer.step()

    return step


def main() -> None:
    rows, result = [], {"machine": machine(), "cpu": cpu_model(), "images_per_batch": IMAGES_PER_BATCH, "ms": {}}
    for scene, grid in GRIDS.items():
        steps = {name: training_step(grid, layout) for name, layout in LAYOUTS.items()}
        times = round_robin_seconds(steps, repeats=ROUNDS, warmup=2)
        ms = {name: 1e3 * statistics.median(seconds) for name, seconds in times.items()}
        result["ms"][scene] = ms
        first, last = ms["channels-first"], ms["channels-last"]
        rows.append(f"| {scene} | {first:.0f} | {last:.0f} | {first / last:.2f}× |")
    table = markdown_table(
        f"Student training step by memory layout ({result['machine']}; {result['cpu']})",
        ["student", "channels-first ms", "channels-last ms (ours)", "speed-up"],
        rows,
        f"Width 256, 8 blocks, {IMAGES_PER_BATCH} whole frames a step; median of {ROUNDS} interleaved rounds.",
    )
    write_results("student_step", result, table)


if __name__ == "__main__":
    main()
