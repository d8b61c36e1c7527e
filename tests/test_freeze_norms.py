"""Decoder norms with fixed statistics: the fold is exact, style codes carry over, and a converted
training run resumes where it stopped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.imaging import pil_to_tensor
from models.training.freeze_norms import convert_checkpoint, freeze_norms, norm_stats
from models.training.spikes import SpikePenalty, spike_share
from models.training.train_style import load_checkpoint, newest_checkpoint, parse_args, train
from models.transformer import ConditionalAffine2d, arch_name, build, load_transformer, one_hot_styles
from tests.test_transformer import _tiny_args, _tiny_data, photo_like


def _trained_like(num_styles: int) -> torch.nn.Module:
    """A ``medium`` network whose per-style rows differ, as after training."""
    torch.manual_seed(0)
    net = build("medium", num_styles=num_styles).eval()
    with torch.no_grad():
        for module in net.coded:
            module.weight.add_(0.2 * torch.randn_like(module.weight))
            module.bias.add_(0.2 * torch.randn_like(module.bias))
    return net


def test_fixed_statistics_reproduce_instance_norm_on_the_images_they_were_measured_on() -> None:
    net = _trained_like(3)
    photo = pil_to_tensor(photo_like(64, 48))
    frozen = freeze_norms(net, norm_stats(net, [photo])).eval()
    assert all(isinstance(b.conv.norm, ConditionalAffine2d) for b in frozen.upsample)
    assert frozen.config.decoder_norm == "affine" and frozen.code_size == net.code_size
    with torch.inference_mode():
        for s in range(3):
            style = one_hot_styles([s], 3)
            torch.testing.assert_close(frozen(photo, style), net(photo, style), atol=2e-4, rtol=1e-4)
        # ... and unlike instance norm, the decoder no longer adapts to another photo's statistics.
        other = pil_to_tensor(photo_like(64, 48, seed=5))
        assert not torch.allclose(frozen(other, style), net(other, style), atol=1e-3)


def test_a_frozen_network_round_trips_with_its_statistics(tmp_path: Path) -> None:
    from models.transformer import save_transformer

    net = _trained_like(2)
    frozen = freeze_norms(net, norm_stats(net, [pil_to_tensor(photo_like(48, 48))]))
    save_transformer(tmp_path / "n.safetensors", frozen)
    loaded, _ = load_transformer(tmp_path / "n.safetensors")
    assert loaded.config.decoder_norm == "affine"
    x = pil_to_tensor(photo_like(40, 40, seed=3))
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x, None), frozen.eval()(x, None), atol=5e-3, rtol=5e-3)


def test_freezing_twice_is_refused() -> None:
    net = _trained_like(2)
    frozen = freeze_norms(net, norm_stats(net, [pil_to_tensor(photo_like(32, 32))]))
    with pytest.raises(ValueError, match="already"):
        freeze_norms(frozen, norm_stats(frozen, [pil_to_tensor(photo_like(32, 32))]))


def test_a_converted_run_resumes_at_its_iteration_with_its_schedule(tmp_path: Path) -> None:
    photos, paintings = _tiny_data(tmp_path)
    args = _tiny_args(tmp_path, photos, paintings, "--stop-after", "4")
    args[args.index("--arch") + 1] = "medium"
    cfg, _ = parse_args(args)
    assert train(cfg)["iterations"] == 4

    out = str(tmp_path / "frozen.safetensors")
    converted = tmp_path / "frozen.train-state.safetensors"
    new_cfg = convert_checkpoint(Path(cfg.checkpoint), out, converted, crops=4, size=32)
    meta, tensors = load_checkpoint(converted)
    assert new_cfg.arch == "medium-affine-res" and meta["iteration"] == "4"
    assert any(k.endswith("norm.spread") for k in tensors)
    assert not any(k.startswith("adam.") for k in tensors)  # a fresh optimizer, re-warmed
    assert (new_cfg.rewarm_at, new_cfg.lr_at(5)) == (2, pytest.approx(cfg.lr_at(5) * 3 / 500))

    resume_args = ["--resume", "--out", out, "--checkpoint", str(converted), "--stop-after", "0"]
    resume_args += ["--spike-weight", "10"]  # the regularizer can be switched on when resuming
    resumed, _ = parse_args(resume_args)
    assert (resumed.arch, resumed.iterations, resumed.lr, resumed.crop_schedule) == (
        "medium-affine-res",
        cfg.iterations,
        cfg.lr,
        cfg.crop_schedule,
    )
    summary = train(resumed, newest_checkpoint(resumed))
    assert summary["iterations"] == cfg.total_iterations and summary["finished"] is True
    logged = [
        json.loads(line) for line in (tmp_path / "runs" / "frozen" / "losses.jsonl").read_text().splitlines()
    ]
    assert logged and all(row["spike"] >= 0 for row in logged)
    model, meta = load_transformer(Path(out))
    assert model.config.decoder_norm == model.config.residual_norm == "affine"
    assert json.loads(meta["atelier.train"])["iterations"] == cfg.total_iterations


def test_only_the_decoder_can_be_frozen() -> None:
    net = _trained_like(2)
    stats = norm_stats(net, [pil_to_tensor(photo_like(32, 32))], parts=["decoder"])
    frozen = freeze_norms(net, stats)
    assert (frozen.config.decoder_norm, frozen.config.residual_norm) == ("affine", "instance")
    assert arch_name(frozen.config) == "medium-affine"


def test_the_spike_penalty_grows_with_outliers_and_the_share_finds_them() -> None:
    net = _trained_like(2)
    photo = pil_to_tensor(photo_like(64, 64))
    penalty = SpikePenalty(net, threshold=4.0)
    with torch.no_grad(), penalty.recording():
        net(photo, None)
    calm = float(penalty.value())
    with torch.no_grad():  # a huge activation in one spot of every channel, as the droplets are
        spiky = photo.clone()
        spiky[..., 30:32, 30:32] = 40.0
    with torch.no_grad(), penalty.recording():
        net(spiky, None)
    assert float(penalty.value()) > calm + 1e-3
    smooth = torch.randn(1, 4, 32, 32)
    spiked = smooth.clone()
    spiked[..., 5, 5] = 500.0
    assert spike_share(smooth).max() < 0.1 < 0.9 < spike_share(spiked).min()


@pytest.mark.parametrize("despike", [0.0, 1.0])
def test_a_frozen_network_exports_to_onnx_with_style_codes(despike: float) -> None:
    ort = pytest.importorskip("onnxruntime")
    import numpy as np

    from models.transformer import export_onnx

    net = _trained_like(2)
    stats = norm_stats(net, [pil_to_tensor(photo_like(48, 48))], parts=["decoder"])
    frozen = freeze_norms(net, stats, despike).eval()
    session = ort.InferenceSession(export_onnx(frozen, style_input=True), providers=["CPUExecutionProvider"])
    x = torch.rand(2, 3, 40, 56)
    code = frozen.style_code(torch.tensor([[1.0, 0.0], [0.3, 0.7]]), 2).detach()
    with torch.inference_mode():
        expected = frozen.forward_code(x, code).numpy()
    got = session.run(None, {"image": x.numpy(), "style_code": code.numpy()})[0]
    if not despike:
        np.testing.assert_allclose(got, expected, atol=1e-4)
    else:  # rounding moves a value across the threshold now and then: equal nearly everywhere
        assert np.mean(np.abs(got - expected) < 1e-4) > 0.999


def test_fixed_norms_of_a_fresh_network_are_calibrated_like_instance_norm() -> None:
    from models.training.fixed_norms import calibrate_fixed_norms, norms_of

    torch.manual_seed(0)
    net = build("medium-affine-res", num_styles=3).eval()
    crops = [pil_to_tensor(photo_like(48, 48, seed=k)) for k in range(4)]
    assert calibrate_fixed_norms(net, crops) == 12  # 5 blocks x 2 + the decoder's 2
    normalized: dict[str, list[torch.Tensor]] = {}
    hooks = [
        norm.register_forward_hook(
            lambda m, i, _o, name=name: normalized.setdefault(name, []).append(
                (i[0] - m.mean[:, None, None]) / m.spread[:, None, None]
            )
        )
        for name, norm in norms_of(net).items()
    ]
    with torch.inference_mode():
        for crop in crops:
            net(crop, torch.full((1, 3), 1 / 3))
    for h in hooks:
        h.remove()
    for name, maps in normalized.items():
        z = torch.cat(maps)
        assert z.mean((0, 2, 3)).abs().max() < 1e-3, name
        assert (z.var((2, 3), unbiased=False).mean(0) - 1).abs().max() < 1e-3, name


def test_robust_instance_norm_ignores_a_planted_spike_that_steers_instance_norm() -> None:
    from models.transformer import ConditionalInstanceNorm2d, RobustInstanceNorm2d

    torch.manual_seed(0)
    plain, robust = ConditionalInstanceNorm2d(4, 1), RobustInstanceNorm2d(4, 1)
    code = plain.code_rows()  # scale 1, shift 0
    x = torch.randn(1, 4, 32, 32)
    spiked = x.clone()
    spiked[..., 3:5, 3:5] = 60.0  # 0.4% of the pixels
    rest = torch.ones(32, 32, dtype=torch.bool)
    rest[3:5, 3:5] = False
    with torch.no_grad():
        shrink_plain = plain(spiked, code)[..., rest].std() / plain(x, code)[..., rest].std()
        shrink_robust = robust(spiked, code)[..., rest].std() / robust(x, code)[..., rest].std()
    assert shrink_plain < 0.4  # instance norm: the spike sets the spread and dims everything else
    assert shrink_robust > 0.85  # the robust spread barely moves
