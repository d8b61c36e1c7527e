"""The OpenAPI document as an exact contract: every status, body, header and bound a client can meet.

FastAPI documents the happy path and its own 422. The API answers more: RFC 9457 problems
(``application/problem+json``) for 401/404/409/413/415/422/429/503/504, with ``Retry-After`` on
429/503/504, ``WWW-Authenticate`` on 401, ``Location`` on 202. Routers declare theirs with
:func:`problem_responses`; :func:`install_contract` then finishes the document once, when it is
first served:

* one shared ``Problem`` schema, used by every error response (FastAPI's ``HTTPValidationError``
  is replaced: our 422 is a problem too);
* multipart form fields made honest: a form field cannot be ``null`` (it is sent or not), a
  required file list needs at least one file, and bounds that come from settings (largest size,
  most steps, most files) are written in;
* with API keys configured, a Bearer security scheme, and a 401 on every operation that checks it.

:func:`allowed_methods` makes a 405's ``Allow`` list every method of every route on
that path (Starlette lists only the first route it tried).
"""

from __future__ import annotations

import json
from typing import Any

import fastapi.routing
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.routing import Match

from app.auth import bearer_scheme
from app.problems import PROBLEM_MEDIA_TYPE
from core.settings import Settings

PROBLEM_REF = "#/components/schemas/Problem"
BEARER_SCHEME = bearer_scheme.scheme_name

# Marks operations that take file uploads, so contract tests can select them (tests/schemathesis.toml).
UPLOADS_EXTENSION = "x-atelier-file-uploads"
NOT_IMAGES_NOTE = (
    "Each file part must be a real, decodable image (or video, where one is asked for). OpenAPI "
    "can only say 'binary', so data that is valid by this schema may still be refused: an "
    "arbitrary byte string gets 415 (not a format we accept) or 422 (empty or corrupt), as "
    "documented below. Generated-data testing of this operation therefore checks everything but "
    "acceptance of schema-valid data."
)


class ProblemFieldError(BaseModel):
    field: str = Field(examples=["size"])
    message: str = Field(examples=["Input should be less than or equal to 1024"])


class ProblemDetails(BaseModel):
    """An RFC 9457 problem: every error the API returns has this shape (plus, at times, extra members)."""

    model_config = ConfigDict(extra="allow", title="Problem")

    type: str = Field(
        description="A URI reference naming the problem type.", examples=["/problems/not-found"]
    )
    title: str = Field(description="Short summary of the problem type.", examples=["Not found"])
    status: int = Field(ge=400, le=599, description="The HTTP status code.", examples=[404])
    detail: str = Field(description="What went wrong this time, in plain words.")
    instance: str | None = Field(None, description="The path of the request.", examples=["/jobs/…"])
    field: str | None = Field(None, description="The request field at fault, when there is one.")
    errors: list[ProblemFieldError] | None = Field(None, description="Every field at fault (422).")
    request_id: str | None = Field(
        None, description="This request's X-Request-ID: quote it when reporting a problem; the logs have it."
    )


RETRY_AFTER = {
    "description": "Seconds to wait before trying again.",
    "required": True,
    "schema": {"type": "integer", "minimum": 0},
}
WWW_AUTHENTICATE = {
    "description": 'Always `Bearer realm="atelier"`.',
    "required": True,
    "schema": {"type": "string"},
}

STANDARD_PROBLEMS: dict[int, tuple[str, dict[str, Any]]] = {
    400: ("The body is not valid multipart/form-data.", {}),
    401: ("No API key, or one that is not accepted.", {"WWW-Authenticate": WWW_AUTHENTICATE}),
    404: ("No such resource (unknown, expired, or another API key's).", {}),
    409: ("The resource is not in a state that allows this.", {}),
    413: ("An upload or the whole body exceeds the byte limit, or an image has too many pixels.", {}),
    415: (
        "An upload is not an image format the API accepts, or the body is not multipart/form-data.",
        {},
    ),
    416: (
        "The Range starts past the end of the result.",
        {"Content-Range": {"description": "`bytes */<length>`.", "schema": {"type": "string"}}},
    ),
    422: ("A field is missing, malformed, out of range or unknown; or an image is empty or corrupt.", {}),
    429: ("This API key already has as many unfinished jobs as it may.", {"Retry-After": RETRY_AFTER}),
    503: (
        "Overloaded (the queue or the model's waiting line is full) or a dependency (Redis, a model) "
        "is unavailable.",
        {"Retry-After": RETRY_AFTER},
    ),
    504: ("The request passed its deadline before the model could answer it.", {"Retry-After": RETRY_AFTER}),
}


