"""The OpenAPI schema builds and documents every public endpoint (people read /docs)."""

from __future__ import annotations


def test_openapi_lists_every_endpoint_and_docs_render(client):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path, method in [
        ("/jobs/optimize", "post"),
        ("/jobs/{job_id}", "get"),
        ("/jobs/{job_id}", "delete"),
        ("/jobs/{job_id}/result", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/classify", "post"),
        ("/stylize", "post"),
        ("/styles", "get"),
        ("/styles", "post"),
        ("/styles/{name}", "delete"),
    ]:
        assert method in paths.get(path, {}), f"{method.upper()} {path} missing from OpenAPI"
    form = paths["/jobs/optimize"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form  # the multipart fields are described
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_problem_types_are_documented(client):
    body = client.get("/problems/payload-too-large").json()
    assert body["title"] == "Payload too large" and body["description"]
    missing = client.get("/problems/nope")
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"


def test_every_problem_the_code_raises_has_a_title_and_a_page():
    """A slug missing from PROBLEM_TYPES would answer with the generic title "HTTP error"."""
    import re
    from pathlib import Path

    from app.problems import PROBLEM_TYPES

    app_dir = Path(__file__).resolve().parents[1] / "app"
    source = "\n".join(p.read_text() for p in app_dir.rglob("*.py"))
    raised = set(re.findall(r'Problem\(\s*\d{3},\s*"([a-z-]+)"', source))
    assert len(raised) > 15  # the pattern still finds the raises
    assert raised <= set(PROBLEM_TYPES), raised - set(PROBLEM_TYPES)


def test_every_job_submission_documents_its_location_header(client):
    """A 202 means "poll the Location": clients generated from the schema need that header declared."""
    paths = client.get("/openapi.json").json()["paths"]
    accepted = [
        (path, method, op["responses"]["202"])
        for path, ops in paths.items()
        for method, op in ops.items()
        if "202" in op.get("responses", {})
    ]
    assert {(p, m) for p, m, _ in accepted} >= {
        ("/jobs/optimize", "post"),
        ("/jobs/stylize-video", "post"),
        ("/styles", "post"),
    }
    for path, method, doc in accepted:
        assert doc["headers"]["Location"]["required"] is True, f"{method.upper()} {path}"
