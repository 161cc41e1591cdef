"""Core ML export: trace, convert to an fp16 ML program with static shapes, compress weights, save with metadata.

fp16 applies to the network only: the ops before the first convolution (pose transform, ray generation,
sampling, positional encoding of the `pose` graph) stay fp32, because sin/cos arguments reach hundreds of
radians, where fp16 steps by 1/8 rad or more. Compressed variants are derived from the converted fp16 program
(BatchNorm is already folded in the traced graph), so one conversion per deployment target serves every
compression: iOS 16 for int8 and per-tensor palettes (and w8a8, whose activation quantization raises it to
iOS 17), iOS 18 for per-grouped-channel palettes.
"""

import contextlib
import json
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from nerfstudio_mobile.export.dependencies import quiet_coremltools, require, require_coremltools
from nerfstudio_mobile.export.errors import CompressionError
from nerfstudio_mobile.export.sidecar import (
    SIDECAR_KEY,
    Compression,
    ExportFrame,
    InputMode,
    WeightFormat,
    weight_format,
)

ct = require_coremltools("Core ML export")
import coremltools.optimize.coreml as cto  # noqa: E402
import coremltools.optimize.coreml._quantization_passes as compression_passes  # noqa: E402
from coremltools import _SPECIFICATION_VERSION_IOS_17  # noqa: E402
from coremltools.converters.mil.mil import Function, Operation  # noqa: E402
from coremltools.converters.mil.mil.passes.graph_pass import PassOption  # noqa: E402
from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY  # noqa: E402
from coremltools.models import MLModel  # noqa: E402
from coremltools.models.utils import _apply_graph_pass  # noqa: E402

from nerfstudio_mobile.export.mil import run_program  # noqa: E402
from nerfstudio_mobile.export.palette_training import (  # noqa: E402
    COMPRESSION_THRESHOLD,
    STEM_MIN_BITS,
    palettized_layers,
)

# iOS 16 / macOS 13: the first release with compressed-weight (constexpr) ops.
DEPLOYMENT_TARGET = ct.target.iOS16
NETWORK_ENTRY_OPS = frozenset({"conv", "conv_transpose"})
WeightConfig = cto.OpLinearQuantizerConfig | cto.OpPalettizerConfig


def deployment_target(weights: WeightFormat) -> ct.target:
    """The oldest OS a package of this format runs on: quantize / dequantize ops (w8a8) arrived in iOS 17,
    per-grouped-channel palettes in iOS 18."""
    if weights.kind == "w8a8":
        return ct.target.iOS17
    return ct.target.iOS18 if weights.group_size is not None else DEPLOYMENT_TARGET


def conversion_target(weights: WeightFormat) -> ct.target:
    """The target to convert at: coremltools palettizes per grouped channel only in an iOS 18 program, while
    activation quantization upgrades an iOS 16 program itself."""
    return ct.target.iOS18 if weights.group_size is not None else DEPLOYMENT_TARGET


def is_network_op(op: Operation) -> bool:
    """True for a conv / conv-transpose and every op that depends on one: the network part, run in fp16.

    The ops before the first conv (the `pose` graph's ray generation and encoding) are the rest."""
    pending, seen = [op], {id(op)}
    while pending:
        current = pending.pop()
        if current.op_type in NETWORK_ENTRY_OPS:
            return True
        for value in current.inputs.values():
            for var in value if isinstance(value, list | tuple) else (value,):
                if var.op is not None and id(var.op) not in seen:
                    seen.add(id(var.op))
                    pending.append(var.op)
    return False


def convert(graph: nn.Module, frame: ExportFrame, mode: InputMode, target: ct.target = DEPLOYMENT_TARGET) -> MLModel:
    """Trace `graph` and convert it to an ML program for `target`: fp16 network, fp32 encoding, fp32 inputs and
    outputs, static shapes, named inputs ("rays" or "pose") and outputs ("rgb", "depth")."""
    example = torch.zeros(frame.input_shape(mode))
    with torch.no_grad(), warnings.catch_warnings():
        # Near/far and the grid become constants of the trace, which is what a static-shape export wants.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # Deprecated in torch, but TorchScript is the input coremltools converts most completely.
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(graph, example)
    with quiet_coremltools():
        return ct.convert(
            traced,
            inputs=[ct.TensorType(name=mode, shape=example.shape, dtype=np.float32)],
            outputs=[ct.TensorType(name=name, dtype=np.float32) for name in frame.output_names],
            convert_to="mlprogram",
            compute_precision=ct.transform.FP16ComputePrecision(op_selector=is_network_op),
            minimum_deployment_target=target,
        )


