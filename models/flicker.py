"""Temporal flicker of a stylized video: how much it is measured, and how it is damped.

A feed-forward style network sees each frame alone, so pixels that did not change in the input
(a wall, the sky) can still come out different from one frame to the next: compression noise of a
level or two is amplified into visible brush-stroke changes. We measure flicker as the mean absolute
difference between consecutive frames (0..1 per channel) and compare the output's with the input's.

To damp it, :class:`TemporalBlend` carries the previous stylized frame forward where the input did
not change (per pixel) and lets the new frame through where it did: static regions stop boiling,
moving ones are not smeared. All tensors are N×3×H×W in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# An input change (mean over RGB, after a 5×5 box blur) at or above this is motion: no blending.
# Compression noise of H.264 at usual quality is ~0.5-1.5 levels (0.002-0.006); edges of moving
# objects change by tens of levels.
MOTION_THRESHOLD = 0.04
BLUR_KERNEL = 5


def frame_difference(a: Tensor, b: Tensor) -> float:
    """Mean absolute difference of two same-sized frames (1×3×H×W), in [0, 1]."""
    return float((a - b).abs().mean())


@dataclass
class FlickerMeter:
    """Running mean of consecutive-frame differences of one frame sequence."""

    total: float = 0.0
    pairs: int = 0
    _previous: Tensor | None = None

    def add(self, frame: Tensor) -> None:
        if self._previous is not None:
            self.total += frame_difference(frame, self._previous)
            self.pairs += 1
        self._previous = frame

    @property
    def mean(self) -> float:
        return self.total / self.pairs if self.pairs else 0.0


def change_map(current: Tensor, previous: Tensor) -> Tensor:
    """Per-pixel input change (N×1×H×W), blurred so single noisy pixels do not count as motion."""
    change = (current - previous).abs().mean(dim=1, keepdim=True)
    return F.avg_pool2d(change, BLUR_KERNEL, stride=1, padding=BLUR_KERNEL // 2, count_include_pad=False)


class TemporalBlend:
    """``out_t = k·out_{t-1} + (1-k)·stylized_t`` with ``k = strength · (1 - change/threshold)⁺``.

    ``strength`` 0 turns it off; below 1 a static region still follows the network with a time
    constant of about ``1/(1-strength)`` frames, so nothing stays frozen. Frames must come in order.
    """

    def __init__(self, strength: float, threshold: float = MOTION_THRESHOLD) -> None:
        if not 0.0 <= strength < 1.0:
            raise ValueError(f"strength must be in [0, 1), got {strength}")
        self.strength = strength
        self.threshold = threshold
        self._input: Tensor | None = None
        self._output: Tensor | None = None

    def __call__(self, source: Tensor, stylized: Tensor) -> Tensor:
        """``source``: the input frame as the network saw it; ``stylized``: the network's output."""
        out = stylized
        if self.strength > 0 and self._input is not None and self._output is not None:
            keep = (1.0 - change_map(source, self._input) / self.threshold).clamp_(0.0, 1.0) * self.strength
            out = torch.lerp(stylized, self._output, keep)
        self._input, self._output = source, out
        return out
