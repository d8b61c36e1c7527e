"""Gatys optimization, its losses and the imaging helpers, on tiny images (fast on 2 CPU cores)."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from models.gatys import GatysOptions, StepReport, run_gatys
from models.imaging import (
    encode_image,
    pil_to_tensor,
    preserve_color,
    resize_longest,
    tensor_to_pil,
)
from models.losses import (
    content_loss,
    feature_mse,
    gram_matrix,
    gram_mse,
    style_loss,
    total_variation,
)
from models.precision import bf16_runnable
from models.vgg import DEFAULT_STYLE_LAYERS, VGG19Features, caffe_preprocess, load_vgg19

FAST = {"size": 64, "steps": 15}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def vgg() -> VGG19Features:
    return load_vgg19()


def _photo(w: int = 80, h: int = 60) -> Image.Image:
    """Smooth synthetic 'photo': gradients plus a bright disc."""
    yy, xx = np.mgrid[0:h, 0:w]
    r = (xx / w * 255).astype(np.uint8)
    g = (yy / h * 255).astype(np.uint8)
    b = np.where((xx - w / 2) ** 2 + (yy - h / 2) ** 2 < (h / 4) ** 2, 230, 40).astype(np.uint8)
    return Image.fromarray(np.stack([r, g, b], axis=-1))


def _painting(size: int = 64) -> Image.Image:
    """High-frequency coloured stripes and noise: a texture very unlike the photo."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:size, 0:size]
    stripes = ((np.sin((xx + yy) / 2.0) + 1) * 120).astype(np.uint8)
    noise = rng.integers(0, 60, (size, size), dtype=np.uint8)
    return Image.fromarray(np.stack([stripes, 255 - stripes, noise], axis=-1))


def _style_distance(vgg: VGG19Features, img: Image.Image, style: Image.Image) -> float:
    with torch.inference_mode():
        target = vgg(caffe_preprocess(pil_to_tensor(style)), DEFAULT_STYLE_LAYERS)
        grams = {k: gram_matrix(v) for k, v in target.items()}
        feats = vgg(caffe_preprocess(pil_to_tensor(img)), DEFAULT_STYLE_LAYERS)
        return float(style_loss(feats, grams))


# --- losses -----------------------------------------------------------------------------------


def test_gram_matrix_hand_computed() -> None:
    # C=2 channels of H×W = 1×2 pixels: rows (1, 2) and (3, 4); normalized by C·H·W = 4.
    feat = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    expected = torch.tensor([[[1 + 4, 3 + 8], [3 + 8, 9 + 16]]]) / 4.0
    torch.testing.assert_close(gram_matrix(feat), expected)
    batch = torch.cat([feat, 2 * feat])
    torch.testing.assert_close(gram_matrix(batch)[1], 4 * expected[0])


