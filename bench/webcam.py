"""Benchmark live webcam stylization: WS /ws/stylize frames per second, one and two clients.

    python bench/webcam.py [--seconds 15] [--send-fps 30] [--sizes 256 384] [--clients 1 2]

Each client is a Python websocket client (the `websockets` package uvicorn[standard] brings) that
sends JPEG frames of a moving synthetic scene at ``--send-fps``, faster than the model can keep
up, exactly like the page does; the server stylizes the newest frame whenever it is free and drops
the rest. Measured after a warm-up: stylized frames received per second per client, latency from
sending a frame to receiving its stylized version, the share of frames the server dropped, and
the server's own per-frame timings. The API runs under uvicorn on 127.0.0.1 in its own process.
Results: ``bench/results/webcam-cpu-<date>.{md,json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from bench.machine import describe, machine, uptime  # noqa: E402
from bench.serve import HOST, free_port, start_api  # noqa: E402

STYLE = "starry_night"
FRAME_COUNT = 48  # distinct frames, sent in a loop (a 4:3 camera at 30 fps would do the same)


def scene(width: int, height: int, t: float) -> Image.Image:
    """A moving synthetic 'camera' frame: a sky gradient, a sun that travels, textured hills."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    sky = np.stack([0.35 + 0.4 * y / height, 0.55 + 0.3 * y / height, np.full_like(y, 0.95)], axis=-1)
    cx, cy = width * (0.2 + 0.6 * t), height * 0.3
    sun = ((x - cx) ** 2 + (y - cy) ** 2) < (0.09 * width) ** 2
    sky[sun] = (1.0, 0.85, 0.3)
    hills = y > height * (0.62 + 0.08 * np.sin(x / width * 6.3 + t * 6.3))
    texture = 0.08 * np.sin(x * 0.35) * np.cos(y * 0.27)
    sky[hills] = np.stack([0.2 + texture, 0.5 + texture, 0.2 + texture], axis=-1)[hills]
    return Image.fromarray((np.clip(sky, 0, 1) * 255).astype(np.uint8), "RGB")


def frames(longest: int) -> list[bytes]:
    width, height = longest, longest * 3 // 4
    out = []
    for i in range(FRAME_COUNT):
        buf = io.BytesIO()
        scene(width, height, i / FRAME_COUNT).save(buf, "JPEG", quality=80)
        out.append(buf.getvalue())
    return out


async def client(url: str, data: list[bytes], send_fps: float, warmup_s: float, seconds: float) -> dict:
    """One webcam: send at a steady pace, count stylized frames arriving inside the measured window."""
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    server_ms: dict[str, list[float]] = {"infer": [], "total": []}
    batch_sizes: list[int] = []
    received = 0
    last_meta: dict[str, Any] = {}
    async with connect(url, max_size=16 * 2**20) as ws:
        ready = json.loads(await ws.recv())
        assert ready["event"] == "ready", ready
        start = time.perf_counter()
        window = (start + warmup_s, start + warmup_s + seconds)

        async def send() -> None:
            seq = 0
            interval = 1.0 / send_fps
            while time.perf_counter() < window[1]:
                seq += 1
                sent_at[seq] = time.perf_counter()
                await ws.send(data[seq % len(data)])
                await asyncio.sleep(max(0.0, start + seq * interval - time.perf_counter()))

        sender = asyncio.create_task(send())
        first_seq = last_seq = None
        while time.perf_counter() < window[1]:
            try:
                left = max(0.01, window[1] - time.perf_counter())
                message = await asyncio.wait_for(ws.recv(), timeout=left)
            except TimeoutError:
                break
            if isinstance(message, str):
                last_meta = json.loads(message)
                if last_meta.get("event") == "error":
                    raise RuntimeError(last_meta["problem"])
                continue
            now = time.perf_counter()
            if not window[0] <= now <= window[1]:
                continue
            received += 1
            seq = last_meta["seq"]
            first_seq = first_seq or seq
            last_seq = seq
            latencies.append((now - sent_at[seq]) * 1000)
            for key in server_ms:
                server_ms[key].append(last_meta["timings_ms"][key])
            batch_sizes.append(last_meta["batch_size"])
        await sender
    offered = (last_seq or 0) - (first_seq or 0) + 1
    return {
        "fps": round(received / seconds, 2),
        "frames": received,
        "latency_ms_p50": round(statistics.median(latencies), 1) if latencies else None,
        "latency_ms_p90": round(float(np.percentile(latencies, 90)), 1) if latencies else None,
        "dropped_share": round(1 - received / offered, 3) if offered > 0 and received else None,
        "server_infer_ms_p50": round(statistics.median(server_ms["infer"]), 1) if received else None,
        "server_total_ms_p50": round(statistics.median(server_ms["total"]), 1) if received else None,
        "server_batch_mean": round(statistics.mean(batch_sizes), 2) if received else None,
    }


