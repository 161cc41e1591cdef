"""bf16 where the hardware runs it natively, fp32 elsewhere: emulated bf16 is far slower than fp32 (training the
demo's student on an AVX2-only EPYC: 8.4 s a step in bf16 against 0.4 s in fp32)."""

import torch


def bf16_is_fast(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # oneDNN has native bf16 kernels only with AVX512-BF16 or AMX; elsewhere bf16 is emulated and slow.
    native_cpu_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return device.type == "cpu" and native_cpu_bf16


def cpu_bf16_autocast(device: torch.device, enabled: bool = True) -> torch.autocast:
    """bf16 autocast for a model on a CPU with native bf16 (nerfstudio's trainer turns mixed precision off on CPUs,
    so our models opt in themselves); a no-op elsewhere."""
    return torch.autocast(
        "cpu", dtype=torch.bfloat16, enabled=enabled and device.type == "cpu" and bf16_is_fast(device)
    )
