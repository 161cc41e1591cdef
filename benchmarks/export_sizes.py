"""Core ML package (and ONNX file) size per weight format for the paper-size MobileR2L, and the PSNR each costs a
student.

    .venv/bin/python benchmarks/export_sizes.py [--student outputs/.../mobile-r2l/<run>/config.yml]

Sizes: the paper's network (N=28 blocks, width 256, 8x: a 100x100 ray grid -> 800x800 RGB), randomly
initialised (a package's size depends on the weights' shapes and format, barely on their values), exported
with the `rays` input: every Core ML compression (iOS 16 formats, per-grouped-channel palettes, w8a8) and ONNX
fp32 / int8. Formats with int8 activations are calibrated on the rays of a few orbit poses. PSNR cost (with
--student): every format of that trained student's `pose` export (Core ML executed by the torch MIL
interpreter, ONNX by onnxruntime; int8 activations calibrated on its pseudo views) on its test views, against
the test images, minus the fp16 package's PSNR; plus each file's PSNR against the torch student.
Results go to ``benchmarks/results/export_sizes[_<label>].{json,md}``.
"""

import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import tyro
from common import RESULTS, results_name, timed, write_results
from coremltools.models import MLModel
from render_latency import orbit_pose, synthetic_frame
from torch import Tensor

from nerfstudio_mobile.common.files import file_size
from nerfstudio_mobile.common.intrinsics import Intrinsics
from nerfstudio_mobile.export import coreml
from nerfstudio_mobile.export.graphs import export_graph
from nerfstudio_mobile.export.onnx import export_onnx
from nerfstudio_mobile.export.onnx_int8 import quantize_int8
from nerfstudio_mobile.export.palette_training import (
    SENSITIVITY_GRID,
    PaletteTraining,
    round_to_palettes,
    wider_layers,
)
from nerfstudio_mobile.export.pipeline import export_coreml_files, export_onnx_files
from nerfstudio_mobile.export.sidecar import (
    COMPRESSIONS,
    GROUPED_PALETTES,
    MIXED_PALETTES,
    ExportFrame,
    export_frame,
    sidecar,
    weight_format,
    weights_label,
)
from nerfstudio_mobile.export.student import load_student
from nerfstudio_mobile.mobile_r2l.encoding import encode_rays, pinhole_rays
from nerfstudio_mobile.mobile_r2l.network import LightFieldNetwork, LightFieldNetworkConfig, fold_batchnorm

FORMATS = (*COMPRESSIONS, *GROUPED_PALETTES, "w8a8")
FINETUNED_PALETTES = tuple(f"{compression}-finetuned" for compression in GROUPED_PALETTES)
"""Stored like their k-means counterparts (same sizes), learnt by rendering what a trained student renders."""
PAPER_FP16_MB = 8.3
GOAL_4BIT_MB = 2.2
GOAL_4BIT_PSNR_COST_DB = 0.3
GOAL_SMALL_MB, GOAL_SMALL_PSNR_COST_DB = 1.5, 0.5
"""A Core ML package of the paper network this small, at this PSNR cost on a good student."""
GOAL_W8A8_PSNR_COST_DB = 0.3


@dataclass
class Args:
    grid: tuple[int, int] = (100, 100)
    """Ray grid (h, w) of the size benchmark; the frame is grid * upscale."""
    network: LightFieldNetworkConfig = field(
        default_factory=lambda: LightFieldNetworkConfig(width=256, num_blocks=28, predict_depth=False)
    )
    student: Path | None = None
    """config.yml of a trained mobile-r2l student for the PSNR cost of each compression."""
    calibration_views: int = 16
    """Rays of this many orbit poses (sizes) or pseudo views (--student) calibrate int8 activations."""
    palette_training: PaletteTraining = field(default_factory=PaletteTraining)
    """Fine-tuning of the -finetuned palettes (--student)."""
    output_dir: Path = RESULTS
    label: str = ""
    """Results as export_sizes_<label> (e.g. another palette training), beside the default's."""


def paper_frame(args: Args) -> ExportFrame:
    """A 360-scene frame at the benchmark grid (intrinsics of a 50 degree field of view)."""
    h, w = args.grid
    s = args.network.upscale
    focal = 0.5 * w * s / math.tan(math.radians(25))
    return synthetic_frame(Intrinsics(focal, focal, w * s / 2, h * s / 2, w * s, h * s), args.network)


