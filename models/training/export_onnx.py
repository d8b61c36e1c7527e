"""Export the classifier to ONNX (fp32 and int8) and compare torch / ONNX / int8 on CPU.

    python -m models.training.export_onnx --weights models/weights/classifier/classifier.safetensors

Writes ``classifier.onnx`` (fp32, dynamic batch axis), ``classifier.int8.onnx`` (static QDQ int8:
per-channel int8 weights, uint8 activations calibrated on training images, the fast U8S8 path on
x86) and ``classifier.int8-dynamic.onnx`` (dynamic quantization, no calibration), then measures test
accuracy, file size and CPU latency at batch 1 and 256 for each, into ``onnx_eval.json``.
Static quantization is the primary int8 variant because dynamic quantization re-derives activation
scales on every call, which for a conv net costs more than the int8 arithmetic saves.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from models import cifar
from models.classifier import fold_batchnorm, load_classifier

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "classifier" / "classifier.safetensors"
INPUT_NAME = "images"
OUTPUT_NAME = "logits"


def export_fp32(model: torch.nn.Module, path: Path) -> None:
    """TorchScript-based export (no onnxscript dependency) with a dynamic batch axis, opset 17."""
    dummy = torch.zeros(2, 3, 32, 32)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )


class _Calibration(CalibrationDataReader):
    """Feeds normalized training images (never test images) to the int8 calibrator."""

    def __init__(self, images: np.ndarray, batch: int = 64) -> None:
        self._batches: Iterator[np.ndarray] = iter(
            [images[i : i + batch] for i in range(0, len(images), batch)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def export_int8(fp32: Path, static_out: Path, dynamic_out: Path | None, calib: np.ndarray) -> None:
    """Shape inference + graph cleanup first (what onnxruntime recommends), then the quantizations."""
    prepared = static_out.with_name(static_out.stem + ".prep.onnx")
    quant_pre_process(str(fp32), str(prepared))
    try:
        _quantize(prepared, static_out, dynamic_out, calib)
    finally:
        prepared.unlink(missing_ok=True)


def _quantize(fp32: Path, static_out: Path, dynamic_out: Path | None, calib: np.ndarray) -> None:
    # reduce_range (7-bit weights): without it, onnxruntime's u8s8 kernels on x86 CPUs lacking VNNI
    # (AVX2-only hosts) overflow int16 intermediates; that model fell to 34.6% accuracy on such a host
    # while scoring 82.3% on an AVX-512 VNNI one (32/128/128 model). With it: 82.5% (fp32: 82.5%).
    quantize_static(
        str(fp32),
        str(static_out),
        _Calibration(calib),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        reduce_range=True,
    )
    if dynamic_out is not None:
        quantize_dynamic(str(fp32), str(dynamic_out), weight_type=QuantType.QUInt8)


def onnx_runner(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {INPUT_NAME: x})[0]


def torch_runner(model: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    model = model.to(memory_format=torch.channels_last)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x).contiguous(memory_format=torch.channels_last)).numpy()

    return run


def accuracy(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Test accuracy without TTA and with the mirror TTA the service uses."""
    plain, flip = [], []
    for i in range(0, len(x), 500):
        batch = x[i : i + 500]
        logits = run(np.concatenate([batch, batch[..., ::-1]]))
        n = len(batch)
        plain.append(logits[:n].argmax(1))
        flip.append((logits[:n] + logits[n:]).argmax(1))
    return {
        "accuracy": round(float((np.concatenate(plain) == y).mean()), 5),
        "accuracy_tta_flip": round(float((np.concatenate(flip) == y).mean()), 5),
    }


def latency(
    run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int, seconds: float
) -> dict[str, Any]:
    """Median wall time per call at ``batch`` images, over repeated calls for about ``seconds``."""
    xb = np.ascontiguousarray(x[:batch])
    for _ in range(3):
        run(xb)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        t = time.perf_counter()
        run(xb)
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    return {
        "batch": batch,
        "calls": len(times),
        "median_ms": round(median * 1000, 3),
        "images_per_s": round(batch / median, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--out-dir", type=Path, help="default: the weights' directory")
    p.add_argument(
        "--data", default=None, help="CIFAR-10 dir (default: $ATELIER_DATA_DIR/cifar10 or ../shared)"
    )
    p.add_argument("--calib", type=int, default=1024, help="training images used to calibrate int8")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads for torch and onnxruntime")
    p.add_argument("--seconds", type=float, default=5.0, help="time per latency measurement")
    p.add_argument(
        "--no-dynamic", action="store_true", help="skip the dynamic-int8 comparison (slow, never served)"
    )
    args = p.parse_args(argv)
    out_dir = args.out_dir or args.weights.parent
    if args.threads:
        torch.set_num_threads(args.threads)

    model, meta = load_classifier(args.weights)
    model = fold_batchnorm(model)  # what the service runs; also gives ORT/int8 plain conv+bias nodes
    fp32_path = out_dir / "classifier.onnx"
    int8_path = out_dir / "classifier.int8.onnx"
    dyn_path = None if args.no_dynamic else out_dir / "classifier.int8-dynamic.onnx"
    export_fp32(model, fp32_path)

    train = cifar.load_split(True, args.data)
    test = cifar.load_split(False, args.data)
    rng = np.random.default_rng(0)
    calib_idx = rng.choice(len(train), size=args.calib, replace=False)
    calib = cifar.normalize(cifar.to_tensor(train.images[calib_idx])).numpy()
    export_int8(fp32_path, int8_path, dyn_path, calib)

    x = cifar.normalize(cifar.to_tensor(test.images)).numpy()
    y = np.asarray(test.labels)
    runners = {
        "torch-fp32": (torch_runner(model), args.weights),
        "onnx-fp32": (onnx_runner(fp32_path, args.threads), fp32_path),
        "onnx-int8-static": (onnx_runner(int8_path, args.threads), int8_path),
    }
    if dyn_path is not None:
        runners["onnx-int8-dynamic"] = (onnx_runner(dyn_path, args.threads), dyn_path)
    results: dict[str, Any] = {}
    for name, (run, path) in runners.items():
        entry: dict[str, Any] = {"file": path.name, "bytes": path.stat().st_size, **accuracy(run, x, y)}
        entry["latency"] = [latency(run, x, b, args.seconds) for b in (1, 256)]
        results[name] = entry
        print(name, json.dumps(entry), flush=True)
    report = {
        "model_version": meta.get("version"),
        "test_set": "CIFAR-10 test (JPEG copy), 10,000 images",
        "threads": torch.get_num_threads() if not args.threads else args.threads,
        "torch_version": torch.__version__,
        "onnxruntime_version": ort.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "results": results,
    }
    (out_dir / "onnx_eval.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
