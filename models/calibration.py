"""Temperature scaling and expected calibration error, so that a served "0.9" means about 90%.

Temperature scaling (Guo et al., *On Calibration of Modern Neural Networks*, 2017) divides the
logits by one scalar T fitted by minimising the negative log-likelihood on images the model was not
trained on. It never changes the predicted class, only how confident the probabilities are. Label
smoothing (0.2 in the airbench recipe) makes the raw network *under*-confident, so T < 1 is expected.

The fitted temperatures live in ``calibration.json`` next to the weights, keyed to the weights'
version, so a retrained model never silently inherits a stale temperature.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ECE_BINS = 15
CALIBRATION_FILE = "calibration.json"
CALIBRATION_FORMAT = "atelier-classifier-calibration/1"
# Bisection bounds for T: far outside anything a sane model needs, so hitting one means a bad fit.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64 (stable: max subtracted first)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: sum over equal-width confidence bins of (bin share) x |bin accuracy - bin mean confidence|.

    Bin ``i`` holds confidences in ``(i/bins, (i+1)/bins]`` (a confidence of exactly 0 goes to the first).
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if confidence.shape != correct.shape or confidence.ndim != 1 or len(confidence) == 0:
        raise ValueError("confidence and correct must be non-empty 1-D arrays of the same length")
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    gap = np.bincount(which, weights=correct - confidence, minlength=bins)  # sum(acc - conf) per bin
    return float(np.abs(gap).sum() / len(confidence))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of the top-1 prediction: confidence = largest probability, correct = argmax is the label."""
    probabilities = np.asarray(probabilities)
    return calibration_error(probabilities.max(axis=1), probabilities.argmax(axis=1) == labels, bins)


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, Any]]:
    """Per non-empty confidence bin: its range, image count, accuracy and mean confidence."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        inside = which == b
        if inside.any():
            rows.append(
                {
                    "bin": [round(b / bins, 4), round((b + 1) / bins, 4)],
                    "images": int(inside.sum()),
                    "accuracy": round(float(correct[inside].mean()), 4),
                    "confidence": round(float(confidence[inside].mean()), 4),
                }
            )
    return rows


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean -log p(label) under ``softmax(logits / temperature)``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    top = z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z - top).sum(axis=1)) + top[:, 0]
    return float((log_norm - z[np.arange(len(z)), labels]).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, iterations: int = 80) -> float:
    """The T minimising the NLL of ``softmax(logits / T)``, by bisection on the NLL's derivative.

    With b = 1/T the NLL is convex in b, and its derivative, mean(E_softmax(b z)[z] - z_label), is
    increasing: bisecting on its sign finds the optimum deterministically, with no optimizer to tune.
    """
    z = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    target = z[np.arange(len(z)), labels].mean()

    def slope(inverse_t: float) -> float:
        p = softmax(z * inverse_t)
        return float((p * z).sum(axis=1).mean() - target)

    lo, hi = np.log(1 / MAX_TEMPERATURE), np.log(1 / MIN_TEMPERATURE)
    if slope(np.exp(lo)) >= 0:
        return MAX_TEMPERATURE
    if slope(np.exp(hi)) <= 0:
        return MIN_TEMPERATURE
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if slope(np.exp(mid)) < 0 else (lo, mid)
    return float(1 / np.exp(0.5 * (lo + hi)))


def summary(
    logits: np.ndarray, labels: np.ndarray, temperature: float, bins: int = ECE_BINS
) -> dict[str, Any]:
    """Accuracy, mean confidence, NLL and ECE before (T = 1) and after temperature scaling."""
    before, after = softmax(logits), softmax(logits, temperature)
    return {
        "images": len(labels),
        "accuracy": round(float((before.argmax(1) == labels).mean()), 5),
        "mean_confidence_before": round(float(before.max(1).mean()), 5),
        "mean_confidence_after": round(float(after.max(1).mean()), 5),
        "nll_before": round(negative_log_likelihood(logits, labels), 5),
        "nll_after": round(negative_log_likelihood(logits, labels, temperature), 5),
        f"ece{bins}_before": round(expected_calibration_error(before, labels, bins), 5),
        f"ece{bins}_after": round(expected_calibration_error(after, labels, bins), 5),
        "reliability_before": reliability(before, labels, bins),
        "reliability_after": reliability(after, labels, bins),
    }


@dataclass(frozen=True)
class Calibration:
    """Temperatures for the served logits: plain, and mirror-TTA-averaged (a little less spread)."""

    temperature: float = 1.0
    temperature_tta_flip: float = 1.0
    source: str = "none"

    def for_tta(self, tta_flip: bool) -> float:
        return self.temperature_tta_flip if tta_flip else self.temperature


def write_calibration(
    directory: Path, model_version: str, temperatures: dict[str, float], **info: Any
) -> Path:
    """Write ``calibration.json`` for the weights of ``model_version`` (plus what it was fitted on)."""
    record = {
        "format": CALIBRATION_FORMAT,
        "model_version": model_version,
        "temperature": round(temperatures["none"], 5),
        "temperature_tta_flip": round(temperatures["flip"], 5),
        **info,
    }
    path = directory / CALIBRATION_FILE
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def read_calibration(directory: Path, model_version: str) -> Calibration:
    """The temperatures in ``directory/calibration.json`` if they belong to ``model_version``.

    No file, or one written for other weights, gives T = 1 (uncalibrated softmax) and a warning for
    the mismatch: a stale temperature would be silently wrong, a missing one is merely uncalibrated.
    """
    path = directory / CALIBRATION_FILE
    if not path.exists():
        return Calibration()
    record = json.loads(path.read_text())
    if record.get("format") != CALIBRATION_FORMAT:
        raise ValueError(f"{path} is not a calibration file (format={record.get('format')!r})")
    if record.get("model_version") != model_version:
        log.warning(
            "%s was fitted for %r, not the loaded weights %r: serving uncalibrated probabilities",
            path,
            record.get("model_version"),
            model_version,
        )
        return Calibration(source=f"ignored: fitted for {record.get('model_version')}")
    temperatures = (float(record["temperature"]), float(record["temperature_tta_flip"]))
    if not all(MIN_TEMPERATURE <= t <= MAX_TEMPERATURE for t in temperatures):
        raise ValueError(
            f"{path}: temperatures {temperatures} outside [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}]"
        )
    return Calibration(*temperatures, source=str(record.get("fitted_on", {}).get("slice", path.name)))
