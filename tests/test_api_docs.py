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
