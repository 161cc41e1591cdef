"""Core ML export: trace, convert to an fp16 ML program with static shapes, compress weights, save with metadata.

fp16 applies to the network only: the ops before the first convolution (pose transform, ray generation,
sampling, positional encoding of the `pose` graph) stay fp32, because sin/cos arguments reach hundreds of
radians, where fp16 steps by 1/8 rad or more. Compressed variants are derived from the converted fp16 program
(BatchNorm is already folded in the traced graph), so one conversion serves every compression.
"""

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nerfstudio_mobile.export.dependencies import quiet_coremltools, require, require_coremltools
from nerfstudio_mobile.export.sidecar import SIDECAR_KEY, Compression, ExportFrame, InputMode

ct = require_coremltools("Core ML export")
import coremltools.optimize.coreml as cto  # noqa: E402
from coremltools.converters.mil.mil import Operation  # noqa: E402
from coremltools.models import MLModel  # noqa: E402

PALETTE_BITS: dict[Compression, int] = {"palettize8": 8, "palettize6": 6, "palettize4": 4}
# iOS 16 / macOS 13: the first release with compressed-weight (constexpr) ops.
DEPLOYMENT_TARGET = ct.target.iOS16
NETWORK_ENTRY_OPS = frozenset({"conv", "conv_transpose"})
STEM_MIN_BITS = 8
"""The stem conv reads the positional encoding directly, so a coarse palette there loses more than anywhere
else, and it holds few of the weights: it keeps at least this many bits."""
COMPRESSION_MIN_ELEMENTS = 2048
"""coremltools' default: smaller weights (16x16 convs, heads, biases) stay fp16; they are a small share of the
parameters."""


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


def convert(graph: nn.Module, frame: ExportFrame, mode: InputMode) -> MLModel:
    """Trace `graph` and convert it to an ML program: fp16 network, fp32 encoding, fp32 inputs and outputs,
    static shapes, named inputs ("rays" or "pose") and outputs ("rgb", "depth")."""
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
            minimum_deployment_target=DEPLOYMENT_TARGET,
        )


def _first_conv_name(model: MLModel) -> str:
    # A converted MLModel keeps its MIL program (as coremltools.optimize itself relies on).
    return next(op.name for op in model._mil_program.functions["main"].operations if op.op_type == "conv")


def require_palettizer() -> None:
    """k-means palettization clusters small weights with scikit-learn (coremltools' own kmeans1d: large ones)."""
    require("sklearn", "scikit-learn", "Palettization (k-means)")


def compress(model: MLModel, compression: Compression) -> MLModel:
    """A compressed copy of an fp16 model from `convert`: int8 (per-output-channel symmetric linear) or an
    n-bit k-means palette per weight tensor (the stem kept at >= 8 bits)."""
    if compression == "none":
        return model
    if compression == "int8":
        config = cto.OptimizationConfig(
            global_config=cto.OpLinearQuantizerConfig(
                mode="linear_symmetric", dtype="int8", weight_threshold=COMPRESSION_MIN_ELEMENTS
            )
        )
        return cto.linear_quantize_weights(model, config)
    require_palettizer()
    bits = PALETTE_BITS[compression]

    def palette(nbits: int) -> cto.OpPalettizerConfig:
        return cto.OpPalettizerConfig(nbits=nbits, mode="kmeans", weight_threshold=COMPRESSION_MIN_ELEMENTS)

    config = cto.OptimizationConfig(
        global_config=palette(bits),
        op_name_configs={_first_conv_name(model): palette(max(bits, STEM_MIN_BITS))},
    )
    return cto.palettize_weights(model, config)


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
