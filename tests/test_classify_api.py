"""POST /classify over the real app (committed weights, CPU): fields, errors, batching, readiness."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.batching import BatchStats
from app.main import create_app
from app.services.classifier import ClassifierService, _Image
from core.settings import Settings
from models import cifar
from models.classifier import normalize_pixels
from tests.images import encode, photo_like

PROBLEM_JSON = "application/problem+json"
needs_data = pytest.mark.skipif(
    not (cifar.data_dir() / "test.npz").exists(), reason=f"CIFAR-10 data not found at {cifar.data_dir()}"
)


def make_settings(**overrides) -> Settings:
    tag = uuid.uuid4().hex
    return Settings(queue_name=f"atelier-test-{tag}", key_prefix=f"atelier-test-{tag}:", **overrides)


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def noise_image(size: tuple[int, int] = (48, 40), mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (size[1], size[0], channels) if channels else (size[1], size[0])
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(make_settings())) as c:
        yield c


def assert_problem(resp: httpx.Response, status: int, slug: str, field: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM_JSON)
    body = resp.json()
    assert body["type"] == f"/problems/{slug}" and body["status"] == status
    if field is not None:
        assert body.get("field") == field, body
    return body


def assert_predictions(preds: list[dict], k: int) -> None:
    assert len(preds) == k
    probs = [p["probability"] for p in preds]
    assert probs == sorted(probs, reverse=True)
    assert all(0.0 <= p <= 1.0 for p in probs) and sum(probs) <= 1.0
    labels = [p["label"] for p in preds]
    assert len(set(labels)) == k and set(labels) <= set(cifar.CLASSES)


def test_single_image_response_shape(client: TestClient) -> None:
    resp = client.post("/classify", files={"file": ("cat.png", png(noise_image()), "image/png")})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"]["name"] == "cifar10-airbench"
    # "auto" on a CPU machine serves the int8 ONNX export (the fastest CPU runtime of the model card).
    assert body["model"]["backend"] == "onnx-int8" and body["model"]["device"] == "cpu"
    assert body["model"]["version"].startswith("cifar-")
    assert body["inference_ms"] >= 0
    [result] = body["results"]
    assert result["filename"] == "cat.png"
    assert_predictions(result["predictions"], 3)


def test_top_k_ten_returns_every_class_summing_to_about_one(client: TestClient) -> None:
    resp = client.post(
        "/classify", files={"file": ("a.png", png(noise_image()), "image/png")}, data={"top_k": "10"}
    )
    assert resp.status_code == 200, resp.text
    preds = resp.json()["results"][0]["predictions"]
    assert_predictions(preds, 10)
    assert sum(p["probability"] for p in preds) > 0.9999


@pytest.mark.parametrize("top_k", ["0", "11", "-1", "three", "2.5"])
def test_bad_top_k_is_a_422_naming_top_k(client: TestClient, top_k: str) -> None:
    resp = client.post(
        "/classify", files={"file": ("a.png", png(noise_image()), "image/png")}, data={"top_k": top_k}
    )
    assert_problem(resp, 422, "validation-error", "top_k")


def test_missing_file_is_a_422_naming_file(client: TestClient) -> None:
    resp = client.post("/classify", data={"top_k": "3"})
    assert_problem(resp, 422, "validation-error", "file")


def test_file_sent_as_plain_text_field_is_a_422_naming_file(client: TestClient) -> None:
    resp = client.post("/classify", data={"file": "not-a-file"})
    body = assert_problem(resp, 422, "validation-error")
    assert body["field"] in ("file", "file.0"), body


def test_not_an_image_is_415(client: TestClient) -> None:
    resp = client.post("/classify", files={"file": ("notes.txt", b"hello, this is text", "text/plain")})
    assert_problem(resp, 415, "unsupported-media-type", "file")


def test_empty_file_is_422_invalid_image(client: TestClient) -> None:
    resp = client.post("/classify", files={"file": ("empty.png", b"", "image/png")})
    assert_problem(resp, 422, "invalid-image", "file")


def test_truncated_image_is_422_invalid_image(client: TestClient) -> None:
    data = png(noise_image((64, 64)))
    resp = client.post("/classify", files={"file": ("cut.png", data[: len(data) // 2], "image/png")})
    assert_problem(resp, 422, "invalid-image", "file")


def test_unknown_form_field_is_a_422_naming_it(client: TestClient) -> None:
    resp = client.post(
        "/classify", files={"file": ("a.png", png(noise_image()), "image/png")}, data={"topk": "3"}
    )
    body = assert_problem(resp, 422, "validation-error", "topk")
    assert "topk" in body["detail"]


def test_several_files_keep_order_and_the_failing_one_is_named(client: TestClient) -> None:
    a, b = png(noise_image(seed=1)), png(noise_image((20, 70), seed=2))
    files = [
        ("file", ("a.png", a, "image/png")),
        ("file", ("b.png", b, "image/png")),
        ("file", ("a-again.png", a, "image/png")),
    ]
    resp = client.post("/classify", files=files, data={"top_k": "2"})
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert [r["filename"] for r in results] == ["a.png", "b.png", "a-again.png"]
    assert results[0]["predictions"] == results[2]["predictions"]
    for r in results:
        assert_predictions(r["predictions"], 2)
    bad = [*files[:1], ("file", ("x.txt", b"nope", "text/plain"))]
    assert_problem(client.post("/classify", files=bad), 415, "unsupported-media-type", "file[1]")


def test_too_many_files_is_a_422_naming_file() -> None:
    with TestClient(create_app(make_settings(max_files_per_request=2))) as c:
        files = [("file", (f"{i}.png", png(noise_image(seed=i)), "image/png")) for i in range(3)]
        assert_problem(c.post("/classify", files=files), 422, "validation-error", "file")
        assert c.post("/classify", files=files[:2]).status_code == 200


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_non_rgb_modes_are_accepted(client: TestClient, mode: str) -> None:
    base = noise_image((37, 29), "RGBA" if mode == "RGBA" else "RGB")
    img = base if mode == "RGBA" else base.convert("L" if mode == "I;16" else mode)
    if mode == "I;16":
        img = Image.fromarray(np.asarray(img, dtype=np.uint16) * 257)
    resp = client.post("/classify", files={"file": (f"{mode}.png", png(img), "image/png")})
    assert resp.status_code == 200, resp.text
    assert_predictions(resp.json()["results"][0]["predictions"], 3)


def test_large_jpeg_is_resized_and_classified(client: TestClient) -> None:
    buf = io.BytesIO()
    noise_image((1200, 800)).save(buf, format="JPEG", quality=80)
    resp = client.post("/classify", files={"file": ("big.jpg", buf.getvalue(), "image/jpeg")})
    assert resp.status_code == 200, resp.text


@needs_data
def test_real_cifar_images_are_mostly_classified_correctly(client: TestClient) -> None:
    """32 test images (lossless PNG) in one request: top-1 agrees with the labels as the model does."""
    test = cifar.load_split(False)
    files = [("file", (f"{i}.png", png(Image.fromarray(test.images[i])), "image/png")) for i in range(32)]
    resp = client.post("/classify", files=files, data={"top_k": "1"})
    assert resp.status_code == 200, resp.text
    top1 = [r["predictions"][0]["label"] for r in resp.json()["results"]]
    correct = sum(label == cifar.CLASSES[test.labels[i]] for i, label in enumerate(top1))
    assert correct >= 22, f"{correct}/32 correct"


def test_concurrent_requests_are_batched() -> None:
    """16 requests in flight at once must share model calls (a long batch wait makes it deterministic)."""
    app = create_app(make_settings(classify_batch_wait_ms=200, classify_max_batch=64))
    bodies = [png(noise_image(seed=i)) for i in range(16)]

    async def scenario() -> tuple[list[httpx.Response], BatchStats]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as ac:
                responses = await asyncio.gather(
                    *(
                        ac.post("/classify", files={"file": (f"{i}.png", b, "image/png")})
                        for i, b in enumerate(bodies)
                    )
                )
            return list(responses), app.state.classifier.stats

    responses, stats = asyncio.run(scenario())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    assert [r.json()["results"][0]["filename"] for r in responses] == [f"{i}.png" for i in range(16)]
    assert stats.items == 16
    assert stats.largest_batch > 1
    assert stats.batches < 16


def test_missing_weights_start_the_app_but_classify_is_503(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(weights_dir=tmp_path))) as c:
        resp = c.post("/classify", files={"file": ("a.png", png(noise_image()), "image/png")})
        body = assert_problem(resp, 503, "service-unavailable")
        assert "classifier.safetensors" in body["detail"]
        ready = c.get("/readyz")
        assert ready.status_code == 503
        check = ready.json()["checks"]["classifier"]
        assert check["ok"] is False and "not found" in check["reason"]


@needs_data
def test_onnx_backend_serves_the_int8_export_and_agrees_with_torch() -> None:
    """The ONNX backend (static int8 export) gives the torch backend's top-1 on real test images."""
    test = cifar.load_split(False)
    files = [("file", (f"{i}.png", png(Image.fromarray(test.images[i])), "image/png")) for i in range(16)]
    top1 = {}
    for backend in ("torch", "onnx"):
        with TestClient(create_app(make_settings(classify_backend=backend))) as c:
            resp = c.post("/classify", files=files, data={"top_k": "1"})
            assert resp.status_code == 200, resp.text
            body = resp.json()
            assert body["model"]["backend"] == ("torch" if backend == "torch" else "onnx-int8")
            top1[backend] = [r["predictions"][0]["label"] for r in body["results"]]
    agree = sum(a == b for a, b in zip(top1["torch"], top1["onnx"], strict=True))
    assert agree >= 14, (top1, agree)


