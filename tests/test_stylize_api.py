"""POST /stylize and GET /styles: every field, every error, and batching of concurrent requests."""

from __future__ import annotations

import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from models.styles import read_manifest
from tests.conftest import make_settings
from tests.images import SRGB_COLORANTS, icc_profile
from tests.test_transformer import WEIGHTS_DIR, photo_like

MANIFEST = read_manifest(WEIGHTS_DIR)
pytestmark = pytest.mark.skipif(MANIFEST is None, reason="no style network committed yet")


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def decode(body: bytes) -> Image.Image:
    return Image.open(io.BytesIO(body))


@pytest.fixture(scope="module")
def style() -> str:
    assert MANIFEST is not None
    return MANIFEST.styles[0].name


@pytest.fixture(scope="module")
def other_style() -> str:
    assert MANIFEST is not None and len(MANIFEST.styles) >= 2
    return MANIFEST.styles[1].name


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return photo_like(90, 60)


def post(client: TestClient, image: Image.Image | bytes, **form: object):
    body = image if isinstance(image, bytes) else encode(image)
    data = {k: str(v) for k, v in form.items()}
    return client.post("/stylize", files={"file": ("photo.png", body, "image/png")}, data=data)


def assert_problem(response, status: int, slug: str, field: str | None = None) -> dict:
    assert response.status_code == status, response.headers
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["type"] == f"/problems/{slug}"
    if field is not None:
        assert body["field"] == field
    return body


# --- happy paths ----------------------------------------------------------------------------------


def test_styles_lists_metadata(client: TestClient, style: str) -> None:
    styles = client.get("/styles").json()["styles"]
    entry = next(s for s in styles if s["name"] == style)
    assert {"name", "title", "artist", "year", "copyright", "status", "version", "has_thumbnail"} <= set(
        entry
    )
    assert entry["status"] in ("production", "experimental")
    assert "file" not in entry and "thumbnail" not in entry
    assert len(styles) >= 8


def test_thumbnails_are_small_jpegs_and_unknown_names_404(client: TestClient, style: str) -> None:
    r = client.get(f"/styles/{style}/thumbnail")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    img = decode(r.content)
    assert img.format == "JPEG" and max(img.size) <= 256
    assert_problem(client.get("/styles/mona_lisa/thumbnail"), 404, "not-found", "name")


def test_blend_endpoints_equal_the_single_styles(
    client: TestClient, style: str, other_style: str, photo: Image.Image
) -> None:
    def pixels(**form: object) -> np.ndarray:
        r = post(client, photo, **form)
        assert r.status_code == 200, r.text
        return np.asarray(decode(r.content), dtype=np.float64)

    single, other = pixels(style=style), pixels(style=other_style)
    blend = f"{style},{other_style}"
    assert np.abs(pixels(style=blend, style_weights="1,0") - single).max() <= 1.0
    assert np.abs(pixels(style=blend, style_weights="0,1") - other).max() <= 1.0
    mixed = post(client, photo, style=blend, style_weights="0.7,0.3")
    assert mixed.headers["x-atelier-style"] == blend and mixed.headers["x-atelier-style-weights"] == "0.7,0.3"
    half = np.asarray(decode(mixed.content), dtype=np.float64)
    assert np.abs(half - single).mean() > 0.5 and np.abs(half - other).mean() > 0.5


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"style_weights": "0.5,0.5"}, "style_weights"),  # two weights for one style
        ({"style_weights": "a,b"}, "style_weights"),
        ({"style_weights": "-1,2"}, "style_weights"),
        ({"style_weights": "0,0"}, "style_weights"),
        ({"style_weights": "nan,1"}, "style_weights"),
    ],
)
def test_bad_blends_name_the_field(
    client: TestClient, photo: Image.Image, style: str, other_style: str, form: dict, field: str
) -> None:
    styles = style if form["style_weights"] == "0.5,0.5" else f"{style},{other_style}"
    assert_problem(post(client, photo, style=styles, **form), 422, "validation-error", field)


def test_bad_style_lists_name_the_field(client: TestClient, photo: Image.Image, style: str) -> None:
    for value in (f"{style},{style}", f"{style},", ",".join([style] * 5), "mona_lisa,starry_night"):
        assert_problem(post(client, photo, style=value), 422, "unknown-style", "style")
    assert_problem(post(client, photo, style=""), 422, "validation-error", "style")


