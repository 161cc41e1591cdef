"""Calibration inputs for int8 activations (ONNX int8, Core ML w8a8): the poses of the student's own pseudo views,
read from the cache its distillation used, at the export's intrinsics, through the graph's input encoding.

No teacher renders: only the poses are needed, and the pseudo views are the distribution the student was trained
on. The scene's test views stay held out for verification.
"""

from __future__ import annotations

from nerfstudio.cameras.cameras import Cameras
from torch import Tensor

from nerfstudio_mobile.export.errors import CalibrationError
from nerfstudio_mobile.export.graphs import graph_input
from nerfstudio_mobile.export.sidecar import ExportFrame, InputMode
from nerfstudio_mobile.export.student import Student
from nerfstudio_mobile.mobile_r2l.cache import PseudoViewCache

DEFAULT_CALIBRATION_VIEWS = 32


def student_pseudo_views(student: Student, needed_for: str, otherwise: str) -> PseudoViewCache:
    """The pseudo-view cache the student was distilled from; CalibrationError (what to do) when it is gone."""
    where = student.pseudo_views
    cache = PseudoViewCache.open(where) if where is not None and where.is_dir() else None
    if cache is None or not cache.indices():
        raise CalibrationError(
            f"{needed_for} the student's pseudo views, and its cache is "
            f"{'not in the teacher run' if where is None else f'empty or gone ({where})'}: put the cache back (or "
            f"render it again with ns-mobile-pseudo-views and the student's settings), or {otherwise}."
        )
    return cache


def calibration_cameras(student: Student, frame: ExportFrame, count: int) -> list[Cameras]:
    """The first `count` cached pseudo views (their poses are independent draws) as cameras of the export."""
    if count < 1:
        raise CalibrationError(f"--calibration-views {count}: int8 activations need at least one calibration view.")
    cache = student_pseudo_views(student, "int8 activations are calibrated on", "export without int8 activations")
    return [frame.output.cameras(cache.read(index).c2w[None]) for index in cache.indices()[:count]]


def calibration_inputs(student: Student, frame: ExportFrame, mode: InputMode, cameras: list[Cameras]) -> list[Tensor]:
    """What the `mode` graph takes for each camera: encoded rays, or the world pose."""
    return [graph_input(student, mode, camera) for camera in cameras]
