"""Benchmark the any-painting model (``style_image``): bare ONNX Runtime runs and POST /stylize over HTTP.

    python bench/arbitrary.py [--repeats 10] [--http-repeats 8] [--tag avx2]

Model: the style predictor (256×256) and the size-free transform graph at 256, 512 and 1024 px
(square, plus 1024×768), as served (graph optimizations off, see models/arbitrary.py) and with
ONNX Runtime's full optimizations for comparison, plus the original fixed 384×384 graph. Configs
are interleaved round by round so they see the same machine load.

HTTP: uvicorn on 127.0.0.1, JPEG photo + PNG painting in, PNG out, ``size`` = 256/512/1024 (the
photo is 3:2), once with a painting the server has not seen (cache miss: decode + predictor) and
once with one it has (cache hit). Results: ``bench/results/arbitrary-cpu-<date>[-tag].{md,json}``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from PIL import Image, PngImagePlugin  # noqa: E402

from bench.machine import describe, machine, uptime  # noqa: E402
from bench.serve import HOST, free_port, start_api  # noqa: E402
from models.arbitrary import (  # noqa: E402
    PREDICT_FILE,
    TRANSFORM_FILE,
    ArbitraryStyleModel,
    _session,
    center_square,
    package_dir,
    probe_image,
    read_verified,
    relabel_spatial_dims,
)

DATA_DIR = Path(os.environ.get("ATELIER_DATA_DIR", ROOT.parent / "shared" / "data"))
SIZES = (256, 512, 1024)
SHAPES = [(256, 256), (512, 512), (1024, 1024), (1024, 768)]  # width, height


def summary(times: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(times), 1), "min_ms": round(min(times), 1), "n": len(times)}


def photo(width: int, height: int) -> Image.Image:
    """A real photo when the shared data set is present (content does not change the cost)."""
    photos = sorted((DATA_DIR / "photos").glob("set14_*.jpg"))
    if photos:
        return Image.open(photos[0]).convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
    return Image.fromarray((probe_image(width, height) * 255).astype(np.uint8))


def painting() -> Image.Image:
    paintings = sorted((DATA_DIR / "styles").glob("*.jpg"))
    if paintings:
        return Image.open(paintings[0]).convert("RGB")
    return Image.fromarray((probe_image(300, 200)[::-1] * 255).astype(np.uint8))


# --- bare model ----------------------------------------------------------------------------------------


def bench_model(repeats: int) -> dict[str, Any]:
    model = ArbitraryStyleModel.load()
    vector = model.style_vector(center_square(painting()))
    relabelled = relabel_spatial_dims(read_verified(package_dir())[TRANSFORM_FILE])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    optimized = ort.InferenceSession(relabelled, options, providers=["CPUExecutionProvider"])
    original = _session(read_verified(package_dir())[TRANSFORM_FILE], 0)
    names = [i.name for i in optimized.get_inputs()]
    square = center_square(painting())

    def run_optimized(x: np.ndarray) -> None:
        optimized.run(None, {names[0]: x[None], names[1]: vector})

    inputs = {shape: np.asarray(photo(*shape), dtype=np.float32) / 255.0 for shape in SHAPES}
    native = np.asarray(photo(384, 384), dtype=np.float32)[None] / 255.0
    unfused = _session(read_verified(package_dir())[PREDICT_FILE], 0)
    served_predictor = f"predict@256 (served: {'fused' if model.predictor_fused else 'unfused'})"
    configs: dict[str, Callable[[], object]] = {
        served_predictor: lambda: model.style_vector(square),
        "predict@256 (unfused)": lambda: unfused.run(None, {unfused.get_inputs()[0].name: square}),
    }
    configs["original graph@384x384"] = lambda: original.run(None, {names[0]: native, names[1]: vector})
    for shape, x in inputs.items():
        label = f"{shape[0]}x{shape[1]}"
        configs[f"served@{label}"] = lambda x=x: model.stylize(x, vector)
        configs[f"ort-optimized@{label}"] = lambda x=x: run_optimized(x)
    for fn in configs.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(repeats):
        for name, fn in configs.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: summary(t) for name, t in times.items()}


# --- HTTP ----------------------------------------------------------------------------------------------


def png_with_tag(img: Image.Image, tag: str) -> bytes:
    """Same pixels, different bytes: a text chunk makes every request a cache miss."""
    info = PngImagePlugin.PngInfo()
    info.add_text("bench", tag)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def server_timing(header: str) -> dict[str, float]:
    parts = (p.strip().split(";dur=") for p in header.split(","))
    return {name: float(value) for name, value in parts}


def bench_http(repeats: int) -> list[dict[str, Any]]:
    port = free_port()

    def ready(p: int) -> bool:
        body = httpx.get(f"http://{HOST}:{p}/readyz", timeout=5).json()
        return bool(body["checks"]["arbitrary_stylizer"]["ok"])

    server = start_api(port, {}, ready)
    rows = []
    try:
        style = painting().resize((512, 341))
        seen = png_with_tag(style, "seen")
        with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=120) as client:
            for size in SIZES:
                buf = io.BytesIO()
                photo(size, size * 2 // 3).save(buf, format="JPEG", quality=90)
                jpeg = buf.getvalue()
                for cache in ("miss", "hit"):
                    latencies, timings = [], []
                    for i in range(repeats + 1):
                        body = seen if cache == "hit" else png_with_tag(style, f"{size}-{i}-{time.time()}")
                        start = time.perf_counter()
                        r = client.post(
                            "/stylize",
                            files={
                                "file": ("photo.jpg", jpeg, "image/jpeg"),
                                "style_image": ("painting.png", body, "image/png"),
                            },
                            data={"size": str(size)},
                        )
                        elapsed = (time.perf_counter() - start) * 1000
                        r.raise_for_status()
                        assert r.headers["x-atelier-style-cache"] == cache or (cache == "hit" and i == 0)
                        if i == 0:
                            continue  # warm-up (and, for "hit", the request that fills the cache)
                        latencies.append(elapsed)
                        timings.append(server_timing(r.headers["server-timing"]))
                    out = Image.open(io.BytesIO(r.content))
                    rows.append(
                        {
                            "size": size,
                            "output": list(out.size),
                            "cache": cache,
                            **summary(latencies),
                            "server_ms": {
                                k: round(statistics.median(t[k] for t in timings), 1) for k in timings[0]
                            },
                        }
                    )
    finally:
        server.terminate()
        server.wait(30)
    return rows


def write_results(result: dict[str, Any], tag: str) -> Path:
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    stem = ROOT / "bench" / "results" / f"arbitrary-cpu-{day}{'-' + tag if tag else ''}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    lines = [
        f"# Any painting as a style (`style_image`) on CPU — {m['date']}",
        "",
        f"{describe(m)} (onnxruntime at its default intra-op threads).",
        f"Load before: `{result['load_before']}`; after: `{result['load_after']}` (the cores are shared "
        "with other jobs: absolute numbers are noisy, configs are interleaved round by round).",
        "",
        "## Bare model (median (min) ms, batch 1)",
        "",
        "`served`: the size-free graph as the service runs it (graph optimizations off); "
        "`ort-optimized`: the same graph with ONNX Runtime's full optimizations; "
        "`original graph`: the package's fixed 384×384 graph, as written.",
        "",
        "| what | median ms | min ms |",
        "|---|---|---|",
    ]
    for name, row in result["model"].items():
        lines.append(f"| {name} | {row['median_ms']} | {row['min_ms']} |")
    lines += [
        "",
        "## POST /stylize with style_image (uvicorn on 127.0.0.1, JPEG 3:2 photo + PNG painting in, PNG out)",
        "",
        "| size | output | painting | median ms | min ms | server timing (median ms) |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["http"]:
        timing = ", ".join(f"{k} {v}" for k, v in row["server_ms"].items())
        lines.append(
            f"| {row['size']} | {row['output'][0]}×{row['output'][1]} | {row['cache']} | "
            f"{row['median_ms']} | {row['min_ms']} | {timing} |"
        )
    lines += ["", "Reproduce: `python bench/arbitrary.py`.", ""]
    stem.with_suffix(".md").write_text("\n".join(lines))
    return stem.with_suffix(".md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--http-repeats", type=int, default=8)
    parser.add_argument("--tag", default="", help="suffix of the results file name (e.g. the host)")
    parser.add_argument("--skip-http", action="store_true")
    args = parser.parse_args()
    result: dict[str, Any] = {"machine": machine(onnxruntime=ort.__version__), "load_before": uptime()}
    result["model"] = bench_model(args.repeats)
    print(json.dumps(result["model"], indent=1))
    result["http"] = [] if args.skip_http else bench_http(args.http_repeats)
    result["load_after"] = uptime()
    print(json.dumps(result["http"], indent=1))
    print("wrote", write_results(result, args.tag))


if __name__ == "__main__":
    main()
