"""Helpers for the real-browser tests: Debian's Chromium driven by Selenium, and the API under uvicorn.

Nothing is downloaded: Selenium is pointed at /usr/bin/chromedriver (so Selenium Manager never
runs) and Chromium at /usr/bin/chromium. ``make test`` installs both with apt-get when missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("ATELIER_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("ATELIER_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"))
HOST = "127.0.0.1"
# The settings a test server shares with the test run's worker (same queue, same keys).
SHARED_SETTINGS = (
    "redis_url",
    "queue_name",
    "key_prefix",
    "worker_monitor_interval_s",
    "heartbeat_grace_s",
    "reaper_interval_s",
    "redis_timeout_s",
    "gatys_default_size",
)


def require_browser() -> None:
    """Skip only where the browser cannot be installed here; otherwise a missing one is an error."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if not missing:
        try:
            import selenium  # noqa: F401
        except ImportError:
            pytest.fail("selenium is not installed: run `make install` (it is a dev dependency)")
        return
    if shutil.which("apt-get") is None:
        pytest.skip(f"{', '.join(missing)} missing and no apt-get on this machine to install them")
    pytest.fail(
        f"{', '.join(missing)} missing: run `make browser` "
        "(apt-get install chromium chromium-driver; `make test` does it for you)"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class LiveServer:
    """``uvicorn app.main:create_app`` (or another app factory) in its own process on a free port."""

    def __init__(
        self, settings: Settings, log_path: Path, factory: str = "app.main:create_app", **extra_env: str
    ) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        env = os.environ.copy()
        for name in SHARED_SETTINGS:
            env[f"ATELIER_{name.upper()}"] = str(getattr(settings, name))
        env.update({"ATELIER_TORCH_THREADS": "1", **extra_env})
        self.log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "uvicorn", factory, "--factory"),
                *("--host", HOST, "--port", str(self.port), "--log-level", "warning"),
            ],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self._wait_until_ready(log_path)

    def _wait_until_ready(self, log_path: Path, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"test server exited: {log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).json()["checks"]["stylizer"]["ok"]:
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError("test server did not come up")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def chromium_options(user_data_dir: Path) -> Any:
    from selenium.webdriver.chrome.options import Options

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={user_data_dir}",
        "--window-size=1280,1000",
        # A synthetic camera (moving test pattern) and an automatic "allow" for the permission prompt.
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return options


def start_chromium(user_data_dir: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    service = Service(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(service=service, options=chromium_options(user_data_dir))
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    return driver


def wait_for(driver: Any, script: str, timeout_s: float = 60, message: str = "") -> Any:
    """Wait until the JavaScript expression ``script`` is truthy; returns its value."""
    from selenium.webdriver.support.ui import WebDriverWait

    def check(d: Any) -> Any:
        return d.execute_script(f"return ({script});")

    return WebDriverWait(driver, timeout_s, poll_frequency=0.2).until(check, message or script)


class Screenshots:
    """Numbered PNG screenshots of each step, in the test's temporary directory."""

    def __init__(self, driver: Any, directory: Path) -> None:
        self.driver = driver
        self.directory = directory
        self.count = 0

    def __call__(self, name: str) -> Path:
        self.count += 1
        path = self.directory / f"{self.count:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        return path


def console_errors(driver: Any, ignore: Callable[[str], bool] = lambda m: False) -> list[str]:
    """Severe browser console messages (JavaScript errors, failed loads) since the last call.

    A 503 from /readyz is an answer the page shows ("Not ready: ..."), not an error of the page.
    """
    messages = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    return [m for m in messages if "/readyz - " not in m and not ignore(m)]
