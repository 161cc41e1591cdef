"""Execute a Core ML ML program with torch, op by op: exported packages are checked numerically on Linux,
where Core ML's own `predict` needs macOS.

The program is read back from the saved ``.mlpackage`` (its protobuf and its weight file), so what runs here
is what ships: every op our exports contain is implemented in torch from the MIL op definitions, every value
is stored in the dtype the program declares (fp16 in the network, int8 between a quantize and its dequantize),
and compressed weights are expanded from their stored form (palette indices + look-up tables, per tensor or per
group of channels; int8 + scale + zero point) by our own code, not coremltools'. An op outside that set raises
UnsupportedOpError instead of being guessed.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nerfstudio_mobile.export.dependencies import require_coremltools

ct = require_coremltools("Reading Core ML packages")
from coremltools.converters.mil.frontend.milproto.load import load as load_mil_proto  # noqa: E402
from coremltools.converters.mil.mil import Function, Operation, Program, Var, types  # noqa: E402
from coremltools.proto.Model_pb2 import Model as ModelSpec  # noqa: E402

_TORCH_DTYPES: dict[str, torch.dtype] = {
    "fp16": torch.float16,
    "fp32": torch.float32,
    "int32": torch.int32,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


class UnsupportedOpError(NotImplementedError):
    """The program uses an op this interpreter has no torch implementation for."""


@dataclass
class Package:
    """A saved ML program: its spec (inputs, outputs, metadata) and the program with weights read from disk."""

    spec: ModelSpec
    program: Program

    @property
    def main(self) -> Function:
        return self.program.functions["main"]


def read_package(path: Path) -> Package:
    """Read an ``.mlpackage`` back without compiling it (which needs macOS)."""
    model = ct.models.MLModel(str(path), skip_model_load=True)
    spec = model.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise ValueError(f"{path} is not an ML program (its model type is {spec.WhichOneof('Type')})")
    return Package(spec, load_mil_proto(spec, spec.specificationVersion, model.weights_dir))


def dtype_name(var: Var) -> str:
    return types.builtin_to_string(var.dtype)


class OpArgs:
    """An op's inputs as torch tensors (computed values, or constants stored in the program).

    fp16 values are handed to the op widened to fp32 (exactly) and run_program rounds the result back to the
    declared dtype: fp16 storage between ops with fp32 accumulation inside them, as GPUs do; torch's fp16
    CPU kernels would also be an order of magnitude slower."""

    def __init__(self, op: Operation, values: dict[str, Tensor]) -> None:
        self.op, self._values = op, values

    def _value(self, var: Var) -> Tensor:
        if var.name in self._values:
            value = self._values[var.name]
        elif var.val is not None:
            value = torch.from_numpy(np.array(var.val))
        else:
            raise ValueError(f"{self.op.op_type} {self.op.name}: input {var.name} has no value yet")
        return value.float() if value.dtype == torch.float16 else value

    def tensor(self, name: str) -> Tensor:
        return self._value(self.op.inputs[name])

    def tensors(self, name: str) -> list[Tensor]:
        return [self._value(var) for var in self.op.inputs[name]]

    def optional(self, name: str) -> Tensor | None:
        return self.tensor(name) if name in self.op.inputs else None

    def ints(self, name: str, default: Sequence[int] | None = None) -> list[int]:
        if name not in self.op.inputs:
            if default is None:
                raise ValueError(f"{self.op.op_type} {self.op.name} has no {name}")
            return list(default)
        return [int(v) for v in self.tensor(name).flatten().tolist()]

    def bools(self, name: str, length: int) -> list[bool]:
        return [bool(v) for v in self.tensor(name).flatten().tolist()] if name in self.op.inputs else [False] * length

    def scalar(self, name: str, default: Any = None) -> Any:
        if name not in self.op.inputs:
            return default
        var = self.op.inputs[name]
        return var.val.item() if isinstance(var.val, np.generic | np.ndarray) else var.val


OpImplementation = Callable[[OpArgs], Tensor]


def _padding(args: OpArgs) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) for MIL's 'valid' and 'custom' pad types."""
    pad_type = args.scalar("pad_type", "valid")
    if pad_type == "valid":
        return (0, 0, 0, 0)
    if pad_type == "custom":
        top, bottom, left, right = args.ints("pad")
        return (top, bottom, left, right)
    raise UnsupportedOpError(f"{args.op.op_type} {args.op.name}: pad_type {pad_type!r}")


