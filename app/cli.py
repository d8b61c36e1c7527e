"""The ``atelier`` command: ``up`` (everything), ``api`` and ``worker`` (one component each)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time

from app.settings import get_settings

log = logging.getLogger("atelier")


def _api(host: str, port: int, workers: int) -> None:
    import uvicorn

    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        timeout_graceful_shutdown=10,
    )


def cmd_api(args: argparse.Namespace) -> int:
    _api(args.host, args.port, args.workers)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from worker.main import run_worker

    if args.workers == 1:
        run_worker(burst=args.burst, name=args.name)
        return 0
    procs = _spawn_workers(args.workers, burst=args.burst)
    return _wait_for_workers(procs)


def _spawn_workers(count: int, burst: bool = False) -> list[subprocess.Popen]:
    cmd = [sys.executable, "-m", "app.cli", "worker", "--workers", "1"] + (["--burst"] if burst else [])
    return [subprocess.Popen(cmd, env=os.environ.copy()) for _ in range(count)]


def _stop(procs: list[subprocess.Popen], timeout_s: float = 15.0) -> None:
    """SIGTERM lets RQ finish its current step and exit warm; stragglers are killed."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()


def _wait_for_workers(procs: list[subprocess.Popen]) -> int:
    try:
        return max(p.wait() for p in procs)
    except KeyboardInterrupt:
        _stop(procs)
        return 0


def cmd_up(args: argparse.Namespace) -> int:
    from app.redis_launcher import ensure_redis

    settings = get_settings()
    stop_redis = ensure_redis(settings.redis_url)
    workers = _spawn_workers(args.workers)
    try:
        print(
            f"Atelier: API on http://{args.host}:{args.port} (docs at /docs), {args.workers} worker(s), "
            f"Redis at {settings.redis_url}. Ctrl-C stops everything.",
            flush=True,
        )
        _api(args.host, args.port, 1)
    except KeyboardInterrupt:
        pass
    finally:
        _stop(workers)
        stop_redis()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atelier", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="Redis if needed, N workers and the API, in the foreground.")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--workers", type=int, default=1, help="Queue workers to start.")
    up.set_defaults(func=cmd_up)
    api = sub.add_parser("api", help="Only the HTTP API.")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--workers", type=int, default=1, help="Uvicorn worker processes.")
    api.set_defaults(func=cmd_api)
    worker = sub.add_parser("worker", help="Only queue workers.")
    worker.add_argument("--workers", type=int, default=1, help="Worker processes to start.")
    worker.add_argument("--burst", action="store_true", help="Exit when the queue is empty.")
    worker.add_argument("--name", default=None, help="Worker name (default: RQ's random one).")
    worker.set_defaults(func=cmd_worker)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
