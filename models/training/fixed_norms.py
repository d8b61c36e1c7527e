"""The norms after the encoder, and fixed statistics for those that do not measure each photo's.

See :class:`models.transformer.ConditionalAffine2d` for why a norm would divide by fixed statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor

from models.transformer import ConditionalAffine2d, ConditionalInstanceNorm2d, TransformerNet

EPS = 1e-5  # F.instance_norm's
PARTS = ("residual", "decoder")  # the norms after the encoder


def norms_of(model: TransformerNet, parts: Sequence[str] = PARTS) -> dict[str, ConditionalInstanceNorm2d]:
    """The conditional norms of the residual blocks and/or the decoder, by state-dict prefix."""
    found: dict[str, ConditionalInstanceNorm2d] = {}
    if "residual" in parts:
        for i, block in enumerate(model.residuals):
            found[f"residuals.{i}.norm1"] = block.norm1
            found[f"residuals.{i}.norm2"] = block.norm2
    if "decoder" in parts:
        for i, block in enumerate(model.upsample):
            found[f"upsample.{i}.conv.norm"] = block.conv.norm
    return found


def record_stats(
    seen: list[tuple[Tensor, Tensor]], _module: torch.nn.Module, inputs: tuple[Tensor, ...], _out: Tensor
) -> None:
    """Forward hook: the per-image, per-channel mean and (biased) variance of the module's input."""
    x = inputs[0].float()
    seen.append((x.mean((2, 3)), x.var((2, 3), unbiased=False)))


@torch.inference_mode()
def calibrate_fixed_norms(model: TransformerNet, crops: Sequence[Tensor]) -> int:
    """Set every fixed-statistics norm's ``mean``/``spread`` to what instance norm would divide by.

    For a network trained from scratch with fixed statistics, whose buffers start at 0 and 1: measured
    in forward order (each norm sees its predecessors already calibrated), the network starts out as
    its instance-norm twin does on average, without the per-image adaptivity. (It did not make such
    a network paint: calibrated or not, 1,500 iterations from scratch learned palettes, no strokes;
    model card, "The droplets".) Returns how many norms were calibrated.
    """
    weights = torch.full((1, model.config.num_styles), 1.0 / model.config.num_styles)
    calibrated = 0
    for norm in norms_of(model).values():
        if not isinstance(norm, ConditionalAffine2d):
            continue
        seen: list[tuple[Tensor, Tensor]] = []
        handle = norm.register_forward_hook(partial(record_stats, seen))
        try:
            for crop in crops:
                model(crop, weights)
        finally:
            handle.remove()
        norm.mean.copy_(torch.cat([m for m, _ in seen]).mean(0))
        norm.spread.copy_((torch.cat([v for _, v in seen]).mean(0) + EPS).sqrt())
        calibrated += 1
    return calibrated
