"""Benchmark POST /classify over real HTTP, and the classifier model alone (torch vs ONNX vs int8).

    python bench/classify.py [--seconds 30] [--backend torch|onnx]

Starts ``uvicorn app.main:create_app`` in its own process on 127.0.0.1, then drives it with a small
raw-asyncio HTTP/1.1 client (keep-alive connections, one pre-encoded multipart body), so the load
generator costs little CPU next to the server it measures. Load is bounded both in requests and in
seconds, and only ever targets 127.0.0.1. While the c=32 run is going, /healthz is probed on its own
connection to show the event loop stays responsive. Results go to
``bench/results/classify-cpu-<date>.{md,json}`` together with the machine load (``uptime``).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import io
import json
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import describe, machine, uptime  # noqa: E402
from bench.serve import HOST, free_port, start_api  # noqa: E402

TARGETS = {"p50_c1_ms": 25.0, "rps_ratio_c32_over_c1": 5.0, "p99_c32_ms": 250.0}
# How the report names ATELIER_CLASSIFY_TTA (older records stored a bool).
TTA_WORDS = {"on": "on", "off": "off", "auto": "auto (busy batches unmirrored)", True: "on", False: "off"}


@dataclass
class Run:
    """Latencies (seconds) and failures of one load phase."""

    name: str
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        pct = (
            (lambda q: round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 2))
            if lat
            else (lambda q: None)
        )
        return {
            "name": self.name,
            "concurrency": self.concurrency,
            "requests": len(lat),
            "errors": self.errors,
            "wall_s": round(self.wall_s, 2),
            "rps": round(len(lat) / self.wall_s, 1) if self.wall_s else None,
            "p50_ms": pct(0.50),
            "p90_ms": pct(0.90),
            "p99_ms": pct(0.99),
            "max_ms": round(1000 * lat[-1], 2) if lat else None,
            "mean_ms": round(1000 * statistics.fmean(lat), 2) if lat else None,
        }


def multipart(image: bytes, filename: str, content_type: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def build_request(method: str, path: str, port: int, body: bytes = b"", content_type: str = "") -> bytes:
    head = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}", "Connection: keep-alive"]
    if body:
        head += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """Send one pre-built request on a keep-alive connection and read the whole response; returns status."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    if length:
        await reader.readexactly(length)
    return status


async def load_phase(
    port: int, request: bytes, concurrency: int, max_requests: int, max_seconds: float, name: str
) -> Run:
    """``concurrency`` closed-loop clients until ``max_requests`` are done or ``max_seconds`` pass."""
    run = Run(name, concurrency)
    remaining = max_requests
    deadline = time.perf_counter() + max_seconds

    async def client() -> None:
        nonlocal remaining
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while remaining > 0 and time.perf_counter() < deadline:
                remaining -= 1
                t = time.perf_counter()
                status = await roundtrip(reader, writer, request)
                if status == 200:
                    run.latencies.append(time.perf_counter() - t)
                else:
                    run.errors += 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    run.wall_s = time.perf_counter() - start
    return run


async def probe_health(port: int, stop: asyncio.Event, interval_s: float = 0.05) -> Run:
    """GET /healthz every ``interval_s`` on its own connection until ``stop`` is set."""
    run = Run("healthz during c=32", 1)
    request = build_request("GET", "/healthz", port)
    reader, writer = await asyncio.open_connection(HOST, port)
    start = time.perf_counter()
    try:
        while not stop.is_set():
            t = time.perf_counter()
            if await roundtrip(reader, writer, request) == 200:
                run.latencies.append(time.perf_counter() - t)
            else:
                run.errors += 1
            await asyncio.sleep(interval_s)
    finally:
        writer.close()
    run.wall_s = time.perf_counter() - start
    return run


async def http_bench(port: int, image: bytes, args: argparse.Namespace) -> list[dict[str, Any]]:
    body, ctype = multipart(image, "bench.png", "image/png")
    request = build_request("POST", "/classify", port, body, ctype)
    await load_phase(port, request, 4, 40, 10, "warm-up")
    c1 = await load_phase(port, request, 1, args.requests_c1, args.seconds, "classify c=1")
    stop = asyncio.Event()
    health = asyncio.create_task(probe_health(port, stop))
    c32 = await load_phase(port, request, 32, args.requests_c32, args.seconds, "classify c=32")
    stop.set()
    return [c1.summary(), c32.summary(), (await health).summary()]


