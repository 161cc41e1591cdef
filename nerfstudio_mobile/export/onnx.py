"""ONNX export of the same two graphs, checked with onnxruntime against the torch student: fp32, and the layout of
static int8 QDQ files (written by `onnx_int8`).

The sidecar JSON is stored in the model's metadata_props under `SIDECAR_KEY` as well as next to the file.
"""

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nerfstudio_mobile.export.dependencies import require
from nerfstudio_mobile.export.sidecar import SIDECAR_KEY, ExportFrame, InputMode
from nerfstudio_mobile.export.verify import Case, Verification, measure, min_psnr

onnx = require("onnx", "onnx", "ONNX export")
ort = require("onnxruntime", "onnxruntime", "Checking ONNX exports")

OPSET = 17
"""Opset 17 (ONNX 1.12, 2022): supported by onnxruntime, onnxruntime-mobile and the common converters."""


def trace_onnx(graph: nn.Module, example: Tensor, path: Path, input_name: str, output_names: Sequence[str]) -> None:
    """Trace `graph` on `example` to `path`: named input and outputs, static shapes (those of `example`)."""
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter: the torch.export-based default needs onnxscript, which the extra lacks.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            input_names=[input_name],
            output_names=list(output_names),
            opset_version=OPSET,
            dynamo=False,
        )


def export_onnx(graph: nn.Module, frame: ExportFrame, mode: InputMode, path: Path, sidecar: dict[str, Any]) -> None:
    """Trace `graph` to `path` with named inputs and outputs and static shapes, the sidecar in its metadata."""
    trace_onnx(graph, torch.zeros(frame.input_shape(mode)), path, mode, frame.output_names)
    set_sidecar(path, sidecar)


def cpu_session(path: Path, threads: int | None = None) -> "ort.InferenceSession":
    """An onnxruntime session on the CPU; `threads` intra-op threads (None: onnxruntime's choice). Its threads sleep
    between runs: by default they spin-wait for the next one and take the cores from whatever torch runs next (a
    torch render right after a run took twice its time: benchmarks/results/render_latency.md)."""
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    for pool in ("intra_op", "inter_op"):
        options.add_session_config_entry(f"session.{pool}.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def set_sidecar(path: Path, sidecar: dict[str, Any]) -> None:
    """Store the sidecar in the file's metadata_props, and check the file."""
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {SIDECAR_KEY: json.dumps(sidecar)})
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


CONV_OPS = frozenset({"Conv", "ConvTranspose"})


def float_nodes(model: Any) -> list[str]:
    """Nodes that keep fp32 in the int8 file: those before the first conv (the `pose` graph's ray generation and
    encoding, whose sin/cos arguments reach hundreds of radians), the stem conv (its input mixes raw coordinates
    with sin/cos in one tensor) and every node from the last ConvTranspose on: the last super-resolution stage
    (16 channels at full resolution, whose spread per-tensor int8 steps resolve worst: on a trained student it
    alone costs ~6 dB against the torch student) and the heads. About 8% of the MACs."""
    nodes = list(model.graph.node)  # ONNX lists nodes in topological order
    network_tensors: set[str] = set()
    encoding = []
    for node in nodes:
        if node.op_type in CONV_OPS or network_tensors.intersection(node.input):
            network_tensors.update(node.output)
        else:
            encoding.append(node.name)
    stem = next(node.name for node in nodes if node.op_type == "Conv")
    last_upsample = max(index for index, node in enumerate(nodes) if node.op_type == "ConvTranspose")
    return [*encoding, stem, *(node.name for node in nodes[last_upsample:])]


def _producers(model: Any) -> dict[str, Any]:
    return {output: node for node in model.graph.node for output in node.output}


def check_qdq(model: Any) -> list[str]:
    """The int8 file is what it claims: every conv reads an int8 activation (QuantizeLinear -> DequantizeLinear) and
    int8 weights with one scale per channel, but the convs among `float_nodes`, which read fp32 weights."""
    producers, initializers = _producers(model), {tensor.name: tensor for tensor in model.graph.initializer}
    float_convs = set(float_nodes(model))
    problems = []
    for node in model.graph.node:
        if node.op_type not in CONV_OPS:
            continue
        activation, weight = (producers.get(name) for name in node.input[:2])
        quantized = (
            activation is not None
            and activation.op_type == "DequantizeLinear"
            and getattr(producers.get(activation.input[0]), "op_type", None) == "QuantizeLinear"
            and weight is not None
            and weight.op_type == "DequantizeLinear"
            and _int8_per_channel(weight, initializers)
        )
        if quantized == (node.name in float_convs):
            expected = "fp32" if node.name in float_convs else "int8 activation and per-channel int8 weights"
            problems.append(f"{node.op_type} {node.name} does not read {expected}")
    return problems


def _int8_per_channel(dequantize: Any, initializers: dict[str, Any]) -> bool:
    data, scale = (initializers.get(name) for name in dequantize.input[:2])
    return (
        data is not None
        and scale is not None
        and data.data_type == onnx.TensorProto.INT8
        and len(scale.dims) == 1
        and scale.dims[0] > 1
    )


def verify_onnx(
    path: Path, frame: ExportFrame, mode: InputMode, sidecar: dict[str, Any], cases: list[Case], weights: str = "fp32"
) -> Verification:
    """Check names, shapes and metadata of the file at `path` (and the int8 layout of a `w8a8` one), then run it
    with onnxruntime on every case."""
    session = cpu_session(path)
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
    if weights == "w8a8":
        problems += check_qdq(onnx.load(str(path)))

    def run(x: Tensor) -> list[Tensor]:
        return [torch.from_numpy(y) for y in session.run(list(frame.output_names), {mode: x.numpy()})]

    return Verification(measure(run, cases), min_psnr(weights), problems)
