"""Soak: mixed traffic against a real `atelier up` for minutes, with a Redis restart and a worker SIGKILL.

    python bench/soak.py [--minutes 10] [--workers 2]

Everything runs on 127.0.0.1 and is started here: a redis-server of its own (a temporary
directory, a free port, docker-compose's append-only persistence), then `atelier up` (the API and
N supervised workers) pointed at it, with two API keys. Traffic, all bounded in rate and time:

* /classify (4 clients) and /stylize (2 clients, a small photo, a named style), back to back
  with short pauses;
* a Gatys job every few seconds (alternating keys), each followed until it ends; a finished job's
  result is downloaded and its sha256 kept;
* /readyz and /metrics now and then.

A third of the way in, the redis-server is restarted (SIGTERM, then started again on the same
directory and port); half-way, one worker process is SIGKILLed (the supervisor restarts it).
At the end every finished job's result is downloaded again and compared: a missing or different
result is a lost result. Results, with load averages sampled every minute, go to
``bench/results/soak-cpu-<date>.{md,json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from redis import Redis
from redis.exceptions import RedisError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.classify import classify_machine, uptime  # noqa: E402
from bench.serve import HOST, free_port  # noqa: E402
from tests.images import photo_like, stripes  # noqa: E402

KEYS = ("soak-key-one-4f2a", "soak-key-two-9b7c")
REDIS_OPTIONS = ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]


def png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def jpeg(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


class OwnRedis:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://{HOST}:{self.port}/0"
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise SystemExit("redis-server is needed")
        self.proc = subprocess.Popen(
            [server, "--port", str(self.port), "--bind", HOST, "--dir", str(self.directory), *REDIS_OPTIONS],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(200):
            with contextlib.suppress(RedisError):
                if Redis.from_url(self.url, socket_connect_timeout=1).ping():
                    return
            time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def children(pid: int) -> list[int]:
    pids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in (task / "children").read_text().split()]
    return pids


def worker_pids(supervisor: int) -> list[int]:
    """The supervisor's `atelier worker` children (not the API, whose command line says --workers)."""
    found = []
    for pid in children(supervisor):
        with contextlib.suppress(OSError):
            if "worker" in Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0"):
                found.append(pid)
    return found


@dataclass
class Tally:
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    connection_errors: Counter[str] = field(default_factory=Counter)
    server_errors: list[dict[str, Any]] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    loads: list[str] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)

    def record(self, name: str, resp: httpx.Response) -> None:
        self.statuses[(name, resp.status_code)] += 1
        if resp.status_code >= 500:
            self.server_errors.append(
                {
                    "t_s": round(time.monotonic() - self.t0, 1),
                    "endpoint": name,
                    "status": resp.status_code,
                    "retry_after": resp.headers.get("retry-after"),
                    "type": _problem_type(resp),
                }
            )

    def event(self, what: str) -> None:
        self.events.append({"t_s": round(time.monotonic() - self.t0, 1), "event": what})
        print(f"[{self.events[-1]['t_s']:7.1f}s] {what}", flush=True)


def _problem_type(resp: httpx.Response) -> str | None:
    with contextlib.suppress(ValueError):
        body = resp.json()
        return body.get("type") if isinstance(body, dict) else None
    return None


async def call(
    client: httpx.AsyncClient, tally: Tally, name: str, method: str, url: str, **kwargs
) -> httpx.Response | None:
    try:
        resp = await client.request(method, url, **kwargs)
    except httpx.HTTPError as exc:
        tally.connection_errors[f"{name}: {type(exc).__name__}"] += 1
        return None
    tally.record(name, resp)
    return resp


async def sync_loop(client, tally, stop, name, url, files, data, key, pause_s) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    while not stop.is_set():
        await call(client, tally, name, "POST", url, files=files(), data=data, headers=headers)
        await asyncio.sleep(pause_s)


async def job_loop(client, tally, stop, base, every_s, steps, size) -> None:
    content, style = png(photo_like(96, 64)), png(stripes())
    n = 0
    while not stop.is_set():
        key = KEYS[n % len(KEYS)]
        n += 1
        files = [("content", ("c.png", content, "image/png")), ("style", ("s.png", style, "image/png"))]
        resp = await call(
            client,
            tally,
            "POST /jobs/optimize",
            "POST",
            f"{base}/jobs/optimize",
            files=files,
            data={"size": str(size), "steps": str(steps)},
            headers={"Authorization": f"Bearer {key}"},
        )
        if resp is not None and resp.status_code == 202:
            tally.jobs[resp.json()["id"]] = {"key": key, "state": "queued", "sha256": None}
        await asyncio.sleep(every_s)


async def follow_jobs(client, tally, stop, base) -> None:
    while not stop.is_set():
        await poll_jobs_once(client, tally, base)
        await asyncio.sleep(2)


