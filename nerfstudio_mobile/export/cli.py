"""`ns-export-mobile`: export a trained MobileR2L student to Core ML or ONNX, verified on the scene's test views.

    ns-export-mobile coreml --load-config outputs/<scene>/mobile-r2l/<run>/config.yml --output-dir exports/
    ns-export-mobile coreml ... --input-modes pose --compressions none palettize4
    ns-export-mobile coreml ... --compressions palettize4-g16 palettize3-g16 w8a8
    ns-export-mobile coreml ... --compressions palettize3-g16-finetuned --palette-training.steps 300  # quicker
    ns-export-mobile onnx --load-config ... --output-dir exports-onnx/ --quantize none int8

Every file is read back and executed (Core ML: by a torch interpreter of its ML program, since Core ML runs
only on Apple platforms; ONNX: by onnxruntime) and compared with the torch student. The command exits with
status 1 when any file fails verification, 2 on a usage problem (the message says what to do).
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import tyro
from rich.console import Console
from rich.table import Table

from nerfstudio_mobile.common.cli import run_cli
from nerfstudio_mobile.common.files import atomic_dir
from nerfstudio_mobile.export.calibration import DEFAULT_CALIBRATION_VIEWS
from nerfstudio_mobile.export.errors import OutputExistsError
from nerfstudio_mobile.export.palette_training import PaletteTraining
from nerfstudio_mobile.export.pipeline import ExportedFile, export_coreml_files, export_onnx_files
from nerfstudio_mobile.export.sidecar import (
    INPUT_MODES,
    Compression,
    ExportFrame,
    InputMode,
    OnnxWeights,
    export_frame,
    weight_format,
)
from nerfstudio_mobile.export.student import Student, load_student

CONSOLE = Console(width=160)


def check_output_dir(path: Path, overwrite: bool) -> None:
    """Refuse a file, or a non-empty directory unless `overwrite`: an export never silently replaces outputs."""
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"--output-dir {path} is a file: pass a directory path.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"--output-dir {path} exists and is not empty: pass --overwrite to replace it, or choose another directory."
        )


@dataclass
class ExportMobile(ABC):
    """Options shared by both formats."""

    load_config: Path
    """config.yml of a trained mobile-r2l student run."""
    output_dir: Path
    """Directory to write, all at once: written beside it, then renamed into place."""
    input_modes: tuple[InputMode, ...] = INPUT_MODES
    """rays: the app feeds the encoded ray grid [1, C, h, w]; pose: its world camera-to-world [1, 4, 4]."""
    output_size: tuple[int, int] | None = None
    """Exported frame size H W; both divisible by the upscale factor. Default: the training images' size."""
    overwrite: bool = False
    """Replace a non-empty --output-dir."""
    calibration_views: int = DEFAULT_CALIBRATION_VIEWS
    """Pseudo views (from the student's cache) whose poses calibrate int8 activations (coreml w8a8, onnx int8)."""

    def main(self) -> None:
        if any(not file.verification.passed for file in self.run()):
            sys.exit(1)

    def run(self) -> list[ExportedFile]:
        """Export, verify, print the table and any failures; the files land under --output-dir (renamed paths)."""
        # Usage problems first, before the slow part (loading the run).
        check_output_dir(self.output_dir, self.overwrite)
        self.require_dependencies()
        student = load_student(self.load_config)
        frame = export_frame(student, self.output_size)
        with atomic_dir(self.output_dir) as staging:
            exported = self.export(student, frame, staging)
            check_output_dir(self.output_dir, self.overwrite)  # again: something may have written there meanwhile
        for file in exported:
            file.path = self.output_dir / file.path.name
        CONSOLE.print(export_table(student, frame, exported, self.output_dir))
        for file in exported:
            if not file.verification.passed:
                CONSOLE.print(f"[red]{file.path.name} failed verification: {'; '.join(file.verification.failures)}")
        return exported

    @abstractmethod
    def require_dependencies(self) -> None:
        """Import this format's optional packages (MissingDependencyError names the one to install)."""

    @abstractmethod
    def export(self, student: Student, frame: ExportFrame, directory: Path) -> list[ExportedFile]:
        """Write this format's files for every input mode into `directory`."""


