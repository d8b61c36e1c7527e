"""models.precision: bf16 only where it runs, and a clear error where it cannot."""

from __future__ import annotations

import pytest
import torch

from models.precision import bf16_native, bf16_runnable, use_bf16

CPU = torch.device("cpu")


def test_fp32_is_always_fp32_and_unknown_names_are_refused() -> None:
    assert use_bf16(CPU, "fp32") is False
    with pytest.raises(ValueError, match="precision must be one of"):
        use_bf16(CPU, "fp16")


def test_auto_uses_bf16_only_where_native() -> None:
    assert use_bf16(CPU, "auto") is bf16_native(CPU)
    if bf16_native(CPU):
        assert bf16_runnable(CPU)  # native implies runnable


def test_explicit_bf16_runs_or_fails_clearly_on_this_cpu() -> None:
    conv = torch.nn.Conv2d(3, 4, 3)
    if bf16_runnable(CPU):
        assert use_bf16(CPU, "bf16") is True
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert conv(torch.rand(1, 3, 8, 8)).dtype == torch.bfloat16
    else:
        with pytest.raises(ValueError, match="cannot run bf16 convolutions"):
            use_bf16(CPU, "bf16")
