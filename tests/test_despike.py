"""Despiking decoder norms: spikes are replaced by their ordinary neighbours' mean, nothing else moves,
and the setting lives in the weights file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.imaging import pil_to_tensor
from models.training.freeze_norms import freeze_norms, norm_stats
from models.transformer import (
    ConditionalAffine2d,
    TransformerConfig,
    TransformerNet,
    box_row,
    despike,
    load_transformer,
    one_hot_styles,
    save_transformer,
)
from tests.test_freeze_norms import _trained_like
from tests.test_transformer import photo_like


def test_a_spike_becomes_the_mean_of_the_ordinary_values_around_it_and_nothing_else_changes() -> None:
    torch.manual_seed(0)
    z = torch.randn(1, 2, 20, 20).clamp(-2.5, 2.5)
    z[0, 0, 10, 10] = 30.0  # a droplet
    z[0, 0, 10, 11] = -25.0  # ... two pixels wide
    z[0, 1, 0, 0] = 12.0  # one in a corner of the other channel
    out = despike(z, threshold=3.0, row=box_row(2, 5))

    spikes = z.abs() > 3.0
    torch.testing.assert_close(out[~spikes], z[~spikes], rtol=0, atol=0)
    window = z[0, 0, 8:13, 8:13]
    ordinary = window[window.abs() <= 3.0]
    torch.testing.assert_close(out[0, 0, 10, 10], ordinary.mean())
    corner = z[0, 1, 0:3, 0:3]  # the window clipped at the border: only real pixels count
    torch.testing.assert_close(out[0, 1, 0, 0], corner[corner.abs() <= 3.0].mean())
    assert out.abs().max() <= 3.0


def test_a_window_of_nothing_but_spikes_gives_zero_not_nan() -> None:
    z = torch.full((1, 1, 6, 6), 50.0)
    out = despike(z, threshold=3.0, row=box_row(1, 3))
    assert torch.isfinite(out).all() and out.abs().max() == 0


def test_gradients_flow_through_the_ordinary_values() -> None:
    z = torch.randn(1, 1, 8, 8).clamp(-2, 2)
    z[0, 0, 4, 4] = 40.0
    z.requires_grad_(True)
    despike(z, 3.0, box_row(1, 3)).sum().backward()
    assert torch.isfinite(z.grad).all()
    assert z.grad[0, 0, 4, 4] == 0  # the spike itself no longer reaches the output
    assert z.grad[0, 0, 3, 3] > 1  # its neighbours now also stand in for it


def test_despike_needs_fixed_statistics() -> None:
    with pytest.raises(ValueError, match="despike"):
        TransformerConfig(despike=3.0)  # instance norm: the spread would collapse without the spikes
    with pytest.raises(ValueError, match="despike"):
        TransformerConfig(decoder_norm="affine", despike=-1.0)


def test_a_despiking_network_keeps_its_threshold_through_the_weights_file(tmp_path: Path) -> None:
    net = _trained_like(2)
    photo = pil_to_tensor(photo_like(48, 48))
    plain = freeze_norms(net, norm_stats(net, [photo], ["decoder"])).eval()
    spiky = freeze_norms(net, norm_stats(net, [photo], ["decoder"]), despike=0.5).eval()
    norms = [block.conv.norm for block in spiky.upsample]
    assert all(isinstance(n, ConditionalAffine2d) and n.despike == 0.5 for n in norms)
    assert spiky.config.residual_norm == "instance"  # only the decoder was asked for

    save_transformer(tmp_path / "n.safetensors", spiky)
    loaded, _ = load_transformer(tmp_path / "n.safetensors")
    assert loaded.config.despike == 0.5
    style = one_hot_styles([1], 2)
    with torch.inference_mode():
        # fp16 weights move a few values across the threshold: close on average, not everywhere
        assert (loaded(photo, style) - spiky(photo, style)).abs().mean() < 1e-3
        # A threshold this low touches ordinary activations too: the function visibly changes.
        assert not torch.allclose(spiky(photo, style), plain(photo, style), atol=1e-3)


def test_the_half_resolution_norm_fills_spikes_and_the_full_resolution_one_clips_them() -> None:
    net = TransformerNet(TransformerConfig(channels=(4, 6, 8), blocks=1, decoder_norm="affine", despike=2.0))
    half, full = (block.conv.norm for block in net.upsample)
    z = torch.zeros(1, 1, 5, 5)
    z[0, 0, 2, 2] = 9.0
    z[0, 0, 0, 0] = -1.5
    for norm in (half, full):  # statistics 0 and 1: normalize sees z itself
        assert float(norm.mean.abs().max()) == 0 and float(norm.spread.min()) == 1
    filled = half.normalize(z.expand(1, 6, 5, 5))[0, 0]
    clipped = full.normalize(z.expand(1, 4, 5, 5))[0, 0]
    assert filled[2, 2] == pytest.approx(-1.5 / 24)  # the mean of the other 24 pixels in its window
    assert clipped[2, 2] == 2.0 and clipped[0, 0] == -1.5
