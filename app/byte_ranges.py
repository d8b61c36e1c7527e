"""Conditional and partial downloads of a job's result (RFC 9110: ETag, If-None-Match, Range, If-Range).

A result never changes once its job has finished (a job id is never reused), so its entity tag is
the job id and the format: a client that has it gets a 304 without the bytes, and a download that
broke off (a video of tens of MB) resumes with ``Range`` (``curl -C -``) instead of starting over.
One range per request: a request for several is answered with the whole result, as RFC 9110 allows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fastapi import Request, Response

from app.problems import Problem

RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True)
class Conditions:
    """The request's validators and range, read before the result is (a 304 needs no bytes)."""

    if_none_match: str | None = None
    range: str | None = None
    if_range: str | None = None

    @classmethod
    def of(cls, request: Request) -> Conditions:
        headers = request.headers
        return cls(headers.get("if-none-match"), headers.get("range"), headers.get("if-range"))


def entity_tag(*parts: str) -> str:
    return '"' + "-".join(parts) + '"'


def not_modified(conditions: Conditions, etag: str) -> bool:
    """If-None-Match matches (weak comparison, as RFC 9110 asks for it)."""
    if conditions.if_none_match is None:
        return False
    listed = [tag.strip().removeprefix("W/") for tag in conditions.if_none_match.split(",")]
    return "*" in listed or etag in listed


def requested_range(conditions: Conditions, etag: str, length: int) -> tuple[int, int] | None:
    """The one byte range to send, inclusive; None for the whole result (no range, several, one
    that is malformed, or an If-Range for another version). A 416 problem if it lies past the end."""
    if conditions.range is None or (conditions.if_range is not None and conditions.if_range != etag):
        return None
    match = RANGE.match(conditions.range.replace(" ", ""))
    if match is None or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":  # the final N bytes
        if int(last) == 0:
            raise _unsatisfiable(length)
        return max(0, length - int(last)), length - 1
    if int(first) >= length:
        raise _unsatisfiable(length)
    end = length - 1 if last == "" else min(int(last), length - 1)
    if end < int(first):
        return None  # last before first: malformed, so ignored
    return int(first), end


def _unsatisfiable(length: int) -> Problem:
    return Problem(
        416,
        "range-not-satisfiable",
        f"The requested range starts past the end of the result ({length} bytes).",
        field="Range",
        headers={"Content-Range": f"bytes */{length}"},
    )


def download(
    body: bytes, media_type: str, etag: str, conditions: Conditions, headers: dict[str, str]
) -> Response:
    """The result, or the range of it that was asked for (206)."""
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "private", **headers}
    span = requested_range(conditions, etag, len(body))
    if span is None:
        return Response(body, media_type=media_type, headers=headers)
    first, last = span
    headers["Content-Range"] = f"bytes {first}-{last}/{len(body)}"
    return Response(body[first : last + 1], status_code=206, media_type=media_type, headers=headers)
