"""Calibration: ECE and temperature fitting on synthetic data with known answers; the service applies T;
the photo path (EXIF orientation, big JPEGs) gives the model what a 32 px original would."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.services.classifier import ClassifierService, load_service
from bench.classify_photos import STORE_ROTATED, make_photo, png, served_preprocess
from core.settings import WEIGHTS_DIR, Settings
from models import calibration, cifar
from models.classifier import read_metadata

CLASSIFIER_DIR = WEIGHTS_DIR / "classifier"


def test_ece_of_a_single_overconfident_bin_is_the_gap() -> None:
    confidence = np.full(1000, 0.85)
    correct = np.arange(1000) < 600  # 60% right at 85% confidence
    assert calibration.calibration_error(confidence, correct) == pytest.approx(0.25)


def test_ece_weights_bins_by_their_share_and_uses_15_equal_bins() -> None:
    # 30% of the images at 0.95 all right (gap 0.05), 70% at 0.55 with 30% right (gap 0.25)
    confidence = np.r_[np.full(300, 0.95), np.full(700, 0.55)]
    correct = np.r_[np.ones(300, bool), np.arange(700) < 210]
    assert calibration.calibration_error(confidence, correct) == pytest.approx(0.3 * 0.05 + 0.7 * 0.25)
    # 0.60 and 0.65 share the bin (0.6, 0.667] with 15 bins: their gaps (+0.39, -0.65) partly cancel
    assert calibration.calibration_error(np.array([0.61, 0.65]), np.array([1.0, 0.0])) == pytest.approx(0.13)
    assert calibration.calibration_error(np.array([1.0, 0.0]), np.array([1.0, 0.0])) == 0


def test_reliability_table_lists_each_occupied_bin() -> None:
    probs = np.full((10, 10), 0.15 / 9)
    probs[:, 0] = 0.85  # class 0 at 85% for every image; 6 of 10 labels agree
    labels = np.r_[np.zeros(6, int), np.ones(4, int)]
    assert calibration.reliability(probs, labels) == [
        {"bin": [0.8, 0.8667], "images": 10, "accuracy": 0.6, "confidence": 0.85}
    ]


def test_ece_of_perfectly_calibrated_samples_is_near_zero() -> None:
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.1, 1.0, 200_000)
    correct = rng.uniform(size=confidence.shape) < confidence
    assert calibration.calibration_error(confidence, correct) < 0.01


def test_fitted_temperature_recovers_the_generating_one_and_fixes_ece() -> None:
    """Labels drawn from softmax(z / 2): the NLL-optimal temperature for logits z is 2."""
    rng = np.random.default_rng(1)
    z = rng.normal(0, 3, (20_000, 10))
    p = calibration.softmax(z, 2.0)
    labels = (rng.uniform(size=(len(z), 1)) > p.cumsum(1)).sum(1)
    t = calibration.fit_temperature(z, labels)
    assert t == pytest.approx(2.0, rel=0.05)
    before = calibration.expected_calibration_error(calibration.softmax(z), labels)
    after = calibration.expected_calibration_error(calibration.softmax(z, t), labels)
    assert before > 0.1 and after < 0.02
    assert calibration.negative_log_likelihood(z, labels, t) < calibration.negative_log_likelihood(z, labels)
    assert (calibration.softmax(z, t).argmax(1) == z.argmax(1)).all()  # T never changes the answer


def test_temperature_of_an_underconfident_model_is_below_one() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 10, 5000)
    z = rng.normal(0, 0.3, (5000, 10))
    z[np.arange(5000), labels] += 1.5  # always right, yet softmax(z) gives it ~40%
    assert calibration.fit_temperature(z, labels) < 0.5


def write_calibration_file(directory: Path, version: str, t: float, t_flip: float) -> None:
    calibration.write_calibration(
        directory, version, {"none": t, "flip": t_flip}, fitted_on={"slice": "test"}
    )


def test_calibration_file_applies_only_to_its_model_version(tmp_path: Path) -> None:
    assert calibration.read_calibration(tmp_path, "v1") == calibration.Calibration()  # no file: T = 1
    write_calibration_file(tmp_path, "v1", 0.8, 0.75)
    found = calibration.read_calibration(tmp_path, "v1")
    assert (found.for_tta(False), found.for_tta(True)) == (0.8, 0.75)
    stale = calibration.read_calibration(tmp_path, "v2")
    assert stale.temperature == 1.0 and stale.source.startswith("ignored")
    write_calibration_file(tmp_path, "v1", 500.0, 1.0)
    with pytest.raises(ValueError, match="outside"):
        calibration.read_calibration(tmp_path, "v1")


def fake_service(temperature: float) -> ClassifierService:
    def runner(x: np.ndarray) -> np.ndarray:  # logits 0..9 scaled by the image's mean
        return 0.3 * np.outer(x.mean(axis=(1, 2, 3)) + 3, np.arange(10, dtype=np.float64))

    return ClassifierService(
        runner,
        cifar.CLASSES,
        version="t",
        backend="fake",
        device="cpu",
        max_batch=4,
        max_wait_s=0,
        temperature=temperature,
    )


def test_service_divides_the_logits_by_its_temperature() -> None:
    pixels = np.full((2, 32, 32, 3), 200, dtype=np.uint8)
    pixels[1] = 30
    plain, hot = fake_service(1.0).run_sync(pixels), fake_service(2.0).run_sync(pixels)
    expected = calibration.softmax(np.log(plain), 2.0)  # log p = logits - const
    assert np.allclose(hot, expected, atol=1e-9) and not np.allclose(hot, plain, atol=1e-3)
    with pytest.raises(ValueError, match="positive"):
        fake_service(0.0)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_load_service_serves_the_calibrated_temperature_for_its_tta_mode(
    tmp_path: Path, backend: str
) -> None:
    for f in ("classifier.safetensors", "classifier.int8.onnx"):
        shutil.copy(CLASSIFIER_DIR / f, tmp_path / f)
    version = read_metadata(tmp_path / "classifier.safetensors")["version"]
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    (tmp_path / calibration.CALIBRATION_FILE).unlink(missing_ok=True)
    plain = load_service(tmp_path, backend=backend)
    assert plain.temperature == 1.0
    write_calibration_file(tmp_path, version, 0.5, 0.4)
    sharp = load_service(tmp_path, backend=backend)
    mirrored = load_service(tmp_path, backend=backend, tta_flip=True)
    assert sharp.temperature == 0.5 and mirrored.temperature == 0.4 and mirrored.tta_flip
    assert np.allclose(
        sharp.run_sync(pixels), calibration.softmax(np.log(plain.run_sync(pixels)), 0.5), atol=1e-6
    )
    write_calibration_file(tmp_path, "some-other-model", 0.5, 0.4)
    assert load_service(tmp_path, backend=backend).temperature == 1.0


def test_classify_tta_setting_reaches_the_served_model() -> None:
    tag = uuid.uuid4().hex
    settings = Settings(
        queue_name=f"atelier-test-{tag}", key_prefix=f"atelier-test-{tag}:", classify_tta=True
    )
    with TestClient(create_app(settings)) as client:
        check = client.get("/readyz").json()["checks"]["classifier"]
    assert check["ok"] is True and check["tta_flip"] is True
    committed = CLASSIFIER_DIR / calibration.CALIBRATION_FILE
    if committed.exists():
        assert check["temperature"] == json.loads(committed.read_text())["temperature_tta_flip"]


@pytest.mark.parametrize("orientation", sorted(STORE_ROTATED))
def test_a_rotated_exif_tagged_jpeg_photo_preprocesses_like_its_32px_original(orientation: int) -> None:
    blocks = np.random.default_rng(orientation).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    original = np.kron(blocks, np.ones((8, 8, 1), dtype=np.uint8))  # 8x8 px blocks: little lost to JPEG
    photo = make_photo(original, 384, 90, orientation)
    assert served_preprocess(png(original)).tolist() == original.tolist()
    diff = np.abs(served_preprocess(photo).astype(int) - original.astype(int))
    assert diff.mean() < 8, (orientation, diff.mean())  # upright: a rotation would put blocks elsewhere
