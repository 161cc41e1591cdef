"""Image metrics, one definition for the whole toolkit: PSNR, SSIM (torchmetrics, data_range 1.0), LPIPS."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional import structural_similarity_index_measure


def psnr(reference: Tensor, image: Tensor) -> Tensor:
    """PSNR (dB) of images in [0, 1], any layout; capped at 100 dB (identical images). Differentiable in `image`
    within [0, 1], so training metrics can log it as a tensor."""
    mse = torch.mean((reference.float() - image.float().clamp(0, 1)) ** 2)
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


def image_metrics(image: Tensor, prediction: Tensor, lpips: torch.nn.Module | None = None) -> dict[str, float]:
    """PSNR, SSIM and LPIPS when available, for [H, W, 3] images in [0, 1]."""
    gt, pred = image.permute(2, 0, 1)[None].float(), prediction.permute(2, 0, 1)[None].float().clamp(0, 1)
    metrics = {
        "psnr": float(psnr(gt, pred)),
        "ssim": float(structural_similarity_index_measure(pred, gt, data_range=1.0)),
    }
    if lpips is not None:
        metrics["lpips"] = float(lpips.to(pred.device)(pred, gt))
    return metrics