@dataclass
class CoreMLExport(ExportMobile):
    """Core ML ML programs (.mlpackage, fp16 network, iOS 16+), optionally with compressed weights."""

    compressions: tuple[Compression, ...] = ("none",)
    """Weight formats, one package each: none (fp16), int8, palettize8, palettize6, palettize4 (k-means, one palette
    per tensor; iOS 16); palettize<n>-g<size> (one palette per <size> output channels, n = 8, 6, 4, 3, 2, e.g.
    palettize4-g16; iOS 18); either palette with -finetuned (e.g. palettize3-g16-finetuned: the palettes learnt, in
    the loop, by rendering what the student renders, instead of clustering its trained weights);
    palettize<n>.<f>-g<size>-finetuned (mixed, e.g. palettize2.4-g16-finetuned: n + 1 bits on the layers whose n-bit
    palettes cost the rendering most per weight, n.<f> bits per weight on average); w8a8 (int8 weights and
    activations, the Neural Engine's int8 path; iOS 17)."""
    palette_training: PaletteTraining = field(default_factory=PaletteTraining)
    """Fine-tuning of the -finetuned palettes (at the poses of the student's pseudo-view cache, no teacher renders)."""

    def require_dependencies(self) -> None:
        from nerfstudio_mobile.export import coreml, coreml_verify  # noqa: F401

        formats = [weight_format(compression) for compression in self.compressions]  # a bad name fails here
        if any(weights.kind == "palette" for weights in formats):
            coreml.require_palettizer()

    def export(self, student: Student, frame: ExportFrame, directory: Path) -> list[ExportedFile]:
        return export_coreml_files(
            student, frame, self.input_modes, self.compressions, directory, self.calibration_views,
            self.palette_training,
        )  # fmt: skip


@dataclass
class OnnxExport(ExportMobile):
    """ONNX files (opset 17), checked with onnxruntime: fp32, and optionally static int8 QDQ."""

    quantize: tuple[OnnxWeights, ...] = ("none",)
    """One file each: none (fp32, <name>-<mode>.onnx), int8 (S8S8 QDQ: int8 weights per channel, int8 activations
    calibrated on the student's pseudo views; <name>-<mode>-int8.onnx)."""

    def require_dependencies(self) -> None:
        from nerfstudio_mobile.export import onnx  # noqa: F401

        if "int8" in self.quantize:
            from nerfstudio_mobile.export import onnx_int8  # noqa: F401

    def export(self, student: Student, frame: ExportFrame, directory: Path) -> list[ExportedFile]:
        return export_onnx_files(student, frame, self.input_modes, directory, self.quantize, self.calibration_views)


def _db(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def export_table(student: Student, frame: ExportFrame, exported: list[ExportedFile], output_dir: Path) -> Table:
    grid, output = frame.grid, frame.output
    table = Table(
        title=f"{student.name} (step {student.step}) → {output_dir}: {grid.height}×{grid.width} rays → "
        f"{output.height}×{output.width} frame. PSNR and max |Δ| against the torch student, PSNR vs images: "
        f"torch → export against the {len(student.test_views)} test images"
    )
    table.add_column("file", no_wrap=True)
    table.add_column("input")
    table.add_column("weights")
    for column in ("size", "params", "GMAC/frame", "PSNR vs torch", "max |Δ| rgb / depth", "PSNR vs images"):
        table.add_column(column, justify="right")
    table.add_column("check")
    for file in exported:
        fidelity = file.verification.fidelity
        depth = "" if fidelity.max_abs_depth is None else f" / {fidelity.max_abs_depth:.1e}"
        table.add_row(
            file.path.name,
            file.mode,
            file.weights,
            f"{file.size_bytes / 1e6:.2f} MB",
            f"{file.params / 1e6:.3f} M",
            f"{frame.gmac_per_frame():.3f}",
            f"{fidelity.psnr:.1f} dB",
            f"{fidelity.max_abs_rgb:.1e}{depth}",
            f"{_db(fidelity.psnr_images_torch)} → {_db(fidelity.psnr_images_export)}",
            "[green]pass" if file.verification.passed else "[red]FAIL",
        )
    return table


Commands = (
    Annotated[CoreMLExport, tyro.conf.subcommand(name="coreml")]
    | Annotated[OnnxExport, tyro.conf.subcommand(name="onnx")]
)


def entrypoint() -> None:
    run_cli(Commands, "ns-export-mobile", CONSOLE)


if __name__ == "__main__":
    entrypoint()
