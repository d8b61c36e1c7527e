"""Train the CIFAR-10 classifier; write classifier.safetensors, metrics.json and calibration.json.

    python -m models.training.train_classifier --preset airbench94 --holdout 0 --seed 0 --out runs/ab94-s0
    python -m models.training.train_classifier --preset long --seed 0 --threads 2 --out runs/long-s0 \\
        --portable-checkpoint models/checkpoints/classifier-long.safetensors [--resume]
    python -m models.training.train_classifier --preset long --out runs/kd --distill-weight 0.8 \\
        --teacher models/weights/classifier/classifier.safetensors  # distil it (models.training.teacher)

The recipe is airbench (Keller Jordan, arXiv:2404.00498), the best known accuracy per unit of
compute on CIFAR-10: frozen patch-whitening stem, BN without scale, GELU, label smoothing 0.2,
Nesterov SGD with warmup then linear decay, a lookahead EMA of the weights with a cubic schedule,
alternating flips + reflect translations, flip+translate TTA. ``airbench94`` follows the published
airbench94.py (94.01% in n=1000 on a GPU, original CIFAR-10): 48 full batches per epoch, lookahead
from epoch 3 with the weights reset to the EMA at every epoch end. ``airbench96`` follows
airbench96.py (its 06/2024 version: 3 convs per group with a residual, cutout 12, translate 4,
lookahead from step 0, decay to 0). ``long`` is airbench96 at airbench95's widths, sized for hours
on a CPU.

Robustness for long CPU runs:
* bf16 autocast (fp32 master weights) where :func:`models.precision.use_bf16` says so;
* every step checks the loss and gradients are finite, and every ``--check-every`` steps the bf16
  forward is compared with the fp32 one: a bad kernel stops the run loudly (exit 2), it does not
  quietly train garbage or overwrite the last good checkpoint;
* a checkpoint (``--checkpoint``) after every epoch, and on SIGTERM/SIGINT, written atomically;
  ``--resume`` continues bit-exactly: weights, momentum, lookahead state, schedule position, RNG.
  It is taken at a step where the lookahead EMA equals the weights (each epoch end for
  ``airbench94``; up to 4 steps later otherwise), so it holds one copy of the weights, not two.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor, nn

from models import calibration, cifar
from models.classifier import CifarNet, init_whitening, load_classifier, save_classifier
from models.precision import PRECISIONS, use_bf16
from models.styles import sha256_file
from models.training import photo_resample, teacher

CHECKPOINT_FORMAT = "atelier-cifar-train-checkpoint/1"
DEFAULT_HOLDOUT = 2500
BF16_MAX_RELATIVE_ERROR = 0.1  # bf16 vs fp32 logits measured ~0.01; garbage is far above 0.1
EXIT_NON_FINITE = 2
EXIT_INTERRUPTED = 3


@dataclass
class Recipe:
    """Every hyperparameter of one run (recorded verbatim in metrics.json and each checkpoint)."""

    width: tuple[int, int, int]
    epochs: float
    lr: float
    batch_size: int
    momentum: float = 0.85
    weight_decay: float = 0.0153
    bias_scaler: float = 64.0
    label_smoothing: float = 0.2
    whiten_bias_epochs: int = 3
    translate: int = 2
    cutout: int = 0
    depth: tuple[int, int, int] = (2, 2, 2)
    bn_momentum: float = 0.6  # airbench's convention: weight of the old running statistic
    lookahead_every: int = 5
    lookahead_start_epoch: int = 3  # 0: EMA from the first step (airbench96)
    lookahead_epoch_reset: bool = True  # weights := EMA at every epoch end (airbench94)
    warmup: float = 0.23  # fraction of steps for the 0.2 -> 1 lr warmup
    final_lr: float = 0.07  # lr factor at the last step
    drop_last: bool = True
    photo_resample: float = 0.0  # share of each epoch's images swapped for their photo round trip
    distill_weight: float = 0.0  # share of the loss that matches a teacher's soft targets (0 = labels only)
    distill_temperature: float = 1.0
    distill_view: str = "clean"  # the teacher judges: "clean" images (cached) or the "same" augmented view


AIRBENCH96 = {
    "epochs": 31.0,
    "lr": 9.0,
    "batch_size": 1024,
    "weight_decay": 0.012,
    "translate": 4,
    "cutout": 12,
    "depth": (3, 3, 3),
    "bn_momentum": 0.9,  # PyTorch's default BN momentum (0.1) in airbench's convention
    "lookahead_start_epoch": 0,
    "lookahead_epoch_reset": False,
    "warmup": 0.1,
    "final_lr": 0.0,
}
PRESETS: dict[str, dict[str, Any]] = {
    # Published airbench settings (lr and wd are per 1024 examples, decoupled from batch size).
    "airbench94": {"width": (64, 256, 256), "epochs": 9.9, "lr": 11.5, "batch_size": 1024},
    "airbench95": {"width": (128, 384, 384), "epochs": 15.0, "lr": 10.0, "batch_size": 1024},
    "airbench96": {**AIRBENCH96, "width": (128, 512, 512)},
    # airbench96's recipe at airbench95's widths: about 6 CPU-hours (see the model card).
    "long": {**AIRBENCH96, "width": (128, 384, 384), "epochs": 24.0},
    # The same recipe narrowed and shortened to a few CPU-minutes (smoke runs).
    "cpu": {"width": (32, 128, 128), "epochs": 3.0, "lr": 11.5, "batch_size": 512},
}


class TrainingError(RuntimeError):
    """The numbers went bad (non-finite loss/gradients, or bf16 disagreeing with fp32): stop the run."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data",
        default=None,
        help="CIFAR-10 dir (default: $ATELIER_DATA_DIR/cifar10 or ../shared/data/cifar10)",
    )
    p.add_argument("--out", type=Path, required=True, help="output dir for weights, metrics, calibration")
    p.add_argument("--preset", choices=sorted(PRESETS), default="airbench94")
    p.add_argument("--epochs", type=float, help="override the preset's epochs (fractions allowed)")
    p.add_argument("--width", help="override the preset's block widths, e.g. 128,384,384")
    p.add_argument("--depth", help="override the convs per group (2 or 3 each), e.g. 2,3,3")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="learning rate per 1024 examples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--photo-resample",
        type=float,
        help="share of each epoch's images replaced by their photo round trip (upscale, JPEG, served "
        "downscale) for robustness to big uploads; 0 = off",
    )
    p.add_argument(
        "--teacher",
        type=Path,
        help="a trained classifier (e.g. the served ensemble) to distil: its logits (see --distill-view) "
        "become soft targets, weighted by --distill-weight",
    )
    p.add_argument("--distill-weight", type=float, help="share of the loss on the teacher's targets (0-1)")
    p.add_argument("--distill-temperature", type=float, help="softmax temperature of the soft targets")
    p.add_argument(
        "--distill-view",
        choices=teacher.VIEWS,
        help="clean: the teacher's logits of each clean image, computed once; same: the teacher runs on the "
        "student's own augmented batch every step (a consistent teacher, ~2x the step cost)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads on CPU (0 = torch's default); under load 1 often beats 2",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: bf16 autocast where native (CUDA, AVX512-BF16/AMX CPUs), else fp32",
    )
    p.add_argument(
        "--holdout",
        type=int,
        default=DEFAULT_HOLDOUT,
        help="training images held out (last N/10 of each class) to fit the temperature; 0 = train on all",
    )
    p.add_argument("--checkpoint", type=Path, help="resumable state (default: OUT/checkpoint.safetensors)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from --checkpoint exactly (or from --portable-checkpoint if that one is newer)",
    )
    p.add_argument(
        "--checkpoint-minutes",
        type=float,
        default=15.0,
        help="also checkpoint mid-epoch once this many minutes passed since the last one (0 = epochs only)",
    )
    p.add_argument(
        "--portable-checkpoint",
        type=Path,
        help="also write a compact copy (fp16 weights, no momentum) at every checkpoint, to commit",
    )
    p.add_argument(
        "--allow-inexact-resume",
        action="store_true",
        help="resume even with another --threads/--precision than the checkpoint's (not bit-exact)",
    )
    p.add_argument(
        "--stop-after-steps",
        type=int,
        help="checkpoint and stop at the first resumable step from this one on (partial runs, tests)",
    )
    p.add_argument(
        "--check-every",
        type=int,
        default=50,
        help="compare the bf16 forward with fp32 every N steps (and at step 1); 0 = never",
    )
    p.add_argument(
        "--fp32-weights", action="store_true", help="store fp32 weights even if fp16 holds accuracy"
    )
    p.add_argument("--cache-dir", type=Path, default=cifar.DEFAULT_CACHE_DIR)
    return p.parse_args(argv)


