"""Check a Core ML package on Linux, where Core ML cannot run it: read it back, check its spec, op set and
weights, then execute it with the torch MIL interpreter (`mil`) on the test views."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from nerfstudio_mobile.export.coreml import (
    COMPRESSION_THRESHOLD,
    NETWORK_ENTRY_OPS,
    STEM_MIN_BITS,
    ct,
    deployment_target,
    float_activation_ops,
    is_network_op,
)
from nerfstudio_mobile.export.mil import Package, dtype_name, read_package, run_program
from nerfstudio_mobile.export.sidecar import (
    SIDECAR_KEY,
    Compression,
    ExportFrame,
    InputMode,
    WeightFormat,
    weight_format,
    weights_label,
)
from nerfstudio_mobile.export.verify import Case, Verification, measure, min_psnr

if TYPE_CHECKING:
    from coremltools.converters.mil.mil import Operation

LAYOUT_OPS = frozenset({"reshape", "transpose", "expand_dims", "squeeze", "tile"})
"""Ops that move data between axes: fine in the fp32 encoding, not in the Neural-Engine network part."""
CONSTANT_OPS = frozenset({"const", "constexpr_lut_to_dense", "constexpr_affine_dequantize"})


def _array_features(features: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """{name: (shape, dtype)} of a spec's inputs or outputs, dtype as "FLOAT32" etc."""
    return {
        feature.name: (
            tuple(feature.type.multiArrayType.shape),
            ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(feature.type.multiArrayType.dataType),
        )
        for feature in features
    }


def check_spec(
    package: Package, frame: ExportFrame, mode: InputMode, weights: WeightFormat, sidecar: dict[str, Any]
) -> list[str]:
    """Named fp32 inputs and outputs of static shape, the format's deployment target (no newer: every device
    that can run it should), and the sidecar in the metadata."""
    problems = []
    description = package.spec.description
    expected_inputs = {mode: (frame.input_shape(mode), "FLOAT32")}
    expected_outputs = {name: (shape, "FLOAT32") for name, shape in frame.output_shapes().items()}
    for kind, found, expected in (
        ("inputs", _array_features(description.input), expected_inputs),
        ("outputs", _array_features(description.output), expected_outputs),
    ):
        if found != expected:
            problems.append(f"{kind} are {found}, expected {expected}")
    target = deployment_target(weights)
    if package.spec.specificationVersion != target.value:
        problems.append(f"spec version {package.spec.specificationVersion}, expected {target.value} ({target.name})")
    stored = description.metadata.userDefined.get(SIDECAR_KEY)
    if stored is None:
        problems.append(f"no {SIDECAR_KEY} in the user metadata")
    elif json.loads(stored) != json.loads(json.dumps(sidecar)):
        problems.append(f"the {SIDECAR_KEY} metadata differs from the sidecar JSON")
    return problems


def check_ops(package: Package) -> list[str]:
    """The network part (from the first conv on) is Neural-Engine friendly: 4-D tensors, no layout ops, fp16
    compute; the part before it (ray generation and encoding of the `pose` graph) computes in fp32, from
    uncompressed constants (only conv weights may be compressed)."""
    problems = []
    for op in package.main.operations:
        if op.op_type in CONSTANT_OPS:
            readers = {child.op_type for var in op.outputs for child in var.child_ops} - NETWORK_ENTRY_OPS
            if op.op_type != "const" and readers:
                problems.append(f"{op.op_type} ({op.name}) compresses a constant of {', '.join(sorted(readers))}")
            continue
        dtypes = {dtype_name(var) for var in op.outputs}
        if is_network_op(op):
            if op.op_type in LAYOUT_OPS:
                problems.append(f"layout op {op.op_type} ({op.name}) in the network part")
            if any(var.rank != 4 for var in op.outputs):
                problems.append(f"{op.op_type} ({op.name}) in the network part is not 4-D")
            if op.op_type in NETWORK_ENTRY_OPS and dtypes != {"fp16"}:
                problems.append(f"{op.op_type} ({op.name}) computes in {dtypes}, not fp16")
        elif "fp16" in dtypes and op.op_type != "cast":  # the cast into the network is the one fp16 boundary
            problems.append(f"{op.op_type} ({op.name}) of the ray encoding computes in fp16")
    return problems


Storage = tuple[str, int, int | None]
"""How a weight is stored: ("fp16" | "fp32" | "int8" | "palette", bits per element, output channels per palette
(None: one palette for the tensor, or not a palette))."""


def _weight_storage(op: Operation) -> Storage:
    weight = op.inputs["weight"]
    producer = weight.op
    if producer is None or producer.op_type == "const":
        name = dtype_name(weight)
        return name, 16 if name == "fp16" else 32, None
    if producer.op_type == "constexpr_affine_dequantize":
        return "int8", 8, None
    if producer.op_type == "constexpr_lut_to_dense":
        lut = producer.inputs["lut"].val
        if "shape" in producer.inputs:  # iOS16: one table
            return "palette", int(math.log2(lut.size)), None
        # iOS18: lut [g_0, .., g_{r-1}, 2^n, 1], tables split the output-channel axis only
        axis = _output_channel_axis(op)
        groups = lut.shape[: weight.rank]
        if any(count != 1 for i, count in enumerate(groups) if i != axis):
            return "palette (blocks off the output-channel axis)", 0, None
        group = weight.shape[axis] // groups[axis] if groups[axis] > 1 else None
        return "palette", int(math.log2(lut.shape[-2])), group
    return producer.op_type, 0, None


