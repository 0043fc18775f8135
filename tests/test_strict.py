"""Unknown query parameters (422) and unsatisfiable Accept values (406) on every /v1 route,
against a real server."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from xpcs_io.server.strict import acceptable

from .conftest import Server

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"


def _rel(server: Server, path: Path) -> str:
    return path.relative_to(server.root).as_posix()


def test_a_misspelt_parameter_is_refused_by_name(server: Server, native_file: Path) -> None:
    rel = _rel(server, native_file)
    every_bin = httpx.get(f"{server.url}/v1/g2", params={"file_path": rel})
    assert every_bin.status_code == 200
    r = httpx.get(f"{server.url}/v1/g2", params={"file_path": rel, "qidx": 3, "grp": "/x"})
    assert r.status_code == 422, r.text
    body = r.json()
    assert "qidx" in body["detail"], body
    assert "grp" in body["detail"], body
    assert "q_idx" in body["detail"]  # names what the endpoint takes
    assert body["field"] == "grp"
    assert r.headers["content-type"].startswith("application/problem+json")


def test_every_v1_route_refuses_unknown_parameters(server: Server) -> None:
    spec = httpx.get(f"{server.url}/openapi.json").json()
    checked = 0
    for path, methods in spec["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method in methods:
            r = httpx.request(method.upper(), f"{server.url}{path}", params={"no_such": "1"})
            assert r.status_code == 422, (method, path, r.status_code, r.text)
            assert "no_such" in r.json()["detail"]
            checked += 1
    assert checked >= 10


@pytest.mark.parametrize(
    "accept", ["", "*/*", BROWSER, "application/*", "application/json", "application/x-msgpack"]
)
def test_ordinary_accept_values_are_served(server: Server, native_file: Path, accept: str) -> None:
    rel = _rel(server, native_file)
    r = httpx.get(
        f"{server.url}/v1/geometry", params={"file_path": rel}, headers={"accept": accept}
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("accept", ["text/html", "image/png", "application/json;q=0", "text/*"])
def test_an_unproducible_accept_gets_406_listing_what_can_be(
    server: Server, native_file: Path, accept: str
) -> None:
    rel = _rel(server, native_file)
    r = httpx.get(
        f"{server.url}/v1/geometry", params={"file_path": rel}, headers={"accept": accept}
    )
    assert r.status_code == 406, r.text
    assert "application/msgpack" in r.json()["detail"]
    assert "application/json" in r.json()["detail"]


def test_the_event_stream_produces_only_its_own_type(server: Server) -> None:
    r = httpx.get(f"{server.url}/v1/events", headers={"accept": "application/json"})
    assert r.status_code == 406
    assert "text/event-stream" in r.json()["detail"]
    with httpx.stream(
        "GET", f"{server.url}/v1/events", headers={"accept": "text/event-stream"}, timeout=10
    ) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")


def test_acceptable_rules() -> None:
    offered = ("application/msgpack", "application/json")
    assert acceptable("", offered)
    assert acceptable("text/html, */*;q=0.1", offered)
    assert acceptable("application/problem+json", offered)
    assert not acceptable("text/html", offered)
    assert not acceptable("*/*;q=0", offered)
    assert not acceptable("application/json;q=0.0, text/plain", offered)
    assert not acceptable("text/*", offered)
    assert acceptable("text/*", ("text/event-stream",))
