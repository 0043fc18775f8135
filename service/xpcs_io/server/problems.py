"""Errors as RFC 9457 ``application/problem+json``, from the one table in ``xpcs_io.errors``.

One handler covers every class of the table (Starlette finds handlers through the class
hierarchy); FastAPI's request-validation errors and Starlette's HTTP errors get the same body.
Anything else is a server fault: logged with its traceback, answered 500 without details.
Details never carry the server's absolute data root.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from xpcs_io.errors import ERROR_TABLE, RETRYABLE, status_for
from xpcs_io.server.responses import JsonTooLargeError

__all__ = ["PROBLEM_MEDIA_TYPE", "install_handlers", "problem", "problem_fields"]

PROBLEM_MEDIA_TYPE = "application/problem+json"
log = logging.getLogger("xpcs_io.server")

# Pydantic error types that mean "the value has the wrong type" rather than a bad value.
_TYPE_ERRORS = ("_parsing", "_type")


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
    root = getattr(request.app.state, "root_str", None)
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
    request_id = getattr(request.state, "request_id", None)
    if request_id:
        body["request_id"] = request_id
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _detail(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc) or type(exc).__name__


async def _known(request: Request, exc: Exception) -> Response:
    # A class may carry its own status (401 vs 403 for credentials).
    status = getattr(exc, "http_status", None) or status_for(exc) or 500
    if status == 500:
        return await _unexpected(request, exc)
    # Name the table's class, so the client rebuilds the same exception.
    name = next(cls.__name__ for cls, _ in ERROR_TABLE if isinstance(exc, cls))
    # A busy file or lock clears by itself: say when to ask again.
    retryable = status == 503 or isinstance(exc, RETRYABLE)
    headers = {"retry-after": "1"} if retryable else None
    if status == 401:
        headers = {"www-authenticate": 'Bearer realm="xpcs-io"'}
    return problem(
        request,
        status,
        _detail(exc),
        error=name,
        field=getattr(exc, "field", None),
        headers=headers,
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


async def _json_too_large(request: Request, exc: Exception) -> Response:
    return problem(request, 406, str(exc), error="ValueError")


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
    for cls, _ in ERROR_TABLE:
        assert issubclass(cls, Exception)
        app.add_exception_handler(cls, _known)
    app.add_exception_handler(OSError, _unexpected)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(JsonTooLargeError, _json_too_large)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)


def problem_fields(request: Request, exc: BaseException) -> dict[str, Any]:
    """The problem+json fields (``error``, ``detail``, ``status``, ``field``) of ``exc``, for
    answers that carry one error per item (many-file reads) instead of failing whole.
    Anything outside the error table is logged and reported as a ServerError."""
    status = getattr(exc, "http_status", None) or status_for(exc)
    if status is None or status == 500:
        log.error(
            "unhandled error in one item",
            exc_info=exc,
            extra={"request_id": getattr(request.state, "request_id", None)},
        )
        return {
            "error": "ServerError",
            "detail": "internal server error (logged with the request id)",
            "status": 500,
            "field": None,
        }
    name = next(cls.__name__ for cls, _ in ERROR_TABLE if isinstance(exc, cls))
    detail = _detail(exc)
    root = getattr(request.app.state, "root_str", None)
    if root:
        detail = detail.replace(root + "/", "").replace(root, "<data root>")
    return {"error": name, "detail": detail, "status": status, "field": getattr(exc, "field", None)}
