"""Load on /classify and /stylize at concurrency 1, 8, 32 and 128: throughput, latency, errors, shedding.

    python bench/load.py [--seconds 15] [--levels 1,8,32,128]

Starts the API under uvicorn on 127.0.0.1 (bench/serve.py: own queue and key prefix) with the
default backpressure settings, and drives it with closed-loop keep-alive clients (the raw-asyncio
client of bench/classify.py). Per level: requests answered 200, their req/s and p50/p99, requests
shed (503 past ATELIER_*_MAX_PENDING, 504 past ATELIER_REQUEST_DEADLINE_S) and any other error.
A shed answer comes back at once with Retry-After; a closed-loop client sends its next request
straight away (no back-off), which is the harshest case for the server. Each level is bounded in
requests and seconds and only ever targets 127.0.0.1. Results, with the machine's load averages,
go to ``bench/results/load-cpu-<date>.{md,json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.classify import build_request, classify_machine, roundtrip, uptime  # noqa: E402
from bench.serve import HOST, free_port, start_api  # noqa: E402
from tests.images import photo_like  # noqa: E402

SHED = (503, 504)


@dataclass
class Level:
    endpoint: str
    concurrency: int
    ok: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    connection_errors: int = 0
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.ok)

        def pct(q: float) -> float | None:
            return round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 1) if lat else None

        total = sum(self.statuses.values()) + self.connection_errors
        shed = sum(self.statuses[s] for s in SHED)
        errors = total - len(lat) - shed
        return {
            "endpoint": self.endpoint,
            "concurrency": self.concurrency,
            "requests": total,
            "ok": len(lat),
            "ok_rps": round(len(lat) / self.wall_s, 1) if self.wall_s else None,
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "shed": shed,
            "shed_pct": round(100 * shed / total, 1) if total else 0.0,
            "errors": errors,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "wall_s": round(self.wall_s, 1),
        }


def form_body(fields: dict[str, str], image: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="p.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode()
        + image
        + b"\r\n"
    )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    photo_like(width, height).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


async def drive(port: int, request: bytes, level: Level, max_requests: int, max_seconds: float) -> None:
    remaining = max_requests
    deadline = time.perf_counter() + max_seconds

    async def client() -> None:
        nonlocal remaining
        reader = writer = None
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(HOST, port)
                t = time.perf_counter()
                status = await roundtrip(reader, writer, request)
            except (OSError, asyncio.IncompleteReadError):
                level.connection_errors += 1
                writer = None
                continue
            level.statuses[status] += 1
            if status == 200:
                level.ok.append(time.perf_counter() - t)
        if writer is not None:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(level.concurrency)))
    level.wall_s = time.perf_counter() - start


def first_style(port: int) -> str:
    styles = httpx.get(f"http://{HOST}:{port}/styles", timeout=10).json()["styles"]
    return styles[0]["name"]


async def run_all(port: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    photo = jpeg(args.side, args.side * 3 // 4)
    classify_body, classify_type = form_body({}, jpeg(64, 64))
    stylize_body, stylize_type = form_body({"style": first_style(port), "format": "jpeg"}, photo)
    requests = {
        "/classify": build_request("POST", "/classify", port, classify_body, classify_type),
        "/stylize": build_request("POST", "/stylize", port, stylize_body, stylize_type),
    }
    results = []
    for endpoint, request in requests.items():
        await drive(port, request, Level(endpoint, 2), 10, 30)  # warm-up
        for concurrency in args.levels:
            level = Level(endpoint, concurrency)
            await drive(port, request, level, args.max_requests, args.seconds)
            results.append(level.summary())
            print(json.dumps(results[-1]), flush=True)
            await asyncio.sleep(2)  # let the waiting line drain between levels
    return results


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"# Load: /classify and /stylize at concurrency 1-128 ({m['date']})",
        "",
        f"CPU: {m['cpu_model']} ({m['cpus']} cores, SIMD {', '.join(m['simd'])}), torch {m['torch']}, "
        f"no GPU. Server: one uvicorn process, default settings (classify_max_pending "
        f"{report['settings']['classify_max_pending']}, stylize_max_pending "
        f"{report['settings']['stylize_max_pending']}, request_deadline_s "
        f"{report['settings']['request_deadline_s']}). /stylize: a {report['photo']} JPEG, a named "
        "style, JPEG out. /classify: one 64x64 JPEG. Load generator on the same 2 cores.",
        "",
        f"Load before: `{report['uptime_before']}`  ",
        f"Load after: `{report['uptime_after']}`",
        "",
        "| endpoint | c | requests | ok | ok req/s | p50 ms | p99 ms | shed (503/504) | shed % | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["levels"]:
        lines.append(
            f"| `{r['endpoint']}` | {r['concurrency']} | {r['requests']} | {r['ok']} | {r['ok_rps']} | "
            f"{r['p50_ms']} | {r['p99_ms']} | {r['shed']} | {r['shed_pct']} | {r['errors']} |"
        )
    lines += [
        "",
        "p50/p99 are of the requests answered 200. Shed requests are answered at once (503 with "
        "Retry-After) or at the deadline (504); errors are any other status or a broken connection.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="Longest time per level.")
    parser.add_argument("--max-requests", type=int, default=20000, help="Most requests per level.")
    parser.add_argument("--levels", default="1,8,32,128")
    parser.add_argument("--side", type=int, default=256, help="Longest side of the /stylize photo.")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    args.levels = [int(c) for c in args.levels.split(",")]

    from core.settings import Settings

    settings = Settings()
    port = free_port()
    before = uptime()

    def ready(p: int) -> bool:
        checks = httpx.get(f"http://{HOST}:{p}/readyz", timeout=5).json()["checks"]
        return bool(checks["classifier"]["ok"] and checks["stylizer"]["ok"])

    server = start_api(port, {"ATELIER_TORCH_THREADS": "0"}, ready)
    try:
        levels = asyncio.run(run_all(port, args))
    finally:
        server.terminate()
        server.wait(timeout=30)
    report = {
        "machine": classify_machine(),
        "uptime_before": before,
        "uptime_after": uptime(),
        "photo": f"{args.side}x{args.side * 3 // 4}",
        "settings": {
            "classify_max_pending": settings.classify_max_pending,
            "stylize_max_pending": settings.stylize_max_pending,
            "request_deadline_s": settings.request_deadline_s,
        },
        "levels": levels,
    }
    stem = args.out / f"load-cpu-{time.strftime('%Y-%m-%d')}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
