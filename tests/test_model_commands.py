"""Every documented ``python -m models.[training.]<script>`` command runs its ``main`` (answers ``--help``).

``models.training.eval_style`` once had a ``main`` but no ``__main__`` guard: the documented evaluation
command exited 0 having done nothing.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts)
    for p in (ROOT / "models").rglob("*.py")
    if re.search(r"^def main\(", p.read_text(), re.M)
)


def test_the_scripts_are_found() -> None:
    expected = {"models.training.eval_style", "models.training.train_style", "models.styles"}
    assert expected | {"models.training.train_classifier"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_runs_its_main(script: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", script, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout, f"{script} --help printed no usage: its main never ran"