def build_recipe(args: argparse.Namespace) -> Recipe:
    preset = dict(PRESETS[args.preset])
    if args.width:
        preset["width"] = tuple(int(w) for w in args.width.split(","))
    if args.depth:
        preset["depth"] = tuple(int(d) for d in args.depth.split(","))
    distill = ("distill_weight", "distill_temperature", "distill_view")
    for key in ("epochs", "batch_size", "lr", "photo_resample", *distill):
        if getattr(args, key) is not None:
            preset[key] = getattr(args, key)
    return Recipe(**preset)


def lr_factor(step: int, total: int, warmup: float = 0.23, final: float = 0.07) -> float:
    """Warm up 0.2 -> 1 over the first ``warmup`` of the steps, then decay linearly to ``final``."""
    warmup_steps = max(1, int(total * warmup))
    if step < warmup_steps:
        frac = step / warmup_steps
        return 0.2 * (1 - frac) + frac
    frac = (step - warmup_steps) / max(1, total - warmup_steps)
    return (1 - frac) + final * frac


def make_optimizer(model: CifarNet, recipe: Recipe) -> torch.optim.SGD:
    """Nesterov SGD; lr/wd are rescaled so the loss can be a sum over the batch (batch-size free)."""
    kilostep_scale = 1024 * (1 + 1 / (1 - recipe.momentum))
    lr = recipe.lr / kilostep_scale
    wd = recipe.weight_decay * recipe.batch_size / kilostep_scale
    lr_biases = lr * recipe.bias_scaler
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad or n == "whiten.bias"]
    norm_biases = [p for n, p in named if "norm" in n]
    others = [p for n, p in named if "norm" not in n]
    groups = [
        {"params": norm_biases, "lr": lr_biases, "weight_decay": wd / lr_biases},
        {"params": others, "lr": lr, "weight_decay": wd / lr},
    ]
    for g in groups:
        g["initial_lr"] = g["lr"]
    return torch.optim.SGD(groups, momentum=recipe.momentum, nesterov=True)