def readiness(port: int) -> dict[str, Any]:
    """GET /readyz (any status: 503 still carries the checks)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", "/readyz")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def start_server(
    port: int, backend: str, threads: int, tta: str = "off", weights_dir: str = ""
) -> subprocess.Popen[bytes]:
    env = {
        "ATELIER_CLASSIFY_BACKEND": backend,
        "ATELIER_TORCH_THREADS": str(threads),
        "ATELIER_CLASSIFY_TTA": {"off": "0", "on": "1"}.get(tta, tta),
        **({"ATELIER_WEIGHTS_DIR": weights_dir} if weights_dir else {}),
    }
    return start_api(port, env, lambda p: readiness(p)["checks"]["classifier"]["ok"])


def bench_image() -> bytes:
    """A real CIFAR-10 test image as PNG when the data is there, else a fixed noise image."""
    from PIL import Image

    try:
        from models import cifar

        pixels = cifar.load_split(False).images[0]
    except (FileNotFoundError, OSError):
        pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def model_bench(seconds: float, threads: int) -> dict[str, Any]:
    """Images/s of the model alone at batch 1 and 256, for each runtime that has a file."""
    import torch

    from core.settings import Settings
    from models.classifier import fold_batchnorm, load_classifier
    from models.training.export_onnx import latency, onnx_runner, torch_runner

    wdir = Settings().weights_dir / "classifier"  # the same files the server loads
    if threads > 0:  # 0: the library default, as ATELIER_TORCH_THREADS=0 gives the server
        torch.set_num_threads(threads)
    model = fold_batchnorm(load_classifier(wdir / "classifier.safetensors")[0])
    x = np.random.default_rng(0).standard_normal((256, 3, 32, 32)).astype(np.float32)
    runners = {"torch-fp32": torch_runner(model)}
    for name, fname in (
        ("onnx-fp32", "classifier.onnx"),
        ("onnx-int8-static", "classifier.int8.onnx"),
        ("onnx-int8-dynamic", "classifier.int8-dynamic.onnx"),
    ):
        if (wdir / fname).exists():
            runners[name] = onnx_runner(wdir / fname, threads)
    return {name: [latency(run, x, b, seconds) for b in (1, 256)] for name, run in runners.items()}


def verdicts(http: list[dict[str, Any]]) -> dict[str, Any]:
    c1, c32 = http[0], http[1]
    ratio = round(c32["rps"] / c1["rps"], 2) if c1["rps"] and c32["rps"] else None
    return {
        "p50_c1_ms": {
            "target": f"<= {TARGETS['p50_c1_ms']}",
            "measured": c1["p50_ms"],
            "met": c1["p50_ms"] is not None and c1["p50_ms"] <= TARGETS["p50_c1_ms"],
        },
        "rps_ratio_c32_over_c1": {
            "target": f">= {TARGETS['rps_ratio_c32_over_c1']}",
            "measured": ratio,
            "met": ratio is not None and ratio >= TARGETS["rps_ratio_c32_over_c1"],
        },
        "p99_c32_ms": {
            "target": f"< {TARGETS['p99_c32_ms']}",
            "measured": c32["p99_ms"],
            "met": c32["p99_ms"] is not None and c32["p99_ms"] < TARGETS["p99_c32_ms"],
        },
    }


def classify_machine() -> dict[str, Any]:
    """The machine, the torch build and the micro-batching settings /classify ran with."""
    import torch

    from core.settings import Settings

    settings = Settings()
    return machine(
        torch=torch.__version__,
        torch_threads=torch.get_num_threads(),
        classify_max_batch=settings.classify_max_batch,
        classify_batch_wait_ms=settings.classify_batch_wait_ms,
    )


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"# POST /classify benchmark, CPU, {m['date']}",
        "",
        f"- {describe(m)}",
        f"- Load before: `{report['uptime_before']}`",
        f"- Load after: `{report['uptime_after']}`",
        "- Server: `uvicorn app.main:create_app --factory`, 1 process, "
        f"ATELIER_TORCH_THREADS={report['threads']}, micro-batching (max batch "
        f"{m['classify_max_batch']}, {m['classify_batch_wait_ms']} ms extra wait); client: raw asyncio "
        "HTTP/1.1 keep-alive, same machine.",
        f"- Request: one {report['image_bytes']}-byte 32x32 PNG (a CIFAR-10 test image), default top_k.",
        f"- Command: `{report['command']}`",
        "",
    ]
    for srv in report["servers"]:
        lines += [
            f"## Over HTTP, model `{srv.get('model_version')}`, backend `{srv['backend']}`, mirror TTA "
            f"{TTA_WORDS.get(srv.get('tta'), srv.get('tta'))} (load after: `{srv['uptime_after']}`)",
            "",
            "| phase | concurrency | requests | errors | req/s | p50 ms | p90 ms | p99 ms | max ms |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in srv["http"]:
            lines.append(
                f"| {r['name']} | {r['concurrency']} | {r['requests']} | {r['errors']} | {r['rps']} | "
                f"{r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | {r['max_ms']} |"
            )
        lines += ["", "| target | required | measured | met |", "|---|---|---|---|"]
        for name, v in srv["targets"].items():
            lines.append(f"| {name} | {v['target']} | {v['measured']} | {'yes' if v['met'] else 'NO'} |")
        lines += ["", f"Server batching counters after the run: {srv['batch_stats']}", ""]
    lines += [
        "## Model alone (random input, fp32 input tensors, no TTA, as the service runs it)",
        "",
        "| runtime | batch | median ms/call | images/s |",
        "|---|---|---|---|",
    ]
    for name, rows in report["model"].items():
        for r in rows:
            lines.append(f"| {name} | {r['batch']} | {r['median_ms']} | {r['images_per_s']} |")
    return "\n".join(lines) + "\n"


def server_bench(
    backend: str, image: bytes, args: argparse.Namespace, tta: str = "off", weights_dir: str = ""
) -> dict[str, Any]:
    """One server process with ``backend`` (and ``weights_dir``, else the default weights): the HTTP
    phases, target verdicts, its batching counters."""
    port = free_port()
    server = start_server(port, backend, args.threads, tta, weights_dir)
    try:
        http = asyncio.run(http_bench(port, image, args))
        check = readiness(port)["checks"]["classifier"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {
        "weights_dir": weights_dir or "(default)",
        "model_version": check.get("version"),
        "backend": check.get("backend", backend),
        "tta": tta,
        "temperature": check.get("temperature"),
        "uptime_after": uptime(),
        "http": http,
        "targets": verdicts(http),
        "batch_stats": {k: check.get(k) for k in ("batches", "largest_batch", "images_scored")},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests-c1", type=int, default=500)
    p.add_argument("--requests-c32", type=int, default=4000)
    p.add_argument("--seconds", type=float, default=30.0, help="hard time cap per load phase")
    p.add_argument("--model-seconds", type=float, default=3.0, help="time per model-alone measurement")
    p.add_argument("--backends", default="torch,onnx", help="comma-separated: one server run per backend")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="server's ATELIER_TORCH_THREADS (1: a 2-core box is shared with the load generator)",
    )
    p.add_argument(
        "--tta",
        choices=["off", "on", "auto", "both", "all"],
        default="off",
        help="ATELIER_CLASSIFY_TTA of the servers (both: off and on; all: off, on and auto)",
    )
    p.add_argument(
        "--weights-dirs",
        default="",
        help="comma-separated ATELIER_WEIGHTS_DIR values to compare, a server each (default: the service's)",
    )
    p.add_argument("--rounds", type=int, default=1, help="repeat the server runs, alternating, N times")
    p.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--tag", default="", help="suffix for the result file names")
    args = p.parse_args(argv)

    before = uptime()
    image = bench_image()
    tta_modes = {"both": ["off", "on"], "all": ["off", "on", "auto"]}.get(args.tta, [args.tta])
    servers = [
        server_bench(backend, image, args, tta, weights_dir)
        for _ in range(args.rounds)
        for weights_dir in args.weights_dirs.split(",")
        for backend in args.backends.split(",")
        for tta in tta_modes
    ]
    model = model_bench(args.model_seconds, args.threads)
    report = {
        "machine": classify_machine(),
        "uptime_before": before,
        "uptime_after": uptime(),
        "threads": args.threads,
        "image_bytes": len(image),
        "command": " ".join(["python", "bench/classify.py", *(argv if argv is not None else sys.argv[1:])]),
        "servers": servers,
        "model": model,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"classify-cpu-{time.strftime('%Y-%m-%d')}{args.tag}"
    (args.out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out_dir / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
