"""Growing a trained network (skips, dense residual convs): it converts without changing its
outputs, the new parameters then learn, and the converted run resumes as an extended run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.imaging import pil_to_tensor
from models.training.grow_network import (
    carry_moments,
    convert_checkpoint,
    dense_equivalent,
    with_dense_residuals,
    with_skips,
)
from models.training.train_style import load_checkpoint, newest_checkpoint, parse_args, train
from models.transformer import (
    SeparableConv,
    arch_name,
    build,
    count_params,
    load_transformer,
    one_hot_styles,
    save_transformer,
)
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


def test_a_separable_conv_and_its_dense_equivalent_compute_the_same() -> None:
    torch.manual_seed(1)
    separable = SeparableConv(8)
    dense = dense_equivalent(separable)
    assert dense[1].weight.shape == (8, 8, 3, 3)
    x = torch.randn(2, 8, 11, 9)
    with torch.no_grad():
        torch.testing.assert_close(dense(x), separable(x), atol=1e-5, rtol=1e-5)


def test_dense_residuals_paint_the_same_and_every_dense_weight_learns() -> None:
    net = _trained_like(3)
    grown = with_dense_residuals(net).eval()
    assert not grown.config.separable
    assert count_params(grown) > 3 * count_params(net) and grown.code_size == net.code_size
    photo = pil_to_tensor(photo_like(64, 48))
    with torch.inference_mode():
        for s in range(3):
            style = one_hot_styles([s], 3)
            torch.testing.assert_close(grown(photo, style), net(photo, style), atol=1e-4, rtol=1e-4)
    grown.train()(photo, None).square().mean().backward()
    for block in grown.residuals:
        for conv in (block.conv1[1], block.conv2[1]):
            # a rank-one (separable) weight's gradient is not: the full conv can leave that family
            assert (conv.weight.grad.abs() > 0).float().mean() > 0.99
    with pytest.raises(ValueError, match="already dense"):
        with_dense_residuals(grown)


def test_moments_carry_over_only_where_name_and_shape_match() -> None:
    net = build("medium-despike", num_styles=2)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(pil_to_tensor(photo_like(32, 32)), None).mean().backward()
    optimizer.step()
    grown = with_dense_residuals(net)
    carried = carry_moments(net, optimizer, grown, lr=1e-3)
    params = dict(grown.named_parameters())
    assert params["head.1.weight"] in carried.state
    assert params["residuals.0.conv1.1.bias"] in carried.state  # the pointwise bias: same name and shape
    assert params["residuals.0.conv1.1.weight"] not in carried.state  # 1×1 became 3×3: afresh


@pytest.mark.parametrize(
    ("growth", "arch", "new_key"),
    [
        ("skips", "medium-despike-skips", "bridges.0.weight"),
        ("dense-residuals", "medium-despike-dense", "residuals.0.conv1.1.weight"),
    ],
)
def test_a_finished_run_grows_and_resumes_as_a_longer_run(
    tmp_path: Path, growth: str, arch: str, new_key: str
) -> None:
    photos, paintings = _tiny_data(tmp_path)
    args = _tiny_args(tmp_path, photos, paintings)
    args[args.index("--arch") + 1] = "medium-despike"
    cfg, _ = parse_args(args)
    assert train(cfg)["finished"] is True  # 2 warm-up + 4 style iterations

    out = str(tmp_path / "tiny-grown.safetensors")
    converted = tmp_path / "grown.train-state.safetensors"
    convert = Path(cfg.checkpoint), out, converted
    with pytest.raises(ValueError, match="exceed"):
        convert_checkpoint(*convert, iterations=4, lr=3e-4, rewarm=2, decay_from=0.75, growth=growth)
    with pytest.raises(ValueError, match="unknown growth"):
        convert_checkpoint(*convert, iterations=8, lr=3e-4, rewarm=2, decay_from=0.75, growth="wider")
    new_cfg = convert_checkpoint(*convert, iterations=8, lr=3e-4, rewarm=2, decay_from=0.75, growth=growth)
    assert (new_cfg.arch, new_cfg.iterations, new_cfg.rewarm_at) == (arch, 8, 4)
    assert new_cfg.lr_at(5) == pytest.approx(3e-4 / 2) and new_cfg.lr_at(8) == pytest.approx(cfg.lr_final)
    meta, tensors = load_checkpoint(converted)
    assert meta["iteration"] == "6" and f"model.{new_key}" in tensors
    assert "adam.head.1.weight.exp_avg" in tensors and f"adam.{new_key}.exp_avg" not in tensors
    grown_at_conversion = tensors[f"model.{new_key}"].clone()

    runs = str(tmp_path / "runs")
    resumed, _ = parse_args(["--resume", "--out", out, "--checkpoint", str(converted), "--runs-dir", runs])
    summary = train(resumed, newest_checkpoint(resumed))
    assert summary["iterations"] == 10 and summary["finished"] is True
    model, meta = load_transformer(Path(out))
    assert arch_name(model.config) == arch and json.loads(meta["atelier.train"])["iterations"] == 10
    learned = model.state_dict()[new_key].float()
    assert not torch.allclose(learned, grown_at_conversion.float(), atol=1e-4)  # the new part learns
