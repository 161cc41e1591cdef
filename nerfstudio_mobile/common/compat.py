"""Plumbing both packages need to run nerfstudio 1.1.5 offline on a CPU under torch 2.13."""

from __future__ import annotations

import ctypes
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

_warned_lpips = False


def default_device_type() -> str:
    """nerfstudio defaults to CUDA; our configs pick the CPU when no GPU is there."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def allow_numpy_in_checkpoints() -> None:
    """torch >= 2.6 loads checkpoints with `weights_only=True`, which refuses the numpy scalars
    nerfstudio's schedulers store; `eval_setup` and `--load-dir` would then fail. Allow them."""
    numpy_dtypes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    torch.serialization.add_safe_globals([np._core.multiarray.scalar, np.dtype, *numpy_dtypes])


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
KEPT_FREED_BYTES = 1 << 30


def keep_freed_memory(threshold: int = KEPT_FREED_BYTES) -> bool:
    """Let glibc reuse freed blocks below `threshold` bytes instead of unmapping them at every free.

    A teacher's 4096-ray render chunk allocates tensors of tens of MB per op; glibc serves any block above
    32 MB with a fresh mmap and unmaps it on free, so each op pays page faults to zero new pages: teacher renders
    (pseudo views, eval, viewer) slow down (benchmarks/results/malloc_reuse.md).
    (tcmalloc or jemalloc via LD_PRELOAD do the same; this needs no install.)
    Returns False where there is no glibc (macOS, musl): nothing changes there."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold)) and bool(libc.mallopt(M_TRIM_THRESHOLD, threshold))


def lpips_weights_available() -> bool:
    """LPIPS needs torchvision's AlexNet weights; offline they exist only if already in torch's hub cache."""
    return (Path(torch.hub.get_dir()) / "checkpoints" / "alexnet-owt-7be5be79.pth").is_file()


def _warn_lpips_off() -> None:
    global _warned_lpips
    if not _warned_lpips:
        _warned_lpips = True
        warnings.warn(
            "LPIPS is off: its AlexNet weights are not in the torch hub cache "
            f"({torch.hub.get_dir()}/checkpoints) and nothing is downloaded at run time. "
            "Put alexnet-owt-7be5be79.pth there to get LPIPS in eval metrics.",
            stacklevel=3,
        )


def optional_lpips() -> nn.Module | None:
    """LPIPS when its weights can be loaded without a network; None (and one warning) otherwise."""
    if lpips_weights_available():
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        return LearnedPerceptualImagePatchSimilarity(normalize=True)
    _warn_lpips_off()
    return None


class OfflineLPIPS(nn.Module):
    """Stands in for torchmetrics' LPIPS inside stock nerfstudio models (nerfacto, instant-ngp, vanilla-nerf),
    which build it at construction and so download AlexNet: offline that crashed training and teacher loading.
    It scores NaN, so no LPIPS number is ever reported from it."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__()
        _warn_lpips_off()

    def forward(self, *args: object, **kwargs: object) -> torch.Tensor:
        return torch.tensor(float("nan"))


def stock_models_work_offline() -> None:
    """Without AlexNet's weights, nerfstudio's models (which import LPIPS when they build) get `OfflineLPIPS`."""
    if not lpips_weights_available():
        import torchmetrics.image.lpip

        torchmetrics.image.lpip.LearnedPerceptualImagePatchSimilarity = OfflineLPIPS  # type: ignore[misc]
