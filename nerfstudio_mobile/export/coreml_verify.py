"""Check a Core ML package on Linux, where Core ML cannot run it: read it back, check its spec, op set and
weights, then execute it with the torch MIL interpreter (`mil`) on the test views."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from nerfstudio_mobile.export.coreml import (
    COMPRESSION_MIN_ELEMENTS,
    DEPLOYMENT_TARGET,
    NETWORK_ENTRY_OPS,
    PALETTE_BITS,
    STEM_MIN_BITS,
    ct,
    is_network_op,
)
from nerfstudio_mobile.export.mil import Package, dtype_name, read_package, run_program
from nerfstudio_mobile.export.sidecar import SIDECAR_KEY, Compression, ExportFrame, InputMode, weights_label
from nerfstudio_mobile.export.verify import MIN_PSNR, Case, Verification, measure

if TYPE_CHECKING:
    from coremltools.converters.mil.mil import Var

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


def check_spec(package: Package, frame: ExportFrame, mode: InputMode, sidecar: dict[str, Any]) -> list[str]:
    """Named fp32 inputs and outputs of static shape, the deployment target, and the sidecar in the metadata."""
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
    if package.spec.specificationVersion < DEPLOYMENT_TARGET.value:
        problems.append(f"spec version {package.spec.specificationVersion} < {DEPLOYMENT_TARGET.value} (iOS16)")
    stored = description.metadata.userDefined.get(SIDECAR_KEY)
    if stored is None:
        problems.append(f"no {SIDECAR_KEY} in the user metadata")
    elif json.loads(stored) != json.loads(json.dumps(sidecar)):
        problems.append(f"the {SIDECAR_KEY} metadata differs from the sidecar JSON")
    return problems


def check_ops(package: Package) -> list[str]:
    """The network part (from the first conv on) is Neural-Engine friendly: 4-D tensors, no layout ops, fp16
    compute; the part before it (ray generation and encoding of the `pose` graph) computes in fp32."""
    problems = []
    for op in package.main.operations:
        if op.op_type in CONSTANT_OPS:
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


def _weight_storage(weight: Var) -> tuple[str, int]:
    """How a conv weight is stored: ("fp16" | "fp32" | "int8" | "palette", bits per element)."""
    producer = weight.op
    if producer is None or producer.op_type == "const":
        name = dtype_name(weight)
        return name, 16 if name == "fp16" else 32
    if producer.op_type == "constexpr_affine_dequantize":
        return "int8", 8
    if producer.op_type == "constexpr_lut_to_dense":
        return "palette", int(math.log2(producer.inputs["lut"].val.size))
    return producer.op_type, 0


def check_weights(package: Package, params: int, compression: Compression) -> list[str]:
    """Every conv weight and bias of the student is there (counted against its parameters) and stored as
    `compression` says: fp16; int8 or an n-bit palette from COMPRESSION_MIN_ELEMENTS elements on."""
    problems = []
    convs = [op for op in package.main.operations if op.op_type in NETWORK_ENTRY_OPS]
    stored = sum(math.prod(op.inputs["weight"].shape) for op in convs)
    stored += sum(math.prod(op.inputs["bias"].shape) for op in convs if "bias" in op.inputs)
    if stored != params:
        problems.append(f"the package holds {stored:,} conv parameters, the folded student {params:,}")
    for index, op in enumerate(convs):
        weight = op.inputs["weight"]
        storage = _weight_storage(weight)
        if math.prod(weight.shape) < COMPRESSION_MIN_ELEMENTS or compression == "none":
            expected = ("fp16", 16)
        elif compression == "int8":
            expected = ("int8", 8)
        else:  # the stem (first conv) keeps at least STEM_MIN_BITS
            bits = PALETTE_BITS[compression]
            expected = ("palette", max(bits, STEM_MIN_BITS) if index == 0 else bits)
        if storage != expected:
            problems.append(f"{op.op_type} ({op.name}) weight stored as {storage}, expected {expected}")
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
    problems = (
        check_spec(package, frame, mode, sidecar) + check_ops(package) + check_weights(package, params, compression)
    )

    def run(x: Tensor) -> list[Tensor]:
        outputs = run_program(package.main, {mode: x})
        return [outputs[name] for name in frame.output_names]

    return Verification(measure(run, cases), MIN_PSNR[weights_label(compression)], problems)
