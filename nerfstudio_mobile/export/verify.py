"""Judge an export by what it renders: run it on the scene's test views and compare with the torch student.

Shared by the Core ML path (programs executed by the torch MIL interpreter) and the ONNX path (onnxruntime).
An export passes when its structural checks found no problem and its RGB PSNR against the torch student
reaches the floor of its weight format (`MIN_PSNR`): each floor sits below what that format keeps on trained
students (benchmarks/results/export_sizes.md), while a wrong weight or a swapped layer falls far below it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass, field

from nerfstudio.cameras.cameras import Cameras
from torch import Tensor

from nerfstudio_mobile.common.intrinsics import Intrinsics
from nerfstudio_mobile.common.metrics import psnr
from nerfstudio_mobile.export.graphs import graph_input
from nerfstudio_mobile.export.sidecar import ExportFrame, InputMode, weight_format
from nerfstudio_mobile.export.student import Student

MIN_PSNR: dict[str, float] = {
    "fp32": 60.0,  # ONNX: only operator-order rounding
    "fp16": 40.0,
    "int8": 32.0,
    "palettize8": 32.0,
    "palettize6": 28.0,
    "palettize4": 20.0,
    "w8a8": 24.0,  # int8 activations as well (Core ML w8a8: 27.7, ONNX int8: 33.7 on the tests' student)
}
"""RGB PSNR floor (dB) against the torch student, per weight format (`weights_label`; ONNX: fp32, w8a8)."""
GROUPED_PALETTE_MIN_PSNR: dict[int, float] = {8: 32.0, 6: 28.0, 4: 24.0, 3: 17.0, 2: 12.0}
"""The same per bit width for palettes per group of output channels (palettize<n>-g<size>; -g16 on the tests'
student: 31.8, 21.5 and 16.4 dB at 4, 3 and 2 bits)."""


def min_psnr(weights: str) -> float:
    """The RGB PSNR floor of a weight format's label."""
    return MIN_PSNR[weights] if weights in MIN_PSNR else GROUPED_PALETTE_MIN_PSNR[weight_format(weights).bits]


@dataclass
class Case:
    """One test view as an export sees it."""

    input: Tensor
    reference: tuple[Tensor, ...]
    """The torch student's outputs: rgb [1, 3, H, W] (, depth [1, 1, H, W])."""
    image: Tensor | None
    """Ground truth [H, W, 3] when the test view has the export's size and intrinsics."""


def _same_intrinsics(camera: Cameras, frame: ExportFrame) -> bool:
    view, output = astuple(Intrinsics.from_camera(camera)), astuple(frame.output)
    return all(math.isclose(v, e, rel_tol=1e-5) for v, e in zip(view, output, strict=True))


def view_cases(student: Student, frame: ExportFrame, mode: InputMode) -> list[Case]:
    cases = []
    for view in student.test_views:
        # The test view's pose with the export's intrinsics and size (the ones baked into the `pose` graph).
        camera = frame.output.cameras(view.camera.camera_to_worlds.reshape(1, 3, 4))
        image = view.image if _same_intrinsics(view.camera, frame) else None
        cases.append(Case(graph_input(student, mode, camera), student.render(camera), image))
    return cases


@dataclass
class Fidelity:
    psnr: float
    """RGB PSNR (dB) of the export against the torch student, mean over test views."""
    max_abs_rgb: float
    max_abs_depth: float | None
    psnr_images_torch: float | None
    """PSNR of the torch student against the test images (None when the export size differs from theirs)."""
    psnr_images_export: float | None


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def measure(run: Callable[[Tensor], Sequence[Tensor]], cases: list[Case]) -> Fidelity:
    """Run an export on every case and compare with the torch student (and the test images)."""
    psnrs, rgb_errors, depth_errors, torch_vs_images, export_vs_images = [], [], [], [], []
    for case in cases:
        outputs = [output.float() for output in run(case.input)]
        rgb, reference_rgb = outputs[0][0].permute(1, 2, 0), case.reference[0][0].permute(1, 2, 0)
        psnrs.append(float(psnr(reference_rgb, rgb)))
        rgb_errors.append(float((rgb - reference_rgb).abs().max()))
        if len(outputs) > 1:
            depth_errors.append(float((outputs[1] - case.reference[1]).abs().max()))
        if case.image is not None:
            torch_vs_images.append(float(psnr(case.image, reference_rgb)))
            export_vs_images.append(float(psnr(case.image, rgb)))
    return Fidelity(
        psnr=_mean(psnrs) or math.nan,
        max_abs_rgb=max(rgb_errors),
        max_abs_depth=max(depth_errors) if depth_errors else None,
        psnr_images_torch=_mean(torch_vs_images),
        psnr_images_export=_mean(export_vs_images),
    )


@dataclass
class Verification:
    fidelity: Fidelity
    min_psnr: float
    problems: list[str] = field(default_factory=list)
    """Structural problems (spec, op set, weights)."""

    @property
    def failures(self) -> list[str]:
        low = self.fidelity.psnr < self.min_psnr or math.isnan(self.fidelity.psnr)
        psnr = [f"PSNR vs torch {self.fidelity.psnr:.1f} dB < {self.min_psnr:.0f} dB"] if low else []
        return self.problems + psnr

    @property
    def passed(self) -> bool:
        return not self.failures