def _conv(args: OpArgs) -> Tensor:
    top, bottom, left, right = _padding(args)
    x = F.pad(args.tensor("x"), (left, right, top, bottom)) if any((top, bottom, left, right)) else args.tensor("x")
    return F.conv2d(
        x,
        args.tensor("weight"),
        args.optional("bias"),
        stride=args.ints("strides", (1, 1)),
        dilation=args.ints("dilations", (1, 1)),
        groups=args.scalar("groups", 1),
    )


def _conv_transpose(args: OpArgs) -> Tensor:
    """The full transposed convolution, then the padding cropped off (MIL pads are crops here)."""
    y = F.conv_transpose2d(
        args.tensor("x"),
        args.tensor("weight"),
        args.optional("bias"),
        stride=args.ints("strides", (1, 1)),
        dilation=args.ints("dilations", (1, 1)),
        groups=args.scalar("groups", 1),
    )
    top, bottom, left, right = _padding(args)
    y = y[..., top : y.shape[-2] - bottom, left : y.shape[-1] - right]
    if "output_shape" in args.op.inputs and list(y.shape) != args.ints("output_shape"):
        raise UnsupportedOpError(
            f"conv_transpose {args.op.name}: output_shape {args.ints('output_shape')} != {y.shape}"
        )
    return y


def _gelu(args: OpArgs) -> Tensor:
    x, mode = args.tensor("x"), args.scalar("mode", "EXACT")
    if mode == "EXACT":
        return F.gelu(x)
    if mode == "TANH_APPROXIMATION":
        return F.gelu(x, approximate="tanh")
    if mode == "SIGMOID_APPROXIMATION":
        return x * torch.sigmoid(1.702 * x)
    raise UnsupportedOpError(f"gelu mode {mode!r}")


def _slice_by_index(args: OpArgs) -> Tensor:
    x = args.tensor("x")
    rank = x.dim()
    begin, end = args.ints("begin"), args.ints("end")
    stride = args.ints("stride", [1] * rank)
    begin_mask, end_mask, squeeze_mask = (args.bools(name, rank) for name in ("begin_mask", "end_mask", "squeeze_mask"))
    index: list[slice | int] = []
    for axis in range(rank):
        if squeeze_mask[axis]:
            index.append(begin[axis])
        else:
            start = None if begin_mask[axis] else begin[axis]
            stop = None if end_mask[axis] else end[axis]
            index.append(slice(start, stop, stride[axis]))
    return x[tuple(index)]


def _expand_dims(args: OpArgs) -> Tensor:
    x = args.tensor("x")
    axes = args.ints("axes")
    rank = x.dim() + len(axes)
    for axis in sorted(a % rank for a in axes):
        x = x.unsqueeze(axis)
    return x


def _reduce_l2_norm(args: OpArgs) -> Tensor:
    x = args.tensor("x")
    axes = args.ints("axes", range(x.dim()))
    return torch.linalg.vector_norm(x, dim=axes, keepdim=bool(args.scalar("keep_dims", False)))


def _matmul(args: OpArgs) -> Tensor:
    x, y = args.tensor("x"), args.tensor("y")
    if args.scalar("transpose_x", False):
        x = x.transpose(-1, -2)
    if args.scalar("transpose_y", False):
        y = y.transpose(-1, -2)
    return torch.matmul(x, y)


