"""Palette-aware fine-tuning: a copy of the student whose weights an n-bit palette stores exactly.

Palettizing a trained network rounds each large weight to the nearest of 2^n values (k-means per weight tensor
or per group of output channels), an error the network never saw: at 3 and 2 bits it costs a trained student
1 to 3 dB. Here the BN-folded network (the weights the package stores) learns to render what the float student
renders, at the poses of its pseudo views and with the student's loss, while the forward pass uses every compressed
weight's palette value (a straight-through gradient reaches the latent weight) and the palettes are refitted by
1-D k-means (Lloyd) at every step. The float student is the target, not the pseudo views' pixels: those would
undo what the student learnt after them (its finish on the real images) and cost more than k-means at 4 bits. The
result holds at most 2^n distinct values per group, so the Core ML export stores them as they are ("unique"
palettization) instead of clustering again. No teacher renders: the cache is the one the student learnt from.

Mixed formats (palettize2.4-g16-finetuned) give n + 1 bits to the layers where n bits cost the rendering most per
weight: the small super-resolution convs lose as much as a 65k-weight block at a sixteenth of its size.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from rich.progress import track
from torch import Tensor, nn
from torch.nn.utils import parametrize

from nerfstudio_mobile.export.calibration import student_pseudo_views
from nerfstudio_mobile.export.sidecar import WeightFormat
from nerfstudio_mobile.export.student import Student
from nerfstudio_mobile.mobile_r2l.cache.dataset import PseudoViewDataset
from nerfstudio_mobile.mobile_r2l.network import LightFieldNetwork, fold_batchnorm

STEM_MIN_BITS = 8
"""The stem conv reads the positional encoding directly, so a coarse palette there loses more than anywhere
else, and it holds few of the weights: it keeps at least this many bits, in one palette for the whole tensor (a
256-entry table per group of 8 output channels would add a fifth to its size, and 8 bits need no groups)."""
COMPRESSION_THRESHOLD = 2048
"""coremltools' default: weights of more elements than this are compressed; the others (16x16 convs, heads, biases)
stay fp16, a small share of the parameters."""
INITIAL_LLOYD_ITERATIONS = 30
"""Lloyd iterations of the first fit, from quantiles; afterwards one per step from the previous palette."""
SENSITIVITY_VIEWS, SENSITIVITY_GRID = 4, 32
"""A mixed format measures what each layer's palettes cost the rendering on the central 32x32 rays of 4 pseudo
views (twice per layer: a paper-size network at 100x100 rays would take minutes)."""


@dataclass
class PaletteTraining:
    """Settings of palette-aware fine-tuning (`--compressions palettize<n>[-g<size>]-finetuned`)."""

    steps: int = 900
    """Steps of fine-tuning per palette format (three times the 300 first measured: the 2- and 3-bit palettes,
    where the size goal lies, keep more of the student; benchmarks/results/export_sizes_palette-900.md)."""
    views_per_step: int = 4
    lr: float = 2e-4
    """Adam's learning rate, cosine-annealed to 0 (about a tenth of the student's own)."""
    seed: int = 0


class Palette(nn.Module):
    """Parametrization of a conv weight: each element replaced by the nearest entry of its group's palette of
    2^bits values (groups of `group_size` output channels along `channel_axis`; None: the whole tensor), with
    the gradient passed straight through to the latent weight. Refits the palettes by one Lloyd step per call."""

    def __init__(self, weight: Tensor, bits: int, group_size: int | None, channel_axis: int) -> None:
        super().__init__()
        self.group_size, self.channel_axis = group_size, channel_axis
        groups = self.grouped(weight.detach().float())
        levels = (torch.arange(2**bits, dtype=groups.dtype) + 0.5) / 2**bits
        self.register_buffer("lut", torch.quantile(groups, levels, dim=1).T.contiguous())  # [groups, 2^bits]
        self.refit(groups, INITIAL_LLOYD_ITERATIONS)

    def grouped(self, weight: Tensor) -> Tensor:
        """[groups, elements per group], output channels first (coremltools' grouping)."""
        channels_first = weight.movedim(self.channel_axis, 0)
        count = 1 if self.group_size is None else channels_first.shape[0] // self.group_size
        return channels_first.reshape(count, -1)

    def assign(self, groups: Tensor) -> Tensor:
        """Index of the nearest palette entry of every element (the palette is sorted)."""
        boundaries = (self.lut[:, 1:] + self.lut[:, :-1]) / 2
        return torch.searchsorted(boundaries.contiguous(), groups.contiguous())

    @torch.no_grad()
    def refit(self, groups: Tensor, iterations: int) -> None:
        for _ in range(iterations):
            index = self.assign(groups)
            sums = torch.zeros_like(self.lut).scatter_add_(1, index, groups)
            counts = torch.zeros_like(self.lut).scatter_add_(1, index, torch.ones_like(groups))
            # an entry that lost every element keeps its value
            self.lut = torch.where(counts > 0, sums / counts.clamp_min(1), self.lut).sort(dim=1).values

    def forward(self, weight: Tensor) -> Tensor:
        groups = self.grouped(weight.detach())
        self.refit(groups, 1)
        palettized = self.lut.gather(1, self.assign(groups))
        channels_first = palettized.reshape(weight.movedim(self.channel_axis, 0).shape)
        # exactly the palette values (weight + (q - weight) would round), with the weight's gradient
        return channels_first.movedim(0, self.channel_axis) + (weight - weight.detach())


class PalettizedLayer(NamedTuple):
    layer: nn.Module
    bits: int
    group_size: int | None
    """Output channels per palette (None: one palette for the whole tensor)."""
    axis: int
    """The weight's output-channel axis (1 for a conv-transpose)."""

    def palette(self) -> Palette:
        return Palette(self.layer.weight, self.bits, self.group_size, self.axis)


def palettized_layers(
    network: nn.Module, weights: WeightFormat, wider: Collection[nn.Module] = ()
) -> Iterator[PalettizedLayer]:
    """Every conv of a LightFieldNetwork that `compress` palettizes, as coremltools picks them: weights of more than
    COMPRESSION_THRESHOLD elements at the format's palettes, the stem at STEM_MIN_BITS or more in one palette, the
    `wider` layers of a mixed format at one bit more."""
    stem = network.stem[0]
    for module in network.modules():
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d) and module.weight.numel() > COMPRESSION_THRESHOLD:
            axis = 1 if isinstance(module, nn.ConvTranspose2d) else 0
            if module is stem:
                yield PalettizedLayer(module, max(weights.bits, STEM_MIN_BITS), None, axis)
            else:
                yield PalettizedLayer(module, weights.bits + (module in wider), weights.group_size, axis)


