"""The student with an int8 backbone on x86 CPUs: torch's PT2E quantization for oneDNN (torchao's x86 inductor
quantizer), the super-resolution head in bf16 (fp32 where bf16 is emulated).

    rays [B, C_in, h, w] -> pixels [B*h*w, C_in]
      -> int8 backbone: the same 1x1 convs as matrix multiplies (nn.Linear) over pixels, int8 weights per output
         channel, int8 activations calibrated on given inputs; oneDNN's int8 matmul fuses GELU and the residual
         add (its int8 conv fuses neither, so activations would leave int8 around every GELU)
      -> features [B, width, h, w] (a channels-last view, no copy)
      -> head: `prepare_for_inference(..., head_only=True)`, compiled: its conv-transposes are slower in int8 here
    image [B, 3 (+1), h*s, w*s]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from nerfstudio_mobile.export.dependencies import logger_level
from nerfstudio_mobile.mobile_r2l.network import LightFieldNetwork, ResidualBlock, fold_batchnorm, prepare_for_inference


def _linear(conv: nn.Module) -> nn.Linear:
    """A 1x1 conv as the matrix multiply it is over pixels."""
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1)
    linear = nn.Linear(conv.in_channels, conv.out_channels)
    linear.weight.data.copy_(conv.weight.detach().flatten(1))
    linear.bias.data.copy_(conv.bias.detach())
    return linear


class _PixelBlock(nn.Module):
    """`ResidualBlock` (BN folded) over pixels: x + linear(GELU(linear(x)))."""

    def __init__(self, block: ResidualBlock) -> None:
        super().__init__()
        first, gelu, second = block.body
        self.first, self.gelu, self.second = _linear(first), gelu, _linear(second)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.second(self.gelu(self.first(x)))


class PixelBackbone(nn.Module):
    """`LightFieldNetwork.backbone` (BN folded) over pixels: [P, C_in] -> [P, width]."""

    def __init__(self, folded: LightFieldNetwork) -> None:
        super().__init__()
        self.stem, self.gelu = _linear(folded.stem[0]), folded.stem[1]
        self.blocks = nn.Sequential(*(_PixelBlock(block) for block in folded.blocks))

    def forward(self, x: Tensor) -> Tensor:
        x = self.gelu(self.stem(x))
        return self.blocks(x) + x


def pixels(x: Tensor) -> Tensor:
    """[B, C, h, w] -> [B*h*w, C]."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def quantize_for_x86(module: nn.Module, example: Tensor, calibration: Sequence[Tensor]) -> nn.Module:
    """PT2E static int8 of `module` for x86 (weights per output channel, activations from `calibration`, all of
    `example`'s shape), compiled with inductor, which swaps in oneDNN's fused int8 kernels when it first runs (under
    freezing)."""
    with logger_level("torch.utils._pytree"):  # torchao registers an enum the old way: a deprecation notice
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

    # Without VNNI, oneDNN sums u8 x s8 products in saturating int16 (vpmaddubsw): 7-bit activations stay clear
    reduce_range = not torch.cpu._is_vnni_supported()
    config = x86.get_default_x86_inductor_quantization_config(reduce_range=reduce_range)
    quantizer = x86.X86InductorQuantizer().set_global(config)
    with torch.no_grad():
        prepared = prepare_pt2e(torch.export.export(module.eval(), (example,)).module(), quantizer)
        for x in calibration:
            prepared(x)
        return torch.compile(convert_pt2e(prepared), dynamic=False)


def int8_backbone_render(
    net: LightFieldNetwork, example: Tensor, calibration: Sequence[Tensor]
) -> Callable[[Tensor], Tensor]:
    """Render function for inputs of `example`'s shape (on the CPU, as `net`): the int8 backbone calibrated on
    `calibration`, then the compiled head."""
    if not calibration:
        raise ValueError("int8 activations need calibration inputs")
    backbone = quantize_for_x86(
        PixelBackbone(fold_batchnorm(net)), pixels(example.float()), [pixels(x.float()) for x in calibration]
    )
    head = prepare_for_inference(net, compile=True, head_only=True)
    batch, _, height, width = example.shape

    def render(x: Tensor) -> Tensor:
        with torch.no_grad(), torch._inductor.config.patch(freezing=True):  # PT2E graphs run under no_grad
            features = backbone(pixels(x.float()))
        return head(features.reshape(batch, height, width, -1).permute(0, 3, 1, 2))

    return render