def _concat(args: OpArgs) -> Tensor:
    if args.scalar("interleave", False):
        raise UnsupportedOpError(f"concat {args.op.name} with interleave")
    return torch.cat(args.tensors("values"), dim=args.scalar("axis"))


def _cast(args: OpArgs) -> Tensor:
    return args.tensor("x").to(_TORCH_DTYPES[args.scalar("dtype")])


def unpack_indices(packed: Tensor, nbits: int, count: int) -> Tensor:
    """Palette indices packed least-significant bit first (the iOS16 `constexpr_lut_to_dense` layout)."""
    bits = (packed.to(torch.int64)[:, None] >> torch.arange(8)) & 1  # [bytes, 8], LSB first
    bits = bits.flatten()[: count * nbits].reshape(count, nbits)
    return (bits << torch.arange(nbits)).sum(dim=1)


def _lut_to_dense(args: OpArgs) -> Tensor:
    """Palettized weight. iOS16: one 2^n-entry look-up table, n-bit indices packed into bytes. iOS18: indices of
    the weight's shape (the reader unpacks their sub-byte type) and lut [g_0, .., g_{r-1}, 2^n, 1], one table per
    block of shape[i] / g_i along every axis i (per-grouped-channel palettes split one axis)."""
    if "shape" in args.op.inputs:
        lut, shape = args.tensor("lut"), args.ints("shape")
        indices = unpack_indices(args.tensor("indices"), int(np.log2(lut.numel())), int(np.prod(shape)))
        return lut[indices].reshape(shape)
    indices, lut = args.tensor("indices").long(), args.tensor("lut")
    if lut.shape[-1] != 1:
        raise UnsupportedOpError(f"constexpr_lut_to_dense {args.op.name}: vector palettes (lut {tuple(lut.shape)})")
    groups = lut.shape[: indices.dim()]
    # The table of every element: its block index along each axis, flattened in the tables' row-major order.
    table = torch.zeros(indices.shape, dtype=torch.long)
    for axis, (size, count) in enumerate(zip(indices.shape, groups, strict=True)):
        block = torch.arange(size) // (size // count)
        table = table * count + block.reshape([-1 if dim == axis else 1 for dim in range(indices.dim())])
    return lut.reshape(-1, lut.shape[-2])[table, indices]


def _per_axis(value: Tensor, axis: int, rank: int) -> Tensor:
    """A scale or zero point given per slice along `axis` (a vector), shaped to broadcast over a rank-`rank` tensor."""
    return value.reshape([-1 if dim == axis else 1 for dim in range(rank)]) if value.dim() == 1 else value


def _affine_dequantize(args: OpArgs) -> Tensor:
    """iOS16 quantized weight: (q - zero_point) * scale, scale / zero point per slice along `axis`."""
    data = args.tensor("quantized_data")
    axis = int(args.scalar("axis")) % data.dim()
    scale, zero_point = (_per_axis(args.tensor(name), axis, data.dim()) for name in ("scale", "zero_point"))
    return (data.float() - zero_point.float()) * scale


def _quantize_params(args: OpArgs, rank: int) -> tuple[Tensor, Tensor]:
    """(scale, zero point) of an iOS17 quantize / dequantize: scalars, or vectors along `axis`."""
    axis = int(args.scalar("axis", 0)) % rank
    scale = _per_axis(args.tensor("scale"), axis, rank)
    zero_point = args.optional("zero_point")
    return scale, torch.zeros(()) if zero_point is None else _per_axis(zero_point.float(), axis, rank)


def _quantize(args: OpArgs) -> Tensor:
    """iOS17 activation quantization: clip(round(x / scale) + zero_point) in int8 / uint8 (round half to even)."""
    x = args.tensor("input")
    scale, zero_point = _quantize_params(args, x.dim())
    dtype = _TORCH_DTYPES[args.scalar("output_dtype")]
    limits = torch.iinfo(dtype)
    return (torch.round(x / scale) + zero_point).clamp(limits.min, limits.max).to(dtype)