def calibration_rays(frame: ExportFrame, count: int) -> list[Tensor]:
    """The encoded ray grids of `count` poses orbiting the origin (render_latency's), at the frame's grid."""
    grid = frame.grid
    intrinsics = [torch.tensor([value]) for value in (grid.fx, grid.fy, grid.cx, grid.cy)]
    rays = []
    for index in range(count):
        c2w = orbit_pose(2 * math.pi * index / count)[None]
        origins, directions = pinhole_rays(c2w, *intrinsics, height=grid.height, width=grid.width)
        rays.append(encode_rays(origins, directions, frame.near, frame.far, frame.encoding))
    return rays


def package_sizes(args: Args, directory: Path) -> dict:
    torch.manual_seed(0)
    frame = paper_frame(args)
    network = LightFieldNetwork(args.network).eval()
    graph = export_graph(network, frame, "rays")
    params = sum(p.numel() for p in graph.parameters())
    samples = [{"rays": x} for x in calibration_rays(frame, args.calibration_views)]
    rows = []

    def measure(compression: str, model: MLModel, seconds: float) -> None:
        weights = weights_label(compression)
        path = directory / f"paper-{weights}.mlpackage"
        coreml.save(model, path, sidecar(frame, "rays", weights, params, {"experiment": "random init"}))
        size = file_size(path)
        rows.append(
            dict(
                format="Core ML",
                weights=weights,
                size_mb=size / 1e6,
                weight_file_mb=file_size(next(path.rglob("weight.bin"))) / 1e6,
                program_mb=file_size(next(path.rglob("model.mlmodel"))) / 1e6,
                bytes_per_param=size / params,
                seconds=seconds,
            )
        )
        print(f"{weights:26s} {size / 1e6:6.2f} MB ({size / params:.2f} B/param)")

    conversions = {}
    for compression in FORMATS:
        target = coreml.conversion_target(weight_format(compression))
        if target not in conversions:
            conversions[target] = timed(lambda target=target: coreml.convert(graph, frame, "rays", target))
        converted, convert_s = conversions[target]
        model, compress_s = timed(lambda c=compression, m=converted: coreml.compress(m, c, samples))
        measure(compression, model, convert_s if compression == "none" else compress_s)
    for compression in MIXED_PALETTES:
        # What fine-tuning hands to the export, without the fine-tuning: each layer's k-means palettes at the bits
        # the sensitivity ranking gives it (the size depends on how many weights get the wider palettes).
        weights, rays = weight_format(compression), samples[0]["rays"]
        mixed = fold_batchnorm(network)
        round_to_palettes(
            mixed, weights, wider_layers(mixed, weights, [rays[..., :SENSITIVITY_GRID, :SENSITIVITY_GRID]])
        )
        target = coreml.conversion_target(weights)
        model, seconds = timed(
            lambda m=mixed, c=compression, t=target: coreml.compress(
                coreml.convert(export_graph(m, frame, "rays"), frame, "rays", t), c
            )
        )
        measure(compression, model, seconds)
    fp32, int8 = directory / "paper.onnx", directory / "paper-int8.onnx"
    _, export_s = timed(lambda: export_onnx(graph, frame, "rays", fp32, {}))
    _, quantize_s = timed(lambda: quantize_int8(fp32, int8, "rays", [sample["rays"] for sample in samples], {}))
    for path, weights, seconds in ((fp32, "fp32", export_s), (int8, "w8a8", quantize_s)):
        size = file_size(path)
        rows.append(
            dict(
                format="ONNX",
                weights=weights,
                size_mb=size / 1e6,
                weight_file_mb=None,
                program_mb=None,
                bytes_per_param=size / params,
                seconds=seconds,
            )
        )
        print(f"ONNX {weights:10s} {size / 1e6:6.2f} MB ({size / params:.2f} B/param)")
    return dict(params=params, gmac_per_frame=frame.gmac_per_frame(), results=rows)


