"""Stopping training loudly when a number goes NaN or infinite.

bf16 kernels have returned garbage gradients on these CPUs, and the loss network's fused ReLU turns
NaN into zeros downstream, so a bad step can look like a quiet one. Every training loop checks its
loss terms, gradient norm and output here, in one host sync, and stops naming the culprit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor


class NonFiniteError(RuntimeError):
    """A loss term, the gradient or the output went NaN/inf: training stops instead of going on."""


def finite_or_raise(where: str, values: Mapping[str, Tensor]) -> dict[str, float]:
    """The values as floats; raises naming ``where`` (e.g. "iteration 12") and every bad term."""
    floats = torch.stack([v.detach().float().reshape(()) for v in values.values()]).tolist()
    named = dict(zip(values, floats, strict=True))
    bad = [k for k, v in named.items() if not math.isfinite(v)]
    if bad:
        raise NonFiniteError(f"{where}: non-finite {', '.join(bad)} ({named})")
    return named