def _output_channel_axis(op: Operation) -> int:
    """conv weights are [out, in, kh, kw], conv_transpose weights [in, out, kh, kw]."""
    return 1 if op.op_type == "conv_transpose" else 0


def expected_storage(op: Operation, index: int, weights: WeightFormat) -> Storage:
    """What `weights` makes of a conv weight: large ones (more than COMPRESSION_THRESHOLD elements) int8 or palettes,
    the stem (index 0) at >= STEM_MIN_BITS in one palette, small ones fp16."""
    weight = op.inputs["weight"]
    if math.prod(weight.shape) <= COMPRESSION_THRESHOLD or weights.kind == "fp16":
        return "fp16", 16, None
    if weights.kind in ("int8", "w8a8"):
        return "int8", 8, None
    if index == 0:
        return "palette", max(weights.bits, STEM_MIN_BITS), None
    channels = weight.shape[_output_channel_axis(op)]
    group = None if weights.group_size is None or weights.group_size == channels else weights.group_size
    return "palette", weights.bits, group


def check_weights(package: Package, params: int, weights: WeightFormat) -> list[str]:
    """Every conv weight and bias of the student is there (counted against its parameters) and stored as
    `weights` says (`expected_storage`; a mixed format's layers at its bits or one more, within its mean)."""
    problems = []
    convs = [op for op in package.main.operations if op.op_type in NETWORK_ENTRY_OPS]
    stored = sum(math.prod(op.inputs["weight"].shape) for op in convs)
    stored += sum(math.prod(op.inputs["bias"].shape) for op in convs if "bias" in op.inputs)
    if stored != params:
        problems.append(f"the package holds {stored:,} conv parameters, the folded student {params:,}")
    palettes = []  # (elements, bits) of every palettized weight but the stem's
    for index, op in enumerate(convs):
        storage, expected = _weight_storage(op), expected_storage(op, index, weights)
        kind, bits, group = expected
        if weights.mean_bits is not None and index > 0 and storage == (kind, bits + 1, group):
            expected = storage  # a mixed format's wider layer
        if storage != expected:
            problems.append(f"{op.op_type} ({op.name}) weight stored as {storage}, expected {expected}")
        elif kind == "palette" and index > 0:
            palettes.append((math.prod(op.inputs["weight"].shape), storage[1]))
    if weights.mean_bits is not None and palettes:
        mean = sum(count * bits for count, bits in palettes) / sum(count for count, _ in palettes)
        if mean > weights.mean_bits + 1e-9:
            problems.append(f"palettes of {mean:.3f} bits per weight on average, more than {weights.mean_bits}")
    return problems


def _reads_int8(op: Operation) -> bool:
    """x comes through a dequantize of an int8 value."""
    producer = op.inputs["x"].op
    return producer is not None and producer.op_type == "dequantize" and dtype_name(producer.inputs["input"]) == "int8"


def check_activations(package: Package, weights: WeightFormat) -> list[str]:
    """w8a8: every conv reads an int8 activation (quantize -> dequantize) but the `float_activation_ops` (stem,
    last super-resolution stage, heads), which read fp16, and nothing from the last conv transpose on is
    quantized; any other format has no activation quantization at all."""
    operations = list(package.main.operations)
    if weights.kind != "w8a8":
        quantized = sum(op.op_type == "quantize" for op in operations)
        return [f"{quantized} activation quantize ops in a {weights.kind} package"] if quantized else []
    fp16 = float_activation_ops(package.main)
    problems = []
    for op in operations:
        if op.op_type == "conv":
            expected, found = "fp16" if op.name in fp16 else "int8", "int8" if _reads_int8(op) else "fp16"
            if found != expected:
                problems.append(f"conv ({op.name}) reads {found} activations, expected {expected}")
        elif op.op_type == "quantize" and op.name in fp16:
            problems.append(f"quantize ({op.name}) in the part that keeps fp16 activations")
    return problems


def verify_coreml(
    path: Path,
    frame: ExportFrame,
    mode: InputMode,
    compression: Compression,
    params: int,
    sidecar: dict[str, Any],
    cases: list[Case],
) -> Verification:
    """Read the package at `path` back and check it, then execute it on every case."""
    package = read_package(path)
    weights = weight_format(compression)
    problems = (
        check_spec(package, frame, mode, weights, sidecar)
        + check_ops(package)
        + check_weights(package, params, weights)
        + check_activations(package, weights)
    )

    def run(x: Tensor) -> list[Tensor]:
        outputs = run_program(package.main, {mode: x})
        return [outputs[name] for name in frame.output_names]

    return Verification(measure(run, cases), min_psnr(weights_label(compression)), problems)
