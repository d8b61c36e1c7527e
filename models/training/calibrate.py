"""Fit the served temperature of a trained classifier and measure calibration per backend.

    python -m models.training.calibrate --weights-dir models/weights/classifier --threads 1 [--write]

Fits T (plain logits, and mirror-TTA logits) on the documented slice of the *training* set that
``--holdout`` names (the last N/10 images of each class: :func:`models.cifar.holdout_indices`), never
on test images. A model trained with ``--holdout N`` never saw that slice; one trained on all 50,000
images (the metadata says which) did, and the report says so: such a T is fitted on seen data and is
expected to come out too small (the net is more confident on images it was trained on).

Then reports, on the 10,000 test images, accuracy, NLL and ECE (15 bins) before and after scaling
for each backend file present (torch fp32 and the static int8 ONNX model the service prefers on
CPU), and with ``--write`` stores the temperatures in ``calibration.json`` next to the weights, where
the service reads them. Test images are only measured, never fitted on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models import calibration, cifar
from models.classifier import fold_batchnorm, load_classifier
from models.training.export_onnx import onnx_runner, torch_runner
from models.training.train_classifier import DEFAULT_HOLDOUT

DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights" / "classifier"
Runner = Callable[[np.ndarray], np.ndarray]


def logits_plain_and_mirror(run: Runner, pixels: np.ndarray, batch: int = 500) -> dict[str, np.ndarray]:
    """Logits without TTA and mirror-averaged (what the service computes), for uint8 NHWC pixels."""
    plain, mirror = [], []
    for i in range(0, len(pixels), batch):
        x = cifar.normalize(cifar.to_tensor(pixels[i : i + batch])).numpy()
        both = run(np.ascontiguousarray(np.concatenate([x, x[..., ::-1]])))
        n = len(x)
        plain.append(both[:n])
        mirror.append(0.5 * (both[:n] + both[n:]))
    return {
        "none": np.concatenate(plain).astype(np.float64),
        "flip": np.concatenate(mirror).astype(np.float64),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights-dir", type=Path, default=DEFAULT_WEIGHTS_DIR)
    p.add_argument(
        "--data", default=None, help="CIFAR-10 dir (default: $ATELIER_DATA_DIR/cifar10 or ../shared)"
    )
    p.add_argument("--holdout", type=int, default=DEFAULT_HOLDOUT, help="size of the fitting slice")
    p.add_argument("--backends", default="torch-fp32,onnx-int8", help="torch-fp32, onnx-fp32, onnx-int8")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--write", action="store_true", help="store the temperatures in calibration.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    weights = args.weights_dir / "classifier.safetensors"
    model, meta = load_classifier(weights)
    version = str(meta.get("version"))
    trained_without = int(meta.get("held_out_images", 0)) == args.holdout
    train, test = cifar.load_split(True, args.data), cifar.load_split(False, args.data)
    fit_idx = cifar.holdout_indices(train.labels, args.holdout)
    float_runner = torch_runner(fold_batchnorm(model))
    files = {"onnx-fp32": "classifier.onnx", "onnx-int8": "classifier.int8.onnx"}

    t0 = time.perf_counter()
    fit_logits = logits_plain_and_mirror(float_runner, train.images[fit_idx])
    fit_y = train.labels[fit_idx]
    temperatures = {k: calibration.fit_temperature(v, fit_y) for k, v in fit_logits.items()}
    print(f"T fitted on {len(fit_idx)} training images ({time.perf_counter() - t0:.0f}s): {temperatures}")

    results: dict[str, Any] = {
        "fit_slice": {k: calibration.summary(v, fit_y, temperatures[k]) for k, v in fit_logits.items()}
    }
    for backend in args.backends.split(","):
        if backend == "torch-fp32":
            run = float_runner
        elif (args.weights_dir / files[backend]).exists():
            run = onnx_runner(args.weights_dir / files[backend], args.threads)
        else:
            print(f"{backend}: no {files[backend]}, skipped")
            continue
        t = time.perf_counter()
        test_logits = logits_plain_and_mirror(run, test.images)
        results[backend] = {
            k: calibration.summary(v, test.labels, temperatures[k]) for k, v in test_logits.items()
        }
        results[backend]["seconds"] = round(time.perf_counter() - t, 1)
        print(backend, json.dumps(results[backend]), flush=True)

    fitted_on = {
        "slice": f"training images: the last {args.holdout // 10} of each class (cifar.holdout_indices)",
        "images": len(fit_idx),
        "trained_on_them": not trained_without,
    }
    if not trained_without:
        fitted_on["note"] = (
            "these weights were trained on all 50,000 training images, including this slice: T is fitted "
            "on seen images (no held-out data exists for them); models trained with --holdout avoid this"
        )
    if args.write:
        path = calibration.write_calibration(
            args.weights_dir,
            version,
            temperatures,
            fitted_on=fitted_on,
            ece_bins=calibration.ECE_BINS,
            test_set="CIFAR-10 test (JPEG copy), 10,000 images: measured only, never fitted on",
            results=results,
            command=" ".join(
                ["python", "-m", "models.training.calibrate", *(argv if argv is not None else sys.argv[1:])]
            ),
            date=time.strftime("%Y-%m-%d"),
            torch_threads=args.threads,
        )
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