def _dequantize(args: OpArgs) -> Tensor:
    """iOS17: (q - zero_point) * scale."""
    q = args.tensor("input")
    scale, zero_point = _quantize_params(args, q.dim())
    return (q.float() - zero_point) * scale


def _reduce_max(args: OpArgs) -> Tensor:
    x = args.tensor("x")
    return torch.amax(x, dim=args.ints("axes", range(x.dim())), keepdim=bool(args.scalar("keep_dims", False)))


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> OpImplementation:
    return lambda args: fn(args.tensor("x"), args.tensor("y"))


def _unary(fn: Callable[[Tensor], Tensor]) -> OpImplementation:
    return lambda args: fn(args.tensor("x"))


OPS: dict[str, OpImplementation] = {
    "add": _binary(torch.add),
    "mul": _binary(torch.mul),
    "real_div": _binary(torch.div),
    "matmul": _matmul,
    "sub": _binary(torch.sub),
    "maximum": _binary(torch.maximum),
    "minimum": _binary(torch.minimum),
    "less_equal": _binary(torch.le),
    "greater": _binary(torch.gt),
    # the contracted ray space (nerfacto-like teachers): |p|, max over xyz, clamp, a where
    "abs": _unary(torch.abs),
    "reduce_max": _reduce_max,
    "select": lambda args: torch.where(args.tensor("cond").bool(), args.tensor("a"), args.tensor("b")),
    "clip": lambda args: args.tensor("x").clamp(args.scalar("alpha"), args.scalar("beta")),
    "inverse": lambda args: 1.0 / (args.tensor("x") + args.scalar("epsilon", 1e-4)),
    "sin": _unary(torch.sin),
    "cos": _unary(torch.cos),
    "sigmoid": _unary(torch.sigmoid),
    "softplus": _unary(F.softplus),
    "gelu": _gelu,
    "cast": _cast,
    "conv": _conv,
    "conv_transpose": _conv_transpose,
    "concat": _concat,
    "slice_by_index": _slice_by_index,
    "reshape": lambda args: args.tensor("x").reshape(args.ints("shape")),
    "transpose": lambda args: args.tensor("x").permute(args.ints("perm")),
    "expand_dims": _expand_dims,
    "tile": lambda args: args.tensor("x").repeat(args.ints("reps")),
    "reduce_l2_norm": _reduce_l2_norm,
    "constexpr_lut_to_dense": _lut_to_dense,
    "constexpr_affine_dequantize": _affine_dequantize,
    "quantize": _quantize,
    "dequantize": _dequantize,
}


def run_program(
    function: Function, inputs: dict[str, Tensor], observe: Callable[[str, Tensor], None] | None = None
) -> dict[str, Tensor]:
    """Execute `function` (a program's "main") on named inputs; returns its named outputs. `observe(name, value)`
    sees every input and every computed value (activation calibration reads their ranges)."""
    missing = set(function.inputs) - set(inputs)
    if missing:
        raise ValueError(f"missing program inputs {sorted(missing)}; it takes {list(function.inputs)}")
    values = {name: inputs[name].to(_TORCH_DTYPES[dtype_name(var)]) for name, var in function.inputs.items()}
    with torch.inference_mode():
        if observe is not None:
            for name, value in values.items():
                observe(name, value)
        for op in function.operations:
            if op.op_type == "const":  # read where used: OpArgs falls back to the stored value
                continue
            if op.op_type not in OPS:
                raise UnsupportedOpError(f"no torch implementation of MIL op {op.op_type!r} ({op.name})")
            result = OPS[op.op_type](OpArgs(op, values))
            name = op.outputs[0].name
            values[name] = result.to(_TORCH_DTYPES[dtype_name(op.outputs[0])])
            if observe is not None:
                observe(name, values[name])
    return {var.name: values[var.name] for var in function.outputs}