def test_grams_stay_fp32_under_autocast() -> None:
    feat = torch.randn(1, 4, 3, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gram = gram_matrix(feat)
        loss = gram_mse(feat, gram.detach() * 1.5)
    assert gram.dtype == torch.float32 and loss.dtype == torch.float32
    torch.testing.assert_close(loss, F.mse_loss(gram_matrix(feat), gram_matrix(feat).detach() * 1.5))


@pytest.mark.parametrize("channels_last", [False, True])
def test_gram_mse_gradient_matches_autograd(channels_last: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    feat = torch.randn(2, 8, 5, 6, generator=gen)
    if channels_last:
        feat = feat.contiguous(memory_format=torch.channels_last)
    target = gram_matrix(torch.randn(1, 8, 4, 4, generator=gen))
    a = feat.clone().requires_grad_()
    (3.0 * gram_mse(a, target)).backward()
    b = feat.clone().requires_grad_()
    (3.0 * F.mse_loss(gram_matrix(b), target.expand(2, 8, 8))).backward()
    torch.testing.assert_close(a.grad, b.grad)
    assert a.grad.is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_feature_mse_matches_autograd_and_keeps_dtype(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    feat = torch.randn(2, 4, 3, 5, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
    target = torch.randn(1, 4, 3, 5, generator=gen)
    a = feat.clone().requires_grad_()
    (2.0 * feature_mse(a, target)).backward()
    b = feat.float().requires_grad_()
    (2.0 * F.mse_loss(b, target.expand_as(b))).backward()
    assert a.grad.dtype == dtype
    torch.testing.assert_close(
        a.grad.float(), b.grad, rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-3
    )


def test_style_and_content_loss_weighting() -> None:
    f1, f2 = torch.ones(1, 2, 2, 2), torch.zeros(1, 3, 2, 2)
    grams = {"a": torch.zeros(1, 2, 2), "b": torch.ones(1, 3, 3)}
    # gram(f1) = ones·(H·W)/(C·H·W) = 0.5 everywhere -> mse 0.25; gram(f2) = 0 -> mse 1.
    loss = style_loss({"a": f1, "b": f2}, grams, {"a": 2.0, "b": 3.0})
    torch.testing.assert_close(loss, torch.tensor(2.0 * 0.25 + 3.0 * 1.0))
    torch.testing.assert_close(content_loss({"a": f1}, {"a": torch.zeros(1, 2, 2, 2)}), torch.tensor(1.0))


def test_total_variation_hand_computed() -> None:
    x = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])
    # horizontal diffs 1, 2 -> mean 1.5; vertical diffs 2, 3 -> mean 2.5
    torch.testing.assert_close(total_variation(x), torch.tensor(4.0))


# --- Gatys --------------------------------------------------------------------------------------


def test_run_lowers_loss_and_moves_towards_style(vgg: VGG19Features) -> None:
    content, style = _photo(), _painting()
    reports: list[StepReport] = []
    out = run_gatys(vgg, content, [style], GatysOptions(**FAST), on_step=reports.append)
    assert out.size == (64, 48)  # longest side = size, aspect 4:3 kept
    assert [r.step for r in reports] == list(range(1, 16))
    assert set(reports[0].losses) == {"content", "style", "tv", "total"}
    assert reports[-1].losses["total"] < 0.5 * reports[0].losses["total"]
    resized = resize_longest(content, 64)
    assert _style_distance(vgg, out, style) < 0.5 * _style_distance(vgg, resized, style)


@pytest.mark.parametrize("keep_colours", [False, True])
def test_a_step_report_renders_the_image_as_it_stands(vgg: VGG19Features, keep_colours: bool) -> None:
    """What a job stores as its preview: the image after that step, as the run would return it."""
    frames: dict[int, Image.Image] = {}

    def grab(report: StepReport) -> None:
        assert report.image is not None
        frames[report.step] = report.image()

    opts = GatysOptions(size=48, steps=6, preserve_color=keep_colours)
    out = run_gatys(vgg, _photo(), [_painting()], opts, on_step=grab)
    assert np.array_equal(np.asarray(frames[6]), np.asarray(out))  # the last step's is the result
    assert frames[1].size == out.size
    first, last = np.asarray(frames[1], np.float32), np.asarray(out, np.float32)
    assert np.abs(first - last).mean() > 1.0  # earlier previews show an earlier image
    # Stopping at step 3 returns exactly what step 3's report rendered: the preview is the image.
    three = run_gatys(vgg, _photo(), [_painting()], replace(opts, steps=3))
    assert np.array_equal(np.asarray(frames[3]), np.asarray(three))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_same_seed_same_image(vgg: VGG19Features, precision: str) -> None:
    opts = GatysOptions(size=48, steps=4, init="noise", seed=7)
    if precision == "bf16" and not bf16_runnable(torch.device("cpu")):
        with pytest.raises(ValueError, match="bf16 was requested"):  # clear error, not a oneDNN crash
            run_gatys(vgg, _photo(), [_painting()], opts, precision=precision)
        pytest.skip("this CPU cannot run bf16 convolutions (checked: a clear ValueError instead)")
    runs = [run_gatys(vgg, _photo(), [_painting()], opts, precision=precision) for _ in range(2)]
    assert np.array_equal(np.asarray(runs[0]), np.asarray(runs[1]))
    other = run_gatys(vgg, _photo(), [_painting()], GatysOptions(size=48, steps=4, init="noise", seed=8))
    assert not np.array_equal(np.asarray(runs[0]), np.asarray(other))


def test_adam_avg_pooling_two_styles_and_color(vgg: VGG19Features) -> None:
    opts = GatysOptions(
        size=48,
        steps=8,
        optimizer="adam",
        learning_rate=4.0,
        pooling="avg",
        style_blend_weights=(3.0, 1.0),
        style_layer_weights=(1.0, 1.0, 0.5, 0.5, 0.5),
        preserve_color=True,
        style_scale=1.5,
    )
    totals: list[float] = []
    out = run_gatys(
        vgg, _photo(), [_painting(), _photo(40, 40)], opts, on_step=lambda r: totals.append(r.losses["total"])
    )
    assert totals[-1] < totals[0]
    assert out.size == (48, 36)
    # colour preservation: chroma comes from the content photo
    chroma = np.asarray(out.convert("YCbCr"), float)[..., 1:]
    chroma_ref = np.asarray(resize_longest(_photo(), 48).convert("YCbCr"), float)[..., 1:]
    assert np.abs(chroma - chroma_ref).mean() < 2.0


def test_report_every_and_last_step(vgg: VGG19Features) -> None:
    steps: list[int] = []
    run_gatys(
        vgg,
        _photo(),
        [_painting()],
        GatysOptions(size=32, steps=7),
        on_step=lambda r: steps.append(r.step),
        report_every=3,
    )
    assert steps == [3, 6, 7]


def test_on_step_exception_aborts(vgg: VGG19Features) -> None:
    class Cancelled(Exception):
        pass

    seen: list[int] = []

    def cancel(report: StepReport) -> None:
        seen.append(report.step)
        if report.step == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        run_gatys(vgg, _photo(), [_painting()], GatysOptions(size=32, steps=50), on_step=cancel)
    assert seen == [1, 2]


@pytest.mark.parametrize(
    ("options", "n_styles", "match"),
    [
        ({"style_layers": ("relu1_1", "relu9_9")}, 1, "unknown VGG19 layer"),
        ({"content_layers": ("block4_relu2",)}, 1, "unknown VGG19 layer"),
        ({"style_layer_weights": (1.0, 2.0)}, 1, "style_layer_weights has 2 entries"),
        ({"style_blend_weights": (1.0,)}, 2, "style_blend_weights has 1 entries"),
        ({"style_blend_weights": (0.0, 0.0)}, 2, "must not all be zero"),
        ({"style_weight": -1.0}, 1, "style_weight"),
        ({"optimizer": "sgd"}, 1, "optimizer"),
        ({"pooling": "min"}, 1, "pooling"),
        ({"steps": 0}, 1, "steps"),
        ({}, 0, "style image"),
        ({"size": 8}, 1, "needs both sides"),
    ],
)
def test_invalid_options_raise(vgg: VGG19Features, options: dict, n_styles: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        run_gatys(
            vgg, _photo(), [_painting()] * n_styles, GatysOptions(**{"steps": 1, "size": 32, **options})
        )


def test_layer_deeper_than_loaded_model_raises() -> None:
    small = load_vgg19("relu3_1")
    with pytest.raises(ValueError, match="deeper than the loaded VGG"):
        run_gatys(small, _photo(), [_painting()], GatysOptions(size=32, steps=1))


# --- imaging ------------------------------------------------------------------------------------


def test_tensor_round_trip_and_resize() -> None:
    img = _photo()
    t = pil_to_tensor(img)
    assert t.shape == (1, 3, 60, 80) and t.dtype == torch.float32 and t.min() >= 0 and t.max() <= 1
    assert np.array_equal(np.asarray(tensor_to_pil(t)), np.asarray(img))
    assert np.asarray(tensor_to_pil(t * 3 - 1)).max() == 255  # clamped
    assert resize_longest(img, 40).size == (40, 30)
    assert resize_longest(img, 160).size == (160, 120)
    assert resize_longest(Image.new("RGB", (1000, 2)), 10).size == (10, 1)  # never 0 px


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_encode_image(fmt: str) -> None:
    data = encode_image(Image.new("RGBA", (8, 8), (10, 20, 30, 128)), fmt)
    assert Image.open(io.BytesIO(data)).format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt]
    with pytest.raises(ValueError):
        encode_image(Image.new("RGB", (8, 8)), "gif")


def test_preserve_color_takes_luma_from_stylized() -> None:
    content = Image.new("RGB", (20, 10), (200, 30, 30))
    stylized = Image.new("RGB", (10, 5), (90, 90, 90))
    out = preserve_color(content, stylized)
    assert out.size == (10, 5)
    y, cb, cr = out.convert("YCbCr").getpixel((3, 3))
    y_ref = stylized.convert("YCbCr").getpixel((0, 0))[0]
    _, cb_ref, cr_ref = content.convert("YCbCr").getpixel((0, 0))
    assert abs(y - y_ref) <= 2 and abs(cb - cb_ref) <= 2 and abs(cr - cr_ref) <= 2
