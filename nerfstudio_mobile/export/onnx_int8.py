"""Static int8 QDQ from an fp32 ONNX file: ONNX Runtime's recommended int8 format for CNNs on x86, which Android
runtimes take too. S8S8: int8 weights with one scale per output channel, int8 activations into and out of every
conv, their ranges (min-max) from calibration inputs (the student's pseudo views); `onnx.float_nodes` keep fp32.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from nerfstudio_mobile.common.files import atomic_path
from nerfstudio_mobile.export.dependencies import logger_level, require
from nerfstudio_mobile.export.onnx import CONV_OPS, float_nodes, onnx, set_sidecar
from nerfstudio_mobile.export.sidecar import InputMode

# onnxruntime.quantization needs ml_dtypes (onnxruntime's `quantization` extra), which onnxruntime alone lacks.
require("ml_dtypes", "ml-dtypes", "ONNX int8 quantization")
from onnxruntime import quantization as ort_quantization  # noqa: E402


class _Samples(ort_quantization.CalibrationDataReader):
    def __init__(self, name: str, inputs: Sequence[Tensor]) -> None:
        self._samples = iter([{name: x.numpy()} for x in inputs])

    def get_next(self) -> dict[str, Any] | None:
        return next(self._samples, None)


def quantize_int8(
    source: Path, path: Path, mode: InputMode, calibration: Sequence[Tensor], sidecar: dict[str, Any]
) -> None:
    """Static S8S8 QDQ of the fp32 file at `source`, written to `path` atomically with `sidecar` in its metadata:
    int8 weights per output channel, int8 activations calibrated (min-max) on the `calibration` inputs of the
    graph's `mode` input, fp32 where `float_nodes` says."""
    # onnxruntime.quantization logs pre-processing advice at WARNING on the root logger: the traced graph already has
    # static shapes and folded BatchNorm.
    with atomic_path(path) as temp, logger_level(None):
        ort_quantization.quantize_static(
            str(source),
            str(temp),
            _Samples(mode, calibration),
            quant_format=ort_quantization.QuantFormat.QDQ,
            per_channel=True,
            activation_type=ort_quantization.QuantType.QInt8,
            weight_type=ort_quantization.QuantType.QInt8,
            # The convs are > 98% of the MACs; between them GELU's Erf chain and the residual adds stay fp32
            # (DequantizeLinear -> ops -> QuantizeLinear), so each conv fuses into one QLinearConv.
            op_types_to_quantize=sorted(CONV_OPS),
            nodes_to_exclude=float_nodes(onnx.load(str(source))),
            calibrate_method=ort_quantization.CalibrationMethod.MinMax,
        )
        set_sidecar(temp, sidecar)
