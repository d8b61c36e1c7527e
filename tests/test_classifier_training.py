"""models.training.train_classifier on tiny synthetic runs: exact resume, loud stops, the recipe's pieces."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models import cifar
from models.classifier import CifarNet, Ensemble, fold_batchnorm, load_classifier, save_classifier
from models.precision import bf16_runnable
from models.training import make_ensemble, photo_resample, train_classifier
from models.training.train_classifier import (
    Recipe,
    StepInfo,
    Training,
    TrainingError,
    checkpoint_step,
    lr_factor,
)

CPU = torch.device("cpu")
bf16_params = [False, pytest.param(True, marks=pytest.mark.skipif(not bf16_runnable(CPU), reason="no bf16"))]

# 8 steps per epoch, 4 epochs: the lookahead EMA starts in epoch 2 (airbench94-style) or at step 0.
TINY94 = Recipe(
    width=(8, 16, 16),
    epochs=3.5,
    lr=11.5,
    batch_size=32,
    whiten_bias_epochs=2,
    lookahead_start_epoch=1,
)
TINY96 = dataclasses.replace(
    TINY94,
    depth=(2, 3, 3),
    translate=4,
    cutout=8,
    bn_momentum=0.9,
    lookahead_start_epoch=0,
    lookahead_epoch_reset=False,
    warmup=0.1,
    final_lr=0.0,
)
TINY96_PHOTO = dataclasses.replace(TINY96, photo_resample=0.5)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ops on a loaded 2-core box: a second OpenMP thread makes them ~20x slower, not faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_data(n: int = 272, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable synthetic images: class = which colour channel is brightest, plus noise."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=gen)
    images = torch.randint(0, 120, (n, 3, 32, 32), generator=gen, dtype=torch.uint8)
    images[torch.arange(n), labels] += 100
    return images, labels


def run_steps(training: Training, **kwargs) -> tuple[bool, list[StepInfo]]:
    steps: list[StepInfo] = []
    finished = training.run(on_step=steps.append, log=lambda _line: None, **kwargs)
    return finished, steps


@pytest.mark.parametrize(
    "recipe",
    [TINY94, TINY96, TINY96_PHOTO],
    ids=["airbench94-style", "airbench96-style", "airbench96-photo-resample"],
)
@pytest.mark.parametrize("amp", bf16_params, ids=lambda a: "bf16" if a else "fp32")
def test_stop_and_resume_replays_the_uninterrupted_run_exactly(
    tmp_path: Path, recipe: Recipe, amp: bool
) -> None:
    x, y = tiny_data()
    make = functools.partial(Training, resampled_x=x // 2 if recipe.photo_resample else None)
    straight = make(recipe, x, y, CPU, amp, seed=3)
    assert straight.steps_per_epoch == 8 and straight.total_steps == 28
    finished, expected = run_steps(straight)
    assert finished and [s.step for s in expected] == list(range(1, 29))

    ckpt = tmp_path / "ckpt.safetensors"
    first = make(recipe, x, y, CPU, amp, seed=3)
    finished, head = run_steps(first, checkpoint=ckpt, stop_after_steps=11)
    assert not finished and ckpt.exists()
    # stops at a step where the weights equal the lookahead EMA: mid-epoch 2 for both styles here
    assert head[-1].step == first.step and 11 <= first.step <= 15 and first.epoch_step not in (0, 8)

    resumed = make(recipe, x, y, CPU, amp, seed=3)
    resumed.load_checkpoint(ckpt)
    finished, tail = run_steps(resumed, checkpoint=ckpt)
    assert finished
    assert [(s.step, s.loss, s.lr_factor) for s in head + tail] == [
        (s.step, s.loss, s.lr_factor) for s in expected
    ]
    for (name, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in straight.history]


def test_checkpoint_after_each_epoch_is_small_and_resumes_at_the_epoch_start(tmp_path: Path) -> None:
    x, y = tiny_data()
    ckpt = tmp_path / "ckpt.safetensors"
    training = Training(TINY94, x, y, CPU, False, seed=1)
    finished, _ = run_steps(training, checkpoint=ckpt, stop_after_steps=16)
    assert not finished and training.step == 16 and training.epoch == 2 and training.epoch_step == 0
    params = sum(p.numel() for p in training.model.parameters())
    # fp32 weights + fp32 momentum (+ BN statistics, RNG, flip mask): no second copy for the EMA
    assert ckpt.stat().st_size < 2 * params * 4 + 16_000  # three copies would be 3 * params * 4
    again = Training(TINY94, x, y, CPU, False, seed=1)
    again.load_checkpoint(ckpt)
    assert again.step == 16 and again.lookahead is not None and again.lookahead.matches(again.model)


def test_resume_refuses_a_checkpoint_of_another_recipe(tmp_path: Path) -> None:
    x, y = tiny_data()
    ckpt = tmp_path / "ckpt.safetensors"
    run_steps(Training(TINY94, x, y, CPU, False, seed=1), checkpoint=ckpt, stop_after_steps=3)
    other = Training(dataclasses.replace(TINY94, lr=5.0), x, y, CPU, False, seed=1)
    with pytest.raises(ValueError, match=r"different run.*recipe"):
        other.load_checkpoint(ckpt)
    with pytest.raises(ValueError, match="seed"):
        Training(TINY94, x, y, CPU, False, seed=2).load_checkpoint(ckpt)
    with pytest.raises(ValueError, match="bf16 autocast"):
        Training(TINY94, x, y, CPU, True, seed=1).load_checkpoint(ckpt)


def test_resume_with_another_thread_count_needs_consent(tmp_path: Path) -> None:
    """Thread count changes CPU summation order (measured: the loss sequence then differs)."""
    x, y = tiny_data()
    ckpt = tmp_path / "ckpt.safetensors"
    run_steps(Training(TINY94, x, y, CPU, False, seed=1), checkpoint=ckpt, stop_after_steps=3)
    torch.set_num_threads(2)
    again = Training(TINY94, x, y, CPU, False, seed=1)
    with pytest.raises(ValueError, match=r"torch threads.*--allow-inexact-resume"):
        again.load_checkpoint(ckpt)
    warnings = again.load_checkpoint(ckpt, allow_inexact=True)
    assert again.step == 3 and any("not bit-exact" in w for w in warnings)


def test_non_finite_loss_stops_before_the_optimizer_step_and_writes_nothing(tmp_path: Path) -> None:
    x, y = tiny_data()
    training = Training(TINY94, x, y, CPU, False, seed=0)
    with torch.no_grad():
        training.model.head.weight[0, 0] = float("nan")
    before = {k: v.clone() for k, v in training.model.state_dict().items()}
    ckpt = tmp_path / "ckpt.safetensors"
    with pytest.raises(TrainingError, match=r"step 1 .*loss nan"):
        training.run(checkpoint=ckpt, log=lambda _line: None)
    assert not ckpt.exists() and training.step == 0
    conv = "group1.conv1.weight"
    assert torch.equal(training.model.state_dict()[conv], before[conv])


def test_a_non_finite_gradient_with_a_finite_loss_is_caught_and_named() -> None:
    x, y = tiny_data()
    training = Training(TINY94, x, y, CPU, False, seed=0)
    training.model.group2.conv1.weight.register_hook(lambda g: g * float("inf"))
    with pytest.raises(TrainingError, match=r"non-finite gradients in \['group2.conv1.weight'\]"):
        training.run(log=lambda _line: None)


@pytest.mark.skipif(not bf16_runnable(CPU), reason="bf16 convolutions do not run on this CPU")
def test_bf16_forward_that_disagrees_with_fp32_stops_the_run() -> None:
    class GarbageUnderAutocast(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.inner(x)
            return out * 7 + 3 if torch.is_autocast_enabled("cpu") else out

    x, y = tiny_data()
    training = Training(TINY94, x, y, CPU, True, seed=0)
    training._check_bf16(cifar.normalize(x[:8]))  # the real bf16 kernels agree with fp32
    training.model.head = GarbageUnderAutocast(training.model.head)
    with pytest.raises(TrainingError, match="bf16 logits differ from fp32"):
        training.run(log=lambda _line: None)


def test_lr_schedules_match_airbench() -> None:
    total = 476  # airbench94: 48 steps x 9.9 epochs
    assert lr_factor(0, total) == pytest.approx(0.2)
    assert lr_factor(int(total * 0.23), total) == pytest.approx(1.0)
    assert lr_factor(total, total) == pytest.approx(0.07)
    assert lr_factor(total, total, warmup=0.1, final=0.0) == pytest.approx(0.0)  # airbench96
    assert lr_factor(300, total, warmup=0.1, final=0.0) == pytest.approx((total - 300) / (total - 47))


def test_cutout_paints_one_square_of_the_fill_per_image() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.full((16, 3, 32, 32), 7, dtype=torch.uint8)
    fill = torch.tensor([1, 2, 3], dtype=torch.uint8)
    out = cifar.cutout(x, 12, fill, gen)
    for img in out:
        painted = (img == fill.view(3, 1, 1)).all(0)
        rows, cols = painted.any(1).nonzero(), painted.any(0).nonzero()
        assert painted.sum() == 144 and len(rows) == 12 and len(cols) == 12
        assert (img[:, ~painted] == 7).all()
    assert torch.equal(cifar.cutout(x, 0, fill, gen), x)


def test_photo_resample_swaps_in_the_given_share_and_draws_nothing_when_off() -> None:
    x, _ = tiny_data(n=2000)
    alt = 255 - x
    mask = cifar.flip_mask(len(x), torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(5)
    plain = cifar.augment_epoch(x, mask, 0, 2, gen, 8)
    after_plain = gen.get_state()
    gen.manual_seed(5)
    off = cifar.augment_epoch(x, mask, 0, 2, gen, 8, alternate=alt, alternate_share=0.0)
    assert torch.equal(off, plain) and torch.equal(gen.get_state(), after_plain)
    gen.manual_seed(5)
    all_alt = cifar.augment_epoch(x, mask, 0, 0, gen, 0, alternate=alt, alternate_share=1.0)
    assert torch.equal(all_alt, cifar.alternating_flip(alt, mask, 0))
    half = cifar.augment_epoch(x, mask, 0, 0, None, 0, alternate=alt, alternate_share=0.3)
    swapped = (half != cifar.alternating_flip(x, mask, 0)).flatten(1).any(1).double().mean()
    assert 0.25 < swapped < 0.35
    with pytest.raises(ValueError, match="resampled copy"):
        train_classifier.Training(TINY96_PHOTO, x, torch.zeros(len(x), dtype=torch.long), CPU, False, 0)


def test_photo_round_trip_keeps_the_image_and_is_deterministic_and_cached(tmp_path: Path) -> None:
    x, _ = tiny_data(n=6)
    images = x.permute(0, 2, 3, 1).numpy()  # NHWC uint8, as the data set is stored
    out = photo_resample.resampled_copy(images, seed=1, cache_dir=tmp_path)
    assert out.shape == images.shape and out.dtype == np.uint8
    diff = np.abs(out.astype(int) - images.astype(int)).mean()
    assert 0 < diff < 25  # changed (blur, JPEG), but the same picture
    assert len(list(tmp_path.glob("*.npy"))) == 1
    assert np.array_equal(photo_resample.resampled_copy(images, seed=1, cache_dir=tmp_path), out)
    assert np.array_equal(photo_resample.resampled_copy(images, seed=1), out)  # computed again
    assert not np.array_equal(photo_resample.resampled_copy(images, seed=2), out)


def test_checkpoints_from_before_a_recipe_field_existed_still_match() -> None:
    stored = json.loads(json.dumps(dataclasses.asdict(TINY96)))
    del stored["photo_resample"]
    assert train_classifier._with_new_defaults(stored) == json.loads(json.dumps(dataclasses.asdict(TINY96)))


def test_holdout_is_the_last_images_of_each_class_and_balanced() -> None:
    labels = np.repeat(np.arange(10), 30)[np.random.default_rng(0).permutation(300)]
    held = cifar.holdout_indices(labels, 50)
    assert len(held) == 50 and np.bincount(labels[held], minlength=10).tolist() == [5] * 10
    for c in range(10):
        of_class = np.flatnonzero(labels == c)
        assert set(held[labels[held] == c]) == set(of_class[-5:])
    assert len(cifar.holdout_indices(labels, 0)) == 0
    with pytest.raises(ValueError, match="multiple of 10"):
        cifar.holdout_indices(labels, 25)


def test_depth3_groups_fold_save_and_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = CifarNet((8, 16, 16), depths=(3, 2, 3)).eval()
    assert hasattr(net.group1, "conv3") and not hasattr(net.group2, "conv3")
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-0.2, 0.2)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        reference = net(x)
        path = tmp_path / "d.safetensors"
        save_classifier(net, path, {"version": "d3"}, half=False)
        loaded, meta = load_classifier(path)
        assert meta["depths"] == [3, 2, 3] and torch.allclose(loaded(x), reference, atol=1e-5)
        folded = fold_batchnorm(loaded)
        assert torch.allclose(folded(x), reference, atol=1e-4)


def test_ensemble_averages_its_members_and_saves_folds_and_loads_as_one_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    members = [CifarNet((8, 16, 16), depths=(2, 3, 3)).eval(), CifarNet((8, 8, 16)).eval()]
    for m in (m for net in members for m in net.modules()):
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.bias.data.uniform_(-0.2, 0.2)
    ensemble = Ensemble(members).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        reference = ensemble(x)
        assert torch.allclose(reference, (members[0](x) + members[1](x)) / 2)
        assert not torch.allclose(reference, members[0](x), atol=1e-3)
        path = tmp_path / "e.safetensors"
        save_classifier(ensemble, path, {"version": "a+b", "held_out_images": 20}, half=False)
        loaded, meta = load_classifier(path)
        assert isinstance(loaded, Ensemble) and meta["held_out_images"] == 20
        assert meta["members"] == [
            {"widths": [8, 16, 16], "depths": [2, 3, 3]},
            {"widths": [8, 8, 16], "depths": [2, 2, 2]},
        ]
        assert torch.allclose(loaded(x), reference, atol=1e-5)
        assert torch.allclose(fold_batchnorm(loaded)(x), reference, atol=1e-4)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in loaded.modules())
    with pytest.raises(ValueError, match="at least 2"):
        Ensemble(members[:1])


def test_seed_report_gives_mean_and_sample_std_per_tta_level() -> None:
    from models.training.seed_report import markdown, summarize

    runs = [
        {
            "seed": s,
            "recipe": {"width": [64, 256, 256]},
            "test_accuracy": a,
            "test_accuracy_tta_flip": a + 0.005,
            "test_accuracy_tta_flip_translate": a + 0.01,
            "train_seconds": 100.0,
        }
        for s, a in ((0, 0.93), (1, 0.94), (2, 0.95))
    ]
    summary = summarize(runs)
    plain = summary["columns"]["test_accuracy"]
    assert plain["mean"] == pytest.approx(94.0) and plain["std"] == pytest.approx(1.0)
    assert summary["columns"]["test_accuracy_tta_flip_translate"]["mean"] == pytest.approx(95.0)
    assert "**94.00 ± 1.00%**" in markdown(summary)
    with pytest.raises(ValueError, match="different recipes"):
        summarize([*runs, {**runs[0], "recipe": {"width": [8, 8, 8]}}])


def test_mid_epoch_checkpoints_follow_the_clock(tmp_path: Path) -> None:
    """An epoch of the long recipe takes half an hour on an AVX2 CPU: checkpoints must not wait for it."""
    x, y = tiny_data()
    saved_at: list[tuple[int, int]] = []

    def checkpoints_taken(training: Training, ckpt: Path, every_s: float) -> set[int]:
        saved_at.clear()

        def record(_info: StepInfo) -> None:
            if ckpt.exists():
                saved_at.append((training.step, checkpoint_step(ckpt)))

        training.run(checkpoint=ckpt, on_step=record, log=lambda _line: None, checkpoint_every_s=every_s)
        return {step for _, step in saved_at}

    by_epoch = checkpoints_taken(Training(TINY96, x, y, CPU, False, seed=1), tmp_path / "a", 0.0)
    by_clock = checkpoints_taken(Training(TINY96, x, y, CPU, False, seed=1), tmp_path / "b", 1e-9)
    steps_per_epoch = 8
    assert by_epoch and all(s % steps_per_epoch <= 4 for s in by_epoch)  # at or just after epoch ends
    assert by_clock - by_epoch, "a due clock never produced a mid-epoch checkpoint"
    assert all(s % 5 == 0 or s % steps_per_epoch <= 4 for s in by_clock)  # only where weights == EMA


def test_compact_checkpoint_drops_three_quarters_and_resumes_close(tmp_path: Path) -> None:
    x, y = tiny_data()
    full, compact = tmp_path / "full.safetensors", tmp_path / "compact.safetensors"
    first = Training(TINY96, x, y, CPU, False, seed=3)
    finished, _ = run_steps(first, checkpoint=full, stop_after_steps=11, portable=compact)
    assert not finished and checkpoint_step(compact) == checkpoint_step(full) == first.step
    params = sum(p.numel() for p in first.model.parameters())
    # fp32 weights + fp32 momentum (8 bytes a parameter) became fp16 weights (2 bytes)
    assert full.stat().st_size - compact.stat().st_size >= params * 6

    exact = Training(TINY96, x, y, CPU, False, seed=3)
    exact.load_checkpoint(full)
    approx = Training(TINY96, x, y, CPU, False, seed=3)
    warnings = approx.load_checkpoint(compact)
    assert any("compact" in w for w in warnings)
    assert approx.step == exact.step and approx.lookahead is not None
    assert approx.lookahead.matches(approx.model) and not approx.optimizer.state
    for (name, a), b in zip(
        exact.model.state_dict().items(), approx.model.state_dict().values(), strict=True
    ):
        assert b.dtype == a.dtype, name
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3, msg=name)
    _, tail_exact = run_steps(exact)
    _, tail_approx = run_steps(approx)
    assert [s.step for s in tail_approx] == [s.step for s in tail_exact]
    losses = torch.tensor([[s.loss for s in tail_exact], [s.loss for s in tail_approx]])
    assert torch.isfinite(losses).all()
    assert (losses[0] - losses[1]).abs().max() < 0.1 * losses[0].abs().max()


def _tiny_member(directory: Path, seed: int, held_out: int) -> Path:
    torch.manual_seed(seed)
    path = directory / f"m{seed}" / "classifier.safetensors"
    save_classifier(
        CifarNet((8, 16, 16)).eval(), path, {"version": f"tiny-s{seed}", "held_out_images": held_out}
    )
    (path.parent / "metrics.json").write_text(
        json.dumps({"version": f"tiny-s{seed}", "recipe": {"seed": seed}})
    )
    return path


def test_make_ensemble_refuses_members_without_a_common_held_out_slice(tmp_path: Path) -> None:
    a, b = _tiny_member(tmp_path, 0, 2500), _tiny_member(tmp_path, 1, 0)
    assert make_ensemble.main(["--member", str(a), "--member", str(b), "--out-dir", str(tmp_path / "o")]) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not (cifar.data_dir() / "test.npz").exists(), reason="CIFAR-10 test data not found")
def test_make_ensemble_writes_the_averaged_model_and_every_members_score(tmp_path: Path) -> None:
    members = [_tiny_member(tmp_path, seed, 2500) for seed in (0, 1)]
    out = tmp_path / "out"
    args = [a for m in members for a in ("--member", str(m))]
    assert make_ensemble.main([*args, "--out-dir", str(out), "--no-translate"]) == 0
    model, meta = load_classifier(out / "classifier.safetensors")
    metrics = json.loads((out / "metrics.json").read_text())
    assert isinstance(model, Ensemble) and meta["version"] == "tiny-s0+tiny-s1" == metrics["version"]
    assert meta["held_out_images"] == 2500
    assert [m["training"]["recipe"]["seed"] for m in metrics["members"]] == [0, 1]
    test = cifar.load_split(False)
    x, y = cifar.normalize(cifar.to_tensor(test.images)), torch.tensor(test.labels)
    with torch.no_grad():
        expected = float((model(x).argmax(1) == y).double().mean())
    assert metrics["test_accuracy"] == pytest.approx(expected, abs=1e-4)
    assert metrics["test_accuracy_tta_flip_translate"] is None
    assert all(set(m["test"]) == {"accuracy", "accuracy_tta_flip"} for m in metrics["members"])


@pytest.mark.skipif(not (cifar.data_dir() / "test.npz").exists(), reason="CIFAR-10 test data not found")
def test_make_ensemble_takes_an_earlier_ensemble_apart_to_add_a_member(tmp_path: Path) -> None:
    pair = tmp_path / "pair"
    args = [a for seed in (0, 1) for a in ("--member", str(_tiny_member(tmp_path, seed, 2500)))]
    assert make_ensemble.main([*args, "--out-dir", str(pair), "--no-translate"]) == 0
    third = _tiny_member(tmp_path, 2, 2500)
    out = tmp_path / "trio"
    argv = ["--member", str(pair / "classifier.safetensors"), "--member", str(third)]
    assert make_ensemble.main([*argv, "--out-dir", str(out), "--no-translate"]) == 0
    model, meta = load_classifier(out / "classifier.safetensors")
    metrics = json.loads((out / "metrics.json").read_text())
    assert isinstance(model, Ensemble) and len(model.nets) == 3
    assert meta["version"] == "tiny-s0+tiny-s1+tiny-s2"
    assert [m["training"]["recipe"]["seed"] for m in metrics["members"]] == [0, 1, 2]
    pair_model, _ = load_classifier(pair / "classifier.safetensors")
    for kept, original in zip(model.nets[:2], pair_model.nets, strict=True):
        for a, b in zip(kept.state_dict().values(), original.state_dict().values(), strict=True):
            assert torch.equal(a, b)
