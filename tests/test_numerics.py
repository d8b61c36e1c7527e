"""No valid loss weight produces a non-finite gradient; a non-finite value stops the run loudly.

The bf16 GEMM on AVX-512 CPUs returned garbage (NaN, ~1e7) when a zero loss weight reached the Gram
backward as the GEMM's alpha. Every zero-weight position is checked here against a plain-autograd
reference, in fp32 everywhere and in bf16 where the CPU runs it natively.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.gatys import GatysOptions, NumericalError, _check_finite, run_gatys
from models.losses import content_loss, gram_matrix, style_loss, total_variation
from models.precision import bf16_native
from models.vgg import DEFAULT_STYLE_LAYERS, VGG19Features, caffe_preprocess, load_vgg19
from tests.images import photo_like, stripes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")
ZERO_POSITIONS = ["style_layer", "content", "style", "tv", "none"]
DTYPES = [
    torch.float32,
    pytest.param(
        torch.bfloat16,
        marks=pytest.mark.skipif(
            not bf16_native(CPU), reason="this CPU has no native bf16 (AVX-512 BF16/AMX)"
        ),
    ),
]


@pytest.fixture(scope="module")
def vgg() -> VGG19Features:
    return load_vgg19("relu5_1")


def _weights(zero: str) -> dict:
    layer_weights = {name: 1.0 for name in DEFAULT_STYLE_LAYERS}
    if zero == "style_layer":
        layer_weights["relu3_1"] = 0.0
    return {
        "content": 0.0 if zero == "content" else 1.0,
        "style": 0.0 if zero == "style" else 50.0,
        "tv": 0.0 if zero == "tv" else 10.0,
        "layers": layer_weights,
    }


def _objective(vgg, x, dtype, w, targets, grams, reference: bool) -> torch.Tensor:
    feats = vgg(x.to(dtype=dtype, memory_format=torch.channels_last), ("relu4_2", *DEFAULT_STYLE_LAYERS))
    if reference:  # plain autograd in fp32: no custom backward involved
        c = F.mse_loss(feats["relu4_2"].float(), targets["relu4_2"])
        s = sum(F.mse_loss(gram_matrix(feats[n].float()), g) * w["layers"][n] for n, g in grams.items())
    else:
        c = content_loss(feats, targets)
        s = style_loss(feats, grams, w["layers"])
    return w["content"] * c + w["style"] * s + w["tv"] * total_variation(x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("zero", ZERO_POSITIONS)
def test_zero_weights_give_finite_gradients_equal_to_autograd(vgg, dtype, zero) -> None:
    model = vgg.converted(dtype=dtype, channels_last=True)
    photo = caffe_preprocess(torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(0)))
    painting = caffe_preprocess(torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(1)))
    with torch.inference_mode():
        fp = vgg(photo, ("relu4_2",))
        fs = vgg(painting, DEFAULT_STYLE_LAYERS)
    targets = {"relu4_2": fp["relu4_2"].clone()}
    grams = {n: gram_matrix(f).clone() for n, f in fs.items()}
    w = _weights(zero)

    grads = []
    for reference in (False, True):
        x = photo.clone().requires_grad_()
        _objective(model, x, dtype, w, targets, grams, reference).backward()
        grads.append(x.grad)
    ours, ref = grads
    assert torch.isfinite(ours).all(), f"{int((~torch.isfinite(ours)).sum())} non-finite gradient entries"
    scale = ref.abs().max().clamp_min(1e-12)
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    assert ((ours - ref).abs().max() / scale) < tol


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_zero_weighted_style_term_backpropagates_exact_zeros(vgg, dtype) -> None:
    """The reproduction from the bug report: ``(0 * style_loss).backward()`` through bf16 VGG."""
    model = vgg.converted(dtype=dtype, channels_last=True)
    x = caffe_preprocess(torch.rand(1, 3, 64, 64)).requires_grad_()
    feats = model(x.to(dtype=dtype, memory_format=torch.channels_last), DEFAULT_STYLE_LAYERS)
    grams = {n: torch.rand(1, f.shape[1], f.shape[1]) for n, f in feats.items()}
    (0.0 * style_loss(feats, grams)).backward()
    assert torch.equal(x.grad, torch.zeros_like(x.grad))


def test_style_loss_with_every_layer_zero_weighted_is_zero(vgg) -> None:
    feats = vgg(caffe_preprocess(torch.rand(1, 3, 32, 32)), ("relu1_1", "relu2_1"))
    grams = {n: torch.rand(1, f.shape[1], f.shape[1]) for n, f in feats.items()}
    assert float(style_loss(feats, grams, {"relu1_1": 0.0, "relu2_1": 0.0})) == 0.0


def test_gatys_with_a_zero_layer_weight_gives_finite_losses_and_a_real_image(vgg) -> None:
    opts = GatysOptions(size=64, steps=10, style_layer_weights=(1.0, 1.0, 0.0, 1.0, 1.0))
    reports = []
    out = run_gatys(vgg, photo_like(), [stripes()], opts, on_step=reports.append)
    assert all(math.isfinite(v) for r in reports for v in r.losses.values())
    mean = float(np.asarray(out.convert("L")).mean())
    assert 30 < mean < 230


def test_injected_nan_fails_the_run_with_the_step_and_term(vgg) -> None:
    poisoned = vgg.converted(dtype=torch.float32)
    poisoned = VGG19Features({k: c for k, c in poisoned.convs.items()})
    with torch.no_grad():
        poisoned.convs["conv3_1"].bias[0] = math.inf  # NaN would be hidden by the fused ReLU
    with pytest.raises(NumericalError, match=r"numerical error at step 1: non-finite .*style"):
        run_gatys(poisoned, photo_like(), [stripes()], GatysOptions(size=64, steps=5), precision="fp32")


def test_nan_image_is_caught_even_when_the_losses_look_finite() -> None:
    """The fused conv+ReLU turns NaN inputs into zeros: the image itself must be checked."""
    x = torch.zeros(1, 3, 8, 8, requires_grad=True)
    x.grad = torch.zeros_like(x)
    parts = {"content": torch.tensor(1.0), "total": torch.tensor(1.0)}
    _check_finite(3, parts, x)  # all finite: no error
    with torch.no_grad():
        x[0, 0, 0, 0] = math.nan
    with pytest.raises(NumericalError, match="numerical error at step 3: non-finite image"):
        _check_finite(3, parts, x)