@torch.no_grad()
def wider_layers(network: nn.Module, weights: WeightFormat, inputs: Sequence[Tensor]) -> set[nn.Module]:
    """The layers a mixed format (`weights.mean_bits`) stores at one bit more: ranked by the output error that one
    more bit of k-means palette removes per weight (each layer palettized alone, the network run on `inputs`),
    taken greedily while the mean over the palettized layers but the stem stays within `mean_bits`."""
    if weights.mean_bits is None:
        return set()
    layers = [entry for entry in palettized_layers(network, weights) if entry.layer is not network.stem[0]]
    reference = [network(x) for x in inputs]

    def error(entry: PalettizedLayer) -> float:
        weight = entry.layer.weight.detach().clone()
        entry.layer.weight.copy_(entry.palette()(weight))
        mse = sum(float(nn.functional.mse_loss(network(x), y)) for x, y in zip(inputs, reference, strict=True))
        entry.layer.weight.copy_(weight)
        return mse

    saved = {entry.layer: (error(entry) - error(entry._replace(bits=entry.bits + 1))) / entry.layer.weight.numel()
             for entry in layers}  # fmt: skip
    budget = (weights.mean_bits - weights.bits) * sum(entry.layer.weight.numel() for entry in layers)
    wider: set[nn.Module] = set()
    for layer in sorted(saved, key=saved.__getitem__, reverse=True):
        if layer.weight.numel() <= budget:
            wider.add(layer)
            budget -= layer.weight.numel()
    return wider


def round_to_palettes(network: nn.Module, weights: WeightFormat, wider: Collection[nn.Module] = ()) -> nn.Module:
    """`network` with every palettized weight replaced, in place, by its k-means palette values."""
    for entry in palettized_layers(network, weights, wider):
        parametrize.register_parametrization(entry.layer, "weight", entry.palette())
        parametrize.remove_parametrizations(entry.layer, "weight", leave_parametrized=True)
    return network


def palette_finetuned(student: Student, weights: WeightFormat, settings: PaletteTraining) -> LightFieldNetwork:
    """A BN-folded copy of the student's network fine-tuned, with `weights`' palettes in the loop, to render what
    the student renders at its pseudo views' poses; its palettized weights hold at most 2^bits values per group."""
    views = PseudoViewDataset(
        student_pseudo_views(student, "palette fine-tuning trains on", "export palettes without -finetuned")
    )
    reference = fold_batchnorm(student.model.network).float().eval().requires_grad_(False)
    network = fold_batchnorm(student.model.network).float()
    generator = torch.Generator().manual_seed(settings.seed)
    model, intrinsics = student.model, views.cache.meta.intrinsics
    wider: set[nn.Module] = set()
    if weights.mean_bits is not None:
        cameras = intrinsics.cameras(views.sample(SENSITIVITY_VIEWS, generator).c2w)
        encoded = model.encode(cameras, jitter=False)[0]
        top, left = (max(0, (size - SENSITIVITY_GRID) // 2) for size in encoded.shape[-2:])
        crop = encoded[..., top : top + SENSITIVITY_GRID, left : left + SENSITIVITY_GRID]
        wider = wider_layers(network, weights, [crop])
    layers = list(palettized_layers(network, weights, wider))
    for entry in layers:
        parametrize.register_parametrization(entry.layer, "weight", entry.palette())
    optimizer = torch.optim.Adam(network.parameters(), lr=settings.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.steps)
    bits = f"{weights.bits}" if weights.mean_bits is None else f"{weights.bits}/{weights.bits + 1}"
    label = f"{bits}-bit palettes" + (f" per {weights.group_size} channels" if weights.group_size else "")
    for _ in track(range(settings.steps), description=f"Fine-tuning {label} at {len(views)} pseudo views' poses"):
        batch = views.sample(settings.views_per_step, generator)
        encoded, (height, width) = model.encode(intrinsics.cameras(batch.c2w), jitter=model.config.jitter)
        outputs = model.frame_outputs(model.run_network(encoded, network), height, width)
        with torch.no_grad():
            wanted = model.frame_outputs(model.run_network(encoded, reference), height, width)
        targets = {"image": wanted["rgb"]}
        if "depth" in wanted:  # the student's depth where its depth loss applies (the teacher saw a surface)
            targets["depth"] = torch.where(batch.depth.float() > 0, wanted["depth"][..., 0], 0.0)
        loss = sum(model.get_loss_dict(outputs, targets).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        for entry in layers:
            parametrize.remove_parametrizations(entry.layer, "weight", leave_parametrized=True)
    return network.eval()
