"""Benchmark fast style transfer: bare network forwards and POST /stylize over real HTTP, in ONE run.

    python bench/stylize.py [--style starry_night] [--reference-weights runs/weights/x.safetensors]

Headline: ``/stylize`` at 512×512 end to end (uvicorn on 127.0.0.1, JPEG upload, PNG answer) versus
the *reference* network's bare eager-PyTorch forward at 512×512, measured interleaved (one forward,
one request, ...) so both see the same machine load; target ratio <= 0.5. Also: bare forwards of
both archs per backend (eager fp32, channels_last, bf16 autocast, ONNX Runtime), bf16's error, and
latency / throughput at 256, 512 and 1024 px. Results: ``bench/results/stylize-cpu-<date>.{md,json}``.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from app.services.stylizer import OnnxRunner  # noqa: E402
from bench.machine import describe, machine, uptime  # noqa: E402
from bench.serve import HOST, free_port, start_api  # noqa: E402
from models.photos import DATA_DIR, list_photos, split_photos  # noqa: E402
from models.precision import bf16_runnable  # noqa: E402
from models.styles import load_network  # noqa: E402
from models.transformer import build, conv_macs, count_params, load_transformer, stylize  # noqa: E402

SIZES = (256, 512, 1024)


def median_ms(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    fn()  # warm-up: allocations, oneDNN primitive creation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return {"median_ms": round(statistics.median(times), 1), "min_ms": round(min(times), 1), "n": repeats}


def stylize_machine() -> dict[str, Any]:
    """The machine and the torch and ONNX Runtime builds /stylize ran with."""
    import onnxruntime

    return machine(
        torch=torch.__version__, torch_threads=torch.get_num_threads(), onnxruntime=onnxruntime.__version__
    )


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def square_photo(size: int) -> Image.Image:
    """A held-out photo, center-cropped square and resized to size×size (the bare forwards' shape)."""
    held = split_photos(list_photos(DATA_DIR / "photos"))[1]
    img = Image.open(held[0]).convert("RGB")
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    return img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)