def test_service_mirror_tta_averages_an_image_with_its_mirror() -> None:
    """With tta_flip the batch function scores x and x[..., ::-1] together and averages their logits."""

    def runner(x: np.ndarray) -> np.ndarray:  # logits = left-half mean minus right-half mean, per class
        diff = x[..., :16].mean(axis=(1, 2, 3)) - x[..., 16:].mean(axis=(1, 2, 3))
        return np.outer(diff, np.arange(10, dtype=np.float64))

    x = np.zeros((1, 32, 32, 3), dtype=np.uint8)  # service input: uint8 pixels, HWC
    x[:, :, :16] = 255
    plain = fake_service(runner)
    mirrored = fake_service(runner, tta_flip=True)
    assert plain.run_sync(x)[0].argmax() == 9  # asymmetric image: a confident answer
    assert np.allclose(mirrored.run_sync(x)[0], 0.1)  # mirror cancels it exactly: uniform


def fake_service(runner: Callable[[np.ndarray], np.ndarray], **options: Any) -> ClassifierService:
    """A service around a stand-in runner (no weights): what its batch function does, alone."""
    return ClassifierService(
        runner, cifar.CLASSES, version="t", backend="fake", device="cpu", max_batch=8, max_wait_s=0, **options
    )


def test_auto_tta_mirrors_small_batches_and_skips_busy_ones() -> None:
    """``tta_max_requests``: a batch of more requests is scored alone, with the unmirrored temperature."""
    calls: list[int] = []

    def runner(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        diff = x[..., :16].mean(axis=(1, 2, 3)) - x[..., 16:].mean(axis=(1, 2, 3))
        return np.outer(diff, np.arange(10, dtype=np.float64))

    service = fake_service(
        runner, tta_flip=True, temperature=0.5, tta_max_requests=2, temperature_unmirrored=2.0
    )
    x = np.zeros((3, 32, 32, 3), dtype=np.uint8)
    x[:, :, :16] = 255
    small = service._run_batch(None, [_Image(x[0], 1), _Image(x[1], 2)])
    assert calls == [4] and all(r.mirrored for r in small)  # 2 images and their 2 mirrors
    assert np.allclose(small[0].probabilities, 0.1)  # the mirror cancelled the asymmetry
    busy = service._run_batch(None, [_Image(row, i) for i, row in enumerate(x)])  # 3 requests
    assert calls == [4, 3] and not any(r.mirrored for r in busy)
    one_request = service._run_batch(None, [_Image(row, 7) for row in x])  # 3 files, 1 request
    assert calls == [4, 3, 6] and all(r.mirrored for r in one_request)
    assert service.images_scored == {"mirror": 5, "none": 3}
    scaled = runner(normalize_pixels(x[:1]))[0] / 2.0  # the unmirrored temperature, not 0.5
    expected = np.exp(scaled - scaled.max())
    assert np.allclose(busy[0].probabilities, expected / expected.sum())
    with pytest.raises(ValueError, match="temperatures"):
        fake_service(runner, temperature_unmirrored=0.0)
    with pytest.raises(ValueError, match="tta_max_requests"):
        fake_service(runner, tta_max_requests=0)


def test_every_result_says_how_it_was_scored(client: TestClient) -> None:
    png = encode(photo_like(32, 32))
    body = client.post("/classify", files={"file": ("a.png", png, "image/png")}).json()
    assert body["results"][0]["tta"] in ("mirror", "none")
    check = client.get("/readyz").json()["checks"]["classifier"]
    assert body["results"][0]["tta"] == ("mirror" if check["tta_flip"] else "none")  # one image: no rush


def test_readiness_reports_the_loaded_model(client: TestClient) -> None:
    check = client.get("/readyz").json()["checks"]["classifier"]
    assert check["ok"] is True
    assert check["model"] == "cifar10-airbench" and check["device"] == "cpu"
    assert check["version"].startswith("cifar-")


def test_an_onnx_model_that_disagrees_with_the_float_model_is_not_served(tmp_path: Path) -> None:
    """The load-time check skips an ONNX file whose logits are off (as a saturating int8 kernel's are)."""
    import torch

    from app.services.classifier import load_service
    from core.settings import WEIGHTS_DIR
    from models.classifier import fold_batchnorm, load_classifier
    from models.training.export_onnx import export_fp32

    weights = WEIGHTS_DIR / "classifier" / "classifier.safetensors"
    (tmp_path / weights.name).write_bytes(weights.read_bytes())
    model, _ = load_classifier(weights, "cpu")
    model = fold_batchnorm(model)
    export_fp32(model, tmp_path / "classifier.onnx")
    with torch.no_grad():  # a "broken" model in the preferred slot: last layer's weights mangled
        last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.copy_(last.weight.flip(0))
    export_fp32(model, tmp_path / "classifier.int8.onnx")

    service = load_service(tmp_path, backend="onnx")
    assert service.backend == "onnx"  # the faithful fp32 file, not the mangled preferred one
    (tmp_path / "classifier.onnx").unlink()
    assert load_service(tmp_path, backend="onnx").backend == "torch"  # nothing faithful: the float model


def test_probe_check_separates_faithful_from_mangled_logits() -> None:
    from app.services.classifier import probe_pixels, relative_logit_error

    def reference(x: np.ndarray) -> np.ndarray:
        return np.stack([x[:, c].mean(axis=(1, 2)) for c in range(3)] * 3 + [x[:, 0].std(axis=(1, 2))], 1)

    pixels = probe_pixels()
    assert pixels.shape == (64, 32, 32, 3) and pixels.dtype == np.uint8 and pixels.std() > 20
    assert relative_logit_error(reference, reference, pixels) == 0
    assert relative_logit_error(lambda x: reference(x) * 1.05, reference, pixels) < 0.1
    assert relative_logit_error(lambda x: reference(x)[:, ::-1], reference, pixels) > 0.3