def psnr_costs(student_config: Path, directory: Path, calibration_views: int, training: PaletteTraining) -> dict:
    student = load_student(student_config)
    frame = export_frame(student)
    formats = (*FORMATS, *FINETUNED_PALETTES, *MIXED_PALETTES)
    exported = export_coreml_files(student, frame, ["pose"], formats, directory, calibration_views, training)
    exported += export_onnx_files(student, frame, ["pose"], directory, ("none", "int8"), calibration_views)
    fp16 = exported[0].verification.fidelity
    rows = []
    for file in exported:
        fidelity = file.verification.fidelity
        rows.append(
            dict(
                format="ONNX" if file.path.suffix == ".onnx" else "Core ML",
                weights=file.weights,
                size_mb=file.size_bytes / 1e6,
                psnr_vs_torch_db=fidelity.psnr,
                max_abs_rgb=fidelity.max_abs_rgb,
                psnr_vs_test_images_db=fidelity.psnr_images_export,
                psnr_cost_vs_fp16_db=fp16.psnr_images_export - fidelity.psnr_images_export,
                passed=file.verification.passed,
            )
        )
        print(f"{file.path.name:40s} cost {rows[-1]['psnr_cost_vs_fp16_db']:+.3f} dB, vs torch {fidelity.psnr:.1f} dB")
    return dict(
        student=str(student_config),
        network=asdict(student.network_config),
        params=exported[0].params,
        frame=f"{frame.grid.height}x{frame.grid.width} rays -> {frame.output.height}x{frame.output.width}",
        test_views=len(student.test_views),
        calibration_views=calibration_views,
        palette_training=asdict(training),
        torch_psnr_vs_test_images_db=fp16.psnr_images_torch,
        results=rows,
    )


def goals(result: dict) -> list[str]:
    """The paper's fp16 size and the 4-bit goals, checked against what was measured."""
    sizes = {row["weights"]: row for row in result["sizes"]["results"] if row["format"] == "Core ML"}
    fp16, four_bit = sizes["fp16"], sizes["palettize4"]
    four_bit_floor = result["sizes"]["params"] * 0.5 / 1e6
    lines = [
        f"- fp16: {fp16['size_mb']:.2f} MB (paper: {PAPER_FP16_MB} MB).",
        f"- 4-bit: {four_bit['size_mb']:.2f} MB, goal <= {GOAL_4BIT_MB} MB "
        f"{'met' if four_bit['size_mb'] <= GOAL_4BIT_MB else 'NOT met'}: 4 bits per parameter alone are "
        f"{four_bit_floor:.2f} MB; the program (op list and metadata) takes {four_bit['program_mb']:.2f} MB, the "
        "rest of the weight file is fp16 biases and small weights, the stem's 8-bit palette and blob headers.",
    ]
    costs = result.get("psnr_costs")
    if costs:
        cost = next(row for row in costs["results"] if row["weights"] == "palettize4")["psnr_cost_vs_fp16_db"]
        lines.append(
            f"- 4-bit PSNR cost: {cost:.3f} dB, goal <= {GOAL_4BIT_PSNR_COST_DB} dB "
            f"{'met' if cost <= GOAL_4BIT_PSNR_COST_DB else 'NOT met'} on this student, whose torch PSNR is "
            f"{costs['torch_psnr_vs_test_images_db']:.2f} dB: a student closer to its teacher has finer detail "
            "to lose, so read it as a lower bound."
        )
        lines += [small_package_goal(result), w8a8_goal(costs)]
    return lines


def small_package_goal(result: dict) -> str:
    """The smallest paper-network Core ML package whose format costs the student at most the goal's PSNR (a
    -finetuned format is as large as its k-means counterpart; a mixed one has its own row)."""
    cost = {row["weights"]: row["psnr_cost_vs_fp16_db"] for row in result["psnr_costs"]["results"]
            if row["format"] == "Core ML"}  # fmt: skip
    sizes = {row["weights"]: row["size_mb"] for row in result["sizes"]["results"] if row["format"] == "Core ML"}

    def size(weights: str) -> float:  # a mixed format has its own size row
        return sizes[weights] if weights in sizes else sizes[weights.removesuffix("-finetuned")]

    within = [weights for weights in cost if cost[weights] <= GOAL_SMALL_PSNR_COST_DB]
    smallest = min(within, key=size)
    mb = size(smallest)
    return (
        f"- Smallest package within {GOAL_SMALL_PSNR_COST_DB} dB: {smallest}, {mb:.2f} MB "
        f"(cost {cost[smallest]:.3f} dB); goal <= {GOAL_SMALL_MB} MB {'met' if mb <= GOAL_SMALL_MB else 'NOT met'}."
    )


