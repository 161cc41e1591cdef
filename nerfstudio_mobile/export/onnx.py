"""ONNX export of the same two graphs (fp32 weights), checked with onnxruntime against the torch student.

The sidecar JSON is stored in the model's metadata_props under `SIDECAR_KEY` as well as next to the file.
"""

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nerfstudio_mobile.export.dependencies import require
from nerfstudio_mobile.export.sidecar import SIDECAR_KEY, ExportFrame, InputMode
from nerfstudio_mobile.export.verify import MIN_PSNR, Case, Verification, measure

onnx = require("onnx", "onnx", "ONNX export")
ort = require("onnxruntime", "onnxruntime", "Checking ONNX exports")

OPSET = 17
"""Opset 17 (ONNX 1.12, 2022): supported by onnxruntime, onnxruntime-mobile and the common converters."""


def export_onnx(graph: nn.Module, frame: ExportFrame, mode: InputMode, path: Path, sidecar: dict[str, Any]) -> None:
    """Trace `graph` to `path` with named inputs and outputs and static shapes, the sidecar in its metadata."""
    example = torch.zeros(frame.input_shape(mode))
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter: the torch.export-based default needs onnxscript, which the extra lacks.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            input_names=[mode],
            output_names=list(frame.output_names),
            opset_version=OPSET,
            dynamo=False,
        )
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {SIDECAR_KEY: json.dumps(sidecar)})
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def verify_onnx(
    path: Path, frame: ExportFrame, mode: InputMode, sidecar: dict[str, Any], cases: list[Case]
) -> Verification:
    """Check names, shapes and metadata of the file at `path`, then run it with onnxruntime on every case."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    problems = []
    found = {
        "inputs": {arg.name: tuple(arg.shape) for arg in session.get_inputs()},
        "outputs": {arg.name: tuple(arg.shape) for arg in session.get_outputs()},
    }
    expected = {"inputs": {mode: frame.input_shape(mode)}, "outputs": frame.output_shapes()}
    for kind in ("inputs", "outputs"):
        if found[kind] != expected[kind]:
            problems.append(f"{kind} are {found[kind]}, expected {expected[kind]}")
    stored = session.get_modelmeta().custom_metadata_map.get(SIDECAR_KEY)
    if stored is None or json.loads(stored) != json.loads(json.dumps(sidecar)):
        problems.append(f"the {SIDECAR_KEY} metadata is missing or differs from the sidecar JSON")

    def run(x: Tensor) -> list[Tensor]:
        return [torch.from_numpy(y) for y in session.run(list(frame.output_names), {mode: x.numpy()})]

    return Verification(measure(run, cases), MIN_PSNR["fp32"], problems)
