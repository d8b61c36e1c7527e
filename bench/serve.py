"""Start the API in its own uvicorn process for a benchmark, isolated from every other run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # never anything else: benchmarks must not load other machines


def free_port() -> int:
    """A TCP port on HOST that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_api(
    port: int, extra_env: Mapping[str, str], is_ready: Callable[[int], bool], timeout_s: float = 120
) -> subprocess.Popen[bytes]:
    """Run ``uvicorn app.main:create_app`` on HOST:port with its own queue and key prefix.

    Returns once ``is_ready(port)`` says so; any exception from the probe means "not yet".
    """
    tag = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "ATELIER_QUEUE_NAME": f"atelier-bench-{tag}",
        "ATELIER_KEY_PREFIX": f"atelier-bench-{tag}:",
        **extra_env,
    }
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "app.main:create_app",
        "--factory",
        "--host",
        HOST,
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} during startup")
        try:
            if is_ready(port):
                return proc
        except Exception:  # not listening yet, or models still loading
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("server did not become ready")
