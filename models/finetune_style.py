"""Learn a new style for the served multi-style network by fine-tuning only its style code.

Dumoulin, Shlens & Kudlur (2017) show that with conditional instance norm a style *is* its
normalization parameters: the convolutions are shared, so a new painting can be learned by training
only the P numbers of one style code (the norms' scales and shifts and the colour skip, 2,444 for
the shipped network) with every convolution frozen. This module is that loop, pure torch:

* the code starts from the mean of the trained styles' codes, or from the code of the trained
  style whose painting is nearest in Gram space (:func:`initial_code`);
* each step stylizes a batch of random crops of training photos with the code, and minimizes the
  network's own objective (:class:`models.style_objective.StyleObjective`, stored in the weights'
  metadata) against the new painting's Grams; only the code receives gradients;
* the style weight is balanced for the painting (:func:`balanced_objective`): a painting whose
  statistics sit far from photos' (small high-contrast tiles) would otherwise let the style term
  swamp the content term, and the photo disappears under the painting's texture;
* bf16 autocast and a bf16 loss network where bf16 is native (:mod:`models.precision`);
* every step checks the loss terms, the code's gradient and the output are finite and stops with
  the step and the offending term otherwise (:mod:`models.numerics`, as the training script does);
* the batch of step *t* is a pure function of (seed, t), so a run is reproducible.

The result is a 1×P code that :meth:`TransformerNet.forward_code` (or the served ONNX graph's
``style_code`` input) runs exactly like a built-in style. :func:`network_with_code` wraps it as a
one-style network for :mod:`models.training.eval_style`.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from models.imaging import pil_to_tensor, resize_longest
from models.numerics import finite_or_raise
from models.photos import random_crop
from models.precision import use_bf16
from models.style_objective import StyleObjective
from models.styles import LoadedNetwork, styles_dir
from models.transformer import DOWNSAMPLE, TransformerNet, stylize
from models.vgg import VGG19Features, caffe_preprocess

INITS = ("mean", "nearest")
BALANCES = ("trained", "fixed")
BALANCE_PHOTOS = 8  # photos whose unstylized style loss measures a painting's distance from photos
MIN_STYLE_SCALE = 0.1  # the balance never weakens the style term by more than this
MIN_CROP = 32  # relu4_1 sits behind three poolings; smaller crops leave it a few pixels wide
AVERAGED_STEPS = 20  # the reported final losses are the mean of this many last steps


@dataclass(frozen=True)
class FinetuneConfig:
    """The fine-tuning recipe (the worker fills it from settings and the request)."""

    iterations: int = 300
    batch_size: int = 4
    crop: int = 128  # side of the square random crops, a multiple of 4
    lr: float = 0.01
    lr_final: float = 0.001
    decay_from: float = 0.75  # fraction of the run after which lr decays linearly to lr_final
    seed: int = 0
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.batch_size < 1:
            raise ValueError("iterations must be >= 0 and batch_size >= 1")
        if self.crop < MIN_CROP or self.crop % DOWNSAMPLE:
            raise ValueError(f"crop must be >= {MIN_CROP} and a multiple of {DOWNSAMPLE}, got {self.crop}")
        if not (self.lr > 0 and self.lr_final > 0 and 0 <= self.decay_from <= 1):
            raise ValueError("learning rates must be positive and decay_from within [0, 1]")

    def lr_at(self, step: int) -> float:
        start = self.decay_from * self.iterations
        if step <= start:
            return self.lr
        frac = min(1.0, (step - start) / max(1.0, self.iterations - start))
        return self.lr + frac * (self.lr_final - self.lr)


@dataclass(frozen=True)
class StepReport:
    """What the caller sees after each step (the worker writes it to the job's progress)."""

    step: int
    total: int
    losses: dict[str, float]
    code: Tensor | None = None  # the code after this step (a live view: clone it to keep it)


@dataclass
class FinetuneResult:
    code: Tensor  # 1×P float32, on the CPU
    iterations: int
    losses: dict[str, float]  # mean of the last AVERAGED_STEPS steps (empty for 0 iterations)
    seconds: float
    bf16: bool
    history: list[dict[str, float]] = field(default_factory=list)


def mean_code(model: TransformerNet) -> Tensor:
    """1×P: the average of every trained style's code (a neutral start, away from any one style)."""
    with torch.no_grad():
        return model.style_table().detach().float().mean(0, keepdim=True).cpu()


def gram_distance(objective: StyleObjective, a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    """The objective's weighted style loss between two paintings' Grams."""
    weights = objective.layer_weights
    with torch.no_grad():
        return float(sum(weights[k] * torch.mean((a[k].float() - b[k].float()) ** 2) for k in weights))


def initial_code(
    model: TransformerNet,
    how: str = "mean",
    *,
    objective: StyleObjective | None = None,
    grams: Mapping[str, Tensor] | None = None,
    trained_grams: Mapping[int, Mapping[str, Tensor]] | None = None,
) -> tuple[Tensor, str]:
    """The starting code and a note on where it came from.

    ``nearest`` needs the new painting's ``grams`` and the Grams of (some of) the trained styles'
    paintings by row (``trained_grams``); with none available it falls back to the mean.
    """
    if how not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {how!r}")
    if how == "nearest" and objective is not None and grams and trained_grams:
        row = min(trained_grams, key=lambda r: gram_distance(objective, grams, trained_grams[r]))
        with torch.no_grad():
            return model.style_table()[row : row + 1].detach().float().cpu(), f"row {row}"
    return mean_code(model), "mean"


def photo_grams(
    objective: StyleObjective, vgg: VGG19Features, photos: Sequence[Path | Image.Image]
) -> list[dict[str, Tensor]]:
    """Grams of up to :data:`BALANCE_PHOTOS` photos spread evenly over ``photos``, taken as a
    painting's are (longest side ``objective.style_size``)."""
    picked = list(photos)[:: max(1, len(photos) // BALANCE_PHOTOS)][:BALANCE_PHOTOS]
    return [objective.painting_grams(vgg, _open_photo(p)) for p in picked]


def photo_style_loss(
    objective: StyleObjective, grams: Mapping[str, Tensor], photos_grams: Sequence[Mapping[str, Tensor]]
) -> float:
    """The median style term of unstylized photos against the painting whose ``grams`` are given.

    This is where the style term starts before any styling: a painting far from photos' statistics
    starts (and stays) large against the content term.
    """
    if not photos_grams:
        raise ValueError("no photos to measure the painting against")
    weight = objective.style_weight
    return statistics.median(weight * gram_distance(objective, grams, g) for g in photos_grams)


def balanced_objective(
    objective: StyleObjective, painting_loss: float, reference_loss: float
) -> tuple[StyleObjective, float]:
    """The objective with its style weight scaled so the painting sits at the trained balance.

    ``painting_loss`` is the new painting's :func:`photo_style_loss`, ``reference_loss`` the median
    of the trained paintings' on the same photos. The network's convolutions learned to keep the
    photo at that balance; a painting far above it (``mosaic``: ~7x) fine-tuned at the fixed weight
    covers the photo with its texture. The scale only ever lowers the weight, and by at most
    1/:data:`MIN_STYLE_SCALE`: a painting closer to photos than the trained ones keeps the weight
    they were trained at. Returns the objective and the scale.
    """
    if not (painting_loss > 0 and reference_loss > 0):
        raise ValueError(f"losses must be positive, got {painting_loss} and {reference_loss}")
    scale = min(1.0, max(MIN_STYLE_SCALE, reference_loss / painting_loss))
    return replace(objective, style_weight=objective.style_weight * scale), scale


def reference_style_loss(
    objective: StyleObjective,
    trained_grams: Mapping[int, Mapping[str, Tensor]],
    photos_grams: Sequence[Mapping[str, Tensor]],
) -> float:
    """The median over the trained paintings of their :func:`photo_style_loss`: the trained balance."""
    if not trained_grams:
        raise ValueError("no trained paintings to take the balance from")
    return statistics.median(photo_style_loss(objective, g, photos_grams) for g in trained_grams.values())


def balance_for(
    objective: StyleObjective,
    vgg: VGG19Features,
    grams: Mapping[str, Tensor],
    photos: Sequence[Path | Image.Image],
    trained_grams: Mapping[int, Mapping[str, Tensor]],
) -> tuple[StyleObjective, float]:
    """:func:`balanced_objective` for a painting, measured on ``photos`` against ``trained_grams``.

    With no trained paintings to compare with (a network shipped without thumbnails) the objective
    is returned unchanged, scale 1.
    """
    if not trained_grams:
        return objective, 1.0
    measured = photo_grams(objective, vgg, photos)
    return balanced_objective(
        objective,
        photo_style_loss(objective, grams, measured),
        reference_style_loss(objective, trained_grams, measured),
    )


def trained_painting_grams(
    network: LoadedNetwork, weights_dir: Path, objective: StyleObjective, vgg: VGG19Features
) -> dict[int, dict[str, Tensor]]:
    """Grams of the trained styles' paintings by row, from the shipped thumbnails (256 px)."""
    out = {}
    for entry in network.manifest.styles:
        path = styles_dir(weights_dir) / entry.thumbnail if entry.thumbnail else None
        if path is not None and path.is_file():
            out[network.rows[entry.name]] = objective.painting_grams(vgg, Image.open(path))
    return out


def _open_photo(photo: Path | Image.Image) -> Image.Image:
    return photo.convert("RGB") if isinstance(photo, Image.Image) else Image.open(photo).convert("RGB")


def batch_at(photos: Sequence[Path | Image.Image], cfg: FinetuneConfig, step: int) -> Tensor:
    """B×3×crop×crop in [0, 1]: a pure function of (seed, step), photos opened lazily."""
    rng = random.Random(cfg.seed * 1_000_003 + step)
    crops = [
        random_crop(_open_photo(photos[rng.randrange(len(photos))]), cfg.crop, rng)
        for _ in range(cfg.batch_size)
    ]
    return torch.cat([pil_to_tensor(c) for c in crops])


def finetune_code(
    model: TransformerNet,
    objective: StyleObjective,
    vgg: VGG19Features,
    grams: Mapping[str, Tensor],
    photos: Sequence[Path | Image.Image],
    cfg: FinetuneConfig,
    *,
    init: Tensor,
    device: torch.device | str = "cpu",
    on_step: Callable[[StepReport], None] | None = None,
) -> FinetuneResult:
    """Fine-tune one style code for the painting whose ``grams`` are given; the network stays frozen.

    ``vgg`` is the fp32 loss network (deep enough for the objective); a bf16 channels_last copy is
    made where bf16 is native. ``on_step`` runs after every step and may raise to stop the run
    (the worker's cancellation). Raises :class:`models.numerics.NonFiniteError` naming the step and the term.
    """
    if not photos:
        raise ValueError("no training photos")
    device = torch.device(device)
    bf16 = use_bf16(device, cfg.precision)
    loss_vgg = vgg.converted(
        device=device,
        dtype=torch.bfloat16 if bf16 else torch.float32,
        channels_last=True,
        last_layer=objective.deepest,
    )
    vgg_dtype = next(loss_vgg.parameters()).dtype
    targets_grams = {k: v.to(device, torch.float32) for k, v in grams.items()}
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    model.to(device).eval()
    code = torch.nn.Parameter(init.detach().to(device, torch.float32).reshape(1, model.code_size).clone())
    optimizer = torch.optim.Adam([code], lr=cfg.lr)

    def features(img: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
        return loss_vgg(img.to(dtype=vgg_dtype, memory_format=torch.channels_last), layers)

    history: list[dict[str, float]] = []
    started = time.monotonic()
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        for step in range(1, cfg.iterations + 1):
            x = batch_at(photos, cfg, step).to(device)
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr_at(step)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                y = model.forward_code(x, code)
            y = y.float()
            with torch.no_grad():
                targets = {
                    k: v.float() for k, v in features(caffe_preprocess(x), objective.content_layers).items()
                }
            y_caffe = caffe_preprocess(y)
            terms = objective.terms(features(y_caffe, objective.layers), targets, targets_grams, y_caffe)
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            assert code.grad is not None
            row = finite_or_raise(
                f"step {step}",
                {**terms, "grad_norm": code.grad.norm(), "output": y.detach().abs().amax()},
            )
            optimizer.step()
            history.append(row)
            if on_step is not None:
                on_step(StepReport(step, cfg.iterations, {k: row[k] for k in terms}, code.detach()))
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
    recent = history[-AVERAGED_STEPS:]
    losses = (
        {k: sum(r[k] for r in recent) / len(recent) for k in ("content", "style", "tv", "total")}
        if recent
        else {}
    )
    return FinetuneResult(
        code=code.detach().float().cpu(),
        iterations=cfg.iterations,
        losses=losses,
        seconds=round(time.monotonic() - started, 2),
        bf16=bf16,
        history=history,
    )


def objective_terms(
    model: TransformerNet,
    objective: StyleObjective,
    vgg: VGG19Features,
    grams: Mapping[str, Tensor],
    photo: Image.Image,
    code: Tensor,
    size: int = 256,
) -> dict[str, float]:
    """The objective's terms for one photo stylized with ``code`` (fp32; for reports and tests)."""
    x = pil_to_tensor(resize_longest(photo.convert("RGB"), size))
    net = network_with_code(model, code)
    with torch.inference_mode():
        out = stylize(net, x)
        targets = vgg(caffe_preprocess(x), objective.content_layers)
        y = caffe_preprocess(out)
        feats = vgg(y, objective.layers)
        terms = objective.terms(feats, targets, grams, y)
    return {k: float(v) for k, v in terms.items()}


def network_with_code(model: TransformerNet, code: Tensor) -> TransformerNet:
    """A one-style copy of ``model`` whose only style is ``code`` (shared convolutions copied).

    ``net(x)`` then equals ``model.forward_code(x, code)``, so code that takes style indices
    (:func:`models.training.eval_style.evaluate`, :func:`models.transformer.stylize`) runs a learned code.
    """
    code = code.detach().reshape(-1).float().cpu()
    if code.numel() != model.code_size:
        raise ValueError(f"a code for this network has {model.code_size} numbers, got {code.numel()}")
    single = TransformerNet(replace(model.config, num_styles=1))
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    names = {id(m): n for n, m in model.named_modules()}
    for module in model.coded:
        prefix = names[id(module)]
        width = module.weight[0].numel()
        weight = code[module.offset : module.offset + width]
        bias = code[module.offset + width : module.offset + module.code_width]
        state[f"{prefix}.weight"] = weight.reshape(1, *module.weight.shape[1:]).clone()
        state[f"{prefix}.bias"] = bias.reshape(1, -1).clone()
    single.load_state_dict(state)
    return single.eval().requires_grad_(False)
