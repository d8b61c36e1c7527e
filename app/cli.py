"""The ``atelier`` command: ``up`` (everything), ``api`` and ``worker`` (one component each)."""

from __future__ import annotations

import argparse
import copy
import logging
import os
import signal
import sys
from typing import Any, NoReturn

from core.exit_codes import ExitCode
from core.parent_death import die_with_parent, take_supervisor_pid
from core.settings import get_settings

log = logging.getLogger("atelier")


APP_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
ACCESS_LOG_FORMAT = '%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s [%(request_id)s]'


def api_log_config() -> dict[str, Any]:
    """uvicorn's logging, every line (access lines too) with the X-Request-ID of its request."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"request_id": {"()": "app.request_id.RequestIdLogFilter"}}
    config["formatters"]["access"]["fmt"] = ACCESS_LOG_FORMAT
    config["formatters"]["app"] = {"format": APP_LOG_FORMAT}
    config["handlers"]["app"] = {
        "class": "logging.StreamHandler",
        "formatter": "app",
        "stream": "ext://sys.stderr",
    }
    for handler in config["handlers"].values():
        handler["filters"] = ["request_id"]
    config["root"] = {"handlers": ["app"], "level": "INFO"}
    return config


def _api(host: str, port: int, workers: int) -> None:
    import uvicorn

    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        log_config=api_log_config(),
        timeout_graceful_shutdown=10,
    )


def _follow_supervisor() -> int | None:
    """Under ``atelier up``: receive SIGTERM when it dies (even SIGKILLed), and exit now if it is gone."""
    supervisor_pid = take_supervisor_pid()
    if supervisor_pid is not None:
        die_with_parent(signal.SIGTERM, expected_parent=supervisor_pid)
    return supervisor_pid


def cmd_api(args: argparse.Namespace) -> int:
    _follow_supervisor()
    _api(args.host, args.port, args.workers)
    return ExitCode.OK


def cmd_worker(args: argparse.Namespace) -> int:
    if args.workers > 1:
        from app.supervisor import Supervisor

        return Supervisor(get_settings(), workers=args.workers, burst=args.burst).run()
    supervisor_pid = _follow_supervisor()
    from worker.main import run_worker

    _exit_now(run_worker(burst=args.burst, name=args.name, supervisor_pid=supervisor_pid))


def _exit_now(code: int) -> NoReturn:
    """Skip interpreter teardown (about a second spent freeing torch and VGG19): the job state is
    already in Redis, and a quick exit keeps restarts and shutdowns fast."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cmd_up(args: argparse.Namespace) -> int:
    from app.supervisor import Supervisor

    return Supervisor(
        get_settings(), workers=args.workers, api=(args.host, args.port), manage_redis=True
    ).run()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atelier", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="Redis if needed, N workers and the API, supervised in the foreground.")
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
    worker.add_argument(
        "--workers", type=int, default=1, help="Worker processes to start (more than 1: supervised)."
    )
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
