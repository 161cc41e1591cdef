"""The fastest way to run a student on this CPU, chosen by measurement rather than by rule.

    candidate_engines(net)   eager fp32 (the reference); channels-last, and compiled with inductor freezing, each in
                             bf16 where the CPU has native bf16 (else fp32); ONNX Runtime fp32; and, given
                             calibration inputs, ONNX Runtime static int8 QDQ and torch's int8 backbone (PT2E for
                             oneDNN, `int8_backbone`), each only when its packages are installed
    fastest_engine(net, x)   builds each for x's shape, rejects any whose RGB strays from eager fp32 (PSNR below
                             `min_psnr`: a bf16 or int8 engine that garbles the picture never wins), times the rest
                             round-robin, and returns the fastest with the table of all of them

A render takes inputs of the shape its engine was built for, [B, C, h, w], and returns float32 [B, 3 (+1), h*s, w*s].
"""

from __future__ import annotations

import importlib.util
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from nerfstudio_mobile.common.metrics import psnr
from nerfstudio_mobile.common.precision import bf16_is_fast
from nerfstudio_mobile.common.timing import round_robin_seconds
from nerfstudio_mobile.mobile_r2l.int8_backbone import int8_backbone_render
from nerfstudio_mobile.mobile_r2l.network import LightFieldNetwork, fold_batchnorm, prepare_for_inference

Render = Callable[[Tensor], Tensor]

MIN_PSNR = 30.0
"""RGB PSNR (dB) against eager fp32 below which an engine is rejected: stricter than the export checks' floor for int8
activations (`export.verify.MIN_PSNR`), which bf16 and int8 engines keep on trained students; a wrong or garbled
render falls far below it."""


@dataclass(frozen=True)
class Engine:
    dtype: str
    """Number format of its weights and activations: fp32, bf16 or int8."""
    build: Callable[[Tensor], Render]
    """Example input -> a render for inputs of its shape (compiled graphs and ONNX sessions have static shapes)."""


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(module) is not None for module in modules)


def _onnx_runtime(net: LightFieldNetwork, example: Tensor, calibration: Sequence[Tensor] = ()) -> Render:
    """The network (BN folded) traced for `example`'s shape and run by onnxruntime; static int8 QDQ (as
    `ns-export-mobile onnx --quantize int8` writes it) when `calibration` inputs are given."""
    from nerfstudio_mobile.export.onnx import cpu_session, trace_onnx  # the optional `export` extra

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "student.onnx"
        trace_onnx(fold_batchnorm(net).float(), example, path, "rays", ("image",))
        if calibration:
            from nerfstudio_mobile.export.onnx_int8 import quantize_int8

            path, fp32 = path.with_name("student-int8.onnx"), path
            quantize_int8(fp32, path, "rays", calibration, sidecar={})
        session = cpu_session(path, torch.get_num_threads())  # the cores torch uses: a fair race

    def render(x: Tensor) -> Tensor:
        return torch.from_numpy(session.run(None, {"rays": x.detach().float().contiguous().numpy()})[0])

    return render


def candidate_engines(net: LightFieldNetwork, calibration: Sequence[Tensor] = ()) -> dict[str, Engine]:
    """The engines this machine can run `net` with, by name. `calibration`: inputs of the example's shape that
    calibrate the int8 engine's activations (none: no int8 engine)."""
    bf16 = bf16_is_fast(torch.device("cpu"))  # emulated bf16 is slower than fp32: not worth a candidate
    dtype = "bf16" if bf16 else "fp32"
    engines = {
        "eager fp32": Engine("fp32", lambda x: prepare_for_inference(net, channels_last=False, bf16=False)),
        f"channels-last {dtype}": Engine(dtype, lambda x: prepare_for_inference(net, bf16=bf16)),
        f"compiled {dtype} + channels-last + freezing": Engine(
            dtype, lambda x: prepare_for_inference(net, bf16=bf16, compile=True)
        ),
    }
    if _installed("onnx", "onnxruntime"):
        engines["ONNX Runtime fp32"] = Engine("fp32", lambda x: _onnx_runtime(net, x))
        if calibration and _installed("ml_dtypes"):
            engines["ONNX Runtime int8 (QDQ S8S8)"] = Engine("int8", lambda x: _onnx_runtime(net, x, calibration))
    if calibration and _installed("torchao"):
        engines[f"torch int8 backbone (PT2E) + compiled {dtype} head"] = Engine(
            "int8", lambda x: int8_backbone_render(net, x, calibration)
        )
    return engines


@dataclass
class EngineTiming:
    name: str
    dtype: str
    psnr: float | None
    """RGB PSNR (dB) against eager fp32 on the example; None when it failed to build or run."""
    median_ms: float | None
    """Median of the timed calls; None when rejected."""
    rejected: str | None
    """Why it was not timed."""


@dataclass
class EngineChoice:
    name: str
    engine: Engine
    render: Render
    """`engine` built for the example's shape."""
    table: list[EngineTiming]
    """Every candidate, in candidate order."""


def fastest_engine(
    net: LightFieldNetwork,
    example: Tensor,
    *,
    candidates: dict[str, Engine] | None = None,
    calibration: Sequence[Tensor] = (),
    min_psnr: float = MIN_PSNR,
    repeats: int = 3,
    warmup: int = 1,
) -> EngineChoice:
    """Build every candidate (default: `candidate_engines`) for `example`'s shape, reject those that fail or
    whose RGB PSNR against eager fp32 is below `min_psnr`, time the rest on `example` round-robin (`warmup`
    untimed rounds, then `repeats`), and return the one with the lowest median."""
    candidates = candidate_engines(net, calibration) if candidates is None else candidates
    reference = prepare_for_inference(net, channels_last=False, bf16=False)(example)
    renders: dict[str, Render] = {}
    table: dict[str, EngineTiming] = {}
    for name, engine in candidates.items():
        try:
            render = engine.build(example)
            output = render(example)  # compiles where it applies
        except Exception as error:  # e.g. inductor without a C++ compiler: this machine cannot run it
            reason = f"failed: {type(error).__name__}: {error}".splitlines()[0]  # compiler errors run to pages
            table[name] = EngineTiming(name, engine.dtype, None, None, reason)
            continue
        fidelity = float(psnr(reference[:, :3], output[:, :3]))
        rejected = None if fidelity >= min_psnr else f"RGB PSNR {fidelity:.1f} dB < {min_psnr:.1f} dB"  # NaN: too
        table[name] = EngineTiming(name, engine.dtype, fidelity, None, rejected)
        if rejected is None:
            renders[name] = render
    if not renders:
        raise ValueError(f"no engine renders like eager fp32: {[timing.rejected for timing in table.values()]}")
    times = round_robin_seconds({name: lambda r=r: r(example) for name, r in renders.items()}, repeats, warmup)
    medians = {name: 1e3 * statistics.median(seconds) for name, seconds in times.items()}
    for name, median_ms in medians.items():
        table[name].median_ms = median_ms
    fastest = min(medians, key=medians.__getitem__)
    return EngineChoice(fastest, candidates[fastest], renders[fastest], list(table.values()))