def test_stylize_defaults_to_png_at_the_input_size(
    client: TestClient, style: str, photo: Image.Image
) -> None:
    r = post(client, photo, style=style)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    out = decode(r.content)
    assert out.format == "PNG" and out.size == photo.size and out.mode == "RGB"
    assert r.headers["x-atelier-style"] == style
    assert MANIFEST is not None
    assert r.headers["x-atelier-model"] == f"{MANIFEST.network.arch}/{MANIFEST.network.sha256[:12]}"
    assert float(r.headers["x-atelier-inference-ms"]) > 0
    timing = r.headers["server-timing"]
    for part in ("decode;dur=", "prepare;dur=", "queue;dur=", "infer;dur=", "encode;dur=", "total;dur="):
        assert part in timing
    assert not np.array_equal(np.asarray(out), np.asarray(photo))


@pytest.mark.parametrize(
    ("size", "expected"), [(64, (64, 43)), (37, (37, 25)), (150, (150, 100)), (16, (16, 11))]
)
def test_size_is_the_exact_longest_side(
    client: TestClient, style: str, photo: Image.Image, size: int, expected: tuple[int, int]
) -> None:
    r = post(client, photo, style=style, size=size)
    assert r.status_code == 200, r.text
    assert decode(r.content).size == expected


def test_portrait_and_tiny_inputs_keep_their_size(client: TestClient, style: str) -> None:
    for img in (photo_like(30, 71), photo_like(5, 3)):
        r = post(client, img, style=style)
        assert r.status_code == 200, r.text
        assert decode(r.content).size == img.size


def test_strength_zero_returns_the_photo(client: TestClient, style: str, photo: Image.Image) -> None:
    r = post(client, photo, style=style, strength=0)
    assert np.array_equal(np.asarray(decode(r.content)), np.asarray(photo))
    full = np.asarray(decode(post(client, photo, style=style, strength=1).content), dtype=np.float64)
    half = np.asarray(decode(post(client, photo, style=style, strength=0.5).content), dtype=np.float64)
    expected = 0.5 * (full + np.asarray(photo, dtype=np.float64))
    assert np.abs(half - expected).max() <= 1.0


def test_preserve_color_keeps_the_photo_chroma(client: TestClient, style: str, photo: Image.Image) -> None:
    def chroma(img: Image.Image) -> np.ndarray:
        return np.asarray(img.convert("YCbCr"), dtype=np.float64)[..., 1:]

    plain = decode(post(client, photo, style=style).content)
    kept = decode(post(client, photo, style=style, preserve_color="true").content)
    assert np.abs(chroma(kept) - chroma(photo)).mean() < 2.0
    assert np.abs(chroma(kept) - chroma(photo)).mean() < np.abs(chroma(plain) - chroma(photo)).mean()


@pytest.mark.parametrize(
    ("fmt", "media_type", "pil_format"), [("jpeg", "image/jpeg", "JPEG"), ("webp", "image/webp", "WEBP")]
)
def test_formats(
    client: TestClient, style: str, photo: Image.Image, fmt: str, media_type: str, pil_format: str
) -> None:
    r = post(client, photo, style=style, format=fmt)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == media_type
    assert decode(r.content).format == pil_format


def test_accepts_jpeg_uploads(client: TestClient, style: str, photo: Image.Image) -> None:
    r = client.post(
        "/stylize", files={"file": ("p.jpg", encode(photo, "JPEG"), "image/jpeg")}, data={"style": style}
    )
    assert r.status_code == 200 and decode(r.content).size == photo.size


@pytest.mark.parametrize(("fmt", "media_type"), [("HEIF", "image/heic"), ("AVIF", "image/avif")])
def test_accepts_phone_formats(
    client: TestClient, style: str, photo: Image.Image, fmt: str, media_type: str
) -> None:
    r = client.post("/stylize", files={"file": ("p", encode(photo, fmt), media_type)}, data={"style": style})
    assert r.status_code == 200, r.text
    assert decode(r.content).size == photo.size


def test_a_colour_managed_photo_comes_back_in_srgb(client: TestClient, style: str) -> None:
    """strength 0 returns the photo as a colour-managed browser shows it, not its raw numbers."""
    swapped = dict(SRGB_COLORANTS, r=SRGB_COLORANTS["g"], g=SRGB_COLORANTS["r"])
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), (255, 0, 0)).save(buf, "PNG", icc_profile=icc_profile(swapped))
    r = client.post("/stylize", files={"file": ("p.png", buf.getvalue(), "image/png")},
                    data={"style": style, "strength": "0"})  # fmt: skip
    assert r.status_code == 200, r.text
    assert decode(r.content).getpixel((3, 3)) == (0, 255, 0)


# --- errors ---------------------------------------------------------------------------------------