class Lookahead:
    """EMA of all float weights that is copied back into the net (airbench's 'lookahead' variant).

    Right after an update the net's float state equals the EMA exactly, which is when checkpoints
    are taken: the EMA then needs no storage of its own.
    """

    def __init__(self, model: nn.Module) -> None:
        self.ema = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        for key, param in model.state_dict().items():
            if param.is_floating_point():
                self.ema[key].lerp_(param, 1 - decay)
                param.copy_(self.ema[key])

    def matches(self, model: nn.Module) -> bool:
        return all(
            torch.equal(self.ema[k], v) for k, v in model.state_dict().items() if v.is_floating_point()
        )


def steps_per_epoch(n: int, recipe: Recipe) -> int:
    steps = n // recipe.batch_size if recipe.drop_last else math.ceil(n / recipe.batch_size)
    if steps < 1:
        raise ValueError(f"{n} training images make no full batch of {recipe.batch_size}")
    return steps


@dataclass
class EpochStats:
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0


@dataclass
class StepInfo:
    """What a training step reports to ``on_step`` (tests compare these across stop/resume)."""

    step: int
    epoch: int
    loss: float
    lr_factor: float


class Training:
    """One training run's full mutable state, and the loop that advances it.

    Everything that influences the next step lives here and goes into the checkpoint: weights (incl.
    BN statistics), momentum buffers, whether the lookahead EMA exists, the step, the epoch and how far
    into it, the data generator's state *at the start of the epoch* (the epoch's augmentation and
    order are recomputed from it on resume, then the batches already done are skipped), and the fixed
    flip mask. Nothing else draws random numbers.
    """

    def __init__(
        self,
        recipe: Recipe,
        train_x: Tensor,
        train_y: Tensor,
        device: torch.device,
        amp: bool,
        seed: int,
        check_every: int = 50,
        resampled_x: Tensor | None = None,
        teacher_logits: Tensor | None = None,
        teacher_model: nn.Module | None = None,
    ) -> None:
        if recipe.photo_resample and resampled_x is None:
            raise ValueError("recipe.photo_resample needs the resampled copy of the training images")
        if not 0 <= recipe.distill_weight <= 1 or recipe.distill_temperature <= 0:
            raise ValueError("distill_weight must be in [0, 1] and distill_temperature positive")
        if recipe.distill_view not in teacher.VIEWS:
            raise ValueError(f"distill_view must be one of {teacher.VIEWS}, got {recipe.distill_view!r}")
        same_view = recipe.distill_view == "same"
        if recipe.distill_weight and same_view and teacher_model is None:
            raise ValueError("recipe.distill_view 'same' needs the teacher model")
        logits_cover_all = teacher_logits is not None and len(teacher_logits) == len(train_y)
        if recipe.distill_weight and not same_view and not logits_cover_all:
            raise ValueError("recipe.distill_weight needs the teacher's logits for every training image")
        self.teacher_logits = teacher_logits if recipe.distill_weight and not same_view else None
        self.teacher_model = teacher_model if recipe.distill_weight and same_view else None
        self.recipe, self.train_x, self.train_y = recipe, train_x, train_y
        self.resampled_x = resampled_x if recipe.photo_resample else None
        self.device, self.amp, self.seed, self.check_every = device, amp, seed, check_every
        self.steps_per_epoch = steps_per_epoch(len(train_y), recipe)
        self.total_steps = math.ceil(self.steps_per_epoch * recipe.epochs)
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        torch.manual_seed(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.model = CifarNet(recipe.width, depths=recipe.depth, bn_momentum=recipe.bn_momentum)
        self.model = self.model.to(device).to(memory_format=torch.channels_last)
        init_whitening(self.model.whiten, cifar.normalize(train_x[:5000]))
        self.optimizer = make_optimizer(self.model, recipe)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing, reduction="sum")
        every = recipe.lookahead_every
        self.decay_at = 0.95**every * (torch.arange(self.total_steps + 1) / self.total_steps) ** 3
        self.lookahead = Lookahead(self.model) if recipe.lookahead_start_epoch == 0 else None
        self.flips = cifar.flip_mask(len(train_y), self.gen)
        self.step = 0
        self.epoch = 0
        self.epoch_step = 0  # batches of self.epoch already done
        self.epoch_gen_state = self.gen.get_state()
        self.epoch_stats = EpochStats()
        self.train_seconds = 0.0
        self.history: list[dict[str, Any]] = []

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps

    # --- one step --------------------------------------------------------------------------------

    def train_step(self, idx: Tensor, x_epoch: Tensor) -> StepInfo:
        """Forward (bf16 autocast if on), sum loss, backward, checks, scheduled-lr Nesterov step."""
        x = cifar.normalize(x_epoch[idx]).contiguous(memory_format=torch.channels_last)
        y = self.train_y[idx]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = self.model(x)
        targets = self._teacher_targets(idx, x)
        if targets is None:
            loss = self.loss_fn(logits.float(), y)
        else:
            r = self.recipe
            loss = teacher.distillation_loss(
                logits.float(), y, targets, r.distill_weight, r.distill_temperature, r.label_smoothing
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loss_value = self._check_finite(loss)
        factor = lr_factor(self.step, self.total_steps, self.recipe.warmup, self.recipe.final_lr)
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * factor
        self.optimizer.step()
        self.step += 1
        self.epoch_step += 1
        self.epoch_stats.loss_sum += loss_value
        self.epoch_stats.correct += int((logits.argmax(1) == y).sum())
        self.epoch_stats.seen += len(y)
        if self.amp and self.check_every and (self.step == 1 or self.step % self.check_every == 0):
            self._check_bf16(x[:64])
        return StepInfo(self.step, self.epoch, loss_value / len(y), factor)

    def _teacher_targets(self, idx: Tensor, x: Tensor) -> Tensor | None:
        """The teacher's logits for this batch: cached per clean image, or run on the student's view."""
        if self.teacher_logits is not None:
            return self.teacher_logits[idx]
        if self.teacher_model is None:
            return None
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return self.teacher_model(x).float()

    def _check_finite(self, loss: Tensor) -> float:
        """Loss and every gradient must be finite; otherwise stop before the optimizer uses them."""
        value = float(loss.detach())
        grads = [(n, p.grad) for n, p in self.model.named_parameters() if p.grad is not None]
        total = torch.stack([torch.linalg.vector_norm(g.float()) for _, g in grads]).sum()
        if math.isfinite(value) and bool(torch.isfinite(total)):
            return value
        bad = [n for n, g in grads if not bool(torch.isfinite(g).all())]
        raise TrainingError(
            f"step {self.step + 1} (epoch {self.epoch + 1}): loss {value}, non-finite gradients in "
            f"{bad or 'none'}; precision {'bf16 autocast' if self.amp else 'fp32'}. Stopped before "
            "the optimizer step; the last checkpoint is untouched."
        )

    @torch.no_grad()
    def _check_bf16(self, x: Tensor) -> None:
        """Eval-mode logits of a few images in bf16 vs fp32 (no state changes): garbage stops the run."""
        self.model.eval()
        try:
            reference = self.model(x).float()
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                low = self.model(x).float()
        finally:
            self.model.train()
        error = float((low - reference).abs().mean() / reference.abs().mean().clamp_min(1e-12))
        if not math.isfinite(error) or error > BF16_MAX_RELATIVE_ERROR:
            raise TrainingError(
                f"step {self.step}: bf16 logits differ from fp32 by {error:.3g} (relative, limit "
                f"{BF16_MAX_RELATIVE_ERROR}): a bf16 kernel is returning garbage on this machine; "
                "rerun with --precision fp32"
            )

    def _lookahead_step(self) -> bool:
        """The lookahead schedule after a step; True when the weights now equal the EMA (resumable)."""
        r = self.recipe
        if self.epoch >= r.lookahead_start_epoch and self.step % r.lookahead_every == 0:
            if self.lookahead is None:
                self.lookahead = Lookahead(self.model)
            else:
                self.lookahead.update(self.model, decay=float(self.decay_at[self.step]))
            return True
        return self.lookahead is None

    # --- the loop --------------------------------------------------------------------------------

    def run(
        self,
        checkpoint: Path | None = None,
        stop_after_steps: int | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        on_step: Callable[[StepInfo], None] | None = None,
        log: Callable[[str], None] = print,
        checkpoint_every_s: float = 0.0,
        portable: Path | None = None,
    ) -> bool:
        """Train until done (True) or until a stop is requested and a checkpoint is written (False).

        A checkpoint is due after every epoch, and mid-epoch once ``checkpoint_every_s`` passed since
        the last one (an epoch of the long recipe takes half an hour on an AVX2 CPU); it is written at
        the first step from then on where the weights equal the lookahead EMA. A stop
        (``stop_after_steps`` reached or ``should_stop()``) waits for the same, so what is on disk
        always resumes exactly. With ``portable`` each checkpoint is also written there compactly.
        """
        r = self.recipe
        n = len(self.train_y)
        save_due = False
        last_save = time.monotonic()

        def save() -> None:
            nonlocal last_save, save_due
            assert checkpoint is not None
            self.save_checkpoint(checkpoint)
            if portable is not None:
                self.save_checkpoint(portable, compact=True)
            last_save, save_due = time.monotonic(), False

        while not self.finished:
            self.gen.set_state(self.epoch_gen_state)
            self.model.whiten.bias.requires_grad_(self.epoch < r.whiten_bias_epochs)
            self.model.train()
            start = time.perf_counter()
            x_epoch = cifar.augment_epoch(
                self.train_x,
                self.flips,
                self.epoch,
                r.translate,
                self.gen,
                r.cutout,
                alternate=self.resampled_x,
                alternate_share=r.photo_resample,
            )
            order = torch.randperm(n, generator=self.gen).to(self.device)
            next_epoch_gen_state = self.gen.get_state()
            while self.epoch_step < self.steps_per_epoch and not self.finished:
                b = self.epoch_step * r.batch_size
                info = self.train_step(order[b : b + r.batch_size], x_epoch)
                synced = self._lookahead_step()
                if on_step is not None:
                    on_step(info)
                if self.epoch_step == self.steps_per_epoch:
                    break  # the epoch end below takes over
                stop = should_stop() or (stop_after_steps is not None and self.step >= stop_after_steps)
                if checkpoint_every_s > 0 and time.monotonic() - last_save >= checkpoint_every_s:
                    save_due = True
                if checkpoint is not None and synced and (save_due or stop):
                    self._elapse(start)
                    start = time.perf_counter()
                    save()
                if stop and (synced or checkpoint is None):  # with nothing to write, stop anywhere
                    self._elapse(start)
                    log(f"stopped at step {self.step}/{self.total_steps} (checkpoint: {checkpoint})")
                    return False
            if self.lookahead is not None and (self.finished or r.lookahead_epoch_reset):
                self.lookahead.update(self.model, decay=1.0)  # weights := EMA
            self._elapse(start)
            s = self.epoch_stats
            self.history.append(
                {
                    "epoch": self.epoch + 1,
                    "step": self.step,
                    "train_loss": round(s.loss_sum / max(1, s.seen), 5),
                    "train_accuracy": round(s.correct / max(1, s.seen), 5),
                    "train_seconds": round(self.train_seconds, 1),
                }
            )
            log(
                f"epoch {self.epoch + 1}/{self.epochs}: step {self.step}/{self.total_steps} "
                f"loss {s.loss_sum / max(1, s.seen):.4f} train-acc {s.correct / max(1, s.seen):.4f} "
                f"({self.train_seconds:.0f}s)"
            )
            self.epoch += 1
            self.epoch_step = 0
            self.epoch_gen_state = next_epoch_gen_state
            self.epoch_stats = EpochStats()
            save_due = True
            synced = self.lookahead is None or self.lookahead.matches(self.model)
            stop = should_stop() or (stop_after_steps is not None and self.step >= stop_after_steps)
            if synced and checkpoint is not None:
                save()
            if stop and not self.finished and (synced or checkpoint is None):
                log(f"stopped at step {self.step}/{self.total_steps} (checkpoint: {checkpoint})")
                return False
        return True

    def _elapse(self, since: float) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.train_seconds += time.perf_counter() - since

    # --- checkpoints -----------------------------------------------------------------------------

    def save_checkpoint(self, path: Path, compact: bool = False) -> None:
        """Write the full state (fp32 weights and momentum: anything less would not resume exactly).

        ``compact`` writes the copy that is committed to the repository every hour instead: the
        learned weights in fp16 and no momentum, a quarter of the size (15 vs 59 MB for the long
        recipe). Resuming from it is not bit-exact: the Nesterov momentum (0.85, so a memory of
        about 7 steps) restarts from zero and the weights carry fp16 rounding.
        Written to a temporary file and renamed, so a crash, or a ``git add`` running at the same
        moment, never sees half a checkpoint.
        """
        if self.lookahead is not None and not self.lookahead.matches(self.model):
            raise RuntimeError("checkpoint requested while the weights differ from the lookahead EMA")
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        if compact:
            params = {f"model.{name}" for name, _ in self.model.named_parameters()}
            tensors = {k: v.half() if k in params else v for k, v in tensors.items()}
        for name, p in self.model.named_parameters():
            buf = self.optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None and not compact:
                tensors[f"momentum.{name}"] = buf.detach().cpu().contiguous()
        tensors["rng.epoch_generator"] = self.epoch_gen_state
        tensors["data.flip_mask"] = self.flips.to(torch.uint8)
        s = self.epoch_stats
        meta = {
            "format": CHECKPOINT_FORMAT,
            "recipe": json.dumps(asdict(self.recipe)),
            "seed": str(self.seed),
            "amp_bf16": json.dumps(self.amp),
            "train_images": str(len(self.train_y)),
            "step": str(self.step),
            "total_steps": str(self.total_steps),
            "epoch": str(self.epoch),
            "epoch_step": str(self.epoch_step),
            "lookahead": "none" if self.lookahead is None else "equals-weights",
            "compact": json.dumps(compact),
            "epoch_stats": json.dumps(asdict(s)),
            "train_seconds": repr(self.train_seconds),
            "history": json.dumps(self.history),
            "torch_threads": str(torch.get_num_threads()),
            "cpu": json.dumps(cpu_identity()),
            "torch": torch.__version__,
            "saved": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.chmod(0o644)
        os.replace(tmp, path)

    def load_checkpoint(self, path: Path, allow_inexact: bool = False) -> list[str]:
        """Restore a :meth:`save_checkpoint` state; returns warnings (e.g. another CPU model).

        Refuses a checkpoint of another recipe, seed or data. A different thread count or precision
        would continue the run, but not bit-exactly (CPU kernels sum in a thread-dependent order), so
        that needs ``allow_inexact``.
        """
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a classifier training checkpoint")
        expected = {
            "recipe": json.loads(json.dumps(asdict(self.recipe))),  # tuples -> lists, as stored
            "seed": self.seed,
            "train_images": len(self.train_y),
        }
        found = {
            # fields added to Recipe after the checkpoint was written take their defaults
            "recipe": _with_new_defaults(json.loads(meta["recipe"])),
            "seed": int(meta["seed"]),
            "train_images": int(meta["train_images"]),
        }
        diff = {k: (found[k], expected[k]) for k in expected if found[k] != expected[k]}
        if diff:
            raise ValueError(
                f"{path} belongs to a different run; (checkpoint, this command) differ in: {diff}. "
                "Resume with the command that started it."
            )
        inexact = {
            k: (a, b)
            for k, a, b in (
                ("bf16 autocast", json.loads(meta["amp_bf16"]), self.amp),
                ("torch threads", int(meta["torch_threads"]), torch.get_num_threads()),
            )
            if a != b
        }
        if inexact and not allow_inexact:
            raise ValueError(
                f"{path}: (checkpoint, now) differ in {inexact}: the run would continue, but not "
                "bit-exactly. Use the same --threads/--precision, or pass --allow-inexact-resume."
            )
        warnings = [f"resuming with {k} {b} instead of {a}: not bit-exact" for k, (a, b) in inexact.items()]
        if json.loads(meta.get("compact", "false")):
            warnings.append(
                f"{path} is a compact checkpoint (fp16 weights, momentum from zero): not bit-exact"
            )
        if "cpu" in meta and json.loads(meta["cpu"]) != cpu_identity():
            warnings.append(
                f"checkpoint written on {json.loads(meta['cpu'])}, resuming on {cpu_identity()}: "
                "kernels may round differently, so the continuation may not be bit-exact"
            )
        tensors = load_file(str(path))
        # load_state_dict copies into the fp32 parameters, so a compact file's fp16 weights need no cast
        state = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
        self.model.load_state_dict(state, strict=True)
        self.optimizer.state.clear()
        for name, p in self.model.named_parameters():
            saved = tensors.get(f"momentum.{name}")
            if saved is not None:
                self.optimizer.state[p]["momentum_buffer"] = torch.empty_like(p).copy_(saved)
        self.lookahead = Lookahead(self.model) if meta["lookahead"] == "equals-weights" else None
        self.epoch_gen_state = tensors["rng.epoch_generator"].clone()
        self.flips = tensors["data.flip_mask"].bool()
        self.step, self.epoch = int(meta["step"]), int(meta["epoch"])
        self.epoch_step = int(meta["epoch_step"])
        self.epoch_stats = EpochStats(**json.loads(meta["epoch_stats"]))
        self.train_seconds = float(meta["train_seconds"])
        self.history = json.loads(meta["history"])
        return warnings


def _with_new_defaults(stored: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's recipe with the fields added to :class:`Recipe` since then at their defaults."""
    defaults = {f.name: f.default for f in fields(Recipe) if f.default is not MISSING}
    return {**{k: v for k, v in defaults.items() if k not in stored}, **stored}


def checkpoint_step(path: Path) -> int:
    """The training step a checkpoint was taken at (to resume from the newer of two)."""
    with safe_open(str(path), framework="pt") as f:
        return int((f.metadata() or {}).get("step", -1))


# --- evaluation ----------------------------------------------------------------------------------


@torch.inference_mode()
def evaluate(model: nn.Module, images: Tensor, levels: int = 2, batch: int = 1000) -> dict[int, Tensor]:
    """fp32 logits per image at TTA levels 0 (none), 1 (mirror), 2 (mirror + 1-px translations), up to
    ``levels``.

    The six views of level 2 are computed once and combined, which is what
    :func:`models.classifier.predict_logits` does per level, at a third of the cost of calling it thrice.
    """
    model.eval()
    out: dict[int, list[Tensor]] = {level: [] for level in range(levels + 1)}
    for i in range(0, len(images), batch):
        x = cifar.normalize(images[i : i + batch]).contiguous(memory_format=torch.channels_last)
        views = [model(x)]
        if levels >= 1:
            views.append(0.5 * views[0] + 0.5 * model(x.flip(-1)))
        if levels >= 2:
            padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
            shifted = [padded[:, :, :-2, :-2], padded[:, :, 2:, 2:]]
            translated = torch.stack([0.5 * model(s) + 0.5 * model(s.flip(-1)) for s in shifted]).mean(0)
            views.append(0.5 * views[1] + 0.5 * translated)
        for level, logits in enumerate(views):
            out[level].append(logits.float().cpu())
    return {level: torch.cat(parts) for level, parts in out.items()}


def report(preds: Tensor, labels: Tensor) -> dict[str, Any]:
    """Accuracy, per-class accuracy and the confusion matrix (rows = true class)."""
    n = len(cifar.CLASSES)
    confusion = torch.zeros(n, n, dtype=torch.int64)
    confusion.index_put_((labels, preds), torch.ones_like(labels), accumulate=True)
    per_class = (confusion.diag().double() / confusion.sum(1).double()).tolist()
    return {
        "accuracy": round((preds == labels).double().mean().item(), 5),
        "per_class_accuracy": {c: round(a, 4) for c, a in zip(cifar.CLASSES, per_class, strict=True)},
        "confusion_matrix": confusion.tolist(),
    }


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_identity() -> dict[str, Any]:
    """CPU model and the SIMD features that decide which kernels (and roundings) run."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return {"model": platform.processor()}
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16") if f in flags]
    return {"model": fields.get("Model name", "").strip(), "simd": simd}


def hardware(device: torch.device) -> dict[str, Any]:
    """What the run ran on: CPU model, cores and SIMD flags from lscpu, GPU name when used."""
    info: dict[str, Any] = {"platform": platform.platform(), "torch_threads": torch.get_num_threads()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
        info["cpu_model"] = fields.get("Model name", "").strip()
        info["cpu_count"] = fields.get("CPU(s)", "").strip()
        flags = set(fields.get("Flags", "").split())
        info["simd"] = [
            f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16") if f in flags
        ]
    except (OSError, subprocess.SubprocessError):
        info["cpu_model"] = platform.processor()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def load_and_evaluate(weights: Path, images: Tensor) -> dict[int, Tensor]:
    """Plain and mirror-TTA logits of the weights file as written (what the service loads), on the CPU."""
    model, _ = load_classifier(weights, "cpu")
    return evaluate(model.to(memory_format=torch.channels_last), images.cpu(), levels=1)


def split_holdout(labels: np.ndarray, holdout: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, held out) over the training set for :func:`cifar.holdout_indices`."""
    held = np.zeros(len(labels), dtype=bool)
    held[cifar.holdout_indices(labels, holdout)] = True
    return ~held, held


def fit_calibration(
    holdout_logits: dict[int, Tensor], holdout_y: Tensor, test_logits: dict[int, Tensor], test_y: Tensor
) -> dict[str, Any]:
    """Temperatures fitted on the held-out logits (plain and mirror TTA), ECE before/after on both sets."""
    out: dict[str, Any] = {"temperatures": {}, "held_out": {}, "test": {}}
    for level, name in ((0, "none"), (1, "flip")):
        t = calibration.fit_temperature(holdout_logits[level].numpy(), holdout_y.numpy())
        out["temperatures"][name] = t
        out["held_out"][name] = calibration.summary(holdout_logits[level].numpy(), holdout_y.numpy(), t)
        out["test"][name] = calibration.summary(test_logits[level].numpy(), test_y.numpy(), t)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    recipe = build_recipe(args)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    amp = use_bf16(device, args.precision)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    checkpoint = args.checkpoint or args.out / "checkpoint.safetensors"
    candidates = [c for c in (checkpoint, args.portable_checkpoint) if c is not None and c.exists()]
    if args.resume and not candidates:
        print(f"--resume: no checkpoint at {checkpoint}", file=sys.stderr)
        return 1
    if not args.resume and candidates:
        print(f"{candidates[0]} exists: pass --resume to continue that run, or remove it", file=sys.stderr)
        return 1
    resume_from = max(candidates, key=checkpoint_step) if candidates else None

    t0 = time.perf_counter()
    train_split = cifar.load_split(True, args.data, args.cache_dir)
    test_split = cifar.load_split(False, args.data, args.cache_dir)
    keep, held = split_holdout(train_split.labels, args.holdout)
    train_x = cifar.to_tensor(train_split.images[keep], device)
    train_y = torch.tensor(train_split.labels[keep]).to(device)
    holdout_x, holdout_y = (
        cifar.to_tensor(train_split.images[held], device),
        torch.tensor(train_split.labels[held]),
    )
    test_x, test_y = cifar.to_tensor(test_split.images, device), torch.tensor(test_split.labels)
    resampled_x = None
    if recipe.photo_resample:
        copy = photo_resample.resampled_copy(train_split.images[keep], cache_dir=args.cache_dir)
        resampled_x = cifar.to_tensor(copy, device)
    teacher_logits, teacher_model, teacher_sha = None, None, None
    if recipe.distill_weight and args.teacher is None:
        print("--distill-weight needs --teacher", file=sys.stderr)
        return 1
    if recipe.distill_weight and recipe.distill_view == "same":
        teacher_model, teacher_sha = teacher.load_teacher(args.teacher, device), sha256_file(args.teacher)
        print(f"teacher {args.teacher} ({teacher_sha[:12]}) runs on every augmented batch", flush=True)
    elif recipe.distill_weight:
        teacher_logits, teacher_sha = teacher.teacher_logits(args.teacher, train_x.cpu(), args.cache_dir, amp)
        agree = float((teacher_logits.argmax(1) == train_y.cpu()).double().mean())
        print(
            f"teacher {args.teacher} (sha256 {teacher_sha[:12]}): {agree:.4f} of training labels", flush=True
        )
        teacher_logits = teacher_logits.to(device)
    load_s = time.perf_counter() - t0

    training = Training(
        recipe,
        train_x,
        train_y,
        device,
        amp,
        args.seed,
        args.check_every,
        resampled_x=resampled_x,
        teacher_logits=teacher_logits,
        teacher_model=teacher_model,
    )
    if args.resume:
        assert resume_from is not None
        print(f"resuming from {resume_from}", flush=True)
        for warning in training.load_checkpoint(resume_from, args.allow_inexact_resume):
            print(f"WARNING: {warning}", file=sys.stderr, flush=True)
    print(
        f"data: {len(train_y)} train / {len(holdout_y)} held out / {len(test_y)} test images in "
        f"{load_s:.1f}s; recipe {recipe}; device {device}, bf16 autocast {amp}, threads "
        f"{torch.get_num_threads()}; {'resuming at' if args.resume else 'starting at'} step "
        f"{training.step}/{training.total_steps}",
        flush=True,
    )

    stop_signal: list[int] = []

    def request_stop(signum: int, _frame: object) -> None:
        """First SIGTERM/SIGINT: checkpoint at the next resumable step and exit; second: exit now."""
        if stop_signal:
            raise SystemExit(EXIT_INTERRUPTED)
        stop_signal.append(signum)
        print(f"signal {signum}: stopping at the next resumable step", file=sys.stderr, flush=True)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, request_stop)

    def print_progress(info: StepInfo) -> None:
        """A line every 12 steps, so a long run's log shows it is alive between epoch summaries."""
        if info.step % 12 == 0:
            print(f"step {info.step}: loss {info.loss:.4f}, lr x{info.lr_factor:.3f}", flush=True)

    try:
        finished = training.run(
            checkpoint,
            args.stop_after_steps,
            should_stop=lambda: bool(stop_signal),
            on_step=print_progress,
            log=lambda line: print(line, flush=True),
            checkpoint_every_s=60 * args.checkpoint_minutes,
            portable=args.portable_checkpoint,
        )
    except TrainingError as exc:
        print(f"\n*** TRAINING STOPPED: {exc}\n", file=sys.stderr, flush=True)
        return EXIT_NON_FINITE
    if not finished:
        return EXIT_INTERRUPTED if stop_signal else 0

    model = training.model
    t1 = time.perf_counter()
    test_logits = evaluate(model, test_x)
    results = {f"tta{level}": report(lg.argmax(1), test_y) for level, lg in test_logits.items()}
    eval_s = time.perf_counter() - t1
    print({k: v["accuracy"] for k, v in results.items()}, flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / "classifier.safetensors"
    depth_tag = "" if recipe.depth == (2, 2, 2) else "-d" + "".join(map(str, recipe.depth))
    photo_tag = f"-pr{round(100 * recipe.photo_resample)}" if recipe.photo_resample else ""
    kd_tag = f"-kd{round(100 * recipe.distill_weight)}" if recipe.distill_weight else ""
    version = (
        f"cifar-{'-'.join(map(str, recipe.width))}{depth_tag}-e{recipe.epochs:g}{photo_tag}{kd_tag}"
        f"-s{args.seed}"
    )
    meta = {
        "version": version,
        "seed": args.seed,
        "recipe": asdict(recipe),
        "held_out_images": len(holdout_y),
        "test_accuracy": results["tta0"]["accuracy"],
        "test_accuracy_tta2": results["tta2"]["accuracy"],
    }
    half = not args.fp32_weights
    fp16_acc = None
    if half:
        save_classifier(model.cpu(), weights, meta, half=True)
        stored_test = load_and_evaluate(weights, test_x)
        fp16_acc = round((stored_test[0].argmax(1) == test_y).double().mean().item(), 5)
        if fp16_acc < results["tta0"]["accuracy"] - 0.001:
            print(f"fp16 weights lose accuracy ({fp16_acc}); storing fp32", flush=True)
            half, fp16_acc = False, None
    if not half:
        save_classifier(model.cpu(), weights, meta, half=False)
        stored_test = {level: test_logits[level] for level in (0, 1)}

    calib: dict[str, Any] | None = None
    if len(holdout_y):  # calibrate the weights as stored (fp16), not as trained
        calib = fit_calibration(load_and_evaluate(weights, holdout_x), holdout_y, stored_test, test_y)
        calibration.write_calibration(
            args.out,
            version,
            calib["temperatures"],
            fitted_on={
                "slice": f"held-out training images: the last {len(holdout_y) // 10} of each class",
                "images": len(holdout_y),
                "trained_on_them": False,
            },
            ece_bins=calibration.ECE_BINS,
            held_out=calib["held_out"],
            test=calib["test"],
        )
        print(f"temperatures {calib['temperatures']}; test {calib['test']}", flush=True)

    metrics = {
        "model": "CifarNet (airbench-style)",
        "version": version,
        "dataset": "CIFAR-10 test (JPEG copy), 10,000 images",
        "train_images": len(train_y),
        "held_out_images": len(holdout_y),
        "test_accuracy": results["tta0"]["accuracy"],
        "test_accuracy_tta_flip": results["tta1"]["accuracy"],
        "test_accuracy_tta_flip_translate": results["tta2"]["accuracy"],
        "fp16_weights_test_accuracy": fp16_acc,
        "weights_dtype": "float16" if half else "float32",
        "weights_bytes": weights.stat().st_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "calibration": calib,
        "no_tta": results["tta0"],
        "tta_flip_translate": results["tta2"],
        "train_seconds": round(training.train_seconds, 1),
        "epochs": training.history,
        "data_load_seconds": round(load_s, 1),
        "eval_seconds": round(eval_s, 1),
        "recipe": asdict(recipe),
        "teacher": {"path": str(args.teacher), "sha256": teacher_sha} if teacher_sha else None,
        "preset": args.preset,
        "amp_bf16": amp,
        "seed": args.seed,
        "device": str(device),
        "hardware": hardware(device),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
        "command": shlex.join(["python", "-m", "models.training.train_classifier", *(argv or sys.argv[1:])]),
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"wrote {weights} ({metrics['weights_bytes']} bytes) and {args.out / 'metrics.json'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
