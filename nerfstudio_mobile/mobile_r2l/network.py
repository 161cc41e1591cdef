"""MobileR2L light-field network: a frame of encoded rays in, a full-resolution image out, in one pass.

    rays [B, C_in, h, w]
      -> stem: 1x1 conv C_in -> width, GELU                                   (x0)
      -> N residual blocks at width, plus one long skip: blocks(x0) + x0
      -> super-resolution: 3 stages of [ConvTranspose2d (1x, 2x or 3x), 2 residual blocks], 64 -> 64 -> 16 ch
      -> head: 1x1 conv 16 -> 3, sigmoid (RGB in [0, 1]); optional 1x1 conv 16 -> 1, softplus (depth)
    image [B, 3 or 4, h*s, w*s]

Residual block: x + BN(conv1x1(GELU(BN(conv1x1(x))))). Only 4-D channels-first tensors, 1x1 convs and
conv-transposes, so the graph maps directly onto mobile NPUs (Apple Neural Engine) with BN folded away.

Depth (beyond the paper) is a separate 16 -> 1 head so the RGB path and its parameter count are exactly the
paper's. It regresses teacher depth in scene units through softplus: non-negative, unbounded above (no need
to know near/far at export time) and with a non-vanishing gradient for any positive target.
"""

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from nerfstudio_mobile.common.precision import bf16_is_fast

# ConvTranspose2d (kernel, stride, padding): exactly s-times larger output; kernel divisible by stride avoids
# checkerboard artefacts. A 1x stage keeps the resolution: small frames need a finer ray grid, not more upscaling.
_UPSAMPLE_LAYERS: dict[int, tuple[int, int, int]] = {1: (1, 1, 0), 2: (4, 2, 1), 3: (3, 3, 0)}
_BLOCKS_PER_SR_STAGE = 2
TRAINING_LAYOUT = torch.channels_last
"""Memory layout of the weights and activations in training: oneDNN's native one, so its convs and BN skip a reorder
each way (benchmarks/results/student_step.md)."""


@dataclass
class LightFieldNetworkConfig:
    in_channels: int = 312
    """Channels of the ray encoding (RayEncodingConfig.num_channels)."""
    width: int = 256
    """Channels of the 1x1-conv backbone."""
    num_blocks: int = 28
    """Residual blocks in the backbone (N)."""
    sr_channels: tuple[int, int, int] = (64, 64, 16)
    """Channels of the super-resolution stages."""
    upscale_factors: tuple[int, ...] = (2, 2, 2)
    """Per-stage upsampling: (2, 2, 2) = 8x for 360 scenes, (2, 2, 3) = 12x for forward-facing; 1 keeps the size."""
    predict_depth: bool = True
    """Add a fourth output channel with depth in scene units."""
    zero_init_residual: bool = False
    """Start every residual block as the identity (its last BN scale 0), as in Goyal et al.'s ResNet recipe (it cost
    the demo's student PSNR: benchmarks/results/distill_ablation_fit.md)."""

    @property
    def upscale(self) -> int:
        return math.prod(self.upscale_factors)

    def __post_init__(self) -> None:
        for name in ("in_channels", "width", "num_blocks"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if any(c <= 0 for c in self.sr_channels):
            raise ValueError(f"sr_channels must all be positive, got {self.sr_channels}")
        if len(self.upscale_factors) != len(self.sr_channels):
            raise ValueError(
                f"need one upscale factor per super-resolution stage ({len(self.sr_channels)}), "
                f"got {self.upscale_factors}"
            )
        if any(s not in _UPSAMPLE_LAYERS for s in self.upscale_factors):
            raise ValueError(f"upscale factors must each be 1, 2 or 3, got {self.upscale_factors}")


def upscale_factors_of(state_dict: Mapping[str, Tensor], prefix: str = "") -> tuple[int, ...] | None:
    """The per-stage factors a LightFieldNetwork's weights were made with (read from its conv-transposes' kernels);
    None when `state_dict` holds no such network under `prefix`."""
    factor_of_kernel = {kernel: factor for factor, (kernel, _, _) in _UPSAMPLE_LAYERS.items()}
    factors: list[int] = []
    while (weight := state_dict.get(f"{prefix}upsample.{len(factors)}.0.weight")) is not None:
        factors.append(factor_of_kernel[weight.shape[-1]])
    return tuple(factors) or None


def conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1)


class ResidualBlock(nn.Module):
    """x + BN(conv(GELU(BN(conv(x))))), all 1x1 convs at a fixed width."""

    def __init__(self, width: int, zero_init: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv1x1(width, width),
            nn.BatchNorm2d(width),
            nn.GELU(),
            conv1x1(width, width),
            nn.BatchNorm2d(width),
        )
        if zero_init:
            nn.init.zeros_(self.body[-1].weight)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def upsample_stage(in_channels: int, out_channels: int, factor: int, zero_init: bool) -> nn.Sequential:
    kernel, stride, padding = _UPSAMPLE_LAYERS[factor]
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, out_channels, kernel, stride, padding),
        *(ResidualBlock(out_channels, zero_init) for _ in range(_BLOCKS_PER_SR_STAGE)),
    )


