"""What the student's training step costs and what its layout and optimizer buy: one step (forward, backward, AdamW;
bf16 autocast where the CPU has native bf16, as MobileR2LModel trains) of the demo's student and lego's, each on its
own ray grid, with weights and activations channels-first (PyTorch's default) or channels-last (`TRAINING_LAYOUT`),
and AdamW looping over the parameters (torch's default on CPUs) or fused (`AdamWOptimizerConfig`), interleaved in one
process so the machine's noise hits every variant.

    python benchmarks/student_step.py      # writes benchmarks/results/student_step.{json,md}
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import replace

import torch
from common import cpu_model, machine, markdown_table, write_results

from nerfstudio_mobile.common.precision import cpu_bf16_autocast
from nerfstudio_mobile.common.timing import round_robin_seconds
from nerfstudio_mobile.demo.demo import IMAGES_PER_BATCH, Demo
from nerfstudio_mobile.mobile_r2l.datamanager import MIN_RAYS_PER_SIDE, upscale_factors_for
from nerfstudio_mobile.mobile_r2l.network import TRAINING_LAYOUT, LightFieldNetwork, LightFieldNetworkConfig
from nerfstudio_mobile.mobile_r2l.optimization import AdamWOptimizerConfig

# the demo's student on its 96×96 frames and distill_quality.py's on lego's 128×128, both 360° scenes
STUDENTS = {
    "demo (96×96 frames)": (Demo().student, 96),
    "lego (128×128 frames)": (LightFieldNetworkConfig(width=256, num_blocks=8), 128),
}
VARIANTS = {
    "channels-first": (torch.contiguous_format, False),
    "channels-last": (TRAINING_LAYOUT, False),
    "channels-last, fused AdamW": (TRAINING_LAYOUT, True),
}
OURS = "channels-last, fused AdamW"
ROUNDS = 10


def training_step(
    config: LightFieldNetworkConfig, size: int, layout: torch.memory_format, fused: bool
) -> Callable[[], None]:
    torch.manual_seed(0)
    config = replace(config, upscale_factors=upscale_factors_for("360", size, size, MIN_RAYS_PER_SIDE))
    grid = size // config.upscale
    network = LightFieldNetwork(config).train().to(memory_format=layout)
    encoded = torch.randn(IMAGES_PER_BATCH, config.in_channels, grid, grid).contiguous(memory_format=layout)
    target = torch.rand(IMAGES_PER_BATCH, 4, size, size)
    optimizer = AdamWOptimizerConfig(lr=1e-4, fused=fused).setup(network.parameters())
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
    for scene, (config, size) in STUDENTS.items():
        steps = {name: training_step(config, size, *variant) for name, variant in VARIANTS.items()}
        times = round_robin_seconds(steps, repeats=ROUNDS, warmup=2)
        ms = {name: 1e3 * statistics.median(seconds) for name, seconds in times.items()}
        result["ms"][scene] = ms
        first = ms["channels-first"]
        rows.append(
            f"| {scene} | {config.width} × {config.num_blocks} | "
            + " | ".join(f"{value:.0f}" for value in ms.values())
            + f" | {first / ms[OURS]:.2f}× |"
        )
    table = markdown_table(
        f"Student training step ({result['machine']}; {result['cpu']})",
        [
            "student",
            "width × blocks",
            *(f"{name} ms" + (" (ours)" if name == OURS else "") for name in VARIANTS),
            "speed-up",
        ],  # fmt: skip
        rows,
        f"{IMAGES_PER_BATCH} whole frames a step, each student on its own ray grid (datamanager's upscale factors); "
        f"median of {ROUNDS} interleaved rounds.",
    )
    write_results("student_step", result, table)


if __name__ == "__main__":
    main()