async def poll_jobs_once(client, tally, base) -> None:
    for job_id, job in list(tally.jobs.items()):
        if job["state"] in ("finished", "failed", "canceled"):
            continue
        headers = {"Authorization": f"Bearer {job['key']}"}
        resp = await call(client, tally, "GET /jobs/{id}", "GET", f"{base}/jobs/{job_id}", headers=headers)
        if resp is None or resp.status_code != 200:
            continue
        body = resp.json()
        if body["state"] == "finished":
            result = await call(
                client, tally, "GET /jobs/{id}/result", "GET", f"{base}/jobs/{job_id}/result", headers=headers
            )
            if result is None or result.status_code != 200:
                continue
            job["sha256"] = hashlib.sha256(result.content).hexdigest()
        job["state"] = body["state"]
        job["error"] = body.get("error")


async def probes(client, tally, stop, base) -> None:
    while not stop.is_set():
        await call(client, tally, "GET /readyz", "GET", f"{base}/readyz")
        await call(client, tally, "GET /metrics", "GET", f"{base}/metrics")
        await asyncio.sleep(5)


async def sample_load(tally, stop) -> None:
    while not stop.is_set():
        tally.loads.append(uptime())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 60)


async def chaos(tally: Tally, redis: OwnRedis, supervisor: int, duration_s: float) -> None:
    await asyncio.sleep(duration_s / 3)
    tally.event("redis-server: SIGTERM (restart)")
    await asyncio.to_thread(redis.stop)
    await asyncio.sleep(2)
    await asyncio.to_thread(redis.start)
    tally.event("redis-server: back (replayed its append-only file)")
    await asyncio.sleep(duration_s / 2 - duration_s / 3)
    workers = worker_pids(supervisor)
    if workers:
        os.kill(workers[0], signal.SIGKILL)
        tally.event(f"worker pid {workers[0]}: SIGKILL (of {len(workers)} workers)")
    else:
        tally.event("no worker found to kill")


async def soak(base: str, redis: OwnRedis, supervisor: int, args: argparse.Namespace) -> Tally:
    tally = Tally()
    stop = asyncio.Event()
    small = jpeg(photo_like(48, 48))
    photo = jpeg(photo_like(160, 120))
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        style = (await client.get(f"{base}/styles", headers={"Authorization": f"Bearer {KEYS[0]}"})).json()[
            "styles"
        ][0]["name"]
        tasks = [
            *(
                sync_loop(
                    client,
                    tally,
                    stop,
                    "POST /classify",
                    f"{base}/classify",
                    lambda: [("file", ("a.jpg", small, "image/jpeg"))],
                    {"top_k": "3"},
                    KEYS[i % 2],
                    0.05,
                )
                for i in range(4)
            ),
            *(
                sync_loop(
                    client,
                    tally,
                    stop,
                    "POST /stylize",
                    f"{base}/stylize",
                    lambda: [("file", ("p.jpg", photo, "image/jpeg"))],
                    {"style": style, "format": "jpeg"},
                    KEYS[i % 2],
                    0.2,
                )
                for i in range(2)
            ),
            job_loop(client, tally, stop, base, args.job_every_s, args.job_steps, args.job_size),
            follow_jobs(client, tally, stop, base),
            probes(client, tally, stop, base),
            sample_load(tally, stop),
        ]
        running = [asyncio.create_task(t) for t in tasks]
        chaos_task = asyncio.create_task(chaos(tally, redis, supervisor, args.minutes * 60))
        await asyncio.sleep(args.minutes * 60)
        stop.set()
        tally.event("traffic stopped; waiting for the jobs still running")
        await asyncio.gather(*running, chaos_task)
        deadline = time.monotonic() + args.drain_s
        while time.monotonic() < deadline:
            await poll_jobs_once(client, tally, base)
            if all(j["state"] in ("finished", "failed", "canceled") for j in tally.jobs.values()):
                break
            await asyncio.sleep(2)
        tally.event("re-reading every finished result")
        lost = []
        for job_id, job in tally.jobs.items():
            if job["state"] != "finished":
                continue
            headers = {"Authorization": f"Bearer {job['key']}"}
            resp = await call(
                client, tally, "GET /jobs/{id}/result", "GET", f"{base}/jobs/{job_id}/result", headers=headers
            )
            digest = (
                hashlib.sha256(resp.content).hexdigest()
                if resp is not None and resp.status_code == 200
                else None
            )
            if digest is None or digest != job["sha256"]:
                lost.append(job_id)
        tally.events.append({"lost_results": lost})
        tally.loads.append(uptime())
    return tally


