"""Every error answer is built by one function fed by the error table: the route errors, the
credentials refusals, JSON too large, and the refusals of the middleware that answers before
any route runs (body too large, foreign Host, cross-site write, wrong body type)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from xpcs_io.errors import ERROR_TABLE, PayloadTooLargeError, ServerBusyError
from xpcs_io.server import create_app, problems
from xpcs_io.server.problems import (
    PROBLEM_MEDIA_TYPE,
    REFINEMENTS,
    KeyRequiredError,
    UnsupportedMediaTypeError,
    classify,
    problem_body,
)
from xpcs_io.server.responses import JsonTooLargeError
from xpcs_io.server.settings import Settings
from xpcs_io.tools.demo import DemoSpec, write_native_file

KEYS = "read-key-0123456789:read,admin-key-0123456789:admin"
BASE = "http://127.0.0.1:8000"


def _answers(root: Path, settings: dict[str, Any], requests: list[dict[str, Any]]) -> Any:
    app = create_app(Settings(data_root=root, watch=False, **settings))

    async def main() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
                return [await http.request(**r) for r in requests]

    return asyncio.run(main())


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_native_file(tmp_path / "a.hdf5", DemoSpec(shape=(64, 64), n_delay=6, n_q=3))
    return tmp_path


KEYED = [
    ({"method": "GET", "url": "/v1/geometry?file_path=a.hdf5"}, 401, "PermissionError"),
    (
        {
            "method": "GET",
            "url": "/v1/geometry?file_path=a.hdf5",
            "headers": {"authorization": "Bearer wrong-key-000000000"},
        },
        401,
        "PermissionError",
    ),
    (
        {
            "method": "POST",
            "url": "/v1/pool/clear",
            "headers": {"authorization": "Bearer read-key-0123456789"},
        },
        403,
        "PermissionError",
    ),
    (
        {
            "method": "GET",
            "url": "/v1/qmap?file_path=a.hdf5",
            "headers": {
                "authorization": "Bearer read-key-0123456789",
                "accept": "application/json",
            },
        },
        406,
        "ValueError",
    ),
    (
        {
            "method": "GET",
            "url": "/v1/qmap?file_path=missing.hdf5",
            "headers": {"authorization": "Bearer read-key-0123456789"},
        },
        404,
        "FileNotFoundError",
    ),
    (
        {
            "method": "POST",
            "url": "/v1/mask?file_path=a.hdf5",
            "headers": {
                "authorization": "Bearer admin-key-0123456789",
                "content-type": "application/msgpack",
            },
            "content": b"\0" * 5000,
        },
        413,
        "PayloadTooLargeError",
    ),
]
KEYLESS = [
    (
        {
            "method": "GET",
            "url": "/v1/geometry?file_path=a.hdf5",
            "headers": {"host": "evil.example"},
        },
        403,
        "PermissionError",
    ),
    (
        {
            "method": "POST",
            "url": "/v1/pool/clear",
            "headers": {"origin": "http://evil.example"},
        },
        403,
        "PermissionError",
    ),
    (
        {
            "method": "POST",
            "url": "/v1/mask?file_path=a.hdf5",
            "headers": {"content-type": "text/plain"},
            "content": b"hello",
        },
        415,
        "ValueError",
    ),
]


@pytest.mark.parametrize(
    ("settings", "cases"),
    [
        ({"api_keys": KEYS, "json_max_elements": 100, "max_body_bytes": 1000}, KEYED),
        ({}, KEYLESS),
    ],
    ids=["keyed", "keyless"],
)
def test_every_refusal_is_one_problem_body(
    root: Path,
    settings: dict[str, Any],
    cases: list[tuple[dict[str, Any], int, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[dict[str, Any]] = []

    def counted(*args: Any, **kwargs: Any) -> dict[str, Any]:
        body = problem_body(*args, **kwargs)
        built.append(body)
        return body

    monkeypatch.setattr(problems, "problem_body", counted)
    answers = _answers(root, settings, [request for request, _, _ in cases])
    assert len(built) == len(cases)
    for (request, status, error), r, made in zip(cases, answers, built, strict=True):
        assert (r.status_code, r.headers["content-type"]) == (status, PROBLEM_MEDIA_TYPE), request
        body = r.json()
        assert body == made
        assert body == problem_body(
            status, body["detail"], error=error, request_id=r.headers["x-request-id"]
        )
        assert list(body) == ["type", "title", "status", "detail", "error", "request_id"]
        if status == 401:
            assert r.headers["www-authenticate"].startswith("Bearer")


def test_the_status_and_the_class_the_client_rebuilds_come_from_the_tables() -> None:
    assert classify(PayloadTooLargeError("x")) == (413, "PayloadTooLargeError")
    assert classify(ServerBusyError("x")) == (503, "ServerBusyError")
    assert classify(KeyRequiredError("x")) == (401, "PermissionError")
    assert classify(PermissionError("x")) == (403, "PermissionError")
    assert classify(JsonTooLargeError("x")) == (406, "ValueError")
    assert classify(UnsupportedMediaTypeError("x")) == (415, "ValueError")
    assert classify(RuntimeError("x")) is None
    table = {cls for cls, _ in ERROR_TABLE}
    for _, _, rebuilt in REFINEMENTS:
        assert rebuilt in table


def test_server_error_with_its_own_status_keeps_it(root: Path) -> None:
    # A fault the service raises on purpose with a status (the pool clear that not every
    # worker confirmed is a 503) is answered with that status, so a client may retry.
    from xpcs_io.errors import ServerError

    app = create_app(Settings(data_root=root, watch=False))

    def refuse() -> None:
        raise ServerError("not every worker confirmed the clear in time", status=503)

    app.add_api_route("/v1/refuse", refuse)

    async def main() -> httpx.Response:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
                return await http.get("/v1/refuse")

    answer = asyncio.run(main())
    assert answer.status_code == 503
    assert answer.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    body = answer.json()
    assert body["error"] == "ServerError"
    assert body["status"] == 503
    assert "not every worker" in body["detail"]
