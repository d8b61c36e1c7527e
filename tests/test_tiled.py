"""Tiled stylization (models/tiled.py) gives what one forward pass of the whole image gives."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.styles import load_network
from models.tiled import DEFAULT_MARGIN, per_image_norms, plan_tiles, stylize_tiled, tile_passes
from models.transformer import TransformerNet, build, pad_to_multiple

WEIGHTS = Path(__file__).resolve().parents[1] / "models" / "weights"


def whole_forward(model: TransformerNet, image: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        padded, h, w = pad_to_multiple(image)
        return model.forward_code(padded, code)[..., :h, :w].clamp(0.0, 1.0)


def textured(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Smooth gradients plus noise: per-image statistics that differ a lot from tile to tile."""
    g = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, height)[:, None]
    xs = torch.linspace(0, 1, width)[None, :]
    base = torch.stack(
        [ys * xs, (1 - ys).expand(height, width), ((xs * 6).sin() * 0.5 + 0.5).expand(height, width)]
    )
    return (0.8 * base + 0.2 * torch.rand(3, height, width, generator=g)).clamp(0, 1)[None]


@pytest.fixture(scope="module")
def served() -> tuple[TransformerNet, torch.Tensor]:
    network = load_network(WEIGHTS)
    model = network.model.eval()
    return model, model.style_code(network.style_weights(network.names[:2], [0.7, 0.3]))


def test_tiles_equal_the_whole_image_forward_with_the_served_network(served) -> None:
    model, code = served
    image = textured(150, 229)  # not multiples of 4: the padding is the whole forward's
    whole = whole_forward(model, image, code)
    tiled = stylize_tiled(model, image, code, tile=64)
    assert tiled.shape == whole.shape == (1, 3, 150, 229)
    assert (tiled - whole).abs().max().item() < 1e-4


def test_a_margin_narrower_than_the_receptive_field_shows_seams(served) -> None:
    """The check above can fail: with too little context the tiles' edges differ."""
    model, code = served
    image = textured(128, 192)
    whole = whole_forward(model, image, code)
    assert (stylize_tiled(model, image, code, tile=64, margin=8) - whole).abs().max().item() > 0.01


def test_without_whole_image_statistics_tiles_would_differ(served) -> None:
    """Per-tile instance norm (the naive way) is visibly off: what the statistics passes fix."""
    model, code = served
    image = textured(128, 192)
    whole = whole_forward(model, image, code)
    naive = torch.zeros_like(whole)
    for t in plan_tiles(128, 192, 64, DEFAULT_MARGIN):
        naive[..., t.top : t.bottom, t.left : t.right] = t.core_of(
            whole_forward(model, t.window(image), code)
        )
    assert (naive - whole).abs().mean().item() > 0.005


@pytest.mark.parametrize("arch", ["reference", "medium", "medium-despike-skips"])
def test_other_archs_tile_exactly(arch: str) -> None:
    torch.manual_seed(1)
    model = build(arch, num_styles=2).eval()
    with torch.no_grad():  # random norms so that every layer matters
        for norm in per_image_norms(model):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    code = model.style_code(torch.tensor([[0.5, 0.5]]))
    image = textured(100, 140, seed=2)
    whole = whole_forward(model, image, code)
    assert (stylize_tiled(model, image, code, tile=32) - whole).abs().max().item() < 1e-4


def test_robust_norms_are_refused() -> None:
    model = build("medium-robust", num_styles=1)
    with pytest.raises(ValueError, match="plain instance norms"):
        stylize_tiled(model, textured(64, 64), model.style_code(None), tile=32)


def test_progress_counts_every_pass_and_shows_the_picture_only_while_painting(served) -> None:
    model, code = served
    image = textured(90, 130)
    calls: list[tuple[int, int, torch.Tensor | None]] = []
    out = stylize_tiled(
        model,
        image,
        code,
        tile=64,
        on_progress=lambda d, t, p: calls.append((d, t, None if p is None else p.clone())),
    )
    total = tile_passes(model, 90, 130, tile=64)
    tiles = len(plan_tiles(92, 132, 64, DEFAULT_MARGIN))
    # a pass per per-image norm, one that keeps the encoder's output for the residual blocks' norms, the last
    assert total == tiles * (len(per_image_norms(model)) + 2) == len(calls)
    assert [d for d, _, _ in calls] == list(range(1, total + 1)) and {t for _, t, _ in calls} == {total}
    assert all(p is None for _, _, p in calls[:-tiles]) and all(p is not None for _, _, p in calls[-tiles:])
    first = calls[-tiles][2]
    assert first.shape == out.shape and (first[..., 64:, 64:] - image[..., 64:, 64:]).abs().max() == 0
    assert torch.equal(calls[-1][2], out)


def test_one_tile_is_one_forward(served) -> None:
    model, code = served
    image = textured(40, 60)
    calls: list[int] = []
    out = stylize_tiled(model, image, code, tile=64, on_progress=lambda d, t, p: calls.append(t))
    assert calls == [1] == [tile_passes(model, 40, 60, tile=64)]
    assert torch.equal(out, whole_forward(model, image, code))


def test_the_norms_are_given_back_even_when_the_job_stops(served) -> None:
    model, code = served

    def cancel(done: int, total: int, partial: torch.Tensor | None) -> None:
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stylize_tiled(model, textured(128, 128), code, tile=64, on_progress=cancel)
    assert all(norm.image_statistics is None for norm in per_image_norms(model))


def test_tiles_cover_the_image_once() -> None:
    tiles = plan_tiles(200, 296, 64, 16)
    covered = torch.zeros(200, 296, dtype=torch.int32)
    for t in tiles:
        covered[t.top : t.bottom, t.left : t.right] += 1
        assert t.window_top == max(0, t.top - 16) and t.window_right == min(296, t.right + 16)
    assert bool((covered == 1).all())
    with pytest.raises(ValueError, match="height must be a positive multiple of 4, got 201"):
        plan_tiles(201, 296, 64, 16)
    with pytest.raises(ValueError, match=r"margin must be a multiple of 4 .* got 6"):
        plan_tiles(200, 296, 64, 6)