def report(tally: Tally, args: argparse.Namespace, before: str) -> dict[str, Any]:
    by_endpoint: dict[str, dict[str, int]] = {}
    for (name, status), count in sorted(tally.statuses.items()):
        by_endpoint.setdefault(name, {})[str(status)] = count
    states = Counter(j["state"] for j in tally.jobs.values())
    lost = next(e["lost_results"] for e in tally.events if "lost_results" in e)
    five = tally.server_errors
    return {
        "machine": classify_machine(),
        "minutes": args.minutes,
        "workers": args.workers,
        "load_before": before,
        "load_samples": tally.loads,
        "requests": sum(tally.statuses.values()),
        "by_endpoint": by_endpoint,
        "connection_errors": dict(tally.connection_errors),
        "server_errors": {
            "total": len(five),
            "api_endpoints": sum(1 for e in five if e["endpoint"] != "GET /readyz"),
            "by_status": dict(Counter(str(e["status"]) for e in five)),
            "by_type": dict(Counter(str(e["type"]) for e in five)),
            "without_retry_after": sum(
                1 for e in five if not e["retry_after"] and e["endpoint"] != "GET /readyz"
            ),
            "first": five[:20],
        },
        "jobs": {"submitted": len(tally.jobs), **dict(states)},
        "job_failures": dict(Counter(j.get("error") for j in tally.jobs.values() if j["state"] == "failed")),
        "finished_results_lost": len(lost),
        "lost_ids": lost,
        "events": [e for e in tally.events if "event" in e],
    }


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        f"# Soak: {r['minutes']} min of mixed traffic on `atelier up` ({m['date']})",
        "",
        f"CPU: {m['cpu_model']} ({m['cpus']} cores, SIMD {', '.join(m['simd'])}), torch {m['torch']}, "
        f"no GPU; `atelier up --workers {r['workers']}` and its own redis-server (append-only, fsync every "
        "second) on "
        "127.0.0.1, two API keys. Traffic: 4 /classify clients (48 px), 2 /stylize clients (160x120, a "
        "named style), a Gatys job every few seconds, each followed to its end, /readyz and /metrics. The "
        "load generator shares the 2 cores, which other work on this machine was also using (load below).",
        "",
        f"* requests: **{r['requests']}**; connection errors: {sum(r['connection_errors'].values())} "
        f"{r['connection_errors'] or ''}",
        f"* 5xx: **{r['server_errors']['total']}** {r['server_errors']['by_status']}, of which "
        f"{r['server_errors']['api_endpoints']} from API endpoints and the rest `/readyz` saying 'not ready' "
        f"(no Retry-After there, by design); by type {r['server_errors']['by_type']}; API 5xx without "
        f"Retry-After: {r['server_errors']['without_retry_after']}",
        f"* jobs: {r['jobs']}; failures: {r['job_failures']}",
        f"* finished results lost: **{r['finished_results_lost']}**",
        "",
        "## Events",
        "",
        *(f"* {e['t_s']} s: {e['event']}" for e in r["events"]),
        "",
        "## Answers by endpoint",
        "",
        "| endpoint | statuses |",
        "|---|---|",
        *(f"| `{k}` | {v} |" for k, v in r["by_endpoint"].items()),
        "",
        "## Load averages",
        "",
        f"* before: `{r['load_before']}`",
        *(f"* `{line}`" for line in r["load_samples"]),
        "",
    ]
    if r["server_errors"]["first"]:
        lines += ["## First 5xx answers", "", "```", *map(json.dumps, r["server_errors"]["first"]), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--job-every-s", type=float, default=12.0)
    parser.add_argument("--job-steps", type=int, default=10)
    parser.add_argument("--job-size", type=int, default=48)
    parser.add_argument("--drain-s", type=float, default=180.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--keep-log", type=Path, default=None, help="Copy the atelier up log here.")
    args = parser.parse_args(argv)

    before = uptime()
    tag = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="atelier-soak-") as tmp:
        redis = OwnRedis(Path(tmp))
        redis.start()
        port = free_port()
        env = {
            **os.environ,
            "ATELIER_REDIS_URL": redis.url,
            "ATELIER_QUEUE_NAME": f"atelier-soak-{tag}",
            "ATELIER_KEY_PREFIX": f"atelier-soak-{tag}:",
            "ATELIER_API_KEYS": ",".join(KEYS),
        }
        log = (Path(tmp) / "atelier-up.log").open("wb")
        up = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app.cli",
                "up",
                "--host",
                HOST,
                "--port",
                str(port),
                "--workers",
                str(args.workers),
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://{HOST}:{port}"
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                        break
                if up.poll() is not None:
                    raise RuntimeError(f"atelier up exited with {up.returncode}")
                time.sleep(1)
            else:
                raise RuntimeError("atelier up did not become ready")
            tally = asyncio.run(soak(base, redis, up.pid, args))
        finally:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(timeout=90)
            except subprocess.TimeoutExpired:
                up.kill()
            redis.stop()
            log.close()
            supervisor_log = (Path(tmp) / "atelier-up.log").read_text(errors="replace")
            if args.keep_log is not None:
                args.keep_log.write_text(supervisor_log)
    result = report(tally, args, before)
    result["atelier_up_exit"] = up.returncode
    result["supervisor_log_tail"] = [
        line for line in supervisor_log.splitlines() if "restart" in line or "killed" in line
    ][-20:]
    stem = args.out / f"soak-cpu-{time.strftime('%Y-%m-%d')}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
