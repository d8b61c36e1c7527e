"""Activation spikes at the norms after the encoder: the droplet artifact, measured and penalized.

A style network with instance norms learns to plant a few huge activations that set a norm's
spread (see :class:`models.transformer.ConditionalAffine2d`); they reach the output as small
rainbow-rimmed "eyes". :func:`spike_share` measures them (the share of a feature map's variance held
by its top 0.5% of pixels: ~0.005 for a smooth map, 0.96 for the ``medium`` network's last decoder
norm at iteration 23,744); :class:`SpikePenalty` adds a training term that grows with activations
beyond ``threshold`` standard units of their norm. On the trained ``medium`` network a weight large
enough to matter (3e5) tripled the style loss within 320 iterations and left the droplets visible
(model card, "The droplets"); the term is off by default.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

from models.training.fixed_norms import PARTS, norms_of
from models.transformer import ConditionalInstanceNorm2d, TransformerNet, stylize

TOP_SHARE = 0.005


def spike_share(x: Tensor) -> Tensor:
    """B×C: the share of each feature map's variance held by its top 0.5% of pixels."""
    energy = (x.float() - x.float().mean((2, 3), keepdim=True)).square().flatten(2)
    k = max(1, round(energy.shape[2] * TOP_SHARE))
    return energy.topk(k, dim=2).values.sum(2) / energy.sum(2).clamp_min(1e-12)


class SpikePenalty:
    """Records the inputs of the norms after the encoder during a forward pass; penalizes outliers.

    The spikes start in the residual blocks (their share of variance grows block by block, 0.24 to
    0.75 at the worst channel) and dominate the decoder, so every norm after the encoder is watched.
    """

    def __init__(self, model: TransformerNet, threshold: float, parts: Sequence[str] = PARTS) -> None:
        self.norms = list(norms_of(model, parts).values())
        self.threshold = threshold
        self._inputs: list[tuple[ConditionalInstanceNorm2d, Tensor]] = []

    @contextmanager
    def recording(self) -> Iterator[None]:
        def hook(module: torch.nn.Module, inputs: tuple[Tensor, ...], _out: Tensor) -> None:
            self._inputs.append((module, inputs[0]))  # type: ignore[arg-type]

        self._inputs = []
        handles = [norm.register_forward_hook(hook) for norm in self.norms]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def value(self) -> Tensor:
        """Mean over the recorded norms of mean((|z| - threshold)₊²), z in the units each norm divides by."""
        if not self._inputs:
            raise RuntimeError("no forward pass was recorded")
        terms = [
            F.relu(norm.normalize(x.float()).abs() - self.threshold).square().mean()
            for norm, x in self._inputs
        ]
        return torch.stack(terms).mean()


@torch.inference_mode()
def droplet_score(model: TransformerNet, x: Tensor, style: Tensor) -> float:
    """Median over channels of :func:`spike_share` of the last decoder norm's normalized input (what
    it scales and shifts), for one photo.

    ~0.005-0.05 without spikes; 0.9+ when a few droplets hold the feature maps' variance. The share
    ignores each map's mean and scale, so for a plain norm this is its input's share; a despiking
    norm (:func:`models.transformer.despike`) is measured after it removed the spikes.
    """
    norm = model.upsample[-1].conv.norm
    seen: list[Tensor] = []
    handle = norm.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
    try:
        stylize(model, x, style)
    finally:
        handle.remove()
    return float(spike_share(norm.normalize(seen[0])).median())
