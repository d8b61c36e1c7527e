"""API keys: who may call the API, and whose jobs are whose.

Keys come from ``ATELIER_API_KEYS`` (comma-separated) and/or ``ATELIER_API_KEYS_FILE`` (one sha256
hex digest per line, so the file never holds a usable key). Only digests are kept in memory: a
presented key is hashed and compared with every known digest by :func:`hmac.compare_digest`, so
neither the comparison time nor an early exit tells an attacker how much of a key was right.
Keys are never logged; logs and metrics name a key by :attr:`Principal.key_id`, the first
characters of its digest.

With no key configured the API stays open, as before: :func:`authenticate` returns ``None`` and
nothing is owned by anyone.

Browsers cannot put an ``Authorization`` header on ``EventSource`` or ``WebSocket``, so the event
stream and the live WebSocket also take ``?key=`` (and the WebSocket a ``bearer.<key>``
subprotocol); every other route takes the header only, so keys do not end up in access logs.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Query, Request, WebSocket
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from app.problems import Problem
from core.settings import Settings

KEY_ID_CHARS = 8
REALM = "atelier"
# Offered next to "bearer.<key>" by browsers; the server answers with this one, never the key.
WS_SUBPROTOCOL = "atelier"
WS_KEY_SUBPROTOCOL_PREFIX = "bearer."


def digest_of(key: str) -> str:
    """The sha256 hex digest of a key: what a keys file holds and what ownership is recorded by."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the digest of its key (owner of its jobs) and a short id for logs."""

    digest: str

    @property
    def key_id(self) -> str:
        return self.digest[:KEY_ID_CHARS]


def _read_digest_file(path: Path) -> list[str]:
    digests = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip().lower()
        if not line:
            continue
        if len(line) != 64 or any(c not in "0123456789abcdef" for c in line):
            raise ValueError(f"{path}:{number}: expected a sha256 hex digest (64 hex characters)")
        digests.append(line)
    return digests


class ApiKeys:
    """The configured key digests; ``enabled`` is False when none is configured (open API)."""

    def __init__(self, digests: list[str]) -> None:
        self._digests = [bytes.fromhex(d) for d in dict.fromkeys(digests)]

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys:
        digests = [digest_of(k.strip()) for k in settings.api_keys.get_secret_value().split(",") if k.strip()]
        if settings.api_keys_file is not None:
            digests += _read_digest_file(settings.api_keys_file)
        return cls(digests)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def check(self, key: str) -> Principal | None:
        """The principal of ``key`` if it is one of ours; every digest is compared, in constant time."""
        presented = hashlib.sha256(key.encode()).digest()
        match: bytes | None = None
        for known in self._digests:
            if hmac.compare_digest(presented, known):
                match = known
        return Principal(match.hex()) if match is not None else None


def unauthorized(detail: str) -> Problem:
    return Problem(
        401,
        "unauthorized",
        detail,
        headers={"WWW-Authenticate": f'Bearer realm="{REALM}"'},
    )


def bearer_token(connection: HTTPConnection) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if there is one."""
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def websocket_token(connection: HTTPConnection) -> str | None:
    """A key offered as a ``bearer.<key>`` WebSocket subprotocol (browsers cannot set headers)."""
    offered = connection.headers.get("sec-websocket-protocol", "")
    for protocol in (p.strip() for p in offered.split(",")):
        if protocol.startswith(WS_KEY_SUBPROTOCOL_PREFIX) and len(protocol) > len(WS_KEY_SUBPROTOCOL_PREFIX):
            return protocol[len(WS_KEY_SUBPROTOCOL_PREFIX) :]
    return None


def identify(connection: HTTPConnection, token: str | None) -> Principal | None:
    """Check ``token`` against the app's keys; raise a 401 problem when keys are on and it fails.

    Records the caller's short key id on the connection so the metrics can label by it.
    """
    keys: ApiKeys = connection.app.state.api_keys
    if not keys.enabled:
        return None
    if token is None:
        raise unauthorized(
            "This server needs an API key. Send a valid API key as 'Authorization: Bearer <key>'."
        )
    principal = keys.check(token)
    if principal is None:
        connection.state.api_key_id = "invalid"
        raise unauthorized("The API key was not accepted.")
    connection.state.api_key_id = principal.key_id
    return principal


# Declares the scheme in the OpenAPI document for every operation that depends on it (the contract
# drops it again when the server has no keys). auto_error=False: our own 401 is a problem+json.
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key from ATELIER_API_KEYS / ATELIER_API_KEYS_FILE: `Authorization: Bearer <key>`.",
)
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]


def authenticate(request: Request, _: BearerDep) -> Principal | None:
    """The caller, from ``Authorization: Bearer``; ``None`` when the server has no keys."""
    return identify(request, bearer_token(request))


def authenticate_stream(
    request: Request,
    _: BearerDep,
    key: Annotated[
        str | None,
        Query(
            min_length=1,
            description="The API key, for clients that cannot send `Authorization: Bearer` "
            "(a browser's `EventSource`). Prefer the header: URLs end up in logs.",
        ),
    ] = None,
) -> Principal | None:
    """Like :func:`authenticate`, also accepting ``?key=`` (for ``EventSource``)."""
    return identify(request, bearer_token(request) or key)


CallerDep = Annotated[Principal | None, Depends(authenticate)]
StreamCallerDep = Annotated[Principal | None, Depends(authenticate_stream)]


def authenticate_websocket(websocket: WebSocket) -> Principal | None:
    """The caller of a WebSocket: ``Authorization: Bearer``, a ``bearer.<key>`` subprotocol or ``?key=``."""
    token = bearer_token(websocket) or websocket_token(websocket) or websocket.query_params.get("key")
    return identify(websocket, token)


def websocket_subprotocol(websocket: WebSocket) -> str | None:
    """``atelier`` when the client offered it: a browser that offers subprotocols needs one chosen."""
    offered = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",")]
    return WS_SUBPROTOCOL if WS_SUBPROTOCOL in offered else None