async def scenario(port: int, longest: int, clients: int, args: argparse.Namespace) -> dict[str, Any]:
    url = f"ws://{HOST}:{port}/ws/stylize?style={STYLE}&format=jpeg"
    data = frames(longest)
    results = await asyncio.gather(
        *(client(url, data, args.send_fps, args.warmup, args.seconds) for _ in range(clients))
    )
    return {
        "size": f"{longest}x{longest * 3 // 4}",
        "clients": clients,
        "total_fps": round(sum(r["fps"] for r in results), 2),
        "per_client": results,
    }


def webcam_machine() -> dict[str, Any]:
    """The machine and the torch and ONNX Runtime builds the server ran with."""
    import onnxruntime
    import torch

    return machine(torch=torch.__version__, onnxruntime=onnxruntime.__version__)


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"# Live webcam stylization (WS /ws/stylize), CPU, {m['date']}",
        "",
        f"{describe(m)}. Style `{STYLE}` (fast arch, ONNX Runtime).",
        f"Load before: `{report['uptime_before']}`; after: `{report['uptime_after']}`.",
        "",
        f"Each client sends JPEG frames (quality 80) of a moving synthetic scene at {report['send_fps']} "
        f"fps, faster than the server can stylize; {report['warmup_s']} s warm-up, then "
        f"{report['seconds']} s measured. The server stylizes the newest frame whenever it is free and "
        "drops the rest.",
        "",
        "| frame | clients | frames/s per client | total frames/s | latency p50 / p90 (ms) "
        "| dropped | server infer p50 (ms) | server total p50 (ms) | frames per forward |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["results"]:
        per = row["per_client"]

        def each(fmt: str, per: list[dict[str, Any]] = per) -> str:
            return "; ".join(fmt.format(**r) for r in per)

        dropped = "; ".join(f"{100 * (r['dropped_share'] or 0):.0f}%" for r in per)
        lines.append(
            f"| {row['size']} | {row['clients']} | {each('{fps}')} | **{row['total_fps']}** "
            f"| {each('{latency_ms_p50} / {latency_ms_p90}')} | {dropped} "
            f"| {each('{server_infer_ms_p50}')} | {each('{server_total_ms_p50}')} "
            f"| {each('{server_batch_mean}')} |"
        )
    lines += [
        "",
        "Latency: from sending a frame to receiving its stylized version (the newest frame when the model "
        "got free). Server total: decode, resize, queue wait, inference, blend and encode of one frame. "
        "Frames per forward: how many frames (of all clients) the micro-batcher ran together. With two "
        "clients, values are per client, separated by `;`.",
        "Reproduce: `python bench/webcam.py`.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 384])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--send-fps", type=float, default=30.0)
    parser.add_argument("--tag", default="", help="suffix of the results file names")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    port = free_port()

    def ready(p: int) -> bool:
        return bool(httpx.get(f"http://{HOST}:{p}/styles", timeout=2).json()["styles"])

    before = uptime()
    server = start_api(port, {}, ready)
    try:
        results = []
        for longest in args.sizes:
            for clients in args.clients:
                row = asyncio.run(scenario(port, longest, clients, args))
                print(json.dumps(row), flush=True)
                results.append(row)
    finally:
        server.terminate()
        server.wait(timeout=30)
    report = {
        "machine": webcam_machine(),
        "uptime_before": before,
        "uptime_after": uptime(),
        "send_fps": args.send_fps,
        "warmup_s": args.warmup,
        "seconds": args.seconds,
        "results": results,
    }
    stem = f"webcam-cpu-{datetime.now(UTC).strftime('%Y-%m-%d')}{'-' + args.tag if args.tag else ''}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
