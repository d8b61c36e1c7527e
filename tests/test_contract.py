"""The OpenAPI document is an exact contract: schemathesis (all default checks) finds nothing.

schemathesis runs as its CLI against the API under a real uvicorn on 127.0.0.1, with API keys on
(so `ignored_auth` has something to check) and the run's worker on the same queue (so /readyz is
200). Examples are bounded and the seed fixed: well under a minute on 2 cores, same cases each run.
tests/schemathesis.toml explains the one exception (schema-valid uploads are random bytes, not
images). A few properties of the document are also checked directly, to fail with a clear message.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.problems import PROBLEM_MEDIA_TYPE
from tests.browser import LiveServer

CONFIG = Path(__file__).with_name("schemathesis.toml")
KEY = "contract-key-4Rf8"
MAX_EXAMPLES = int(os.environ.get("ATELIER_CONTRACT_EXAMPLES", "10"))
SEED = os.environ.get("ATELIER_CONTRACT_SEED", "20261123")


@pytest.fixture(scope="module")
def keyed_server(settings, worker, tmp_path_factory):
    server = LiveServer(settings, tmp_path_factory.mktemp("contract") / "uvicorn.log", ATELIER_API_KEYS=KEY)
    yield server
    server.stop()


def test_schemathesis_finds_no_contract_violation(keyed_server, tmp_path):
    schemathesis = Path(sys.executable).with_name("st")
    assert schemathesis.exists(), "schemathesis is a dev dependency: run `make install`"
    assert httpx.get(f"{keyed_server.url}/readyz", timeout=10).status_code == 200
    run = subprocess.run(
        [
            *(str(schemathesis), "--no-color", "--config-file", str(CONFIG), "run"),
            f"{keyed_server.url}/openapi.json",
            *("--max-examples", str(MAX_EXAMPLES), "--seed", SEED, "--workers", "1"),
            *("-H", f"Authorization: Bearer {KEY}"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # its cache directory goes there, not into the work tree
    )
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-12000:]
    assert " passed" in report and "Server error" not in report


def test_document_describes_problems_headers_and_constraints(keyed_server):
    doc = httpx.get(f"{keyed_server.url}/openapi.json", timeout=10).json()
    schemas = doc["components"]["schemas"]
    assert {"type", "title", "status", "detail"} <= set(schemas["Problem"]["required"])
    assert "HTTPValidationError" not in schemas  # our 422 is a problem, not FastAPI's shape
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            for code, response in operation["responses"].items():
                if code[0] in "45" and path != "/readyz":
                    content = response.get("content", {})
                    assert list(content) == [PROBLEM_MEDIA_TYPE], (method, path, code)
                if code in ("429", "503", "504") and path != "/readyz":
                    assert response["headers"]["Retry-After"]["required"], (method, path, code)
    optimize = doc["paths"]["/jobs/optimize"]["post"]
    form = schemas[optimize["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].split("/")[-1]]
    props = form["properties"]
    assert props["optimizer"]["enum"] == ["lbfgs", "adam"]
    assert props["size"]["minimum"] == 16 and props["size"]["maximum"] == 1024
    assert props["steps"]["maximum"] == 2000 and props["style"]["minItems"] == 1
    assert "anyOf" not in props["size"]  # a form field is sent or not, never null
    result = doc["paths"]["/jobs/{job_id}/result"]["get"]
    assert next(p for p in result["parameters"] if p["name"] == "format")["schema"]["enum"] == [
        "png",
        "jpeg",
        "webp",
    ]
    assert "application/json" not in result["responses"]["200"]["content"]
    assert optimize["x-atelier-file-uploads"] is True and "Testing note" in optimize["description"]


def test_wrong_method_is_405_problem_with_the_full_allow_header(keyed_server):
    url = keyed_server.url
    job = f"{url}/jobs/3f0c6f2e-6f55-4a8e-9a7e-0b7f2c9e1d11"
    for method, target, allow in [
        ("GET", f"{url}/jobs/optimize", {"POST"}),
        ("PUT", job, {"GET", "HEAD", "DELETE"}),
        ("PATCH", f"{url}/classify", {"POST"}),
        ("DELETE", f"{url}/healthz", {"GET", "HEAD"}),
    ]:
        resp = httpx.request(method, target, timeout=10, headers={"Authorization": f"Bearer {KEY}"})
        assert resp.status_code == 405, (method, target, resp.text)
        assert resp.headers["content-type"] == PROBLEM_MEDIA_TYPE
        assert {m.strip() for m in resp.headers["allow"].split(",")} == allow, (method, target)
    assert (
        httpx.get(
            f"{url}/jobs/not-a-uuid", timeout=10, headers={"Authorization": f"Bearer {KEY}"}
        ).status_code
        == 404
    )
