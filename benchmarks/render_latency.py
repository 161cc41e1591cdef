"""CPU latency of one 800×800 frame, in one run: the MobileR2L student across render paths, and the NeRF teachers
it replaces (vanilla NeRF and the paper's NAS-NeRF S / XS / XXS Lego cells).

    .venv/bin/python benchmarks/render_latency.py [--repeats 10] [--teacher-crop 48]

Student: each path (torch eager / channels-last / bf16 / compiled, ONNX Runtime fp32 and static int8 QDQ as
`ns-export-mobile onnx --quantize int8` writes it, torch's int8 backbone with a compiled bf16 head) renders the
same encoded 100×100 ray grid to 800×800; median of `repeats` timed calls taken round-robin across paths after
warm-up (compilation included in warm-up), the speed-up over eager fp32 and the largest RGB difference from it.
Each path's GMAC/s is also given as a fraction of this machine's ceiling for its dtype: the best GMAC/s of chained
1×1 convs of the backbone's shape (width → width over the ray grid) at fp32 (torch compiled or ONNX Runtime), bf16
(torch compiled, channels-last convs or matmuls over pixels) and int8 (ONNX Runtime QLinearConv, torch PT2E's oneDNN
int8 convs or matmuls, int8 in and out; and `torch._int_mm` alone, int32 out: the kernel's rate with no
requantization, an upper bound for any int8 network). Teachers: a NeRF frame costs the same per ray everywhere
(64 + 128 samples per ray, no early exit), and an 800×800 frame takes minutes to hours here, so each renders a
`teacher_crop`² patch of the frame through `get_outputs_for_camera` (bf16 fields, the training default on CPU),
scaled by the pixel ratio.
Results: benchmarks/results/render_latency[_<label>].{json,md}.
"""

import copy
import math
import os
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import tyro
from common import RESULTS, cpu_model, results_name, timed, write_results
from nerfstudio.data.scene_box import SceneBox
from torch import Tensor, nn

from nas_nerf.complexity import model_complexity
from nas_nerf.configs import PAPER_LEGO_CELLS
from nas_nerf.model import NASNeRFModelConfig
from nerfstudio_mobile.common.intrinsics import Intrinsics
from nerfstudio_mobile.common.timing import round_robin_seconds
from nerfstudio_mobile.demo.run_estimate import looking_at_origin
from nerfstudio_mobile.export.graphs import export_graph
from nerfstudio_mobile.export.onnx import cpu_session, export_onnx, onnx, ort
from nerfstudio_mobile.export.onnx_int8 import quantize_int8
from nerfstudio_mobile.export.sidecar import ExportFrame
from nerfstudio_mobile.mobile_r2l.encoding import RayEncodingConfig, encode_rays, pinhole_rays
from nerfstudio_mobile.mobile_r2l.engines import EngineChoice, fastest_engine
from nerfstudio_mobile.mobile_r2l.int8_backbone import int8_backbone_render, quantize_for_x86
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
    """torch and ONNX Runtime intra-op threads (default: torch's choice, one per core)."""
    calibration_poses: int = 8
    """Poses whose encoded rays calibrate the ORT int8 path's activations."""
    output_dir: Path = RESULTS
    label: str = ""
    """Results as render_latency_<label> (another machine's, beside this one's)."""


def orbit_pose(angle: float) -> Tensor:
    """`looking_at_origin` turned by `angle` radians about the vertical axis (y)."""
    c, s = math.cos(angle), math.sin(angle)
    rotation = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    return rotation @ looking_at_origin()


def example_rays(grid: int, config: RayEncodingConfig, c2w: Tensor | None = None) -> Tensor:
    """The encoded low-res ray grid of the 800×800 frame (the frame's intrinsics scaled to the grid)."""
    intrinsics = Intrinsics(FOCAL, FOCAL, FRAME / 2, FRAME / 2, FRAME, FRAME).resized(grid, grid)
    fx, fy, cx, cy = (torch.tensor([value]) for value in (intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy))
    pose = looking_at_origin() if c2w is None else c2w
    origins, directions = pinhole_rays(pose[None], fx, fy, cx, cy, height=grid, width=grid)
    return encode_rays(origins, directions, 2.0, 6.0, config)


