"""The CIFAR-10 model code and the committed weights: data pipeline, preprocessing, accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from models import cifar
from models.classifier import (
    INPUT_SIZE,
    CifarNet,
    Ensemble,
    init_whitening,
    load_classifier,
    predict_logits,
    preprocess,
    resize_to_input,
    save_classifier,
)

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "models" / "weights" / "classifier"
WEIGHTS = WEIGHTS_DIR / "classifier.safetensors"
SUBSET = 500

needs_data = pytest.mark.skipif(
    not (cifar.data_dir() / "test.npz").exists(),
    reason=f"CIFAR-10 data not found at {cifar.data_dir()} (set ATELIER_DATA_DIR to the dir with cifar10/)",
)


@pytest.fixture(scope="module")
def committed() -> tuple[CifarNet, dict]:
    assert WEIGHTS.exists(), f"committed classifier weights missing: {WEIGHTS}"
    return load_classifier(WEIGHTS)


@pytest.fixture(scope="module")
def card_metrics() -> dict:
    return json.loads((WEIGHTS_DIR / "metrics.json").read_text())


def test_committed_weights_rebuild_the_recorded_architecture(committed, card_metrics) -> None:
    model, meta = committed
    assert tuple(meta["classes"]) == cifar.CLASSES
    assert meta["version"] == card_metrics["version"]
    if isinstance(model, Ensemble):  # each member as its own training recorded it
        trained = [m["training"]["recipe"] for m in card_metrics["members"]]
        assert [list(net.widths) for net in model.nets] == [list(r["width"]) for r in trained]
        assert [list(net.depths) for net in model.nets] == [list(r["depth"]) for r in trained]
        assert meta["version"] == "+".join(m["version"] for m in card_metrics["members"])
    else:
        assert list(model.widths) == list(card_metrics["recipe"]["width"])
    assert not model.training
    out = model(torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@needs_data
def test_committed_weights_accuracy_on_test_subset_matches_model_card(committed, card_metrics) -> None:
    """First 500 test images: within 4.5 points (~3 sigma at n=500) of the card's 10k accuracy."""
    model, _ = committed
    test = cifar.load_split(False)
    x = cifar.normalize(cifar.to_tensor(test.images[:SUBSET]))
    y = torch.tensor(test.labels[:SUBSET])
    acc_plain = (predict_logits(model, x, tta=0).argmax(1) == y).double().mean().item()
    acc_flip = (predict_logits(model, x, tta=1).argmax(1) == y).double().mean().item()
    assert abs(acc_plain - card_metrics["test_accuracy"]) < 0.045, acc_plain
    assert abs(acc_flip - card_metrics["test_accuracy_tta_flip"]) < 0.045, acc_flip


@needs_data
def test_preprocess_of_a_dataset_image_equals_training_normalization() -> None:
    """A 32x32 image goes through preprocess untouched, exactly as the model saw it in training."""
    test = cifar.load_split(False)
    imgs = [Image.fromarray(test.images[i]) for i in range(8)]
    expected = cifar.normalize(cifar.to_tensor(test.images[:8]))
    assert torch.allclose(preprocess(imgs), expected, atol=1e-6)


def test_preprocess_any_size_and_mode_gives_normalized_32x32() -> None:
    images = [
        Image.new("RGB", (640, 480), (255, 0, 0)),
        Image.new("L", (17, 90), 128),
        Image.new("RGBA", (100, 100), (0, 0, 255, 255)),
        Image.new("RGB", (1, 1), (0, 255, 0)),
    ]
    x = preprocess(images)
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    red = (torch.tensor([1.0, 0.0, 0.0]) - torch.tensor(cifar.MEAN)) / torch.tensor(cifar.STD)
    assert torch.allclose(x[0].mean(dim=(1, 2)), red, atol=1e-3)
    grey = x[1] * torch.tensor(cifar.STD).view(3, 1, 1) + torch.tensor(cifar.MEAN).view(3, 1, 1)
    assert torch.allclose(grey, torch.full_like(grey, 128 / 255), atol=1e-3)


def test_resize_keeps_aspect_and_center_crops() -> None:
    """A 96x32 strip: only its middle third (green) survives, the red/blue sides are cropped off."""
    strip = np.zeros((32, 96, 3), dtype=np.uint8)
    strip[:, :32] = (255, 0, 0)
    strip[:, 32:64] = (0, 255, 0)
    strip[:, 64:] = (0, 0, 255)
    out = np.asarray(resize_to_input(Image.fromarray(strip)))
    assert out.shape == (32, 32, 3)
    assert (out == (0, 255, 0)).all()
    big = resize_to_input(Image.fromarray(np.repeat(np.repeat(strip, 10, 0), 10, 1)))
    assert big.size == (32, 32)
    assert np.abs(np.asarray(big, dtype=int)[:, 4:28] - (0, 255, 0)).max() <= 2


def test_whitening_init_decorrelates_patches() -> None:
    gen = torch.Generator().manual_seed(0)
    mix = torch.tensor([[1.0, 0.8, 0.6], [0.0, 0.5, 0.3], [0.0, 0.0, 0.2]])
    images = torch.einsum("ij,njhw->nihw", mix, torch.randn(64, 3, 16, 16, generator=gen))
    images = images + torch.nn.functional.avg_pool2d(images, 3, 1, 1)  # spatial correlation
    net = CifarNet((8, 8, 8))
    init_whitening(net.whiten, images)
    with torch.no_grad():
        feats = torch.nn.functional.conv2d(images, net.whiten.weight[:12])
    flat = feats.permute(1, 0, 2, 3).reshape(12, -1)
    cov = flat @ flat.T / flat.shape[1]
    assert torch.allclose(cov, torch.eye(12), atol=0.05)
    assert torch.equal(net.whiten.weight[12:], -net.whiten.weight[:12])


def test_save_and_load_roundtrip_fp16(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = CifarNet((8, 16, 16)).eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "c.safetensors"
    save_classifier(net, path, {"version": "test-1", "seed": 7}, half=True)
    loaded, meta = load_classifier(path)
    assert meta["version"] == "test-1" and meta["seed"] == 7 and meta["widths"] == [8, 16, 16]
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=2e-2)


def test_load_rejects_a_foreign_safetensors_file(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not an Atelier CIFAR classifier"):
        load_classifier(path)


def test_random_translate_shifts_each_image_within_pad() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    out = cifar.random_translate(x, 2, gen)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    for i in range(2):
        windows = [padded[i, :, dy : dy + 8, dx : dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    assert torch.equal(cifar.random_translate(x, 0), x)


def test_alternating_flip_flips_each_image_once_per_two_epochs() -> None:
    x = torch.arange(4 * 1 * 2 * 3, dtype=torch.float32).view(4, 1, 2, 3)
    mask = torch.tensor([True, False, True, False])
    even, odd = cifar.alternating_flip(x, mask, 0), cifar.alternating_flip(x, mask, 1)
    for i in range(4):
        flipped_even = torch.equal(even[i], x[i].flip(-1))
        flipped_odd = torch.equal(odd[i], x[i].flip(-1))
        assert flipped_even != flipped_odd
        assert flipped_even == bool(mask[i])


@needs_data
def test_dataset_split_shapes_and_balance() -> None:
    test = cifar.load_split(False)
    assert test.images.shape == (10000, 32, 32, 3) and test.images.dtype == np.uint8
    assert np.bincount(test.labels, minlength=10).tolist() == [1000] * 10
    assert cifar.read_classes(cifar.data_dir()) == cifar.CLASSES