def w8a8_goal(costs: dict) -> str:
    rows = [row for row in costs["results"] if row["weights"] == "w8a8"]
    worst = max(row["psnr_cost_vs_fp16_db"] for row in rows)
    return (
        "- w8a8 PSNR cost: "
        + ", ".join(f"{row['format']} {row['psnr_cost_vs_fp16_db']:.3f} dB" for row in rows)
        + f"; goal <= {GOAL_W8A8_PSNR_COST_DB} dB {'met' if worst <= GOAL_W8A8_PSNR_COST_DB else 'NOT met'}."
    )


def markdown(result: dict) -> str:
    sizes = result["sizes"]
    lines = [
        f"# Core ML package sizes: paper MobileR2L ({sizes['params'] / 1e6:.2f} M params, "
        f"{sizes['gmac_per_frame']:.1f} GMAC per {result['frame']} frame)",
        "",
        f"Random init, `rays` input, fp16 compute, compressed weights of more than {coreml.COMPRESSION_THRESHOLD} "
        f"elements on (coremltools' default), the stem kept at >= {coreml.STEM_MIN_BITS} bits in one palette; iOS 16 "
        "formats, palettes per group of output channels (-g<size>, iOS 18), w8a8 (int8 activations too, iOS 17); "
        "ONNX fp32 and static int8 QDQ (w8a8). Int8 activations calibrated on "
        f"{result['calibration_views']} orbit poses.",
        "",
        *goals(result),
        "",
        "| format | weights | size MB | weight file MB | program MB | bytes/param | convert or compress s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in sizes["results"]:
        weight_file = "–" if row["weight_file_mb"] is None else f"{row['weight_file_mb']:.2f}"
        program = "–" if row["program_mb"] is None else f"{row['program_mb']:.3f}"
        lines.append(
            f"| {row['format']} | {row['weights']} | {row['size_mb']:.2f} | {weight_file} | {program} "
            f"| {row['bytes_per_param']:.3f} | {row['seconds']:.1f} |"
        )
    costs = result.get("psnr_costs")
    if costs:
        lines += [
            "",
            f"## PSNR cost on a trained student ({costs['params'] / 1e3:.0f} K params, width "
            f"{costs['network']['width']}, {costs['network']['num_blocks']} blocks, {costs['frame']})",
            "",
            f"`pose` exports on {costs['test_views']} test views (Core ML executed by the torch MIL interpreter, ONNX "
            f"by onnxruntime; int8 activations calibrated on {costs['calibration_views']} pseudo views). The torch "
            f"student scores {costs['torch_psnr_vs_test_images_db']:.2f} dB against the test images. -finetuned: "
            "the palettes learnt by fine-tuning, palettes in the loop, to render what the float student renders at "
            f"its pseudo views' poses ({costs['palette_training']}), "
            "stored like the k-means palettes of the same name (the same sizes on the paper network); "
            f"{', '.join(MIXED_PALETTES)}: mixed, n + 1 bits on the layers whose n-bit palettes cost the rendering "
            "most per weight (its paper-network size: k-means palettes at the bits that ranking gives each layer).",
            "",
            "| format | weights | size MB | PSNR vs test images dB | cost vs fp16 dB | PSNR vs torch dB | max abs RGB "
            "| check |",
            "|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for row in costs["results"]:
            lines.append(
                f"| {row['format']} | {row['weights']} | {row['size_mb']:.3f} | {row['psnr_vs_test_images_db']:.3f} "
                f"| {row['psnr_cost_vs_fp16_db']:+.3f} | {row['psnr_vs_torch_db']:.1f} | {row['max_abs_rgb']:.1e} "
                f"| {'pass' if row['passed'] else 'FAIL'} |"
            )
    return "\n".join(lines) + "\n"


def main(args: Args) -> None:
    h, w = args.grid
    s = args.network.upscale
    with tempfile.TemporaryDirectory() as directory:
        result = dict(
            frame=f"{h}x{w} rays -> {h * s}x{w * s} RGB",
            network=asdict(args.network),
            calibration_views=args.calibration_views,
            sizes=package_sizes(args, Path(directory)),
        )
        if args.student is not None:
            result["psnr_costs"] = psnr_costs(
                args.student, Path(directory), args.calibration_views, args.palette_training
            )
    write_results(results_name("export_sizes", args.label), result, markdown(result), args.output_dir)


if __name__ == "__main__":
    main(tyro.cli(Args))
