"""models/finetune_style.py: only the style code learns, the code runs like a built-in style, and
the loop checks its numbers and is reproducible. A tiny network and 64 px images keep it fast."""

from __future__ import annotations

import pytest
import torch

from models.finetune_style import (
    MIN_STYLE_SCALE,
    FinetuneConfig,
    balance_for,
    balanced_objective,
    batch_at,
    finetune_code,
    initial_code,
    mean_code,
    network_with_code,
    objective_terms,
    photo_grams,
    photo_style_loss,
)
from models.numerics import NonFiniteError
from models.style_objective import StyleObjective
from models.transformer import build, one_hot_styles
from models.vgg import load_vgg19
from tests.images import photo_like, stripes

OBJECTIVE = StyleObjective(style_weight=30.0, tv_weight=10.0)


@pytest.fixture(scope="module")
def vgg():
    return load_vgg19(OBJECTIVE.deepest)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build("medium", num_styles=3).eval()


@pytest.fixture(scope="module")
def photos():
    return [photo_like(80, 64, seed=i) for i in range(4)]


@pytest.fixture(scope="module")
def grams(vgg):
    return OBJECTIVE.painting_grams(vgg, stripes(96, 96, period=6))


def test_a_code_as_a_one_style_network_runs_exactly_like_forward_code(net) -> None:
    x = torch.rand(2, 3, 32, 40)
    code = net.style_code(None) + 0.1 * torch.randn(1, net.code_size)
    single = network_with_code(net, code)
    with torch.no_grad():
        assert torch.allclose(single(x), net.forward_code(x, code), atol=1e-5)
        # A trained style's own row comes back as that style.
        row = net.style_table()[2:3]
        assert torch.allclose(network_with_code(net, row)(x), net(x, one_hot_styles([2, 2], 3)), atol=1e-5)
    with pytest.raises(ValueError, match="numbers"):
        network_with_code(net, torch.zeros(1, net.code_size + 1))


def test_starting_codes_mean_or_nearest_painting(net, vgg, grams) -> None:
    table = net.style_table().detach()
    code, how = initial_code(net, "mean")
    assert how == "mean" and torch.allclose(code, table.mean(0, keepdim=True))
    other = OBJECTIVE.painting_grams(vgg, photo_like(96, 96))
    code, how = initial_code(
        net, "nearest", objective=OBJECTIVE, grams=grams, trained_grams={0: other, 1: grams}
    )
    assert how == "row 1" and torch.equal(code, table[1:2])
    assert initial_code(net, "nearest", objective=OBJECTIVE, grams=grams, trained_grams={})[1] == "mean"
    with pytest.raises(ValueError, match="init"):
        initial_code(net, "random")


def test_batches_are_a_pure_function_of_seed_and_step(photos) -> None:
    cfg = FinetuneConfig(crop=32, batch_size=2)
    assert torch.equal(batch_at(photos, cfg, 5), batch_at(photos, cfg, 5))
    assert not torch.equal(batch_at(photos, cfg, 5), batch_at(photos, cfg, 6))
    assert batch_at(photos, cfg, 1).shape == (2, 3, 32, 32)


@pytest.mark.parametrize("bad", [{"crop": 30}, {"crop": 34}, {"batch_size": 0}, {"lr": 0.0}])
def test_bad_recipes_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        FinetuneConfig(**bad)


def test_only_the_code_learns_and_the_objective_falls(net, vgg, grams, photos, one_torch_thread) -> None:
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flags = [p.requires_grad for p in net.parameters()]
    init = mean_code(net)
    cfg = FinetuneConfig(iterations=12, batch_size=2, crop=64, lr=0.1, lr_final=0.1, precision="fp32")
    seen = []
    result = finetune_code(net, OBJECTIVE, vgg, grams, photos, cfg, init=init, on_step=seen.append)

    assert [r.step for r in seen] == list(range(1, 13)) and seen[-1].total == 12
    assert set(seen[0].losses) == {"content", "style", "tv", "total"}
    assert result.code.shape == (1, net.code_size) and not torch.equal(result.code, init)
    assert set(result.losses) == {"content", "style", "tv", "total"} and result.iterations == 12
    for key, value in net.state_dict().items():  # every shared convolution and trained style untouched
        assert torch.equal(value, before[key]), key
    assert [p.requires_grad for p in net.parameters()] == flags

    photo = photo_like(96, 72, seed=7)
    start = objective_terms(net, OBJECTIVE, vgg, grams, photo, init, size=64)
    end = objective_terms(net, OBJECTIVE, vgg, grams, photo, result.code, size=64)
    assert end["total"] < 0.92 * start["total"], (start, end)  # measured: 0.84 after 12 steps

    again = finetune_code(net, OBJECTIVE, vgg, grams, photos, cfg, init=init)
    assert torch.allclose(again.code, result.code, atol=1e-6)  # same seed, same code


