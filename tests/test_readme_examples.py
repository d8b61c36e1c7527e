"""The README's curl lines run as they are: every file they name exists, and the synchronous ones work.

The lines are read from the README's "Using it with curl" block, so an example that drifts from the
API (a renamed field, a moved file) fails here rather than in a new user's terminal. Lines that name
the user's own files (``my_painting.jpg``) or a job id are not run; the ones that name only files in
the repository are, with real ``curl`` against the API under uvicorn. Job submissions must answer 202
and are canceled at once, so a worker of the test session never spends minutes on a README job.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
SECTION = "## Using it with curl"
SYNC_URLS = tuple(f"localhost:8000{path}" for path in ("/classify", "/stylize", "/styles"))
JOB_URLS = tuple(
    f"localhost:8000{path}" for path in ("/jobs/optimize", "/jobs/stylize-image", "/jobs/stylize-video")
)


def curl_commands() -> list[list[str]]:
    """The curl block's commands, continuation lines joined and comments dropped, as argv lists."""
    text = README.read_text()
    block = text[text.index(SECTION) :].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        argv = shlex.split(line, comments=True)
        if argv and argv[0] == "curl":
            commands.append(argv)
    return commands


def uploaded_files(argv: list[str]) -> list[str]:
    return [m.group(1) for arg in argv if (m := re.search(r"=@(\S+)$", arg))]


def in_repository(argv: list[str]) -> bool:
    """Every file the line uploads is a path in the repository (the user's own files have no folder)."""
    return all("/" in f for f in uploaded_files(argv))


def test_the_curl_block_is_found_and_uses_the_repositorys_example_files():
    commands = curl_commands()
    assert len(commands) > 20
    runnable = [c for c in commands if uploaded_files(c) and in_repository(c)]
    assert any("/stylize" in " ".join(c) for c in runnable)
    assert any("/classify" in " ".join(c) for c in runnable)


def test_every_repository_file_a_curl_line_names_exists():
    named = {f for c in curl_commands() for f in uploaded_files(c) if "/" in f}
    assert named, "no curl line names a file of the repository"
    missing = sorted(f for f in named if not (PROJECT_ROOT / f).is_file())
    assert not missing, f"README curl lines name files that are not in the repository: {missing}"


def runnable_commands(urls: tuple[str, ...]) -> list[list[str]]:
    return [
        c
        for c in curl_commands()
        if in_repository(c)
        and not any("<" in a for a in c)
        and "-X" not in c
        and any(a.startswith(urls) for a in c)
    ]


def run_curl(argv: list[str], base_url: str, out: Path) -> tuple[int, Path]:
    """Run the README line against ``base_url``; the answer's status and the file holding its body."""
    command = [arg.replace("localhost:8000", base_url) for arg in argv if arg != "-i"]
    body = out / (command[command.index("-o") + 1] if "-o" in command else "body")
    if "-o" in command:
        command[command.index("-o") + 1] = str(body)
    else:
        command += ["-o", str(body)]
    command += ["-D", str(out / "headers"), "--silent", "--show-error", "--max-time", "120"]
    command += ["--write-out", "%{http_code}"]
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip()[-3:]), body


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@needs_curl
@pytest.mark.parametrize("argv", runnable_commands(SYNC_URLS), ids=lambda c: " ".join(c[1:])[:60])
def test_the_synchronous_curl_lines_work_against_the_api(argv: list[str], live_server, tmp_path: Path):
    status, body = run_curl(argv, live_server.url, tmp_path)
    assert 200 <= status < 300, f"{shlex.join(argv)} -> {status}: {body.read_bytes()[:300]!r}"
    assert body.stat().st_size > 0


@needs_curl
@pytest.mark.parametrize("argv", runnable_commands(JOB_URLS), ids=lambda c: " ".join(c[1:])[:60])
def test_the_job_submission_curl_lines_are_accepted(argv: list[str], live_server, tmp_path: Path):
    status, body = run_curl(argv, live_server.url, tmp_path)
    assert status == 202, f"{shlex.join(argv)} -> {status}: {body.read_bytes()[:300]!r}"
    job = json.loads(body.read_text())
    assert job["state"] == "queued"
    location = re.search(
        r"^location: (\S+)", (tmp_path / "headers").read_text(), re.IGNORECASE | re.MULTILINE
    )
    assert location and location.group(1) == f"/jobs/{job['id']}"
    assert httpx.delete(f"{live_server.url}{location.group(1)}", timeout=10).status_code == 200


def test_the_readme_submits_each_kind_of_job_with_repository_files():
    assert {
        url for c in runnable_commands(JOB_URLS) for url in JOB_URLS if any(a.startswith(url) for a in c)
    } == set(JOB_URLS)