def problem_doc(status: int, description: str | None = None) -> dict[str, Any]:
    """One documented problem response (headers included) for a router's ``responses``."""
    default, headers = STANDARD_PROBLEMS.get(status, ("An error.", {}))
    doc: dict[str, Any] = {
        "description": description or default,
        "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": PROBLEM_REF}}},
    }
    if headers:
        doc["headers"] = dict(headers)
    return doc


def problem_responses(*statuses: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """``problem_responses(404, 409, d409="...")``: the problem responses a route can give."""
    return {s: problem_doc(s, descriptions.get(f"d{s}")) for s in statuses}


def job_accepted_doc(description: str = "Accepted; poll the Location.") -> dict[str, Any]:
    """The 202 of a route that queues a job: every such route sends the job's URL in ``Location``."""
    return {
        "description": description,
        "headers": {
            "Location": {
                "description": "The job's status URL, `/jobs/{id}`.",
                "required": True,
                "schema": {"type": "string", "format": "uri-reference"},
            },
            "Idempotent-Replayed": {
                "description": "`true` when an Idempotency-Key repeat got the job its first request queued.",
                "schema": {"type": "string", "enum": ["true"]},
            },
        },
    }


def job_submission_responses(
    *extra: int, accepted: str = "Accepted; poll the Location.", **descriptions: str
) -> dict[int | str, dict[str, Any]]:
    """The 202 and the problems of a route that queues a job (400, 409, 413, 415, 422, 429, 503, plus
    ``extra``), with what they mean for every such route; ``descriptions`` (``d409=...``) override."""
    common = {
        "d409": "A request with the same Idempotency-Key is still being handled; retry to get its job.",
        "d422": "A field is invalid, or the Idempotency-Key was used for a different request.",
        "d429": "This API key already has ATELIER_MAX_JOBS_PER_KEY unfinished jobs.",
        "d503": "ATELIER_MAX_QUEUED_JOBS jobs already wait, or Redis is unavailable.",
    }
    statuses = (400, 409, 413, 415, 422, 429, 503, *extra)
    return {202: job_accepted_doc(accepted), **problem_responses(*statuses, **(common | descriptions))}


def _routes(app: FastAPI) -> list[Any]:
    """Every leaf route, also inside included routers (newer FastAPI keeps those nested)."""
    contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    return list(contexts(app.routes)) if contexts is not None else list(app.routes)


def _settings_bounds(settings: Settings) -> dict[tuple[str, str], dict[str, Any]]:
    """Bounds of form fields that depend on this server's settings (the routers check the same)."""
    return {
        ("/jobs/optimize", "size"): {"maximum": settings.gatys_max_size},
        ("/jobs/optimize", "steps"): {"maximum": settings.gatys_max_steps},
        ("/jobs/optimize", "style"): {"maxItems": settings.gatys_max_styles},
        ("/classify", "file"): {"maxItems": settings.max_files_per_request},
        ("/stylize", "size"): {"minimum": 16, "maximum": settings.stylize_max_size},
        ("/jobs/stylize-video", "size"): {"minimum": 16, "maximum": settings.video_max_size},
        ("/jobs/stylize-image", "size"): {"minimum": 16, "maximum": settings.stylize_job_max_size},
        ("/styles", "iterations"): {"maximum": settings.custom_style_max_iterations},
    }


def _not_null(prop: dict[str, Any]) -> dict[str, Any]:
    """``anyOf: [X, null]`` -> X: a form field or query parameter is present or absent, never null."""
    options = prop.get("anyOf")
    if not options:
        return prop
    kept = [o for o in options if o.get("type") != "null"]
    if len(kept) == len(options):
        return prop
    rest = {k: v for k, v in prop.items() if k != "anyOf"}
    if rest.get("default", 0) is None:
        del rest["default"]
    return {**kept[0], **rest} if len(kept) == 1 else {**rest, "anyOf": kept}


def _is_file(prop: dict[str, Any]) -> bool:
    return prop.get("format") == "binary" or "contentMediaType" in prop


def _fix_form(schema: dict[str, Any], path: str, bounds: dict[tuple[str, str], dict[str, Any]]) -> bool:
    """Tighten one multipart body schema in place; True when it carries file uploads."""
    props: dict[str, Any] = schema.get("properties", {})
    has_files = False
    for name, prop in list(props.items()):
        prop = _not_null(prop)
        items = prop.get("items", {})
        if prop.get("type") == "array" and _is_file(items):
            has_files = True
            if name in schema.get("required", []):
                prop["minItems"] = 1
        elif _is_file(prop):
            has_files = True
        prop.update(bounds.get((path, name), {}))
        props[name] = prop
    return has_files


def _form_schema(doc: dict[str, Any], operation: dict[str, Any]) -> dict[str, Any] | None:
    media = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data")
    if not media:
        return None
    schema = media.get("schema", {})
    ref = schema.get("$ref")
    if ref:
        return doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return schema


def _fill_problem_contents(operation: dict[str, Any]) -> None:
    """Every 4xx/5xx is a problem: fill the content of error responses declared without one."""
    for code, response in operation.get("responses", {}).items():
        if code[:1] not in ("4", "5"):
            continue
        content = response.get("content") or {}
        json_schema = content.get("application/json", {}).get("schema", {})
        if code == "422" and json_schema.get("$ref", "").endswith("/HTTPValidationError"):
            content = {}
        if content and PROBLEM_MEDIA_TYPE not in content:
            continue  # a route that documents its own error body (readiness)
        fresh = problem_doc(int(code))
        response.setdefault("description", fresh["description"])
        response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": PROBLEM_REF}}}
        for header, spec in fresh.get("headers", {}).items():
            response.setdefault("headers", {}).setdefault(header, spec)


def _finish(doc: dict[str, Any], app: FastAPI) -> None:
    settings: Settings = app.state.settings
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    problem_schema = ProblemDetails.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(problem_schema.pop("$defs", {}))
    schemas["Problem"] = problem_schema
    keys_on = app.state.api_keys.enabled
    if not keys_on:  # an open server: no operation asks for a key
        components.get("securitySchemes", {}).pop(BEARER_SCHEME, None)
        if not components.get("securitySchemes", True):
            del components["securitySchemes"]
    bounds = _settings_bounds(settings)
    for path, operations in doc.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            form = _form_schema(doc, operation)
            if form is not None and _fix_form(form, path, bounds):
                operation[UPLOADS_EXTENSION] = True
                for status in (400, 413, 415, 422):
                    responses.setdefault(str(status), problem_doc(status))
                operation["description"] = (operation.get("description") or "").rstrip() + (
                    f"\n\n**Testing note.** {NOT_IMAGES_NOTE}"
                )
            for parameter in operation.get("parameters", []):  # a query string has no null either
                if "schema" in parameter:
                    parameter["schema"] = _not_null(parameter["schema"])
            if not keys_on:
                operation.pop("security", None)
            elif any(BEARER_SCHEME in requirement for requirement in operation.get("security", [])):
                responses.setdefault("401", problem_doc(401))
            _fill_problem_contents(operation)
    for operations in doc.get("webhooks", {}).values():
        for operation in operations.values():
            # What the receiver answers: FastAPI's 422 would be about requests to this server.
            operation["responses"] = {"2XX": {"description": "Delivered: any 2xx answer."}}
    for unused in ("HTTPValidationError", "ValidationError"):
        if f'"#/components/schemas/{unused}"' not in json.dumps(doc):
            schemas.pop(unused, None)


def install_contract(app: FastAPI) -> None:
    """Serve the finished document at /openapi.json (built once, on first request)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _finish(build(), app)
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def allowed_methods(request: Request) -> list[str]:
    """Every method some route accepts on this request's path (for a 405's ``Allow``)."""
    methods: set[str] = set()
    for route in _routes(request.app):
        route_methods = getattr(route, "methods", None)
        if not route_methods:
            continue
        match, _ = route.matches({**request.scope, "type": "http"})
        if match != Match.NONE:
            methods |= set(route_methods)
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)