def _first_conv_name(model: MLModel) -> str:
    # A converted MLModel keeps its MIL program (as coremltools.optimize itself relies on).
    return next(op.name for op in model._mil_program.functions["main"].operations if op.op_type == "conv")


def float_activation_ops(function: Function) -> set[str]:
    """The ops that w8a8 leaves out of activation quantization: the encoding (everything before the first conv),
    the stem (its input mixes raw coordinates with sin/cos in one tensor) and everything from the last conv
    transpose on: the last super-resolution stage (16 channels at full resolution, whose spread per-tensor int8
    steps resolve worst: on a trained student it alone costs ~6 dB against the torch student) and the heads.
    About 8% of the MACs."""
    operations = list(function.operations)
    convs = [op for op in operations if op.op_type == "conv"]
    last_upsample = max(index for index, op in enumerate(operations) if op.op_type == "conv_transpose")
    encoding = [op.name for op in operations if not is_network_op(op)]
    return {*encoding, convs[0].name, *(op.name for op in operations[last_upsample:])}


def require_palettizer() -> None:
    """k-means palettization clusters small weights with scikit-learn (coremltools' own kmeans1d: large ones)."""
    require("sklearn", "scikit-learn", "Palettization (k-means)")


def check_group_size(network: nn.Module, compression: Compression) -> None:
    """coremltools leaves a weight whose output channels do not split into whole groups uncompressed (with a
    warning): refuse such a group size up front instead."""
    weights = weight_format(compression)
    if weights.group_size is None:
        return
    channels = {entry.layer.weight.shape[entry.axis] for entry in palettized_layers(network, weights)}
    if uneven := sorted(c for c in channels if c % weights.group_size):
        divisors = [d for d in range(min(channels), 0, -1) if all(c % d == 0 for c in channels)]
        raise CompressionError(
            f"--compressions {compression}: groups of {weights.group_size} output channels do not divide the "
            f"network's {', '.join(map(str, uneven))}-channel layers; pick a group size that divides "
            f"{', '.join(map(str, sorted(channels)))}, e.g. {divisors[0]}."
        )


def network_weights_config(config: WeightConfig) -> dict[str, WeightConfig]:
    """`config` for the weights of the network's convs and conv-transposes only. A global config would also
    compress the `pose` graph's large constants (its ray directions and sample depths: 3-D points that must stay
    fp32), which the ray grid of a small frame makes larger than the threshold."""
    return dict.fromkeys(NETWORK_ENTRY_OPS, config)


def _int8_weights(model: MLModel) -> MLModel:
    """Per-output-channel symmetric int8 weights (of weights with more than COMPRESSION_THRESHOLD elements)."""
    int8 = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", weight_threshold=COMPRESSION_THRESHOLD)
    return cto.linear_quantize_weights(model, cto.OptimizationConfig(op_type_configs=network_weights_config(int8)))


def activation_ranges(model: MLModel, samples: Sequence[dict[str, Tensor]]) -> dict[str, dict[str, float]]:
    """{value name: {"rmin", "rmax"}} of every floating-point value of `model`'s program over `samples`, computed
    by the torch MIL interpreter: coremltools calibrates with Core ML's predict, which needs macOS."""
    ranges: dict[str, dict[str, float]] = {}

    def observe(name: str, value: Tensor) -> None:
        if value.is_floating_point():
            low, high = float(value.min()), float(value.max())
            seen = ranges.setdefault(name, {"rmin": low, "rmax": high})
            seen["rmin"], seen["rmax"] = min(seen["rmin"], low), max(seen["rmax"], high)

    for sample in samples:
        run_program(model._mil_program.functions["main"], sample, observe)
    return ranges