def test_unknown_style_lists_valid_names(client: TestClient, photo: Image.Image, style: str) -> None:
    body = assert_problem(post(client, photo, style="mona_lisa"), 422, "unknown-style", "style")
    assert style in body["valid_styles"] and style in body["detail"]


def test_unknown_fields_are_named(client: TestClient, photo: Image.Image, style: str) -> None:
    body = assert_problem(
        post(client, photo, style=style, sise=64, colour=1), 422, "validation-error", "colour"
    )
    assert "colour" in body["detail"] and "sise" in body["detail"]


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"size": 8}, "size"),
        ({"size": 5000}, "size"),
        ({"size": "big"}, "size"),
        ({"strength": 1.5}, "strength"),
        ({"strength": -0.1}, "strength"),
        ({"preserve_color": "perhaps"}, "preserve_color"),
        ({"format": "gif"}, "format"),
    ],
)
def test_invalid_values(client: TestClient, photo: Image.Image, style: str, form: dict, field: str) -> None:
    assert_problem(post(client, photo, style=style, **form), 422, "validation-error", field)


def test_missing_fields(client: TestClient, photo: Image.Image, style: str) -> None:
    assert_problem(client.post("/stylize", data={"style": style}), 422, "validation-error", "file")
    r = client.post("/stylize", files={"file": ("p.png", encode(photo), "image/png")})
    assert_problem(r, 422, "validation-error", "style")


def test_bad_uploads(client: TestClient, style: str) -> None:
    assert_problem(post(client, b"not an image at all", style=style), 415, "unsupported-media-type", "file")
    assert_problem(post(client, b"", style=style), 422, "invalid-image", "file")
    truncated = encode(photo_like(64, 64))[:200]
    assert post(client, truncated, style=style).status_code in (415, 422)


# --- limits, batching and a server without weights --------------------------------------------------


@pytest.fixture(scope="module")
def small_client(redis_url: str) -> Iterator[TestClient]:
    """Tight limits and a long batch window, so concurrent requests certainly share a forward pass."""
    settings = make_settings(
        redis_url,
        "stylize-small",
        max_upload_bytes=25_000,
        max_image_pixels=12_000,
        stylize_max_size=128,
        stylize_max_batch=4,
        stylize_batch_wait_ms=400,
    )
    with TestClient(create_app(settings)) as c:
        yield c


def test_limits(small_client: TestClient, style: str) -> None:
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (100, 100, 3), dtype=np.uint8))
    assert_problem(post(small_client, noise, style=style), 413, "payload-too-large", "file")
    assert_problem(
        post(small_client, Image.new("RGB", (200, 200)), style=style), 413, "image-too-large", "file"
    )
    assert_problem(
        post(small_client, photo_like(40, 30), style=style, size=129), 422, "validation-error", "size"
    )
    r = post(small_client, photo_like(150, 40), style=style)  # default size is capped at the maximum
    assert r.status_code == 200 and decode(r.content).size == (128, 34)


def test_concurrent_requests_share_a_batch_even_across_styles(
    small_client: TestClient, style: str, other_style: str
) -> None:
    stats = small_client.app.state.stylizer.stats
    before_items, before_batches = stats.items, stats.batches
    images = [photo_like(48, 32, seed=i) for i in range(4)]
    styles = [style, other_style, style, other_style]
    with ThreadPoolExecutor(4) as pool:
        responses = list(
            pool.map(lambda a: post(small_client, a[0], style=a[1]), zip(images, styles, strict=True))
        )
    assert all(r.status_code == 200 for r in responses)
    assert stats.items - before_items == 4
    assert stats.batches - before_batches < 4 and stats.largest_batch >= 2
    assert max(int(r.headers["x-atelier-batch-size"]) for r in responses) >= 2
    # Each caller gets its own image back, not a neighbour's.
    for img, name, r in zip(images, styles, responses, strict=True):
        alone = post(small_client, img, style=name)
        assert (
            np.abs(np.asarray(decode(r.content), float) - np.asarray(decode(alone.content), float)).max() <= 2
        )


def test_server_without_weights_starts_and_answers_503(
    redis_url: str, tmp_path: Path, photo: Image.Image
) -> None:
    settings = make_settings(redis_url, "stylize-empty", weights_dir=tmp_path)
    with TestClient(create_app(settings)) as c:
        check = c.get("/readyz").json()["checks"]["stylizer"]
        assert check["ok"] is False and check["styles"] == []
        assert c.get("/styles").json() == {"styles": []}
        assert_problem(post(c, photo, style="starry_night"), 503, "service-unavailable")
