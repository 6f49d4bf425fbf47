"""What the service checks before it reads a request's body: the API token and the upload size.

:class:`Guard` is a pure ASGI middleware in front of the routes (``@app.middleware("http")`` could not stop a body
early: FastAPI parses the whole multipart body, spooling it to disk, before any dependency runs). For a request to
``/v1/...`` that carries a body it answers 401 when a token is set and the request's is missing or wrong, before a
single body byte is received. For every request it answers 413 when the declared ``Content-Length`` is over
``max_upload_bytes`` plus :data:`ENVELOPE` (the multipart framing around the file), and it counts the bytes as
they arrive (a chunked upload declares no length), ending the request with 413 as soon as they pass that bound:
no more than that is ever spooled by the form parser or copied into a case folder
(:func:`medseg.serve.cases.save_upload` then holds the file itself to ``max_upload_bytes``). :data:`FORM_LIMITS`
bounds the form's parts: one file, a few small text fields.

:func:`token_matches` is the one token comparison (constant time), shared with the ``authorize`` dependency that
still guards every ``/v1`` route (GET routes, and the OpenAPI security scheme).
"""

from __future__ import annotations

import hmac

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from fastapi.security.utils import get_authorization_scheme_param
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medseg.serve.admission import too_large
from medseg.serve.config import ServeConfig

ENVELOPE = 64 * 1024  # bytes allowed beyond max_upload_bytes for the multipart boundaries and part headers
FORM_LIMITS = {"max_files": 1, "max_fields": 8, "max_part_size": 4096}  # files, text fields, bytes a text field
UNAUTHORIZED = "missing or wrong API token: send 'Authorization: Bearer <token>'"
CHALLENGE = {"WWW-Authenticate": "Bearer"}
NO_BODY_METHODS = {"GET", "HEAD", "OPTIONS"}


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, parsed as FastAPI's ``HTTPBearer`` does."""
    scheme, credentials = get_authorization_scheme_param(authorization)
    return credentials if authorization and scheme.lower() == "bearer" and credentials else None


def token_matches(expected: str | None, given: str | None) -> bool:
    """True when the service has no token, or ``given`` is it (constant-time compare)."""
    if expected is None:
        return True
    return hmac.compare_digest((given or "").encode(), expected.encode())


def carries_body(method: str, headers: Headers) -> bool:
    """Whether a request may send a body: any method but GET/HEAD/OPTIONS, or one that declares a body."""
    length = headers.get("content-length")
    return method not in NO_BODY_METHODS or "transfer-encoding" in headers or bool(length and length != "0")


class Guard:
    """The token and size checks before the body is read (see the module's docstring)."""

    def __init__(self, app: ASGIApp, config: ServeConfig) -> None:
        self.app, self.config = app, config

    def refusal(self, scope: Scope) -> JSONResponse | None:
        """The answer to give without reading the body, or None to let the request in."""
        headers = Headers(scope=scope)
        path, root = scope["path"], scope.get("root_path", "")
        path = path[len(root):] if root and path.startswith(root) else path  # behind a proxy's prefix
        if path.startswith("/v1/") and carries_body(scope["method"], headers) and \
                not token_matches(self.config.token, bearer_token(headers.get("authorization"))):
            return JSONResponse({"detail": UNAUTHORIZED}, status_code=401, headers=CHALLENGE)
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > self.config.max_upload_bytes + ENVELOPE:
            return JSONResponse({"detail": too_large(self.config.max_upload_bytes)}, status_code=413)
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = self.refusal(scope)
        if refused is not None:
            await refused(scope, receive, send)
            return
        limit = self.config.max_upload_bytes
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit + ENVELOPE:  # FastAPI re-raises an HTTPException from the body's stream
                    raise HTTPException(413, too_large(limit))
            return message

        await self.app(scope, counted, send)
