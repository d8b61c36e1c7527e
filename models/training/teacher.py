"""Soft targets from a trained classifier, for distilling it into a cheaper one.

The served ensemble (three nets) is ~0.7 point more accurate than one net but costs three times the
model work per request. Distillation (Hinton, Vinyals & Dean 2015) trains one net to match the
ensemble's output distribution as well as the labels, so some of that accuracy comes back at one
net's cost.

By default (view "clean") the teacher's logits are computed once per training image, with mirror TTA
(what the service answers with), and cached next to the CIFAR cache: keyed by the teacher file's
sha256 and the images, so a ``--resume`` reuses them and another teacher never does. They are used for
every augmented view of the image (flip, translation, cutout, photo round trip). On its own training
images such a teacher mostly repeats the labels (the served ensemble agrees with 99.2% of them), so
view "same" runs the teacher on the student's own augmented batch every step instead, where its
answers on cut-out or degraded images may carry more than the label does.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from models import cifar
from models.classifier import load_classifier, predict_logits
from models.styles import sha256_file

VIEWS = ("clean", "same")
"""Which view the teacher judges: each clean image (logits cached once) or the student's own augmented
batch, every step (a "consistent" teacher, Beyer et al. 2022: about twice the step cost)."""


def load_teacher(weights: Path, device: torch.device | str = "cpu") -> nn.Module:
    """The classifier in eval mode, frozen, channels_last: how both views run it."""
    model, _ = load_classifier(weights, device)
    return model.to(memory_format=torch.channels_last)


def images_digest(images: Tensor) -> str:
    """sha256 of the uint8 images (N×3×32×32): which images a cached set of logits belongs to."""
    return hashlib.sha256(images.contiguous().cpu().numpy().tobytes()).hexdigest()


@torch.inference_mode()
def compute_logits(model: nn.Module, images: Tensor, amp: bool, batch: int = 500) -> Tensor:
    """The teacher's mirror-TTA logits (fp32, N×10) for uint8 ``images``; bf16 autocast if ``amp``."""
    parts = []
    for i in range(0, len(images), batch):
        x = cifar.normalize(images[i : i + batch]).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            parts.append(predict_logits(model, x, tta=1).float())
    logits = torch.cat(parts)
    if not bool(torch.isfinite(logits).all()):
        raise ValueError(f"non-finite teacher logits (bf16 autocast {amp})")
    return logits


def teacher_logits(weights: Path, images: Tensor, cache_dir: Path | None, amp: bool) -> tuple[Tensor, str]:
    """(logits N×10, the teacher's sha256), from the cache when this teacher already saw these images."""
    sha = sha256_file(weights)
    digest = images_digest(images)
    cached = cache_dir / f"teacher-{sha[:16]}-{digest[:16]}.safetensors" if cache_dir else None
    if cached is not None and cached.exists():
        return load_file(str(cached))["logits"], sha
    try:
        logits = compute_logits(load_teacher(weights), images, amp)
    except ValueError as exc:
        raise ValueError(f"{weights}: {exc}") from exc
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        save_file(
            {"logits": logits.contiguous()}, str(tmp), metadata={"teacher_sha256": sha, "images": digest}
        )
        tmp.replace(cached)
    return logits, sha


def distillation_loss(
    logits: Tensor, labels: Tensor, teacher: Tensor, weight: float, temperature: float, label_smoothing: float
) -> Tensor:
    """Summed over the batch: (1 - w)·CE(labels, smoothed) + w·T²·CE(softmax(teacher/T), student/T).

    The soft term is the KL divergence to the teacher up to a constant (the teacher's entropy), so its
    gradient is KL's; the T² keeps its gradient on the labels' scale for any T (Hinton et al.).
    """
    hard = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=label_smoothing, reduction="sum")
    if weight == 0:
        return hard
    soft_targets = torch.softmax(teacher / temperature, dim=1)
    soft = torch.nn.functional.cross_entropy(logits / temperature, soft_targets, reduction="sum")
    return (1 - weight) * hard + weight * temperature**2 * soft
