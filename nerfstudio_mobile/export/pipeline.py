"""Export a student in every requested input mode and weight format, and verify each file as it is written.

Per input mode: one traced graph, one set of test-view cases, and for Core ML one fp16 conversion per deployment
target from which every compressed variant is derived. Formats with int8 activations (Core ML w8a8, ONNX int8)
are calibrated on the poses of the student's pseudo views. Each file gets its sidecar JSON next to it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nerfstudio.cameras.cameras import Cameras

from nerfstudio_mobile.common.files import file_size, temp_path
from nerfstudio_mobile.export.calibration import DEFAULT_CALIBRATION_VIEWS, calibration_cameras, calibration_inputs
from nerfstudio_mobile.export.graphs import export_graph
from nerfstudio_mobile.export.palette_training import PaletteTraining, palette_finetuned
from nerfstudio_mobile.export.sidecar import (
    Compression,
    ExportFrame,
    InputMode,
    OnnxWeights,
    sidecar,
    weight_format,
    weights_label,
)
from nerfstudio_mobile.export.student import Student
from nerfstudio_mobile.export.verify import Verification, view_cases


@dataclass
class ExportedFile:
    path: Path
    mode: InputMode
    weights: str
    """"fp16", "int8", "palettize4", "w8a8", ... (Core ML) or "fp32", "w8a8" (ONNX)."""
    size_bytes: int
    params: int
    verification: Verification


def _write_sidecar(path: Path, contents: dict) -> None:
    path.with_suffix(".json").write_text(json.dumps(contents, indent=2) + "\n")


def export_coreml_files(
    student: Student,
    frame: ExportFrame,
    modes: Sequence[InputMode],
    compressions: Sequence[Compression],
    directory: Path,
    calibration_views: int = DEFAULT_CALIBRATION_VIEWS,
    palette_training: PaletteTraining | None = None,
) -> list[ExportedFile]:
    """`<name>-<mode>-<compression>.mlpackage` + `.json` in `directory` for every mode and compression.
    -finetuned palettes are learnt first, once per compression (`palette_training`'s settings)."""
    # Imported here: each format needs its own optional packages (coremltools), not the other format's.
    from nerfstudio_mobile.export import coreml
    from nerfstudio_mobile.export.coreml_verify import verify_coreml

    for compression in compressions:  # a bad name or group size fails before the slow part
        coreml.check_group_size(student.model.network, compression)
    needs_calibration = any(weight_format(compression).kind == "w8a8" for compression in compressions)
    cameras = calibration_cameras(student, frame, calibration_views) if needs_calibration else []
    finetuned = {
        compression: palette_finetuned(student, weight_format(compression), palette_training or PaletteTraining())
        for compression in compressions
        if weight_format(compression).finetuned
    }
    exported = []
    for mode in modes:
        graph = export_graph(student.model.network, frame, mode)
        params = sum(p.numel() for p in graph.parameters())
        cases = view_cases(student, frame, mode)
        samples = [{mode: x} for x in calibration_inputs(student, frame, mode, cameras)]
        conversions = {}  # (deployment target, the fine-tuned palettes' compression or None) -> fp16 model
        for compression in compressions:
            target = coreml.conversion_target(weight_format(compression))
            key = (target, compression if compression in finetuned else None)
            if key not in conversions:
                converted = graph if key[1] is None else export_graph(finetuned[compression], frame, mode)
                conversions[key] = coreml.convert(converted, frame, mode, target)
            weights = weights_label(compression)
            contents = sidecar(frame, mode, weights, params, student.source)
            path = directory / f"{student.name}-{mode}-{weights}.mlpackage"
            coreml.save(coreml.compress(conversions[key], compression, samples), path, contents)
            _write_sidecar(path, contents)
            verification = verify_coreml(path, frame, mode, compression, params, contents, cases)
            exported.append(ExportedFile(path, mode, weights, file_size(path), params, verification))
    return exported


def export_onnx_files(
    student: Student,
    frame: ExportFrame,
    modes: Sequence[InputMode],
    directory: Path,
    quantize: Sequence[OnnxWeights] = ("none",),
    calibration_views: int = DEFAULT_CALIBRATION_VIEWS,
) -> list[ExportedFile]:
    """`<name>-<mode>.onnx` (fp32) and `<name>-<mode>-int8.onnx` (static int8 QDQ), each with its `.json`, in
    `directory` for every mode."""
    cameras = calibration_cameras(student, frame, calibration_views) if "int8" in quantize else []
    return [file for mode in modes for file in _export_onnx_mode(student, frame, mode, directory, quantize, cameras)]


def _export_onnx_mode(
    student: Student,
    frame: ExportFrame,
    mode: InputMode,
    directory: Path,
    quantize: Sequence[OnnxWeights],
    cameras: list[Cameras],
) -> list[ExportedFile]:
    from nerfstudio_mobile.export.onnx import export_onnx, verify_onnx

    graph = export_graph(student.model.network, frame, mode)
    params = sum(p.numel() for p in graph.parameters())
    cases = view_cases(student, frame, mode)

    def verified(path: Path, weights: str, contents: dict) -> ExportedFile:
        _write_sidecar(path, contents)
        verification = verify_onnx(path, frame, mode, contents, cases, weights)
        return ExportedFile(path, mode, weights, file_size(path), params, verification)

    exported = []
    fp32_path = directory / f"{student.name}-{mode}.onnx"
    fp32_contents = sidecar(frame, mode, "fp32", params, student.source)
    # The int8 file is quantized from the fp32 one, which is written aside when only int8 was asked for.
    source = fp32_path if "none" in quantize else temp_path(fp32_path)
    try:
        export_onnx(graph, frame, mode, source, fp32_contents)
        if "none" in quantize:
            exported.append(verified(fp32_path, "fp32", fp32_contents))
        if "int8" in quantize:
            path = directory / f"{student.name}-{mode}-int8.onnx"
            from nerfstudio_mobile.export.onnx_int8 import quantize_int8  # needs ml_dtypes: only for int8

            contents = sidecar(frame, mode, "w8a8", params, student.source)
            quantize_int8(source, path, mode, calibration_inputs(student, frame, mode, cameras), contents)
            exported.append(verified(path, "w8a8", contents))
    finally:
        if source != fp32_path:
            source.unlink(missing_ok=True)
    return exported
