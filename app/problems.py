"""RFC 9457 problem details: every error the API returns is ``application/problem+json``.

Routes raise :class:`Problem`; the handlers here also turn FastAPI's validation errors and plain HTTP
errors into the same shape, so clients parse one error format everywhere.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.request_id import current_request_id

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE = "/problems/"

log = logging.getLogger(__name__)

# slug -> (title, explanation). The explanation is served at /problems/<slug> for people who follow the link.
PROBLEM_TYPES: dict[str, tuple[str, str]] = {
    "validation-error": ("Invalid request", "A field is missing, malformed or out of range; see `errors`."),
    "payload-too-large": ("Payload too large", "The upload or request body exceeds the configured limit."),
    "image-too-large": ("Image too large", "The image has more pixels than the service accepts."),
    "unsupported-media-type": (
        "Unsupported media type",
        "The upload is not an image format we accept, or the body is not a form.",
    ),
    "invalid-image": ("Invalid image", "The upload is empty, truncated or corrupt."),
    "invalid-video": ("Invalid video", "The video is empty, truncated, corrupt, or has no video frames."),
    "video-too-large": ("Video too large", "Longer, or with more or larger frames, than allowed."),
    "not-found": ("Not found", "No such resource (or it expired)."),
    "job-not-finished": ("Job not finished", "The job has no result yet; poll GET /jobs/{id}."),
    "range-not-satisfiable": (
        "Range not satisfiable",
        "The requested byte range starts past the end of the result; Content-Range gives its length.",
    ),
    "no-preview": (
        "No preview",
        "The job has no preview now: not started, none stored yet (watch `progress.preview_step`), "
        "finished (download its result instead), or ended before its first.",
    ),
    "unknown-style": ("Unknown style", "The style name is not one of GET /styles."),
    "style-exists": ("Style name in use", "A built-in or custom style (or a job training one) has it."),
    "builtin-style": ("Built-in style", "Styles of the shipped network cannot be deleted."),
    "style-in-training": ("Style in training", "A job is still training this style; cancel the job instead."),
    "too-many-styles": ("Too many custom styles", "The server stores as many custom styles as it may."),
    "forbidden": ("Forbidden", "This API key may not change this resource."),
    "service-unavailable": ("Service unavailable", "A dependency (Redis, a model) is not available."),
    "method-not-allowed": ("Method not allowed", "This path does not accept that HTTP method."),
    "unauthorized": ("API key required", "Send a valid API key as 'Authorization: Bearer <key>'."),
    "overloaded": ("Overloaded", "Too many requests are waiting for this model; retry after Retry-After."),
    "deadline-exceeded": ("Deadline exceeded", "The request was not answered within the server's deadline."),
    "queue-full": ("Job queue full", "As many jobs as the server allows are waiting; retry later."),
    "too-many-jobs": ("Too many jobs", "This API key has as many unfinished jobs as it may."),
    "idempotency-key-reused": (
        "Idempotency-Key reused",
        "The Idempotency-Key was already used for a different request; use a new key for a new request.",
    ),
    "request-in-progress": (
        "Request in progress",
        "A request with this Idempotency-Key is still being handled; retry after Retry-After to get its job.",
    ),
    "http-error": ("HTTP error", "A generic HTTP error."),
    "internal-error": ("Internal error", "An unexpected error; it was logged."),
}


class Problem(Exception):
    """An error response with a stable machine-readable type and a human-readable detail."""

    def __init__(
        self,
        status: int,
        slug: str,
        detail: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.field = field
        self.headers = headers or {}
        self.extra = extra

    def body(self, instance: str | None = None) -> dict[str, Any]:
        title = PROBLEM_TYPES.get(self.slug, PROBLEM_TYPES["http-error"])[0]
        body: dict[str, Any] = {
            "type": PROBLEM_BASE + self.slug,
            "title": title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        if request_id := current_request_id():
            body["request_id"] = request_id
        if self.field:
            body["field"] = self.field
        body.update(self.extra)
        return body


# Statuses after which a client should wait: every such answer says how long (the contract requires it).
RETRY_AFTER_DEFAULT_S = {429: "30", 503: "5", 504: "5"}


def problem_response(problem: Problem, instance: str | None = None) -> JSONResponse:
    headers = dict(problem.headers)
    if problem.status in RETRY_AFTER_DEFAULT_S and not any(h.lower() == "retry-after" for h in headers):
        headers["Retry-After"] = RETRY_AFTER_DEFAULT_S[problem.status]
    return JSONResponse(
        problem.body(instance),
        status_code=problem.status,
        headers=headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )


def _field_name(loc: tuple[Any, ...]) -> str:
    """``("body", "top_k")`` -> ``top_k``: clients care about the field, not where FastAPI found it."""
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "form")]
    return ".".join(parts) or ".".join(str(p) for p in loc)


_BOUND_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number"}


def _is_non_finite(value: Any) -> bool:
    """``nan``, ``inf``, ``1e999``...: numbers that no range check can place."""
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError, OverflowError):
        return False


def _text_for_a_file(error: Mapping[str, Any]) -> bool:
    """A plain form value where an upload belongs (``-F style=udnie`` instead of ``-F style=@a.jpg``)."""
    return error.get("type") == "value_error" and "Expected UploadFile" in str(error.get("msg", ""))


def _message(error: Mapping[str, Any]) -> str:
    # A bound check on NaN fails whichever side it tests: "less than or equal to 1" for ``nan``
    # would send the client looking for a smaller number.
    if error.get("type") in _BOUND_ERRORS and _is_non_finite(error.get("input")):
        return f"Input should be a finite number; got {error.get('input')!r}"
    if _text_for_a_file(error):  # pydantic's own words name a Python class
        text = str(error.get("input", ""))
        shown = text if len(text) <= 40 else text[:40] + "…"
        return f"must be an uploaded file (curl: -F name=@path), not the text {shown!r}"
    return error.get("msg", "")


def _error_field(error: Mapping[str, Any]) -> str:
    loc = tuple(error.get("loc", ()))
    if _text_for_a_file(error) and loc and isinstance(loc[-1], int):
        loc = loc[:-1]  # "style", not "style.0": the field the client names in its form
    return _field_name(loc)


def _descriptions(request: Request | None) -> dict[str, str]:
    """Each parameter of the matched route (its dependencies' too) -> its documented description."""
    route = request.scope.get("route") if request is not None else None
    found: dict[str, str] = {}
    pending = [getattr(route, "dependant", None)]
    while pending:
        dependant = pending.pop()
        if dependant is None:
            continue
        for kind in ("query_params", "header_params", "path_params", "body_params"):
            for param in getattr(dependant, kind, ()):
                description = getattr(param.field_info, "description", None)
                if description:
                    found.setdefault(param.alias, str(description))
        pending += getattr(dependant, "dependencies", [])
    return found


def _explained(error: Mapping[str, Any], field: str, descriptions: Mapping[str, str]) -> str:
    """A pattern mismatch in the words of the field's documentation, not the regular expression."""
    if error.get("type") == "string_pattern_mismatch" and field in descriptions:
        text = str(error.get("input", ""))
        shown = text if len(text) <= 40 else text[:40] + "…"
        return f"{shown!r} is not accepted. {descriptions[field]}"
    return _message(error)


def validation_problem(exc: RequestValidationError, request: Request | None = None) -> Problem:
    descriptions = _descriptions(request)
    errors = []
    for e in exc.errors():
        field = _error_field(e)
        errors.append({"field": field, "message": _explained(e, field, descriptions)})
    fields = sorted({e["field"] for e in errors})
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or "Invalid request."
    return Problem(422, "validation-error", detail, field=fields[0] if fields else None, errors=errors)


_STATUS_SLUGS = {
    404: "not-found",
    405: "method-not-allowed",
    413: "payload-too-large",
    503: "service-unavailable",
}


def _no_route_detail(path: str) -> str:
    if path.startswith("/jobs/"):
        return f"No job at {path}: job ids are the UUIDs that POST /jobs/... returned (see /docs)."
    return f"Nothing at {path}; the API's paths are listed at /docs."


def install_problem_handlers(app: FastAPI) -> None:
    """Route every error path of the app through problem details."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem_response(validation_problem(exc, request), request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        slug = _STATUS_SLUGS.get(exc.status_code, "http-error")
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 400 and "parsing the body" in detail:
            detail = "The request body is not valid multipart/form-data (or a form field is too large)."
        headers = dict(exc.headers or {})
        if exc.status_code == 404 and detail == "Not Found":  # no route matched: say what would have
            detail = _no_route_detail(request.url.path)
        if exc.status_code == 405:
            # Starlette names only the methods of the first route it tried; list every route's.
            from app.contract import allowed_methods

            headers["Allow"] = ", ".join(allowed_methods(request))
            detail = f"{request.method} is not allowed on this path; allowed: {headers['Allow']}."
        return problem_response(Problem(exc.status_code, slug, detail, headers=headers), request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return problem_response(Problem(500, "internal-error", "Unexpected server error."), request.url.path)
