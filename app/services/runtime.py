"""Small pieces every model service shares: where to run, and how long something took."""

from __future__ import annotations

import time

import torch


def resolve_device(requested: str) -> torch.device:
    """``auto``: CUDA when available, else CPU; asking for CUDA without one falls back to CPU too."""
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def elapsed_ms(start: float) -> float:
    """Milliseconds since ``start`` (a ``time.perf_counter()`` reading), for timing headers and bodies."""
    return round((time.perf_counter() - start) * 1000, 3)
