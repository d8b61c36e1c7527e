"""Encoder-to-decoder skips: a trained network converts without changing its outputs, the skips
then learn, and the converted run resumes as an extended run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.imaging import pil_to_tensor
from models.training.add_skips import convert_checkpoint, with_skips
from models.training.train_style import load_checkpoint, newest_checkpoint, parse_args, train
from models.transformer import arch_name, build, load_transformer, one_hot_styles, save_transformer
from tests.test_freeze_norms import _trained_like
from tests.test_transformer import _tiny_args, _tiny_data, photo_like


def test_skips_start_at_zero_so_the_converted_network_paints_the_same() -> None:
    net = _trained_like(3)
    grown = with_skips(net).eval()
    assert grown.config.skips and grown.code_size == net.code_size
    photo = pil_to_tensor(photo_like(64, 48))
    with torch.inference_mode():
        for s in range(3):
            style = one_hot_styles([s], 3)
            torch.testing.assert_close(grown(photo, style), net(photo, style))
    with pytest.raises(ValueError, match="already"):
        with_skips(grown)


def test_the_skips_get_gradients_and_change_the_output_once_trained() -> None:
    grown = with_skips(_trained_like(2)).train()
    photo = pil_to_tensor(photo_like(48, 48))
    grown(photo, None).square().mean().backward()
    assert all(b.weight.grad is not None and b.weight.grad.abs().sum() > 0 for b in grown.bridges)
    before = grown.eval()(photo, None).detach()
    with torch.no_grad():
        grown.bridges[1].weight.normal_(std=0.1)
        assert not torch.allclose(grown(photo, None), before, atol=1e-3)


def test_a_network_with_skips_round_trips(tmp_path: Path) -> None:
    net = build("medium-despike-skips", num_styles=2).eval()
    with torch.no_grad():
        for bridge in net.bridges:
            bridge.weight.normal_(std=0.05)
    save_transformer(tmp_path / "n.safetensors", net)
    loaded, _ = load_transformer(tmp_path / "n.safetensors")
    assert arch_name(loaded.config) == "medium-despike-skips"
    x = pil_to_tensor(photo_like(40, 40, seed=3))
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x, None), net(x, None), atol=5e-3, rtol=5e-3)


def test_a_finished_run_converts_and_resumes_as_a_longer_run(tmp_path: Path) -> None:
    photos, paintings = _tiny_data(tmp_path)
    args = _tiny_args(tmp_path, photos, paintings)
    args[args.index("--arch") + 1] = "medium-despike"
    cfg, _ = parse_args(args)
    assert train(cfg)["finished"] is True  # 2 warm-up + 4 style iterations

    out = str(tmp_path / "tiny-skips.safetensors")
    converted = tmp_path / "skips.train-state.safetensors"
    convert = Path(cfg.checkpoint), out, converted
    with pytest.raises(ValueError, match="exceed"):
        convert_checkpoint(*convert, iterations=4, lr=3e-4, rewarm=2, decay_from=0.75)
    new_cfg = convert_checkpoint(*convert, iterations=8, lr=3e-4, rewarm=2, decay_from=0.75)
    assert (new_cfg.arch, new_cfg.iterations, new_cfg.rewarm_at) == ("medium-despike-skips", 8, 4)
    assert new_cfg.lr_at(5) == pytest.approx(3e-4 / 2) and new_cfg.lr_at(8) == pytest.approx(cfg.lr_final)
    meta, tensors = load_checkpoint(converted)
    assert meta["iteration"] == "6" and "model.bridges.0.weight" in tensors
    assert "adam.head.1.weight.exp_avg" in tensors and "adam.bridges.0.weight.exp_avg" not in tensors

    runs = str(tmp_path / "runs")
    resumed, _ = parse_args(["--resume", "--out", out, "--checkpoint", str(converted), "--runs-dir", runs])
    summary = train(resumed, newest_checkpoint(resumed))
    assert summary["iterations"] == 10 and summary["finished"] is True
    model, meta = load_transformer(Path(out))
    assert model.config.skips and json.loads(meta["atelier.train"])["iterations"] == 10
    assert any(b.weight.abs().sum() > 0 for b in model.bridges)  # the skips have started to learn
