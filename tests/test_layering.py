"""The packages lean on each other in one direction: app -> core <- worker, and all of them -> models.

Inside ``models``, what the service loads never imports ``models.training`` (the offline scripts).

Read from the source with ``ast`` (no imports run), so a new cross-import fails here with the file
and line instead of surfacing later as an import cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package -> top-level packages it must never import
FORBIDDEN = {
    "models": {"app", "worker", "core", "fastapi", "starlette", "redis", "rq"},
    "core": {"app", "worker", "fastapi", "starlette"},
    "worker": {"app", "fastapi", "starlette"},
    "app": {"worker"},
}
# The command line composes both sides: `atelier worker` runs a worker in-process.
ALLOWED = {("app/cli.py", "worker")}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module name) of every absolute import, function bodies included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def imported_packages(path: Path) -> list[tuple[int, str]]:
    return [(line, name.split(".")[0]) for line, name in imported_modules(path)]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_downwards(package: str) -> None:
    violations = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for line, top in imported_packages(path):
            if top in FORBIDDEN[package] and (rel, top) not in ALLOWED:
                violations.append(f"{rel}:{line} imports {top}")
    assert not violations, "\n".join(violations)


def test_the_check_sees_imports_in_function_bodies(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from worker.main import run_worker\n    import app.main\n")
    assert imported_packages(probe) == [(2, "worker"), (3, "app")]


def test_the_service_never_imports_the_training_scripts() -> None:
    served = [p for pkg in ("app", "worker", "core", "models") for p in sorted((ROOT / pkg).rglob("*.py"))]
    violations = [
        f"{path.relative_to(ROOT).as_posix()}:{line} imports {name}"
        for path in served
        if "training" not in path.relative_to(ROOT).parts
        for line, name in imported_modules(path)
        if name == "models.training" or name.startswith("models.training.")
    ]
    assert not violations, "\n".join(violations)