def bare_forwards(
    fast: torch.nn.Module,
    reference: torch.nn.Module,
    repeats: int,
    candidates: dict[str, torch.nn.Module] | None = None,
) -> dict[str, Any]:
    """Every (arch, backend) at every size; bf16 error measured against fp32 on a real photo."""
    out: dict[str, Any] = {}
    nets = {"reference": reference, "served": fast, **(candidates or {})}
    runners = {name: {"torch_fp32": m, "onnx_fp32": OnnxRunner(m)} for name, m in nets.items()}
    for arch, backends in runners.items():
        for size in SIZES:
            n = max(2, repeats // 2) if size == 1024 else repeats
            x = torch.rand(1, 3, size, size)
            model = backends["torch_fp32"]
            with torch.inference_mode():
                row = {"torch_fp32": median_ms(lambda m=model, x=x: m(x), n)}
                cl = x.contiguous(memory_format=torch.channels_last)
                model_cl = build(model.config).eval()
                model_cl.load_state_dict(model.state_dict())
                model_cl = model_cl.to(memory_format=torch.channels_last)
                row["torch_fp32_channels_last"] = median_ms(lambda m=model_cl, x=cl: m(x), n)
                if bf16_runnable(torch.device("cpu")):  # AVX2-only CPUs refuse bf16 convolutions
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        row["torch_bf16"] = median_ms(lambda m=model, x=x: m(x), n)
            style = model.style_code(None).detach()
            row["onnx_fp32"] = median_ms(lambda r=backends["onnx_fp32"], x=x, w=style: r(x, w), n)
            out[f"{arch}@{size}"] = row
            print(arch, size, {k: v["median_ms"] for k, v in row.items()}, flush=True)
    if not bf16_runnable(torch.device("cpu")):
        return out
    photo = torch.from_numpy(np.asarray(square_photo(512))).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        ref32 = stylize(fast, photo)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf = stylize(fast, photo).float()
    mse = float(((bf - ref32) ** 2).mean())
    out["fast_bf16_vs_fp32"] = {
        "psnr_db": round(10 * np.log10(1 / max(mse, 1e-12)), 2),
        "max_abs_levels": round(float((bf - ref32).abs().max()) * 255, 1),
    }
    return out


def start_server(port: int, weights_dir: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    def styles_loaded(p: int) -> bool:
        return bool(httpx.get(f"http://{HOST}:{p}/styles", timeout=2).json()["styles"])

    # Latency is measured here, not load shedding: no request deadline on an oversubscribed machine.
    env = {"ATELIER_WEIGHTS_DIR": str(weights_dir), "ATELIER_REQUEST_DEADLINE_S": "600", **(extra_env or {})}
    return start_api(port, env, styles_loaded, timeout_s=180)


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def request(
    client: httpx.Client, url: str, body: bytes, style: str, size: int, fmt: str
) -> tuple[float, dict]:
    start = time.perf_counter()
    r = client.post(
        url,
        files={"file": ("p.jpg", body, "image/jpeg")},
        data={"style": style, "size": str(size), "format": fmt},
    )
    elapsed = (time.perf_counter() - start) * 1000
    r.raise_for_status()
    timing = {
        k: float(v)
        for k, _, v in (p.strip().partition(";dur=") for p in r.headers["server-timing"].split(","))
    }
    return elapsed, {**timing, "batch": int(r.headers["x-atelier-batch-size"]), "bytes": len(r.content)}


def http_runs(url: str, style: str, repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with httpx.Client(timeout=120) as client:
        for size in SIZES:
            body = jpeg(square_photo(size))
            for fmt in ("png", "jpeg") if size == 512 else ("png",):
                n = max(3, repeats // 2) if size == 1024 else repeats
                request(client, url, body, style, size, fmt)  # warm-up for this shape
                rows = [request(client, url, body, style, size, fmt) for _ in range(n)]
                lat = sorted(r[0] for r in rows)
                parts = {
                    k: round(statistics.median(r[1][k] for r in rows), 1)
                    for k in ("decode", "prepare", "queue", "infer", "encode", "total")
                }
                out[f"c1@{size}/{fmt}"] = {
                    "median_ms": round(statistics.median(lat), 1),
                    "p90_ms": round(lat[min(n - 1, int(0.9 * n))], 1),
                    "n": n,
                    "server_timing_median_ms": parts,
                    "response_bytes": rows[0][1]["bytes"],
                }
            conc, total = 4, (8 if size == 1024 else 16)
            start = time.perf_counter()
            with ThreadPoolExecutor(conc) as pool:
                rows = list(
                    pool.map(lambda _, b=body, s=size: request(client, url, b, style, s, "png"), range(total))
                )
            wall = time.perf_counter() - start
            out[f"c4@{size}/png"] = {
                "requests": total,
                "rps": round(total / wall, 2),
                "median_ms": round(statistics.median(r[0] for r in rows), 1),
                "mean_batch": round(statistics.fmean(r[1]["batch"] for r in rows), 2),
            }
            print(size, {k: v for k, v in out.items() if f"@{size}" in k}, flush=True)
    return out


def headline(url: str, style: str, reference: torch.nn.Module, pairs: int) -> dict[str, Any]:
    """Interleaved: reference bare forward at 512, then one /stylize at 512, ``pairs`` times."""
    x = torch.rand(1, 3, 512, 512)
    body = jpeg(square_photo(512))
    ref_ms, e2e_ms = [], []
    with httpx.Client(timeout=120) as client, torch.inference_mode():
        reference(x)
        request(client, url, body, style, 512, "png")
        for _ in range(pairs):
            start = time.perf_counter()
            reference(x)
            ref_ms.append((time.perf_counter() - start) * 1000)
            e2e_ms.append(request(client, url, body, style, 512, "png")[0])
    ref, e2e = statistics.median(ref_ms), statistics.median(e2e_ms)
    return {
        "pairs": pairs,
        "reference_forward_512_median_ms": round(ref, 1),
        "stylize_e2e_512_png_median_ms": round(e2e, 1),
        "ratio": round(e2e / ref, 3),
        "target_ratio": 0.5,
        "met": e2e / ref <= 0.5,
    }


def markdown(result: dict[str, Any]) -> str:
    m, h = result["machine"], result["headline"]
    lines = [
        f"# POST /stylize on CPU — {m['date']}",
        "",
        f"{describe(m)}.",
        f"Load before: `{result['uptime_before']}`; after: `{result['uptime_after']}` (the 2 cores are shared"
        " with other jobs, so absolute numbers are noisy; the headline ratio is measured interleaved).",
        f"Style `{result['style']}` ({result['model']}); reference net: {result['reference_weights']}.",
        "",
        "## Headline (interleaved, same run)",
        "",
        "* reference network, bare eager fp32 forward, 512×512: "
        f"**{h['reference_forward_512_median_ms']} ms** median",
        f"* `POST /stylize` 512×512 end to end (JPEG in, PNG out, uvicorn on 127.0.0.1): "
        f"**{h['stylize_e2e_512_png_median_ms']} ms** median",
        f"* ratio **{h['ratio']}** (target ≤ {h['target_ratio']}: {'met' if h['met'] else 'NOT met'}), "
        f"{h['pairs']} pairs",
        *(
            f"* {k.removeprefix('estimated_ratio_')}: estimated ratio **{v}** (today's end-to-end minus the "
            "served net's bare ONNX forward plus the candidate's; not served)"
            for k, v in h.items()
            if k.startswith("estimated_ratio_")
        ),
        "",
        f"Server: {result['styles_loaded']} styles in one network; start-up (process start to `/styles` "
        f"answering) {result['startup_s']} s; resident memory {result['rss_mb_after_start']} MB after "
        f"start-up, {result['rss_mb_after_load']} MB after the HTTP runs.",
        "",
        "## Architectures",
        "",
        "| arch | params | conv GFLOP @512² |",
        "|---|---|---|",
        *(f"| {a} | {v['params']:,} | {v['gflop_512']} |" for a, v in result["archs"].items()),
        "",
        "## Bare forwards (median (min) ms, batch 1, square; min is the least load-sensitive)",
        "",
        "| arch@size | torch fp32 | torch fp32 channels_last | torch bf16 autocast | ONNX Runtime fp32 |",
        "|---|---|---|---|---|",
    ]
    for key, row in result["bare"].items():
        if "@" in key:
            cells = " | ".join(
                f"{row[b]['median_ms']} ({row[b]['min_ms']})" if b in row else "n/a (CPU lacks bf16)"
                for b in ("torch_fp32", "torch_fp32_channels_last", "torch_bf16", "onnx_fp32")
            )
            lines.append(f"| {key} | {cells} |")
    bf = result["bare"].get("fast_bf16_vs_fp32")
    if bf:
        lines += [
            "",
            f"bf16 vs fp32 (served net, its weights, real photo 512²): PSNR {bf['psnr_db']} dB, "
            f"max error {bf['max_abs_levels']} grey levels.",
        ]
    lines += [
        "",
        "## HTTP (serving backend: " + result["serving_backend"] + ")",
        "",
        "| run | median ms | p90 ms | server timing (median ms) | rps | mean batch |",
        "|---|---|---|---|---|---|",
    ]
    for key, row in result["http"].items():
        st = row.get("server_timing_median_ms")
        st_text = ", ".join(f"{k} {v}" for k, v in st.items()) if st else ""
        lines.append(
            f"| {key} | {row['median_ms']} | {row.get('p90_ms', '')} | {st_text} | "
            f"{row.get('rps', '')} | {row.get('mean_batch', '')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights-dir", default=str(ROOT / "models" / "weights"))
    p.add_argument("--style", default="", help="style to serve (default: the manifest's first)")
    p.add_argument(
        "--reference-weights", default="", help="trained reference net (timing is weight-independent)"
    )
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--pairs", type=int, default=10)
    p.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    p.add_argument("--tag", default="", help="suffix of the result files, e.g. -multistyle")
    p.add_argument(
        "--candidate-full-convs",
        action="store_true",
        help="also time the served arch with full (not depthwise-separable) residual convs, random init",
    )
    p.add_argument(
        "--candidate-weights",
        action="append",
        default=[],
        help="also time this weights file's bare forwards (e.g. the network served before), side by side",
    )
    a = p.parse_args()

    weights_dir = Path(a.weights_dir)
    loaded = load_network(weights_dir)
    style = a.style or loaded.names[0]
    fast = loaded.model
    network = loaded.manifest.network
    if a.reference_weights:
        reference, _ = load_transformer(Path(a.reference_weights))
    else:
        torch.manual_seed(0)
        reference = build("reference").eval()
    result: dict[str, Any] = {
        "machine": stylize_machine(),
        "uptime_before": uptime(),
        "style": style,
        "styles_loaded": len(loaded.names),
        "model": f"{network.arch}/{network.version}",
        "reference_weights": a.reference_weights or "random init (same cost)",
    }
    candidates: dict[str, torch.nn.Module] = {}
    if a.candidate_full_convs:
        torch.manual_seed(0)
        candidates["served-full-convs"] = build(replace(fast.config, separable=False)).eval()
    for path in map(Path, a.candidate_weights):
        candidates[f"candidate-{path.stem}"] = load_transformer(path)[0].eval()
    result["archs"] = {
        name: {"params": count_params(m), "gflop_512": round(2 * conv_macs(m, 512, 512) / 1e9, 1)}
        for name, m in (("reference", reference), ("served", fast), *candidates.items())
    }
    port = free_port()
    started = time.perf_counter()
    server = start_server(port, weights_dir)
    result["startup_s"] = round(time.perf_counter() - started, 1)  # process start to styles served
    result["rss_mb_after_start"] = rss_mb(server.pid)
    url = f"http://{HOST}:{port}/stylize"
    try:
        result["serving_backend"] = httpx.get(f"http://{HOST}:{port}/readyz").json()["checks"]["stylizer"][
            "backend"
        ]
        result["headline"] = headline(url, style, reference, a.pairs)
        print(result["headline"], flush=True)
        result["http"] = http_runs(url, style, a.repeats)
        result["rss_mb_after_load"] = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    result["bare"] = bare_forwards(fast, reference, a.repeats, candidates)
    for name in candidates:  # what /stylize would take with it: today's overheads + its forward
        served, cand = result["bare"]["served@512"]["onnx_fp32"], result["bare"][f"{name}@512"]["onnx_fp32"]
        e2e = result["headline"]["stylize_e2e_512_png_median_ms"] - served["median_ms"] + cand["median_ms"]
        result["headline"][f"estimated_ratio_{name}"] = round(
            e2e / result["headline"]["reference_forward_512_median_ms"], 3
        )
    result["uptime_after"] = uptime()
    out_dir = Path(a.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"stylize-cpu-{datetime.now(UTC).strftime('%Y-%m-%d')}{a.tag}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
