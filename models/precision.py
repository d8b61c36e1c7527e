"""Where bf16 is worth it, and where it runs at all.

Two different questions: *native* bf16 (CUDA, or CPUs with AVX512-BF16/AMX) is faster than fp32, so
``auto`` picks it there. Elsewhere bf16 convolutions are emulated (slower) or, on CPUs without
AVX512BW/VL/DQ or AVX-NE-CONVERT (plain AVX2 hosts), oneDNN refuses them outright, so an explicit
``bf16`` request must fail with a clear message instead of deep inside a convolution.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


def bf16_native(device: torch.device) -> bool:
    """bf16 is hardware-accelerated here (and therefore faster than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)
    return False


def bf16_runnable(device: torch.device) -> bool:
    """bf16 convolutions run here at all (natively or emulated)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def use_bf16(device: torch.device, precision: str) -> bool:
    """Resolve a precision request: ``auto`` = bf16 where native; ``bf16`` where it cannot run raises."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return False
    if precision == "bf16":
        if not bf16_runnable(device):
            raise ValueError(
                f"bf16 was requested but {device.type} here cannot run bf16 convolutions "
                "(a CPU needs AVX512BW/VL/DQ or AVX-NE-CONVERT); use 'fp32' or 'auto'"
            )
        return True
    return bf16_native(device)
