"""Errors as RFC 9457 ``application/problem+json``, from the one table in ``xpcs_io.errors``.

Every problem body the service sends is built by ``problem_body``: by the exception handlers
(one covers every class of the table; Starlette finds handlers through the class hierarchy),
by middleware answering before any route ran (``send_problem``), and for the items of
many-file reads (``problem_fields``). The status and the ``error`` name come from
``classify``: the table, refined for a few server-side classes (``REFINEMENTS``) that keep the
table class the client rebuilds. FastAPI's request-validation errors and Starlette's HTTP
errors get the same body. Anything else is a server fault: logged with its traceback,
answered 500 without details. Details never carry the server's absolute data root.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Scope, Send

from xpcs_io.errors import ERROR_TABLE, RETRYABLE, ServerError, status_for
from xpcs_io.server.deps import get_root_text
from xpcs_io.server.responses import JsonTooLargeError

__all__ = [
    "PROBLEM_MEDIA_TYPE",
    "REFINEMENTS",
    "KeyRequiredError",
    "UnsupportedMediaTypeError",
    "classify",
    "install_handlers",
    "problem",
    "problem_body",
    "problem_fields",
    "send_problem",
]

PROBLEM_MEDIA_TYPE = "application/problem+json"
log = logging.getLogger("xpcs_io.server")

# Pydantic error types that mean "the value has the wrong type" rather than a bad value.
_TYPE_ERRORS = ("_parsing", "_type")


class KeyRequiredError(PermissionError):
    """No API key, or one the server does not know (HTTP 401; the client raises
    ``PermissionError``)."""


class UnsupportedMediaTypeError(ValueError):
    """A body of a type the route does not read (HTTP 415; the client raises ``ValueError``)."""


#: Server-side classes answered with their own status: (class, status, the table class the
#: client rebuilds from the ``error`` name).
REFINEMENTS: tuple[tuple[type[BaseException], int, type[BaseException]], ...] = (
    (KeyRequiredError, 401, PermissionError),
    (JsonTooLargeError, 406, ValueError),
    (UnsupportedMediaTypeError, 415, ValueError),
)


def classify(exc: BaseException) -> tuple[int, str] | None:
    """The HTTP status of ``exc`` and the table class the client rebuilds (its ``error``
    name), or ``None`` when it is not a client-facing error (a server fault)."""
    for cls, status, as_cls in REFINEMENTS:
        if isinstance(exc, cls):
            return status, as_cls.__name__
    table_status = status_for(exc)
    if table_status is None:
        return None
    return table_status, next(cls.__name__ for cls, _ in ERROR_TABLE if isinstance(exc, cls))


def problem_body(
    status: int,
    detail: str,
    *,
    error: str | None = None,
    field: str | None = None,
    request_id: str | None = None,
    root: str | None = None,
) -> dict[str, Any]:
    """The problem+json body: the one place its fields are put together. ``root`` (the
    resolved data root) is removed from the detail."""
    if root:
        detail = detail.replace(root + "/", "").replace(root, "<data root>")
    body: dict[str, Any] = {
        "type": f"urn:xpcs-io:problem:{error or HTTPStatus(status).name.lower()}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if error:
        body["error"] = error
    if field:
        body["field"] = field
    if request_id:
        body["request_id"] = request_id
    return body


def _headers_for(status: int, exc: BaseException | None) -> dict[str, str] | None:
    if status == 401:
        return {"www-authenticate": 'Bearer realm="xpcs-io"'}
    # A busy file, lock or server clears by itself: say when to ask again.
    if status == 503 or (exc is not None and isinstance(exc, RETRYABLE)):
        return {"retry-after": "1"}
    return None


def problem(
    request: Request,
    status: int,
    detail: str,
    *,
    error: str | None = None,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """A problem+json response; ``error`` names the Python exception class for clients."""
    body = problem_body(
        status,
        detail,
        error=error,
        field=field,
        request_id=getattr(request.state, "request_id", None),
        root=get_root_text(request),
    )
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


async def send_problem(scope: Scope, send: Send, exc: BaseException) -> None:
    """Answer ``exc`` (a class of the table or of ``REFINEMENTS``) from the ASGI layer, before
    any route ran, and close the connection: the request body, if any, is left unread."""
    known = classify(exc)
    assert known is not None, f"{type(exc).__name__} has no status"
    status, error = known
    state: dict[str, Any] = scope.get("state", {})
    body = problem_body(status, _detail(exc), error=error, request_id=state.get("request_id"))
    raw = json.dumps(body).encode()
    extra = _headers_for(status, exc) or {}
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                (b"content-length", str(len(raw)).encode()),
                (b"connection", b"close"),
                *((k.encode(), v.encode()) for k, v in extra.items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": raw})


def _detail(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc) or type(exc).__name__


async def _known(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ServerError) and exc.status != 500:
        # A fault the service raised on purpose with its own status (503: not every worker
        # answered): that status, not a 500, so a client knows it may retry.
        return problem(request, exc.status, str(exc), error="ServerError")
    known = classify(exc)
    if known is None or known[0] == 500:
        return await _unexpected(request, exc)
    status, name = known  # the table's class name: the client rebuilds the same exception
    return problem(
        request,
        status,
        _detail(exc),
        error=name,
        field=getattr(exc, "field", None),
        headers=_headers_for(status, exc),
    )


async def _request_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("query", "body", "header")]
    field = ".".join(loc) or None
    kind = str(first.get("type", ""))
    name = "TypeError" if any(kind.endswith(t) for t in _TYPE_ERRORS) else "ValueError"
    detail = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors
    )
    return problem(request, 422, detail, error=name, field=field)


async def _http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return problem(request, exc.status_code, str(exc.detail), headers=exc.headers)


async def _client_gone(request: Request, exc: Exception) -> Response:
    # The client closed the connection mid-request: nobody will read an answer, and it is
    # not a server fault. Logged quietly; the status says "bad request" for the metrics.
    log.info(
        "client disconnected before its request was complete",
        extra={"request_id": getattr(request.state, "request_id", None)},
    )
    return problem(request, 400, "the client disconnected before sending the whole request")


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error(
        "unhandled error",
        exc_info=exc,
        extra={"request_id": getattr(request.state, "request_id", None)},
    )
    return problem(
        request, 500, "internal server error (logged with the request id)", error="ServerError"
    )


def install_handlers(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    for cls in (*(c for c, _ in ERROR_TABLE), *(c for c, _, _ in REFINEMENTS)):
        assert issubclass(cls, Exception)
        app.add_exception_handler(cls, _known)
    app.add_exception_handler(OSError, _unexpected)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)


def problem_fields(request: Request, exc: BaseException) -> dict[str, Any]:
    """The problem+json fields (``error``, ``detail``, ``status``, ``field``) of ``exc``, for
    answers that carry one error per item (many-file reads) instead of failing whole.
    Anything outside the error table is logged and reported as a ServerError."""
    known = classify(exc)
    if known is None or known[0] == 500:
        log.error(
            "unhandled error in one item",
            exc_info=exc,
            extra={"request_id": getattr(request.state, "request_id", None)},
        )
        known = (500, "ServerError")
        detail = "internal server error (logged with the request id)"
    else:
        detail = _detail(exc)
    status, name = known
    body = problem_body(
        status,
        detail,
        error=name,
        field=getattr(exc, "field", None),
        root=get_root_text(request),
    )
    return {"error": name, "detail": body["detail"], "status": status, "field": body.get("field")}
