"""The perceptual objective a fast style network is trained with, and evaluated under.

One definition for both sides: the training loop minimizes :meth:`StyleObjective.terms` over a batch,
and the held-out evaluation runs Gatys (L-BFGS from the photo) on exactly the same terms, so "how
many Gatys steps does the network's output equal" compares like with like.

Everything is in VGG's caffe space (BGR, 0..255, mean-subtracted) with the Gram and feature losses
of :mod:`models.losses`. The content term sits at ``relu2_2`` (Johnson et al.); ``relu1_2`` can be
added because it still sees dark regions: deeper caffe-VGG features of dark pixels are near zero after
the ReLU, so relu2_2 alone barely constrains them (dark areas turned into saturated blobs).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from PIL import Image
from torch import Tensor

from models.imaging import pil_to_tensor, resize_longest
from models.losses import content_loss, gram_matrix, style_loss, total_variation
from models.vgg import VGG19Features, caffe_preprocess, deepest_layer


@dataclass(frozen=True)
class StyleObjective:
    """Loss weights and layers; stored with the weights so evaluation can rebuild it."""

    content_weight: float = 1.0
    style_weight: float = 10.0
    tv_weight: float = 1.0
    content_layers: tuple[str, ...] = ("relu2_2",)
    style_layers: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
    # Equalize the layers: with equal weights relu4_1's Gram error is ~3000x relu1_1's (geometric
    # means over 13 paintings x 8 photos: 265, 1.6e4, 1.4e4, 7.7e5), so the low layers that carry
    # colour and brush strokes would be ignored and training matches relu4_1 alone (blobs).
    # These weights bring each layer's photo-vs-painting error to ~1e4.
    style_layer_weights: tuple[float, ...] = (40.0, 0.6, 0.7, 0.013)
    style_size: int = 256  # the painting's longest side when its Grams are taken

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.content_layers + self.style_layers))

    @property
    def layer_weights(self) -> dict[str, float]:
        return dict(zip(self.style_layers, self.style_layer_weights, strict=True))

    @property
    def deepest(self) -> str:
        return deepest_layer(self.layers)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StyleObjective:
        raw = json.loads(text)
        for key in ("content_layers", "style_layers", "style_layer_weights"):
            raw[key] = tuple(raw[key])
        return cls(**raw)

    def painting_grams(self, vgg: VGG19Features, painting: Image.Image) -> dict[str, Tensor]:
        """1×C×C fp32 Grams of the painting at ``style_size``, computed once."""
        x = caffe_preprocess(pil_to_tensor(resize_longest(painting.convert("RGB"), self.style_size)))
        with torch.inference_mode():
            feats = vgg(x.to(next(vgg.parameters()).device, torch.float32), self.style_layers)
            return {name: gram_matrix(feats[name]).clone() for name in self.style_layers}

    def terms(
        self,
        feats: Mapping[str, Tensor],
        content_targets: Mapping[str, Tensor],
        grams: Mapping[str, Tensor],
        image_caffe: Tensor,
    ) -> dict[str, Tensor]:
        """Weighted content, style and tv terms (fp32 scalars) and their sum, ``total``.

        ``grams`` hold one B×C×C (or 1×C×C) target per layer. Zero-weighted terms are not computed.
        """
        zero = image_caffe.new_zeros((), dtype=torch.float32)
        c = self.content_weight * content_loss(feats, content_targets) if self.content_weight else zero
        s = self.style_weight * style_loss(feats, grams, self.layer_weights) if self.style_weight else zero
        tv = self.tv_weight * total_variation(image_caffe) if self.tv_weight else zero
        return {"content": c, "style": s, "tv": tv, "total": c + s + tv}


def stack_grams(per_style: Sequence[Mapping[str, Tensor]], indices: Sequence[int]) -> dict[str, Tensor]:
    """B×C×C targets for a batch whose element i is painted in style ``indices[i]``."""
    layers = per_style[0].keys()
    return {name: torch.cat([per_style[i][name] for i in indices]) for name in layers}