def calibration_rays(grid: int, poses: int) -> list[Tensor]:
    """The encoded rays of `poses` orbit poses, which calibrate int8 activations."""
    return [example_rays(grid, RayEncodingConfig(), orbit_pose(2 * math.pi * i / poses)) for i in range(poses)]


def synthetic_frame(output: Intrinsics, network: LightFieldNetworkConfig) -> ExportFrame:
    """An export frame for a benchmark network in a Blender-like world: near/far 2/6, identity dataparser."""
    return ExportFrame(
        output=output,
        network=network,
        encoding=RayEncodingConfig(),
        near=2.0,
        far=6.0,
        dataparser_transform=((1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0)),
        dataparser_scale=1.0,
    )


def ort_paths(
    net: LightFieldNetwork, args: Args, directory: Path
) -> dict[str, Callable[[], Callable[[Tensor], Tensor]]]:
    """ONNX Runtime fp32, and int8 as the export writes it (calibrated on the rays of a few orbit poses)."""
    frame = synthetic_frame(Intrinsics(FOCAL, FOCAL, FRAME / 2, FRAME / 2, FRAME, FRAME), args.network)
    grid = FRAME // args.network.upscale
    threads = torch.get_num_threads()
    fp32, int8 = directory / "student.onnx", directory / "student-int8.onnx"

    def run(path: Path) -> Callable[[Tensor], Tensor]:
        session = cpu_session(path, threads)
        return lambda x: torch.from_numpy(session.run(None, {"rays": x.numpy()})[0])

    def build_fp32() -> Callable[[Tensor], Tensor]:
        export_onnx(export_graph(net, frame, "rays"), frame, "rays", fp32, {})
        return run(fp32)

    def build_int8() -> Callable[[Tensor], Tensor]:
        quantize_int8(fp32, int8, "rays", calibration_rays(grid, args.calibration_poses), {})
        return run(int8)

    return {"ONNX Runtime fp32": build_fp32, "ONNX Runtime int8 (QDQ S8S8)": build_int8}


