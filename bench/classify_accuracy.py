"""Accuracy and calibration of POST /classify measured over HTTP, exactly as served.

    python bench/classify_accuracy.py [--tta off,on] [--limit 10000] [--concurrency 4]

Issue 11's bar ("at least 93% top-1 on the CIFAR-10 test copy, measured over HTTP exactly as
served") is a property of the running service, not of the weights: the backend the server picks
(int8 ONNX where it passes its load-time check), the temperature in ``calibration.json``, the
upload decoding and the 32 px preprocessing all take part. So this starts the real API
(``uvicorn app.main:create_app``, default settings but for ``ATELIER_CLASSIFY_TTA``) on 127.0.0.1
and uploads every test image **as the JPEG file the data set stores** (the bytes from ``test.npz``,
nothing re-encoded), 32 files a request with ``top_k=10``, so the full served distribution comes back.
From it: top-1, ECE (15 bins) and NLL of the served probabilities, per-class accuracy.
Results: ``bench/results/classify-accuracy-<date><tag>.{md,json}``.
"""

from __future__ import annotations

import argparse
import io
import json
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.classify import TTA_WORDS, classify_machine, readiness, start_server, uptime  # noqa: E402
from bench.machine import describe  # noqa: E402
from bench.serve import HOST, free_port  # noqa: E402
from models import calibration, cifar  # noqa: E402


def test_jpegs(directory: Path) -> tuple[list[bytes], np.ndarray]:
    """The test split's JPEG files, byte for byte as stored, and their labels."""
    with np.load(directory / "test.npz") as npz:
        blob, offsets, labels = npz["jpeg"], npz["offsets"], npz["labels"].astype(np.int64)
    return [blob[offsets[i] : offsets[i + 1]].tobytes() for i in range(len(labels))], labels


def classify_all(
    port: int, files: list[bytes], per_request: int, concurrency: int
) -> tuple[np.ndarray, dict[str, Any], int]:
    """(N, 10) served probabilities in CIFAR-10 class order, the model info, the request count."""
    index = {name: i for i, name in enumerate(cifar.CLASSES)}
    probs = np.full((len(files), len(index)), np.nan)
    chunks = [range(i, min(i + per_request, len(files))) for i in range(0, len(files), per_request)]
    model: dict[str, Any] = {}

    def post(client: httpx.Client, chunk: range) -> None:
        upload = [("file", (f"test_{i:05d}.jpg", io.BytesIO(files[i]), "image/jpeg")) for i in chunk]
        r = client.post("/classify", files=upload, data={"top_k": str(len(index))})
        r.raise_for_status()
        body = r.json()
        model.update(body["model"])
        for i, result in zip(chunk, body["results"], strict=True):
            for p in result["predictions"]:
                probs[i, index[p["label"]]] = p["probability"]

    # One keep-alive pool for all requests (httpx.Client is thread-safe), not a connection per request.
    limits = httpx.Limits(max_connections=concurrency)
    with (
        httpx.Client(base_url=f"http://{HOST}:{port}", timeout=120, limits=limits) as client,
        ThreadPoolExecutor(concurrency) as pool,
    ):
        list(pool.map(lambda chunk: post(client, chunk), chunks))
    if np.isnan(probs).any():
        raise RuntimeError("some images came back without all ten class probabilities")
    return probs, model, len(chunks)


def scores(probs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    pred = probs.argmax(axis=1)
    picked = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
    return {
        "images": len(labels),
        "top1": round(float((pred == labels).mean()), 5),
        "ece15": round(calibration.expected_calibration_error(probs, labels), 5),
        "nll": round(float(-np.log(picked).mean()), 5),
        "mean_confidence": round(float(probs.max(axis=1).mean()), 5),
        "per_class": {
            name: round(float((pred[labels == c] == c).mean()), 4) for c, name in enumerate(cifar.CLASSES)
        },
    }


def run_server(tta: str, files: list[bytes], labels: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    server = start_server(port, args.backend, args.threads, tta)
    try:
        check = readiness(port)["checks"]["classifier"]
        start = time.perf_counter()
        probs, model, requests = classify_all(port, files, args.per_request, args.concurrency)
        seconds = time.perf_counter() - start
        scored = readiness(port)["checks"]["classifier"].get("images_scored")
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {
        "tta": tta,
        "images_scored": scored,
        "model": model,
        "readyz": check,
        "requests": requests,
        "seconds": round(seconds, 1),
        "images_per_s": round(len(labels) / seconds, 1),
        **scores(probs, labels),
        "uptime_after": uptime(),
    }


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"# /classify accuracy over HTTP, {m['date']}",
        "",
        f"- {describe(m)}",
        f"- Command: `{report['command']}`",
        f"- Data: {report['dataset']}, each image uploaded as its stored JPEG file, "
        f"{report['per_request']} files a request, {report['concurrency']} requests in flight",
        f"- Load before: `{report['uptime_before']}`",
        "",
        "| mirror TTA | model version | backend | temperature | top-1 | ECE (15 bins) | NLL "
        "| mean confidence | images/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in report["servers"]:
        lines.append(
            f"| {TTA_WORDS.get(s['tta'], s['tta'])} | {s['model']['version']} | {s['model']['backend']} | "
            f"{s['readyz'].get('temperature')} | **{100 * s['top1']:.2f}%** | {100 * s['ece15']:.2f}% | "
            f"{s['nll']} | {s['mean_confidence']} | {s['images_per_s']} |"
        )
    lines += ["", "Per-class top-1:", "", "| mirror TTA | " + " | ".join(cifar.CLASSES) + " |"]
    lines.append("|---" * (len(cifar.CLASSES) + 1) + "|")
    for s in report["servers"]:
        cells = " | ".join(f"{100 * s['per_class'][c]:.1f}" for c in cifar.CLASSES)
        lines.append(f"| {TTA_WORDS.get(s['tta'], s['tta'])} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="CIFAR-10 dir (default: the training scripts')")
    p.add_argument(
        "--tta", default="off,on", help="server TTA settings to measure (off, on, auto), e.g. off,on"
    )
    p.add_argument("--backend", default="auto", help="ATELIER_CLASSIFY_BACKEND (default: what make run uses)")
    p.add_argument("--threads", type=int, default=0, help="ATELIER_TORCH_THREADS (0: the server's default)")
    p.add_argument("--limit", type=int, default=None, help="only the first N test images")
    p.add_argument("--per-request", type=int, default=32, help="files per request (server max: 32)")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--tag", default="", help="suffix for the results files")
    p.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)

    files, labels = test_jpegs(cifar.data_dir(args.data))
    files, labels = files[: args.limit], labels[: args.limit]
    report: dict[str, Any] = {
        "machine": classify_machine(),
        "command": shlex.join(["python", "bench/classify_accuracy.py", *(argv or sys.argv[1:])]),
        "dataset": f"CIFAR-10 test (JPEG copy), {len(labels)} images",
        "per_request": args.per_request,
        "concurrency": args.concurrency,
        "uptime_before": uptime(),
        "servers": [],
    }
    for setting in args.tta.split(","):
        server = run_server(setting.strip(), files, labels, args)
        print(json.dumps({k: v for k, v in server.items() if k != "per_class"}), flush=True)
        report["servers"].append(server)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"classify-accuracy-{time.strftime('%Y-%m-%d')}{args.tag}"
    (args.out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out_dir / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
