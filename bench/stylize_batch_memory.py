"""What a pixel cap on /stylize batches costs and saves: two servers side by side, in ONE run.

    python bench/stylize_batch_memory.py [--rounds 3]

Server A has no pixel cap (``ATELIER_STYLIZE_MAX_BATCH_PIXELS=0``: batches up to
``ATELIER_STYLIZE_MAX_BATCH`` images of any size), server B the default cap. Rounds alternate
between them (only one works at a time, so both see the same machine): 4 concurrent clients send
16 images at 512 px, then 8 at 1024 px. Reported per server: requests/s per size, mean batch, and
resident memory after start-up and after the runs (the high-water mark the batches leave behind).
Results: ``bench/results/stylize-batch-memory-<date>.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.machine import describe  # noqa: E402
from bench.serve import HOST, free_port  # noqa: E402
from bench.stylize import jpeg, request, rss_mb, square_photo, start_server, stylize_machine, uptime  # noqa: E402
from core.settings import Settings  # noqa: E402

SIZES = {512: 16, 1024: 8}  # size -> requests per round
CLIENTS = 4


def start(weights_dir: Path, max_batch_pixels: int) -> tuple[int, subprocess.Popen]:
    port = free_port()
    cap = {"ATELIER_STYLIZE_MAX_BATCH_PIXELS": str(max_batch_pixels)}
    return port, start_server(port, weights_dir, cap)


def burst(url: str, style: str, body: bytes, size: int, total: int) -> tuple[float, float]:
    """(requests/s, mean batch) for ``total`` requests from CLIENTS concurrent clients."""
    with httpx.Client(timeout=600) as client, ThreadPoolExecutor(CLIENTS) as pool:
        start = time.perf_counter()
        rows = list(pool.map(lambda _: request(client, url, body, style, size, "png"), range(total)))
        wall = time.perf_counter() - start
    return total / wall, statistics.fmean(r[1]["batch"] for r in rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights-dir", default=str(ROOT / "models" / "weights"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    a = p.parse_args()

    default_cap = Settings.model_fields["stylize_max_batch_pixels"].default
    configs = {"no pixel cap": 0, f"cap {default_cap:,} px (default)": default_cap}
    bodies = {size: jpeg(square_photo(size)) for size in SIZES}
    result: dict[str, Any] = {"machine": stylize_machine(), "uptime_before": uptime(), "servers": {}}
    servers = {name: start(Path(a.weights_dir), cap) for name, cap in configs.items()}
    try:
        style = httpx.get(f"http://{HOST}:{next(iter(servers.values()))[0]}/styles").json()["styles"][0][
            "name"
        ]
        for name, (_, proc) in servers.items():
            result["servers"][name] = {"rss_mb_after_start": rss_mb(proc.pid), "rps": {}, "mean_batch": {}}
        for port, _ in servers.values():  # warm-up: every shape once
            for size, body in bodies.items():
                burst(f"http://{HOST}:{port}/stylize", style, body, size, 1)
        samples: dict[str, dict[int, list[tuple[float, float]]]] = {
            n: {s: [] for s in SIZES} for n in servers
        }
        for _ in range(a.rounds):
            for name, (port, _) in servers.items():
                for size, total in SIZES.items():
                    samples[name][size].append(
                        burst(f"http://{HOST}:{port}/stylize", style, bodies[size], size, total)
                    )
        for name, (_, proc) in servers.items():
            row = result["servers"][name]
            row["rss_mb_after_runs"] = rss_mb(proc.pid)
            for size in SIZES:
                row["rps"][size] = round(statistics.median(r for r, _ in samples[name][size]), 3)
                row["mean_batch"][size] = round(statistics.fmean(b for _, b in samples[name][size]), 2)
    finally:
        for _, proc in servers.values():
            proc.terminate()
            proc.wait(timeout=30)
    result["uptime_after"] = uptime()
    m = result["machine"]
    lines = [
        f"# /stylize batch pixel cap — {m['date']}",
        "",
        f"{describe(m)}.",
        f"Load before: `{result['uptime_before']}`; after: `{result['uptime_after']}`. Two servers side by"
        f" side, rounds alternating ({a.rounds} rounds, {CLIENTS} concurrent clients, medians over rounds).",
        "",
        "| server | req/s @512 | mean batch @512 | req/s @1024 | mean batch @1024 "
        "| RSS after start-up MB | RSS after runs MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in result["servers"].items():
        lines.append(
            f"| {name} | {row['rps'][512]} | {row['mean_batch'][512]} | {row['rps'][1024]} | "
            f"{row['mean_batch'][1024]} | {row['rss_mb_after_start']} | {row['rss_mb_after_runs']} |"
        )
    out_dir = Path(a.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"stylize-batch-memory-{datetime.now(UTC).strftime('%Y-%m-%d')}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