def test_the_bf16_path_runs_where_native(net, vgg, grams, photos, one_torch_thread) -> None:
    cfg = FinetuneConfig(iterations=2, batch_size=1, crop=32, precision="auto")
    result = finetune_code(net, OBJECTIVE, vgg, grams, photos, cfg, init=mean_code(net))
    assert result.code.dtype == torch.float32 and torch.isfinite(result.code).all()


def test_non_finite_numbers_stop_with_the_step_and_the_term(net, vgg, grams, photos) -> None:
    bad = mean_code(net)
    bad[0, 0] = float("nan")
    cfg = FinetuneConfig(iterations=3, batch_size=1, crop=32, precision="fp32")
    with pytest.raises(NonFiniteError, match=r"step 1: non-finite .*(content|style|total)"):
        finetune_code(net, OBJECTIVE, vgg, grams, photos, cfg, init=bad)


def test_a_stop_request_from_the_callback_ends_the_run(net, vgg, grams, photos) -> None:
    class Stop(Exception):
        pass

    def stop_at_two(report) -> None:
        if report.step == 2:
            raise Stop

    cfg = FinetuneConfig(iterations=50, batch_size=1, crop=32, precision="fp32")
    with pytest.raises(Stop):
        finetune_code(net, OBJECTIVE, vgg, grams, photos, cfg, init=mean_code(net), on_step=stop_at_two)
    assert all(p.requires_grad for p in net.parameters())  # restored even when stopped


# --- the style-weight balance --------------------------------------------------------------------


def test_the_balance_lowers_the_style_weight_only_for_paintings_above_the_trained_balance() -> None:
    fitted, scale = balanced_objective(OBJECTIVE, painting_loss=8e6, reference_loss=2e6)
    assert scale == pytest.approx(0.25)
    assert fitted.style_weight == pytest.approx(OBJECTIVE.style_weight * 0.25)
    assert (fitted.content_weight, fitted.tv_weight, fitted.style_layers) == (
        OBJECTIVE.content_weight,
        OBJECTIVE.tv_weight,
        OBJECTIVE.style_layers,
    )
    assert balanced_objective(OBJECTIVE, 1e6, 2e6) == (OBJECTIVE, 1.0)  # nearer photos: never raised
    assert balanced_objective(OBJECTIVE, 1e9, 1e6)[1] == MIN_STYLE_SCALE  # bounded below
    for bad in ((0.0, 1.0), (1.0, 0.0), (float("nan"), 1.0)):
        with pytest.raises(ValueError, match="positive"):
            balanced_objective(OBJECTIVE, *bad)


def test_a_painting_far_from_photos_costs_more_before_styling(vgg, photos) -> None:
    measured = photo_grams(OBJECTIVE, vgg, photos)
    assert len(measured) == len(photos)
    near = OBJECTIVE.painting_grams(vgg, photo_like(96, 64, seed=11))
    far = OBJECTIVE.painting_grams(vgg, stripes(96, 96, period=3))
    assert photo_style_loss(OBJECTIVE, measured[0], measured[:1]) == 0.0  # a photo against itself
    assert photo_style_loss(OBJECTIVE, far, measured) > 3 * photo_style_loss(OBJECTIVE, near, measured)
    with pytest.raises(ValueError, match="no photos"):
        photo_style_loss(OBJECTIVE, far, [])


def test_balance_for_measures_against_the_trained_paintings(vgg, photos, grams) -> None:
    # The painting is itself the trained balance: nothing changes.
    assert balance_for(OBJECTIVE, vgg, grams, photos, {0: grams}) == (OBJECTIVE, 1.0)
    # No trained paintings to compare with: unchanged.
    assert balance_for(OBJECTIVE, vgg, grams, photos, {}) == (OBJECTIVE, 1.0)
    # Trained on paintings nearer photos than this one: its weight comes down by the ratio.
    near = {0: OBJECTIVE.painting_grams(vgg, photo_like(96, 64, seed=11))}
    fitted, scale = balance_for(OBJECTIVE, vgg, grams, photos, near)
    measured = photo_grams(OBJECTIVE, vgg, photos)
    ratio = photo_style_loss(OBJECTIVE, near[0], measured) / photo_style_loss(OBJECTIVE, grams, measured)
    assert scale == pytest.approx(max(MIN_STYLE_SCALE, ratio)) and scale < 1
    assert fitted.style_weight == pytest.approx(OBJECTIVE.style_weight * scale)
