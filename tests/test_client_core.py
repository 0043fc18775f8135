"""``xpcs_io.client.core`` through both clients: which failures are retried (attempts counted
on a real raw-socket server), base URLs with or without ``/v1`` and a trailing slash, and the
calls both clients must offer."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from xpcs_io.client import AsyncRemoteHDF5Facade, RemoteHDF5Facade, RetryPolicy
from xpcs_io.errors import RemoteConnectionError, ServerError

from .clientsupport import CLIENTS, RESET, RawServer, answer, run
from .conftest import Server

OK_G2 = b"\x80"  # an empty msgpack map: decodes, then fails as a G2 answer


def _serve(raw: list[RawServer], reply: Callable[[int], bytes | None] | bytes) -> RawServer:
    srv = RawServer(reply)
    raw.append(srv)
    return srv


RETRY = RetryPolicy(attempts=3, base=0.001)


def _status(code: int) -> bytes:
    body = b'{"error": null, "detail": "try later"}'
    return answer(body, f"{code} X", b"Content-Type: application/problem+json\r\n")


# answer -> attempts a read makes with RETRY (3 allowed).
TRANSIENT: dict[str, bytes | None] = {
    "closed before an answer": None,
    "reset before an answer": RESET,
    "502": _status(502),
    "503": _status(503),
    "504": _status(504),
    "body cut short by a close": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc",
}
PERMANENT = {
    "400": _status(400),
    "404": _status(404),
    "422": _status(422),
    "500": _status(500),
    "not HTTP": b"SSH-2.0-OpenSSH\r\n\r\n",
    "bad chunk size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "body above max_response_bytes": b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n",
}


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("name", sorted(TRANSIENT))
def test_transient_failures_are_retried(raw: list[RawServer], client: str, name: str) -> None:
    srv = _serve(raw, lambda n: TRANSIENT[name])
    with pytest.raises((RemoteConnectionError, ServerError)):
        run(client, srv.url, lambda api: api.read_g2_data("f.hdf5"), retry=RETRY)
    assert len(srv.requests) == 3


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("name", sorted(PERMANENT))
def test_permanent_failures_fail_at_once(raw: list[RawServer], client: str, name: str) -> None:
    srv = _serve(raw, PERMANENT[name])
    with pytest.raises(Exception) as info:
        run(
            client,
            srv.url,
            lambda api: api.read_g2_data("f.hdf5"),
            retry=RETRY,
            max_response_bytes=1 << 20,
        )
    assert not isinstance(info.value, AssertionError)
    assert len(srv.requests) == 1


@pytest.mark.parametrize("client", CLIENTS)
def test_a_timeout_is_retried(raw: list[RawServer], client: str) -> None:
    srv = _serve(raw, lambda n: time.sleep(2))  # answers nothing, then closes
    with pytest.raises(RemoteConnectionError, match="timed out"):
        run(client, srv.url, lambda api: api.read_g2_data("f.hdf5"), retry=RETRY, timeout=0.2)
    # The raw server's thread records the last request on its own time: poll (bounded).
    for _ in range(200):
        if len(srv.requests) >= 3:
            break
        time.sleep(0.05)
    assert len(srv.requests) == 3


@pytest.mark.parametrize("client", CLIENTS)
def test_a_retry_that_succeeds_returns_the_answer(raw: list[RawServer], client: str) -> None:
    srv = _serve(
        raw,
        lambda n: (
            _status(503)
            if n < 2
            else answer(b'["a"]', headers=b"Content-Type: application/json\r\n")
        ),
    )
    assert run(client, srv.url, lambda api: api.list_files(), retry=RETRY) == ["a"]
    assert len(srv.requests) == 3


@pytest.mark.parametrize("client", CLIENTS)
def test_a_write_is_not_retried_on_503(raw: list[RawServer], client: str) -> None:
    srv = _serve(raw, _status(503))
    with pytest.raises(ServerError):
        run(client, srv.url, lambda api: api.clear_pool(), retry=RETRY)
    assert len(srv.requests) == 1


@pytest.mark.parametrize("client", CLIENTS)
def test_tls_failure_is_not_retried(raw: list[RawServer], client: str) -> None:
    srv = RawServer(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", first=True)
    raw.append(srv)  # answers plain HTTP to the TLS handshake
    url = f"https://127.0.0.1:{srv.port}"
    with pytest.raises(RemoteConnectionError) as info:
        run(client, url, lambda api: api.read_g2_data("f.hdf5"), retry=RETRY, compression="none")
    assert "SSL" in str(info.value)
    assert srv.connections == 1


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://127.0.0.1:8000", "localhost"])
def test_a_url_without_http_scheme_fails_at_once(client: str, url: str) -> None:
    maker = RemoteHDF5Facade if client == "sync" else AsyncRemoteHDF5Facade
    with pytest.raises(ValueError, match="http:// or https://"):
        maker(url)


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
def test_base_url_forms(server: Server, native_file: Path, client: str, suffix: str) -> None:
    rel = native_file.relative_to(server.root).as_posix()
    geo = run(client, server.url + suffix, lambda api: api.read_geometry_metadata(rel))
    assert geo.shape == (48, 40)
    files = run(client, server.url + suffix, lambda api: api.list_files(rel.split("/")[0]))
    assert [f["path"] for f in files] == [rel]


def test_both_clients_offer_the_same_methods() -> None:
    def public(cls: type) -> dict[str, inspect.Signature]:
        return {
            n: inspect.signature(getattr(cls, n))
            for n in dir(cls)
            if not n.startswith("_") and callable(getattr(cls, n))
        }

    sync, aio = public(RemoteHDF5Facade), public(AsyncRemoteHDF5Facade)
    assert set(sync) - {"close"} == set(aio) - {"aclose"}
    for name in set(sync) & set(aio):
        assert sync[name].parameters == aio[name].parameters, name
        if name != "watch":
            assert sync[name].return_annotation == aio[name].return_annotation, name
        if name != "exchange":
            assert inspect.iscoroutinefunction(getattr(AsyncRemoteHDF5Facade, name)) or (
                inspect.isasyncgenfunction(getattr(AsyncRemoteHDF5Facade, name))
            ), name
