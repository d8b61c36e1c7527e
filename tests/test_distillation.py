"""Distilling a classifier into one net: the loss, the teacher logits and their cache, training."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models import cifar
from models.classifier import CifarNet, Ensemble, load_classifier, predict_logits, save_classifier
from models.training import teacher
from models.training.train_classifier import Training
from tests.test_classifier_training import CPU, TINY96, run_steps, tiny_data

TINY_KD = dataclasses.replace(TINY96, distill_weight=1.0, distill_temperature=2.0)


def test_weight_zero_is_the_label_loss_and_weight_one_only_the_teacher() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 10, generator=gen)
    labels = torch.randint(0, 10, (16,), generator=gen)
    teacher_logits = torch.randn(16, 10, generator=gen)
    hard = F.cross_entropy(logits, labels, label_smoothing=0.2, reduction="sum")
    loss0 = teacher.distillation_loss(logits, labels, teacher_logits, 0.0, 2.0, 0.2)
    assert torch.allclose(loss0, hard)
    loss1 = teacher.distillation_loss(logits, labels, teacher_logits, 1.0, 1.0, 0.2)
    soft = -(torch.softmax(teacher_logits, 1) * torch.log_softmax(logits, 1)).sum()
    assert torch.allclose(loss1, soft, rtol=1e-5)
    # labels play no part at weight 1
    assert torch.allclose(
        loss1, teacher.distillation_loss(logits, (labels + 1) % 10, teacher_logits, 1.0, 1.0, 0.2)
    )


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_the_soft_term_is_stationary_where_the_student_equals_the_teacher(temperature: float) -> None:
    teacher_logits = torch.randn(8, 10, generator=torch.Generator().manual_seed(1))
    labels = torch.zeros(8, dtype=torch.long)
    at_teacher = teacher_logits.clone().requires_grad_(True)
    teacher.distillation_loss(at_teacher, labels, teacher_logits, 1.0, temperature, 0.2).backward()
    assert at_teacher.grad is not None and float(at_teacher.grad.abs().max()) < 1e-5
    away = torch.zeros(8, 10, requires_grad=True)
    teacher.distillation_loss(away, labels, teacher_logits, 1.0, temperature, 0.2).backward()
    assert away.grad is not None and float(away.grad.abs().max()) > 1e-3


def _tiny_ensemble(path: Path) -> Path:
    torch.manual_seed(0)
    nets = [CifarNet((8, 16, 16)).eval() for _ in range(2)]
    save_classifier(Ensemble(nets).eval(), path, {"version": "tiny-ensemble", "held_out_images": 0})
    return path


def test_teacher_logits_are_its_mirror_tta_answer_and_are_cached_per_teacher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = _tiny_ensemble(tmp_path / "teacher" / "classifier.safetensors")
    images, _ = tiny_data(n=40)
    logits, sha = teacher.teacher_logits(weights, images, tmp_path / "cache", amp=False)

    model, _ = load_classifier(weights)
    expected = predict_logits(model, cifar.normalize(images), tta=1)
    assert logits.shape == (40, 10) and torch.allclose(logits, expected, atol=1e-4)
    assert len(list((tmp_path / "cache").glob("teacher-*.safetensors"))) == 1

    def must_not_run(*_args: object, **_kwargs: object) -> torch.Tensor:
        raise AssertionError("computed again instead of read from the cache")

    monkeypatch.setattr(teacher, "compute_logits", must_not_run)
    again, sha_again = teacher.teacher_logits(weights, images, tmp_path / "cache", amp=False)
    assert sha_again == sha and torch.equal(again, logits)
    with pytest.raises(AssertionError, match="computed again"):  # other images: not the cached ones
        teacher.teacher_logits(weights, images[:20], tmp_path / "cache", amp=False)


def test_distilling_needs_a_logit_for_every_training_image() -> None:
    x, y = tiny_data()
    with pytest.raises(ValueError, match="teacher"):
        Training(TINY_KD, x, y, CPU, False, seed=0)
    with pytest.raises(ValueError, match="teacher"):
        Training(TINY_KD, x, y, CPU, False, seed=0, teacher_logits=torch.zeros(len(y) - 1, 10))


def test_the_student_learns_the_teachers_answers_not_the_labels() -> None:
    """A teacher that says class (label + 1) mod 3: at weight 1 the student must follow it."""
    x, y = tiny_data()
    teacher_says = (y + 1) % 3
    teacher_logits = 8.0 * F.one_hot(teacher_says, 10).float()
    recipe = dataclasses.replace(TINY_KD, epochs=6.0, distill_temperature=1.0)
    training = Training(recipe, x, y, CPU, False, seed=0, teacher_logits=teacher_logits)
    finished, _ = run_steps(training)
    assert finished
    training.model.eval()
    with torch.no_grad():
        predicted = training.model(cifar.normalize(x)).argmax(1)
    assert float((predicted == teacher_says).double().mean()) > 0.8
    assert float((predicted == y).double().mean()) < 0.2


def test_a_distilled_run_stops_and_resumes_exactly(tmp_path: Path) -> None:
    x, y = tiny_data()
    teacher_logits = torch.randn(len(y), 10, generator=torch.Generator().manual_seed(2))
    straight = Training(TINY_KD, x, y, CPU, False, seed=3, teacher_logits=teacher_logits)
    _, expected = run_steps(straight)
    ckpt = tmp_path / "ckpt.safetensors"
    first = Training(TINY_KD, x, y, CPU, False, seed=3, teacher_logits=teacher_logits)
    finished, head = run_steps(first, checkpoint=ckpt, stop_after_steps=11)
    assert not finished
    resumed = Training(TINY_KD, x, y, CPU, False, seed=3, teacher_logits=teacher_logits)
    resumed.load_checkpoint(ckpt)
    _, tail = run_steps(resumed, checkpoint=ckpt)
    assert [(s.step, s.loss) for s in head + tail] == [(s.step, s.loss) for s in expected]
    # the labels-only recipe is another run: its checkpoint is refused
    plain = Training(dataclasses.replace(TINY_KD, distill_weight=0.0), x, y, CPU, False, seed=3)
    with pytest.raises(ValueError, match="different run"):
        plain.load_checkpoint(ckpt)


class _BrightestPlusOne(torch.nn.Module):
    """A teacher that reads the image: class = (brightest colour channel + 1) mod 3, confidently."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 8.0 * F.one_hot((x.mean(dim=(2, 3)).argmax(1) + 1) % 3, 10).float()