class LightFieldNetwork(nn.Module):
    def __init__(self, config: LightFieldNetworkConfig) -> None:
        super().__init__()
        self.config = config
        self.stem = nn.Sequential(conv1x1(config.in_channels, config.width), nn.GELU())
        zero_init = config.zero_init_residual
        self.blocks = nn.Sequential(*(ResidualBlock(config.width, zero_init) for _ in range(config.num_blocks)))
        stage_inputs = (config.width, *config.sr_channels[:-1])
        stages = zip(stage_inputs, config.sr_channels, config.upscale_factors, strict=True)
        self.upsample = nn.Sequential(*(upsample_stage(c_in, c_out, s, zero_init) for c_in, c_out, s in stages))
        self.rgb_head = conv1x1(config.sr_channels[-1], 3)
        self.depth_head = conv1x1(config.sr_channels[-1], 1) if config.predict_depth else None

    def forward(self, x: Tensor) -> Tensor:
        """``[B, in_channels, h, w] -> [B, 3 (+1 depth), h*s, w*s]`` with rgb in [0, 1]."""
        return self.head(self.backbone(x))

    def backbone(self, x: Tensor) -> Tensor:
        """``[B, in_channels, h, w] -> [B, width, h, w]``: the per-ray part, most of the MACs."""
        x = self.stem(x)
        return self.blocks(x) + x  # long skip around the whole backbone

    def head(self, x: Tensor) -> Tensor:
        """``[B, width, h, w] -> [B, 3 (+1 depth), h*s, w*s]``: super-resolution and the output convs."""
        x = self.upsample(x)
        rgb = torch.sigmoid(self.rgb_head(x))
        if self.depth_head is None:
            return rgb
        return torch.cat([rgb, F.softplus(self.depth_head(x))], dim=1)


def count_macs(config: LightFieldNetworkConfig, grid_h: int, grid_w: int) -> int:
    """Multiply-accumulates of all convs / conv-transposes for one frame rendered from an h x w ray grid.

    A conv-transpose is counted as every input pixel scattering a k x k x C_out patch (C_in k^2 C_out per
    input pixel), including the few taps that padding crops at the border. Bias, BN, GELU are ignored.
    """
    pixels = grid_h * grid_w
    macs = pixels * (config.in_channels * config.width + 2 * config.num_blocks * config.width**2)
    c_in = config.width
    for c_out, factor in zip(config.sr_channels, config.upscale_factors, strict=True):
        kernel = _UPSAMPLE_LAYERS[factor][0]
        macs += pixels * c_in * c_out * kernel**2
        pixels *= factor**2
        macs += pixels * _BLOCKS_PER_SR_STAGE * 2 * c_out**2
        c_in = c_out
    return macs + pixels * c_in * (4 if config.predict_depth else 3)


def _fold_sequential(layers: nn.Sequential) -> nn.Sequential:
    folded: list[nn.Module] = []
    for layer in layers:
        if isinstance(layer, nn.BatchNorm2d):
            folded[-1] = fuse_conv_bn_eval(folded[-1], layer)
        else:
            folded.append(layer)
    return nn.Sequential(*folded)


def fold_batchnorm(net: LightFieldNetwork) -> LightFieldNetwork:
    """Eval-mode copy with every BatchNorm folded into the conv before it (export and speed)."""
    folded = copy.deepcopy(net).eval()
    for module in list(folded.modules()):  # snapshot: we replace submodules while walking
        if isinstance(module, ResidualBlock):
            module.body = _fold_sequential(module.body)
    return folded


def prepare_for_inference(
    net: LightFieldNetwork,
    *,
    channels_last: bool = True,
    bf16: bool | None = None,
    compile: bool = False,
    head_only: bool = False,
) -> Callable[[Tensor], Tensor]:
    """Fast render function ``[B, in, h, w] -> [B, 3 (+1), h*s, w*s]`` float32 on the network's device
    (``head_only``: of the head alone, ``[B, width, h, w] -> ...``, for engines that run the backbone otherwise).

    Folds BN, then optionally stores activations channels-last (oneDNN's native layout for 1x1 convs),
    casts weights and activations to bf16 (``None``: when the hardware has native bf16), and compiles
    with inductor freezing (weights become constants, so conv + bias + GELU + residual add fuse).
    """
    model = fold_batchnorm(net)
    device = next(model.parameters()).device
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    dtype = torch.bfloat16 if (bf16_is_fast(device) if bf16 is None else bf16) else torch.float32
    model = model.to(dtype=dtype, memory_format=memory_format)
    part = model.head if head_only else model
    # Render engines are built per ray-grid shape: keep each compile static (dynamo would otherwise compile the
    # next shape seen by this code for symbolic sizes).
    forward = torch.compile(part, dynamic=False) if compile else part

    @torch.inference_mode()
    def render(x: Tensor) -> Tensor:
        # Inductor reads the process-global `freezing` flag when it (re)compiles, i.e. inside a call.
        with torch._inductor.config.patch(freezing=True):
            return forward(x.to(device=device, dtype=dtype, memory_format=memory_format)).float()

    return render
