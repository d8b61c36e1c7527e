"""The README's curl lines run as they are: every file they name exists, and the synchronous ones work.

The lines are read from the README's "Using it with curl" block, so an example that drifts from the
API (a renamed field, a moved file) fails here rather than in a new user's terminal. Lines that name
the user's own files (``photo.jpg``, ``clip.mp4``) or a job id are not run; the ones that name only
files in the repository are, with real ``curl`` against the API under uvicorn.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
SECTION = "## Using it with curl"
SYNC_URLS = tuple(f"localhost:8000{path}" for path in ("/classify", "/stylize", "/styles"))


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


def runnable_sync_commands() -> list[list[str]]:
    return [
        c
        for c in curl_commands()
        if in_repository(c)
        and not any("<" in a for a in c)
        and "-X" not in c
        and any(a.startswith(SYNC_URLS) for a in c)
    ]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("argv", runnable_sync_commands(), ids=lambda c: " ".join(c[1:])[:60])
def test_the_synchronous_curl_lines_work_against_the_api(argv: list[str], live_server, tmp_path: Path):
    command = [arg.replace("localhost:8000", live_server.url) for arg in argv]
    if "-o" in command:
        command[command.index("-o") + 1] = str(tmp_path / command[command.index("-o") + 1])
    else:
        command += ["-o", str(tmp_path / "body")]
    command += ["--silent", "--show-error", "--max-time", "120", "--write-out", "%{http_code}"]
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr
    status = int(done.stdout.strip()[-3:])
    bodies = list(tmp_path.iterdir())
    assert 200 <= status < 300, f"{shlex.join(argv)} -> {status}: {bodies[0].read_bytes()[:300]!r}"
    assert bodies and bodies[0].stat().st_size > 0