TINY_KD_SAME = dataclasses.replace(TINY_KD, distill_view="same", distill_temperature=1.0)


def test_the_same_view_teacher_is_needed_and_the_view_is_checked() -> None:
    x, y = tiny_data()
    with pytest.raises(ValueError, match="teacher model"):
        Training(TINY_KD_SAME, x, y, CPU, False, seed=0)
    with pytest.raises(ValueError, match="distill_view"):
        Training(dataclasses.replace(TINY_KD, distill_view="noisy"), x, y, CPU, False, seed=0)


def test_a_same_view_teacher_runs_on_the_students_batch_and_is_followed() -> None:
    x, y = tiny_data()
    recipe = dataclasses.replace(TINY_KD_SAME, epochs=6.0)
    training = Training(recipe, x, y, CPU, False, seed=0, teacher_model=_BrightestPlusOne())
    finished, _ = run_steps(training)
    assert finished
    training.model.eval()
    with torch.no_grad():
        predicted = training.model(cifar.normalize(x)).argmax(1)
    assert float((predicted == (y + 1) % 3).double().mean()) > 0.8


def test_a_same_view_run_stops_and_resumes_exactly(tmp_path: Path) -> None:
    x, y = tiny_data()

    def make() -> Training:
        return Training(TINY_KD_SAME, x, y, CPU, False, seed=3, teacher_model=_BrightestPlusOne())

    _, expected = run_steps(make())
    ckpt = tmp_path / "ckpt.safetensors"
    finished, head = run_steps(first := make(), checkpoint=ckpt, stop_after_steps=11)
    assert not finished and first.step < 28
    resumed = make()
    resumed.load_checkpoint(ckpt)
    _, tail = run_steps(resumed, checkpoint=ckpt)
    assert [(s.step, s.loss) for s in head + tail] == [(s.step, s.loss) for s in expected]
    # a cached-teacher checkpoint is another run
    cached = Training(TINY_KD, x, y, CPU, False, seed=3, teacher_logits=torch.zeros(len(y), 10))
    with pytest.raises(ValueError, match="different run"):
        cached.load_checkpoint(ckpt)
