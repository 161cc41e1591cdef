"""CPU latency of one MobileR2L student frame (100x100 rays -> 800x800 RGB) across render paths, in one run.

    .venv/bin/python benchmarks/student_latency.py [--repeats 10] [--threads 2] [--compile-mode ...]

Each path renders the same encoded frame; we report the median of ``repeats`` timed calls (taken
round-robin across paths, after warm-up, which for the compiled path includes compilation), the speed-up
over eager fp32, and the largest RGB difference from eager fp32.
Results go to ``benchmarks/results/student_latency.{json,md}``.
"""

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import tyro
from torch import Tensor

from nerfstudio_mobile.encoding import RayEncodingConfig, encode_rays
from nerfstudio_mobile.network import (
    LightFieldNetwork,
    LightFieldNetworkConfig,
    count_macs,
    fold_batchnorm,
    prepare_for_inference,
)


@dataclass
class Args:
    grid: tuple[int, int] = (100, 100)
    """Ray grid (h, w); the frame is grid * upscale."""
    network: LightFieldNetworkConfig = field(
        default_factory=lambda: LightFieldNetworkConfig(width=256, num_blocks=28, predict_depth=False)
    )
    repeats: int = 10
    warmup: int = 2
    threads: int | None = None
    """torch intra-op threads (default: torch's choice, one per core)."""
    investigate: bool = False
    """Also time bf16 autocast with fp32 weights instead of bf16 weights."""
    compile_mode: str | None = None
    """torch.compile mode for an extra compiled path, e.g. max-autotune-no-cudagraphs."""
    output_dir: Path = Path(__file__).parent / "results"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def example_rays(h: int, w: int, config: RayEncodingConfig) -> Tensor:
    """A pinhole camera 4 units from the origin looking at it, as in a 360 capture."""
    v, u = torch.meshgrid(torch.linspace(-0.4, 0.4, h), torch.linspace(-0.4, 0.4, w), indexing="ij")
    directions = torch.nn.functional.normalize(torch.stack([u, -v, -torch.ones_like(u)], dim=-1), dim=-1)
    origins = torch.tensor([0.0, 0.0, 4.0]).expand(h, w, 3)
    return encode_rays(origins[None], directions[None], 2.0, 6.0, config)


def bf16_autocast(net: LightFieldNetwork) -> Callable[[Tensor], Tensor]:
    """Investigation: fp32 weights, bf16 autocast (weights re-cast every call) instead of bf16 weights."""
    model = fold_batchnorm(net).to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def render(x: Tensor) -> Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x.to(memory_format=torch.channels_last)).float()

    return render


def compiled_with_mode(net: LightFieldNetwork, mode: str) -> Callable[[Tensor], Tensor]:
    """Investigation: prepare_for_inference(compile=True) with a non-default torch.compile mode."""
    model = fold_batchnorm(net).to(dtype=torch.bfloat16, memory_format=torch.channels_last)
    compiled = torch.compile(model, mode=mode)

    @torch.inference_mode()
    def render(x: Tensor) -> Tensor:
        with torch._inductor.config.patch(freezing=True):
            return compiled(x.to(dtype=torch.bfloat16, memory_format=torch.channels_last)).float()

    return render


def main(args: Args) -> None:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    encoding = RayEncodingConfig()
    x = example_rays(*args.grid, encoding)
    net = LightFieldNetwork(args.network).eval()

    @torch.inference_mode()
    def eager(x: Tensor) -> Tensor:
        return net(x)

    # Factories, so a path's setup (fold, cast, compile) is timed on its own.
    paths: dict[str, Callable[[], Callable[[Tensor], Tensor]]] = {
        "eager fp32": lambda: eager,
        "channels-last fp32": lambda: prepare_for_inference(net, channels_last=True, bf16=False),
        "channels-last bf16": lambda: prepare_for_inference(net, channels_last=True, bf16=True),
        "compiled bf16 + channels-last + freezing": lambda: prepare_for_inference(
            net, channels_last=True, bf16=True, compile=True
        ),
    }
    if args.investigate:
        paths["channels-last bf16 autocast (fp32 weights)"] = lambda: bf16_autocast(net)
    if args.compile_mode is not None:
        paths[f"compiled bf16, mode={args.compile_mode}"] = lambda: compiled_with_mode(net, args.compile_mode)

    reference = eager(x)
    load_before = os.getloadavg()
    renders, rows = {}, []
    for name, build in paths.items():
        start = time.perf_counter()
        renders[name] = build()
        out = renders[name](x)  # first call: compiles where applicable
        setup_s = time.perf_counter() - start
        for _ in range(args.warmup):
            renders[name](x)
        rgb_error = (out - reference)[:, :3].abs().max().item()
        rows.append(dict(path=name, setup_s=setup_s, max_abs_rgb_error=rgb_error))
    # Round-robin over paths so load from other jobs on this machine hits all of them alike.
    times: dict[str, list[float]] = {name: [] for name in renders}
    for _ in range(args.repeats):
        for name, render in renders.items():
            start = time.perf_counter()
            render(x)
            times[name].append(time.perf_counter() - start)
    for row in rows:
        samples = times[row["path"]]
        row |= dict(median_ms=1e3 * statistics.median(samples), min_ms=1e3 * min(samples), max_ms=1e3 * max(samples))
        print(f"{row['path']:45s} {row['median_ms']:8.1f} ms (min {row['min_ms']:.1f})")
    baseline = rows[0]["median_ms"]
    macs = count_macs(args.network, *args.grid)
    for row in rows:
        row["speedup_vs_eager_fp32"] = baseline / row["median_ms"]
        row["gmac_per_s"] = macs / 1e9 / (row["median_ms"] / 1e3)

    h, w = args.grid
    s = args.network.upscale
    result = dict(
        frame=f"{h}x{w} rays -> {h * s}x{w * s} RGB",
        input_shape=list(x.shape),
        network=asdict(args.network),
        gmacs_per_frame=macs / 1e9,
        repeats=args.repeats,
        machine=dict(
            cpu=cpu_model(),
            cores=os.cpu_count(),
            torch_threads=torch.get_num_threads(),
            torch=torch.__version__,
            cpu_capability=torch.backends.cpu.get_cpu_capability(),
            avx512_bf16=torch.cpu._is_avx512_bf16_supported(),
            amx=torch.cpu._is_amx_tile_supported(),
            # Other jobs share this machine; load average shows how contended the timings were.
            load_average_before=load_before,
            load_average_after=os.getloadavg(),
        ),
        results=rows,
    )
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "student_latency.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.output_dir / "student_latency.md").write_text(markdown(result))


def markdown(result: dict) -> str:
    machine = result["machine"]
    lines = [
        f"# Student latency: {result['frame']} ({result['gmacs_per_frame']:.1f} GMAC/frame)",
        "",
        f"{machine['cpu']}, {machine['cores']} cores ({machine['torch_threads']} torch threads), "
        f"torch {machine['torch']}, {machine['cpu_capability']}, avx512_bf16={machine['avx512_bf16']}, "
        f"amx={machine['amx']}; load average {machine['load_average_before'][0]:.2f} before / "
        f"{machine['load_average_after'][0]:.2f} after. Median of {result['repeats']} frames.",
        "",
        "| path | median ms | min ms | vs eager fp32 | GMAC/s | max abs RGB error | setup s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["results"]:
        lines.append(
            f"| {r['path']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['speedup_vs_eager_fp32']:.2f}x "
            f"| {r['gmac_per_s']:.0f} | {r['max_abs_rgb_error']:.1e} | {r['setup_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(tyro.cli(Args))
