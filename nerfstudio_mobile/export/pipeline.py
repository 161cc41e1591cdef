"""Export a student in every requested input mode and weight format, and verify each file as it is written.

Per input mode: one traced graph, one set of test-view cases, and for Core ML one fp16 conversion from which
every compressed variant is derived. Each file gets its sidecar JSON next to it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nerfstudio_mobile.common.files import file_size
from nerfstudio_mobile.export.graphs import export_graph
from nerfstudio_mobile.export.sidecar import Compression, ExportFrame, InputMode, sidecar, weights_label
from nerfstudio_mobile.export.student import Student
from nerfstudio_mobile.export.verify import Verification, view_cases


@dataclass
class ExportedFile:
    path: Path
    mode: InputMode
    weights: str
    """"fp16", "int8", "palettize4", ... (Core ML) or "fp32" (ONNX)."""
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
) -> list[ExportedFile]:
    """`<name>-<mode>-<compression>.mlpackage` + `.json` in `directory` for every mode and compression."""
    # Imported here: each format needs its own optional packages (coremltools), not the other format's.
    from nerfstudio_mobile.export import coreml
    from nerfstudio_mobile.export.coreml_verify import verify_coreml

    exported = []
    for mode in modes:
        graph = export_graph(student.model.network, frame, mode)
        params = sum(p.numel() for p in graph.parameters())
        cases = view_cases(student, frame, mode)
        fp16 = coreml.convert(graph, frame, mode)
        for compression in compressions:
            weights = weights_label(compression)
            contents = sidecar(frame, mode, weights, params, student.source)
            path = directory / f"{student.name}-{mode}-{weights}.mlpackage"
            coreml.save(coreml.compress(fp16, compression), path, contents)
            _write_sidecar(path, contents)
            verification = verify_coreml(path, frame, mode, compression, params, contents, cases)
            exported.append(ExportedFile(path, mode, weights, file_size(path), params, verification))
    return exported


def export_onnx_files(
    student: Student, frame: ExportFrame, modes: Sequence[InputMode], directory: Path
) -> list[ExportedFile]:
    """`<name>-<mode>.onnx` + `.json` in `directory` for every mode."""
    from nerfstudio_mobile.export.onnx import export_onnx, verify_onnx

    exported = []
    for mode in modes:
        graph = export_graph(student.model.network, frame, mode)
        params = sum(p.numel() for p in graph.parameters())
        contents = sidecar(frame, mode, "fp32", params, student.source)
        path = directory / f"{student.name}-{mode}.onnx"
        export_onnx(graph, frame, mode, path, contents)
        _write_sidecar(path, contents)
        verification = verify_onnx(path, frame, mode, contents, view_cases(student, frame, mode))
        exported.append(ExportedFile(path, mode, "fp32", file_size(path), params, verification))
    return exported