def quantize_activations(model: MLModel, samples: Sequence[dict[str, Tensor]]) -> MLModel:
    """Int8 activations in the network part (quantize / dequantize pairs around the convs and adds, symmetric
    per-tensor scales from the calibration ranges; iOS 17). These are the graph passes of coremltools'
    linear_quantize_activations, which measures the ranges with Core ML's predict (macOS only): here our
    interpreter measures them. The `float_activation_ops` keep fp16 activations."""
    config = cto.OptimizationConfig(
        global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8"),
        op_name_configs=dict.fromkeys(sorted(float_activation_ops(model._mil_program.functions["main"]))),
    )
    ranges = activation_ranges(model, samples)
    passes = []
    for name in ("insert_prefix_quantize_dequantize_pair", "insert_suffix_quantize_dequantize_pair"):
        graph_pass = PASS_REGISTRY[f"compression::{name}"]
        graph_pass.set_options([PassOption("config", config), PassOption("activation_stats", ranges)])
        passes.append(graph_pass)
    passes.append(PASS_REGISTRY["common::dequantize_quantize_pair_elimination"])
    with quiet_coremltools():
        return _apply_graph_pass(model, passes, spec_version=_SPECIFICATION_VERSION_IOS_17)


def compress(model: MLModel, compression: Compression, samples: Sequence[dict[str, Tensor]] = ()) -> MLModel:
    """A compressed copy of an fp16 model from `convert` (at the compression's `conversion_target`): int8
    (per-output-channel symmetric linear), an n-bit k-means palette per weight tensor or per group of output
    channels (the stem kept at >= 8 bits), or w8a8 (int8 weights, int8 activations calibrated on `samples`, dicts
    of the program's named inputs). A -finetuned palette's model was converted from a `palette_finetuned`
    network, whose weights already hold at most 2^n values per group: they are stored as they are."""
    weights = weight_format(compression)
    if weights.kind == "fp16":
        return model
    if weights.kind == "int8":
        return _int8_weights(model)
    if weights.kind == "w8a8":
        return _int8_weights(quantize_activations(model, samples))
    require_palettizer()

    def palette(nbits: int, group_size: int | None) -> cto.OpPalettizerConfig:
        # "unique" infers the bits from the values, at most nbits for a fine-tuned network
        mode = {"nbits": None, "mode": "unique"} if weights.finetuned else {"nbits": nbits, "mode": "kmeans"}
        if group_size is None:
            return cto.OpPalettizerConfig(**mode, weight_threshold=COMPRESSION_THRESHOLD)
        return cto.OpPalettizerConfig(
            **mode,
            granularity="per_grouped_channel",
            group_size=group_size,
            weight_threshold=COMPRESSION_THRESHOLD,
        )

    config = cto.OptimizationConfig(  # the stem as palettized_layers has it: >= STEM_MIN_BITS, one palette
        op_type_configs=network_weights_config(palette(weights.bits, weights.group_size)),
        op_name_configs={_first_conv_name(model): palette(max(weights.bits, STEM_MIN_BITS), None)},
    )
    with float16_unique_through_float32():
        return cto.palettize_weights(model, config)


class _ExactFloat16Unique:
    """numpy with `unique` of float16 arrays taken through float32 (exact for every float16 value)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    @staticmethod
    def unique(values: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        if values.dtype != np.float16:
            return np.unique(values, *args, **kwargs)
        found = np.unique(values.astype(np.float32), *args, **kwargs)
        if isinstance(found, tuple):
            return (found[0].astype(np.float16), *found[1:])
        return found.astype(np.float16)


@contextlib.contextmanager
def float16_unique_through_float32() -> Iterator[None]:
    """While coremltools palettizes: numpy 2.2's AVX-512 sort misorders float16 arrays on some CPUs (an AMD EPYC with
    AVX512-BF16: `np.sort` not monotone, `np.unique` finding 31 values where there are 15), so the "unique"
    palettizer counted a 2-bit weight's 4 values as more and stored it in 4-bit tables."""
    real = compression_passes.np
    compression_passes.np = _ExactFloat16Unique()
    try:
        yield
    finally:
        compression_passes.np = real


def save(model: MLModel, path: Path, sidecar: dict[str, Any]) -> None:
    """Write `model` to `path` (.mlpackage) with its sidecar in the user metadata and Xcode-facing descriptions."""
    model.user_defined_metadata[SIDECAR_KEY] = json.dumps(sidecar)
    model.short_description = (
        f"MobileR2L light field ({sidecar['input_mode']} input, {sidecar['weights']} weights): one "
        f"{sidecar['output_size'][0]}x{sidecar['output_size'][1]} frame per call. "
        f"Input contract: metadata {SIDECAR_KEY}."
    )
    for name, described in sidecar["inputs"].items():
        model.input_description[name] = described["description"]
    for name, described in sidecar["outputs"].items():
        model.output_description[name] = described["description"]
    model.save(str(path))