def student_rows(args: Args, directory: Path) -> tuple[list[dict], EngineChoice]:
    x = example_rays(FRAME // args.network.upscale, RayEncodingConfig())
    net = LightFieldNetwork(args.network).eval()
    calibration = calibration_rays(FRAME // args.network.upscale, args.calibration_poses)

    @torch.inference_mode()
    def eager(x: Tensor) -> Tensor:
        return net(x)

    # Factories, so a path's setup (fold, cast, compile, export) is timed on its own; the int8 one quantizes the
    # fp32 file, so it comes after it.
    paths: dict[str, Callable[[], Callable[[Tensor], Tensor]]] = {
        "eager fp32": lambda: eager,
        "channels-last fp32": lambda: prepare_for_inference(net, channels_last=True, bf16=False),
        "channels-last bf16": lambda: prepare_for_inference(net, channels_last=True, bf16=True),
        "compiled bf16 + channels-last + freezing": lambda: prepare_for_inference(net, bf16=True, compile=True),
        **ort_paths(net, args, directory),
        "torch int8 backbone (PT2E) + compiled bf16 head": lambda: int8_backbone_render(net, x, calibration),
    }
    dtypes = dict(zip(paths, ("fp32", "fp32", "bf16", "bf16", "fp32", "int8", "int8"), strict=True))

    def set_up(build: Callable[[], Callable[[Tensor], Tensor]]) -> tuple[Callable[[Tensor], Tensor], Tensor]:
        render = build()
        return render, render(x)  # the first call compiles where applicable

    reference = eager(x)
    renders, rows = {}, []

    def add_row(name: str, dtype: str, render: Callable[[Tensor], Tensor], out: Tensor, setup_s: float) -> None:
        renders[name] = lambda: render(x)
        error = (out - reference)[:, :3].abs().max().item()
        rows.append(dict(path=name, dtype=dtype, setup_s=setup_s, max_abs_rgb_error=error))

    for name, build in paths.items():
        (render, out), setup_s = timed(lambda build=build: set_up(build))
        add_row(name, dtypes[name], render, out, setup_s)
    # What the viewer and the demo render with; its setup builds, checks and times every candidate engine.
    choice, setup_s = timed(
        lambda: fastest_engine(net, x, calibration=calibration, repeats=args.repeats, warmup=args.warmup)
    )
    add_row(f"fastest_engine's choice: {choice.name}", choice.engine.dtype, choice.render, choice.render(x), setup_s)
    times = round_robin_seconds(renders, args.repeats, warmup=args.warmup)
    macs = count_macs(args.network, FRAME // args.network.upscale, FRAME // args.network.upscale)
    for row in rows:
        row["median_ms"] = 1e3 * statistics.median(times[row["path"]])
        row["min_ms"] = 1e3 * min(times[row["path"]])
        row["speedup_vs_eager_fp32"] = rows[0]["median_ms"] / row["median_ms"]
        row["gmac_per_s"] = macs / 1e9 / (row["median_ms"] / 1e3)
    return rows, choice


CEILING_DEPTH = 8
"""1×1 convs chained in the ceiling measurement, so per-call overhead (weight reorders, dispatch) is amortised as in
a whole network. On an AMX CPU the chain still reads below the compiled student (results/render_latency.md), so the
ceiling there is a lower bound."""


def onnx_conv_chain(x: np.ndarray, weights: list[np.ndarray], int8: bool) -> "onnx.ModelProto":
    """Chained 1×1 convs as ONNX: fp32 Conv, or int8 QLinearConv (ONNX Runtime's QOperator form: int8 activations in
    and out of every conv, int8 weights with one scale per output channel), so no quantize / dequantize is timed."""
    helper, tensor = onnx.helper, onnx.numpy_helper.from_array
    nodes, initializers = [], []
    if int8:
        initializers += [tensor(np.array(np.abs(x).max() / 127, dtype=np.float32), "x_scale"),
                         tensor(np.array(0, dtype=np.int8), "zero")]  # fmt: skip
    for i, weight in enumerate(weights):
        source, target = ("x" if i == 0 else f"y{i - 1}"), ("y" if i == len(weights) - 1 else f"y{i}")
        if not int8:
            initializers.append(tensor(weight, f"w{i}"))
            nodes.append(helper.make_node("Conv", [source, f"w{i}"], [target]))
            continue
        channels = weight.shape[0]
        scales = np.abs(weight).reshape(channels, -1).max(axis=1) / 127
        initializers += [
            tensor(np.round(weight / scales[:, None, None, None]).astype(np.int8), f"w{i}"),
            tensor(scales.astype(np.float32), f"w{i}_scale"),
            tensor(np.zeros(channels, dtype=np.int8), f"w{i}_zero"),
        ]
        inputs = [source, "x_scale", "zero", f"w{i}", f"w{i}_scale", f"w{i}_zero", "x_scale", "zero"]
        nodes.append(helper.make_node("QLinearConv", inputs, [target]))
    element = onnx.TensorProto.INT8 if int8 else onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "conv-chain",
        [helper.make_tensor_value_info("x", element, list(x.shape))],
        [helper.make_tensor_value_info("y", element, list(x.shape))],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def conv_ceilings(width: int, grid: int, repeats: int, warmup: int, directory: Path) -> dict[str, dict]:
    """{dtype: {"gmac_per_s", "engine"}}: the best GMAC/s that chained 1×1 convs (width → width over a grid² ray
    grid, the backbone's op) reach here per dtype, each engine in its fastest set-up (torch compiled with frozen,
    prepacked weights, channels-last; ONNX Runtime), median of `repeats` round-robin calls."""
    torch.manual_seed(0)
    chain = nn.Sequential(*(nn.Conv2d(width, width, 1, bias=False) for _ in range(CEILING_DEPTH))).eval()
    x = torch.randn(1, width, grid, grid)
    weights = [conv.weight.detach().numpy() for conv in chain]
    threads = torch.get_num_threads()

    def torch_chain(dtype: torch.dtype) -> Callable[[], object]:
        layers = torch.compile(copy.deepcopy(chain).to(dtype=dtype, memory_format=torch.channels_last))
        data = x.to(dtype=dtype, memory_format=torch.channels_last)

        @torch.inference_mode()
        def run() -> Tensor:
            with torch._inductor.config.patch(freezing=True):
                return layers(data)

        return run

    def ort_chain(int8: bool) -> Callable[[], object]:
        path = directory / f"conv-chain-{'int8' if int8 else 'fp32'}.onnx"
        onnx.save(onnx_conv_chain(x.numpy(), weights, int8), str(path))
        session = cpu_session(path, threads)
        scale = np.abs(x.numpy()).max() / 127
        data = np.clip(np.round(x.numpy() / scale), -127, 127).astype(np.int8) if int8 else x.numpy()
        return lambda: session.run(None, {"x": data})

    def torch_int8_chain(layers: nn.Module, data: Tensor) -> Callable[[], object]:
        quantized = quantize_for_x86(copy.deepcopy(layers), data, [data])

        @torch.no_grad()
        def run() -> Tensor:
            with torch._inductor.config.patch(freezing=True):
                return quantized(data)

        return run

    # The same convs as matrix multiplies over pixels, as the int8 backbone runs them (`int8_backbone.PixelBackbone`)
    matmuls = nn.Sequential(*(nn.Linear(width, width, bias=False) for _ in range(CEILING_DEPTH))).eval()
    for linear, conv in zip(matmuls, chain, strict=True):
        linear.weight.data.copy_(conv.weight.detach().flatten(1))
    rows = x.permute(0, 2, 3, 1).reshape(-1, width)

    def torch_bf16_matmuls() -> Callable[[], object]:
        layers, data = torch.compile(copy.deepcopy(matmuls).to(torch.bfloat16)), rows.to(torch.bfloat16)

        @torch.inference_mode()
        def run() -> Tensor:
            with torch._inductor.config.patch(freezing=True):
                return layers(data)

        return run

    def int_mm_chain() -> Callable[[], object]:
        """The int8 kernel alone: int8 in, int32 out, no scaling or requantization between the products."""
        data = torch.randint(-127, 128, rows.shape, dtype=torch.int8)
        weights = [torch.randint(-127, 128, (width, width), dtype=torch.int8) for _ in range(CEILING_DEPTH)]
        return lambda: [torch._int_mm(data, weight) for weight in weights]

    kernels = {
        ("fp32", "torch compiled channels-last"): torch_chain(torch.float32),
        ("fp32", "ONNX Runtime"): ort_chain(int8=False),
        ("bf16", "torch compiled channels-last"): torch_chain(torch.bfloat16),
        ("int8", "ONNX Runtime QLinearConv"): ort_chain(int8=True),
        ("bf16", "torch compiled matmuls over pixels"): torch_bf16_matmuls(),
        ("int8", "torch PT2E int8 convs (oneDNN)"): torch_int8_chain(chain, x),
        ("int8", "torch PT2E int8 matmuls over pixels (oneDNN)"): torch_int8_chain(matmuls, rows),
        ("int8", "torch._int_mm, int32 out (the kernel alone, no requantization)"): int_mm_chain(),
    }
    times = round_robin_seconds(
        {f"{dtype} {engine}": work for (dtype, engine), work in kernels.items()}, repeats, warmup
    )
    gmac = CEILING_DEPTH * width * width * grid * grid / 1e9
    ceilings: dict[str, dict] = {}
    for dtype, engine in kernels:
        rate = gmac / statistics.median(times[f"{dtype} {engine}"])
        if rate > ceilings.get(dtype, {}).get("gmac_per_s", 0.0):
            ceilings[dtype] = dict(gmac_per_s=rate, engine=engine)
    return ceilings


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
    grid = FRAME // args.network.upscale
    with tempfile.TemporaryDirectory() as directory:
        students, choice = student_rows(args, Path(directory))
        ceilings = conv_ceilings(args.network.width, grid, args.repeats, args.warmup, Path(directory))
    for row in students:
        row["ceiling_fraction"] = row["gmac_per_s"] / ceilings[row["dtype"]]["gmac_per_s"]
    teachers = teacher_rows(args)
    fastest = min(row["median_ms"] for row in students)
    for row in teachers:
        row["student_speedup"] = row["median_ms"] / fastest
    result = dict(
        frame=f"{FRAME}x{FRAME}",
        network=asdict(args.network),
        gmacs_per_frame=count_macs(args.network, grid, grid) / 1e9,
        repeats=args.repeats,
        teacher_crop=args.teacher_crop,
        machine=dict(
            cpu=cpu_model(),
            cores=os.cpu_count(),
            torch_threads=torch.get_num_threads(),
            torch=torch.__version__,
            onnxruntime=ort.__version__,
            cpu_capability=torch.backends.cpu.get_cpu_capability(),
            avx512_bf16=torch.cpu._is_avx512_bf16_supported(),
            amx=torch.cpu._is_amx_tile_supported(),
            load_average_before=load_before,
            load_average_after=os.getloadavg(),
        ),
        conv_ceilings=dict(
            shape=f"{CEILING_DEPTH} chained 1x1 convs {args.network.width}->{args.network.width} over {grid}x{grid}",
            **ceilings,
        ),
        student=students,
        engine_choice=dict(chosen=choice.name, candidates=[asdict(timing) for timing in choice.table]),
        teachers=teachers,
    )
    write_results(results_name("render_latency", args.label), result, markdown(result), args.output_dir)


def markdown(result: dict) -> str:
    machine, ceilings = result["machine"], result["conv_ceilings"]
    lines = [
        f"## Render latency of one {result['frame']} frame ({machine['cpu']}, {machine['torch_threads']} threads)",
        "",
        f"torch {machine['torch']}, onnxruntime {machine['onnxruntime']}, {machine['cpu_capability']}, "
        f"avx512_bf16={machine['avx512_bf16']}, amx={machine['amx']}; load average "
        f"{machine['load_average_before'][0]:.2f} before / {machine['load_average_after'][0]:.2f} after.",
        "",
        f"Ceilings ({ceilings['shape']}, the backbone's op): "
        + ", ".join(
            f"{dtype} {ceilings[dtype]['gmac_per_s']:.0f} GMAC/s ({ceilings[dtype]['engine']})"
            for dtype in ("fp32", "bf16", "int8")
        )
        + ".",
        "",
        f"Student (MobileR2L, {result['gmacs_per_frame']:.1f} GMAC/frame), median of {result['repeats']} frames:",
        "",
        "| path | dtype | median ms | min ms | vs eager fp32 | GMAC/s | of its ceiling | max abs RGB error | setup s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["student"]:
        lines.append(
            f"| {r['path']} | {r['dtype']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} "
            f"| {r['speedup_vs_eager_fp32']:.2f}× | {r['gmac_per_s']:.0f} | {r['ceiling_fraction']:.0%} "
            f"| {r['max_abs_rgb_error']:.1e} | {r['setup_s']:.1f} |"
        )
    choice = result["engine_choice"]
    timings = [
        f"{c['name']} {c['median_ms']:.1f} ms" if c["rejected"] is None else f"{c['name']} rejected ({c['rejected']})"
        for c in choice["candidates"]
    ]
    lines += ["", f"`fastest_engine` chose {choice['chosen']} from its own timings: {'; '.join(timings)}."]
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
