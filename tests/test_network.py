from typing import Any

import pytest
import torch
from torch import Tensor, nn

from nerfstudio_mobile.mobile_r2l.network import (
    LightFieldNetwork,
    LightFieldNetworkConfig,
    ResidualBlock,
    count_macs,
    fold_batchnorm,
    prepare_for_inference,
)


def tiny_config(**overrides: Any) -> LightFieldNetworkConfig:
    options = dict(in_channels=24, width=16, num_blocks=2, sr_channels=(8, 8, 4))
    return LightFieldNetworkConfig(**(options | overrides))


def num_params(config: LightFieldNetworkConfig) -> int:
    return sum(p.numel() for p in LightFieldNetwork(config).parameters())


def test_paper_parameter_counts() -> None:
    assert num_params(LightFieldNetworkConfig(num_blocks=28, predict_depth=False)) == 4_172_931
    assert num_params(LightFieldNetworkConfig(num_blocks=29, predict_depth=False)) == 4_305_539
    assert num_params(LightFieldNetworkConfig(num_blocks=28, predict_depth=True)) == 4_172_931 + 17


@pytest.mark.parametrize(
    ("factors", "out_hw"),
    [((2, 2, 2), (48, 40)), ((2, 2, 3), (72, 60)), ((1, 2, 2), (24, 20))],
    ids=["360-8x", "llff-12x", "small-frame-4x"],
)
@pytest.mark.parametrize("predict_depth", [False, True])
def test_output_shape_and_range(factors: tuple[int, ...], out_hw: tuple[int, int], predict_depth: bool) -> None:
    config = tiny_config(upscale_factors=factors, predict_depth=predict_depth)
    assert config.upscale == out_hw[0] // 6
    out = LightFieldNetwork(config)(torch.randn(2, 24, 6, 5))
    assert out.shape == (2, 4 if predict_depth else 3, *out_hw)
    rgb = out[:, :3]
    assert bool(((rgb >= 0) & (rgb <= 1)).all())
    if predict_depth:
        assert bool((out[:, 3] >= 0).all())


def randomize_batchnorm(net: nn.Module) -> None:
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.running_mean, -0.5, 0.5)
            nn.init.uniform_(module.running_var, 0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.2, 0.2)


@pytest.mark.parametrize("zero_init", [False, True])
def test_zero_initialised_blocks_start_as_the_identity(zero_init: bool) -> None:
    """The option the ablation measured (results/distill_ablation_fit.md): each block's output is its input at first."""
    net = LightFieldNetwork(tiny_config(zero_init_residual=zero_init)).train()
    blocks = [module for module in net.modules() if isinstance(module, ResidualBlock)]
    assert len(blocks) == 2 + 3 * 2  # the backbone's and the super-resolution stages'
    for block in blocks:
        x = torch.randn(2, block.body[0].in_channels, 3, 3)
        assert torch.equal(block(x), x) == zero_init


def test_fold_batchnorm_matches_eval_network() -> None:
    net = LightFieldNetwork(tiny_config())
    randomize_batchnorm(net)
    net.eval()
    folded = fold_batchnorm(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules()), "original must be left untouched"
    x = torch.randn(2, 24, 6, 5)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), atol=1e-5, rtol=0)


def test_count_macs_matches_paper_scale() -> None:
    macs_360 = count_macs(LightFieldNetworkConfig(num_blocks=28, predict_depth=False), 100, 100)
    assert macs_360 == pytest.approx(50e9, rel=0.03)
    backbone = 100 * 100 * (312 * 256 + 2 * 28 * 256 * 256)
    assert backbone / macs_360 == pytest.approx(0.77, abs=0.02)
    config_llff = LightFieldNetworkConfig(num_blocks=28, upscale_factors=(2, 2, 3), predict_depth=False)
    assert count_macs(config_llff, 63, 84) == pytest.approx(26e9, rel=0.03)


@pytest.mark.parametrize("factors", [(2, 2, 2), (2, 2, 3), (1, 1, 2)])
def test_count_macs_matches_traced_layers(factors: tuple[int, ...]) -> None:
    config = tiny_config(upscale_factors=factors)
    net = LightFieldNetwork(config)
    traced = 0

    def count(module: nn.Module, inputs: tuple[Tensor], output: Tensor) -> None:
        nonlocal traced
        weight_macs = module.weight.numel()  # C_in * C_out * k * k
        pixels = inputs[0][0, 0].numel() if isinstance(module, nn.ConvTranspose2d) else output[0, 0].numel()
        traced += weight_macs * pixels

    for module in net.modules():
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            module.register_forward_hook(count)
    net(torch.randn(1, 24, 6, 5))
    assert count_macs(config, 6, 5) == traced


@pytest.mark.parametrize(
    "overrides",
    [
        dict(width=0),
        dict(num_blocks=0),
        dict(in_channels=-1),
        dict(sr_channels=(8, 0, 4)),
        dict(upscale_factors=(2, 4, 2)),
        dict(upscale_factors=(0, 2, 2)),
        dict(upscale_factors=(2, 2)),
    ],
)
def test_invalid_config_raises(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        tiny_config(**overrides)


@pytest.mark.parametrize(("bf16", "atol"), [(False, 1e-5), (True, 3e-2)])
def test_prepare_for_inference_matches_eval_network(bf16: bool, atol: float) -> None:
    net = LightFieldNetwork(tiny_config())
    randomize_batchnorm(net)
    net.eval()
    render = prepare_for_inference(net, channels_last=True, bf16=bf16)
    x = torch.randn(2, 24, 6, 5)
    out = render(x)
    assert out.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(out, net(x), atol=atol, rtol=0)
