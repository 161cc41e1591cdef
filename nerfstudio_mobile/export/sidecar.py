"""The export frame (everything fixed at export time) and the sidecar JSON an app builds its input from.

The sidecar is written next to every exported file and stored inside it (Core ML user metadata, ONNX
metadata_props under ``SIDECAR_KEY``), so a model never travels without its input contract.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Literal

from nerfstudio_mobile.common.intrinsics import Intrinsics
from nerfstudio_mobile.export.errors import CompressionError, GridShapeError
from nerfstudio_mobile.export.student import Student
from nerfstudio_mobile.mobile_r2l.encoding import RayEncodingConfig
from nerfstudio_mobile.mobile_r2l.network import LightFieldNetworkConfig, count_macs

InputMode = Literal["rays", "pose"]
INPUT_MODES: tuple[InputMode, ...] = ("rays", "pose")
OnnxWeights = Literal["none", "int8"]
"""ONNX weight formats: none = fp32, int8 = static int8 QDQ (int8 weights per channel and int8 activations)."""
Compression = str
"""A Core ML weight format, as `--compressions` names it: none (fp16), int8 (weights), palettize8|6|4 (one k-means
palette per weight tensor), palettize<n>-g<size> (one palette per group of <size> output channels, n = 8, 6, 4, 3
or 2; iOS 18), either with a -finetuned suffix (palettes learnt by fine-tuning to match the student, see
palette_training), palettize<n>.<f>-g<size>-finetuned (mixed: each layer's palettes at n or n + 1 bits, n.<f> bits
per weight on average; fine-tuned), w8a8 (int8 weights and int8 activations; iOS 17)."""
COMPRESSIONS: tuple[Compression, ...] = ("none", "int8", "palettize8", "palettize6", "palettize4")
"""The iOS 16 formats."""
GROUPED_PALETTES: tuple[Compression, ...] = ("palettize4-g16", "palettize3-g16", "palettize2-g16")
"""Per-grouped-channel palettes at the group size that keeps 4 and 3 bits accurate (Apple: 8 to 16)."""
PER_TENSOR_PALETTE_BITS = (8, 6, 4)
GROUPED_PALETTE_BITS = (8, 6, 4, 3, 2)
MIXED_PALETTES: tuple[Compression, ...] = ("palettize2.4-g16-finetuned", "palettize2.4-g8-finetuned")
"""2- and 3-bit palettes per 16 or 8 channels (Apple's range), 2.4 bits per weight on average: paper-network packages
under 1.5 MB."""
_PALETTE = re.compile(r"palettize(\d+)(?:\.(\d+))?(?:-g(\d+))?(-finetuned)?")


@dataclass(frozen=True)
class WeightFormat:
    """What a compression name means for the stored weights."""

    kind: Literal["fp16", "int8", "palette", "w8a8"]
    bits: int
    """Bits per stored weight element."""
    group_size: int | None = None
    """Palettes: output channels that share one look-up table; None: one table per weight tensor."""
    finetuned: bool = False
    """Palettes learnt by fine-tuning the student with them in the loop (else k-means of the trained weights)."""
    mean_bits: float | None = None
    """Mixed palettes: each layer at `bits` or `bits` + 1, this many bits per weight on average over the palettized
    layers but the stem (None: every layer at `bits`)."""


def weight_format(compression: Compression) -> WeightFormat:
    """Parse a --compressions name; CompressionError says which names exist."""
    if compression == "none":
        return WeightFormat("fp16", 16)
    if compression in ("int8", "w8a8"):
        return WeightFormat(compression, 8)
    match = _PALETTE.fullmatch(compression)
    if match:
        bits, fraction, group, finetuned = int(match.group(1)), match.group(2), match.group(3), bool(match.group(4))
        if fraction is None and group is None and bits in PER_TENSOR_PALETTE_BITS:
            return WeightFormat("palette", bits, finetuned=finetuned)
        if fraction is None and group is not None and bits in GROUPED_PALETTE_BITS and int(group) > 0:
            return WeightFormat("palette", bits, int(group), finetuned)
        mixable = bits in GROUPED_PALETTE_BITS and bits + 1 in GROUPED_PALETTE_BITS and finetuned
        if fraction is not None and int(fraction) > 0 and mixable and group is not None and int(group) > 0:
            return WeightFormat("palette", bits, int(group), finetuned, float(f"{bits}.{fraction}"))
    mixable = sorted(bits for bits in GROUPED_PALETTE_BITS if bits + 1 in GROUPED_PALETTE_BITS)
    raise CompressionError(
        f"--compressions {compression!r} is not a weight format: pass none, int8, w8a8, "
        f"palettize{{{','.join(map(str, PER_TENSOR_PALETTE_BITS))}}} (one palette per tensor) or "
        f"palettize{{{','.join(map(str, GROUPED_PALETTE_BITS))}}}-g<size> (one palette per <size> output "
        "channels, e.g. palettize4-g16), either with -finetuned (palettes learnt on the pseudo views), or "
        f"palettize{{{','.join(map(str, mixable))}}}.<f>-g<size>-finetuned (n or n + 1 bits per layer, n.<f> on "
        "average, e.g. palettize2.4-g16-finetuned)."
    )


def weights_label(compression: Compression) -> str:
    """How a Core ML package's weights are stored: "fp16" (no compression), "int8", "palettize4-g16", ..."""
    return "fp16" if compression == "none" else compression


SIDECAR_KEY = "nerfstudio_mobile.sidecar"
SIDECAR_FORMAT = "nerfstudio-mobile/mobile-r2l-export/v1"

CAMERA_CONVENTION = (
    "camera-to-world, OpenGL / ARKit camera axes: x right, y up, the camera looks along -z; "
    "row-major 4x4 (last row 0 0 0 1)"
)
POSE_FRAME = (
    "The pose input is in the ORIGINAL world frame of the capture (the frame of the dataset's camera poses, "
    "e.g. ARKit's world when the capture came from ARKit). The graph maps it into the student's normalised "
    "frame itself: student = dataparser.transform @ pose, then student[:3, 3] *= dataparser.scale."
)
RAY_GRID = (
    "Grid pixel (i, j) (row i < h, column j < w) casts the ray through its centre (u, v) = (j + 0.5, i + 0.5) "
    "with the grid intrinsics: camera direction ((u - cx) / fx, -(v - cy) / fy, -1), normalised to unit length, "
    "rotated by the student-frame pose; the origin is the pose's translation."
)


def channel_order(encoding: RayEncodingConfig) -> str:
    """The layout of the `rays` input, spelled out with this export's K and L (see mobile_r2l/encoding.py)."""
    k, frequencies = encoding.num_points, encoding.num_frequencies
    d = 3 * k
    u = f"u_k = k / {k - 1}, k = 0..{k - 1}"
    if k == 1:
        depths = "t_0 = near"
    elif encoding.space == "contracted":
        depths = f"1 / t_k = (1 - u_k) / near + u_k / far with {u} (evenly in disparity)"
    else:
        depths = f"t_k = near * (1 - u_k) + far * u_k with {u}"
    points = "p_k = o + t_k * d"
    if encoding.space == "contracted":
        points += ", then contracted: p_k if max|p_k[a]| <= 1, else (2 - 1 / m) * p_k / m with m = max_a |p_k[a]|"
    return (
        f"rays[0, ch, i, j] for the ray (o, d) of grid pixel (i, j): depths {depths} (both ends included); "
        f"points {points}; coordinates x[3k + a] = p_k[a] (a = 0, 1, 2 for x, y, z; D = {d}); "
        f"for f = 0..{frequencies - 1} and m = 0..{d - 1}: channel f * {d} + m = sin(2^f * x[m]), channel "
        f"({frequencies} + f) * {d} + m = cos(2^f * x[m]) (no factor of pi); channel {2 * frequencies * d} + m "
        f"= x[m]. {encoding.num_channels} channels, computed in float32."
    )


@dataclass(frozen=True)
class ExportFrame:
    """What turns a pose into the network input and the network output into an image, fixed at export."""

    output: Intrinsics
    """Intrinsics of the exported image (the network's output)."""
    network: LightFieldNetworkConfig
    encoding: RayEncodingConfig
    near: float
    far: float
    dataparser_transform: tuple[tuple[float, ...], ...]
    """[3, 4]: world pose -> student pose, before scaling the translation."""
    dataparser_scale: float

    @property
    def upscale(self) -> int:
        return self.network.upscale

    @property
    def grid(self) -> Intrinsics:
        """Intrinsics of the low-resolution ray grid: the output's, divided by the upscale factor."""
        return self.output.downscaled(self.upscale)

    @property
    def output_names(self) -> tuple[str, ...]:
        return ("rgb", "depth") if self.network.predict_depth else ("rgb",)

    def input_shape(self, mode: InputMode) -> tuple[int, ...]:
        return (1, self.encoding.num_channels, self.grid.height, self.grid.width) if mode == "rays" else (1, 4, 4)

    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        channels = {"rgb": 3, "depth": 1}
        return {name: (1, channels[name], self.output.height, self.output.width) for name in self.output_names}

    def gmac_per_frame(self) -> float:
        return count_macs(self.network, self.grid.height, self.grid.width) / 1e9


def export_frame(student: Student, output_size: tuple[int, int] | None = None) -> ExportFrame:
    """The frame of an export at `output_size` (H, W; default: the training images' size), with the training
    camera's intrinsics rescaled to it. Raises GridShapeError when the size is not a whole number of blocks."""
    trained = student.train_intrinsics
    height, width = output_size or (trained.height, trained.width)
    s = student.network_config.upscale
    if height % s or width % s:
        requested = "--output-size" if output_size else "the training images' size, the default output size,"
        raise GridShapeError(
            f"{requested} {height}x{width} (HxW) is not a whole number of {s}x{s} super-resolution blocks "
            f"(upscale factors {student.network_config.upscale_factors}): the network renders a frame from an "
            f"(H/{s})x(W/{s}) ray grid. Pass --output-size H W with both divisible by {s}, e.g. "
            f"{nearest_multiple(height, s)} {nearest_multiple(width, s)}."
        )
    near, far = student.near_far
    return ExportFrame(
        output=trained.resized(width, height),
        network=student.network_config,
        encoding=student.encoding,
        near=near,
        far=far,
        dataparser_transform=tuple(tuple(row) for row in student.dataparser_transform.tolist()),
        dataparser_scale=student.dataparser_scale,
    )


def nearest_multiple(value: int, factor: int) -> int:
    return max(factor, factor * round(value / factor))


def _io_description(frame: ExportFrame, mode: InputMode) -> dict[str, Any]:
    if mode == "rays":
        inputs = {
            "rays": {
                "shape": list(frame.input_shape("rays")),
                "dtype": "float32",
                "description": "encoded ray grid, channels-first; build it as in `rays` below",
            }
        }
    else:
        inputs = {
            "pose": {
                "shape": [1, 4, 4],
                "dtype": "float32",
                "description": f"{CAMERA_CONVENTION}. {POSE_FRAME}",
            }
        }
    outputs = {
        "rgb": {
            "shape": list(frame.output_shapes()["rgb"]),
            "dtype": "float32",
            "channels": ["red", "green", "blue"],
            "range": [0.0, 1.0],
            "description": "colour encoded as the training images (sRGB), channels-first",
        }
    }
    if frame.network.predict_depth:
        outputs["depth"] = {
            "shape": list(frame.output_shapes()["depth"]),
            "dtype": "float32",
            "channels": ["depth"],
            "description": "distance from the camera centre along the ray in student units; "
            "divide by dataparser.scale for world units",
        }
    return {"inputs": inputs, "outputs": outputs}


def sidecar(frame: ExportFrame, mode: InputMode, weights: str, params: int, source: dict[str, Any]) -> dict[str, Any]:
    """The JSON contract of one exported file: its input and outputs, everything needed to build the input,
    and where it came from (`source`: the student run)."""
    grid, output = frame.grid, frame.output
    return {
        "format": SIDECAR_FORMAT,
        "input_mode": mode,
        **_io_description(frame, mode),
        "weights": weights,
        "output_size": [output.height, output.width],
        "grid_size": [grid.height, grid.width],
        "upscale_factors": list(frame.network.upscale_factors),
        "upscale": frame.upscale,
        "intrinsics": {"output": asdict(output), "grid": asdict(grid)},
        "camera_convention": CAMERA_CONVENTION,
        "pose_frame": POSE_FRAME,
        "rays": {
            "near": frame.near,
            "far": frame.far,
            "num_points": frame.encoding.num_points,
            "space": frame.encoding.space,
            "num_frequencies": frame.encoding.num_frequencies,
            "num_channels": frame.encoding.num_channels,
            "grid": RAY_GRID,
            "channel_order": channel_order(frame.encoding),
        },
        "dataparser": {
            "transform": [list(row) for row in frame.dataparser_transform],
            "scale": frame.dataparser_scale,
            "description": "world pose P (4x4) -> student pose: (transform @ P)[:3, :4], translation column "
            "times scale. The `pose` input applies it in the graph; for `rays` apply it before casting rays.",
        },
        "network": {
            **asdict(frame.network),
            "params": params,
            "gmac_per_frame": frame.gmac_per_frame(),
        },
        "source": source,
    }
