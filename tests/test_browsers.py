"""A server without API keys and web browsers: Host names (DNS rebinding), Origin and the
content type of writes (cross-site requests), on a real server; a server with keys is not
affected."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import numpy as np
import pytest

from xpcs_io import wire
from xpcs_io.server.browsers import BrowserGuardMiddleware, host_name
from xpcs_io.tools.demo import DemoSpec, write_native_file

from .conftest import Server
from .reliability.support import mask_body, serving


def _port(srv: Server) -> int:
    return int(srv.url.rsplit(":", 1)[1])


def _raw(srv: Server, request: bytes) -> tuple[int, bytes]:
    """Send ``request`` as is on a fresh connection; the status and body of the answer."""
    with socket.create_connection(("127.0.0.1", _port(srv)), timeout=30) as c:
        c.sendall(request)
        answer = b""
        while chunk := c.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.fixture
def small(server: Server, workdir: Path) -> str:
    path = write_native_file(workdir / "run.hdf5", DemoSpec(shape=(16, 16), n_delay=6, n_q=3))
    return path.relative_to(server.root).as_posix()


def _versions(srv: Server, rel: str) -> int:
    r = httpx.get(f"{srv.url}/v1/mask/versions", params={"file_path": rel}, timeout=30)
    return len(wire.unpack(r.content)) if r.status_code == 200 else 0


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.0.0.1:{port}", "localhost", "LOCALHOST:{port}", "[::1]", "[::1]:{port}"],
)
def test_loopback_host_names_are_served(server: Server, host: str) -> None:
    r = httpx.get(f"{server.url}/health", headers={"host": host.format(port=_port(server))})
    assert r.status_code == 200


@pytest.mark.parametrize(
    "host",
    [
        "rebind.evil.example",
        "rebind.evil.example:{port}",
        "localhost.evil.example",
        "127.0.0.1.evil.example",
        "10.0.0.1",
        "[fe80::1]:{port}",
    ],
)
def test_foreign_host_names_are_refused(server: Server, small: str, host: str) -> None:
    h = host.format(port=_port(server)).encode()
    for target in (b"/v1/files", b"/v1/geometry?file_path=" + small.encode(), b"/"):
        status, body = _raw(
            server,
            b"GET %s HTTP/1.1\r\nHost: %s\r\nAccept: application/json\r\n"
            b"Connection: close\r\n\r\n" % (target, h),
        )
        assert status == 403, (target, body[:200])
        assert b"PermissionError" in body
        assert b"--allowed-host" in body


def test_cross_site_write_without_content_type_is_refused(server: Server, small: str) -> None:
    body = mask_body(np.zeros((16, 16), dtype="u1"), "from a web page")
    before = _versions(server, small)
    status, answer = _raw(
        server,
        b"POST /v1/mask?file_path=%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
        b"Origin: https://evil.example\r\nSec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: no-cors\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n"
        % (small.encode(), _port(server), len(body))
        + body,
    )
    assert status == 403, answer[:200]
    assert _versions(server, small) == before


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 415),  # no Origin, no type: what a no-cors fetch of an old browser sends
        ({"content-type": "text/plain"}, 415),
        ({"content-type": "application/x-www-form-urlencoded"}, 415),
        ({"content-type": "multipart/form-data; boundary=x"}, 415),
        ({"content-type": "application/msgpack", "origin": "null"}, 403),
        ({"content-type": "application/msgpack", "origin": "http://evil.example"}, 403),
        ({"content-type": "application/msgpack", "origin": "http://127.0.0.1:1"}, 403),
        ({"content-type": "application/msgpack", "sec-fetch-site": "same-site"}, 403),
    ],
)
def test_simple_or_foreign_writes_are_refused(
    server: Server, small: str, headers: dict[str, str], status: int
) -> None:
    body = mask_body(np.zeros((16, 16), dtype="u1"))
    before = _versions(server, small)
    r = httpx.post(
        f"{server.url}/v1/mask",
        params={"file_path": small},
        content=body,
        headers=headers,
        timeout=30,
    )
    assert r.status_code == status, r.text[:300]
    assert r.headers["content-type"] == "application/problem+json"
    assert _versions(server, small) == before


def test_same_origin_writes_and_the_quick_look_page_work(server: Server, small: str) -> None:
    origin = f"http://127.0.0.1:{_port(server)}"
    page = httpx.get(f"{server.url}/", headers={"origin": origin})
    assert page.status_code == 200
    assert "<html" in page.text.lower()
    for path in ("/static/quicklook.js", "/v1/files", "/v1/pool/stats"):
        r = httpx.get(
            f"{server.url}{path}", headers={"origin": origin, "sec-fetch-site": "same-origin"}
        )
        assert r.status_code == 200, path
    body = mask_body(np.ones((16, 16), dtype="u1"), "same origin")
    before = _versions(server, small)
    r = httpx.post(
        f"{server.url}/v1/mask",
        params={"file_path": small},
        content=body,
        headers={"content-type": "application/msgpack", "origin": origin},
        timeout=30,
    )
    assert r.status_code == 201, r.text[:300]
    assert _versions(server, small) == before + 1
    # A bodiless state change without Origin (curl, scripts) still works.
    assert httpx.post(f"{server.url}/v1/pool/clear").status_code == 204


def test_allowed_host_flag_and_setting(tmp_path: Path) -> None:
    write_native_file(tmp_path / "run.hdf5", DemoSpec(shape=(8, 8), n_delay=4, n_q=2))
    with serving(
        tmp_path,
        tmp_path / "flag.log",
        args=("--allowed-host", "viewer.lab", "--allowed-host", "xpcs.local"),
    ) as srv:
        for host, want in (("viewer.lab", 200), ("XPCS.local:99", 200), ("evil.lab", 403)):
            assert httpx.get(f"{srv.url}/health", headers={"host": host}).status_code == want
    with serving(
        tmp_path, tmp_path / "env.log", env={"XPCS_IO_ALLOWED_HOSTS": "viewer.lab, other.lab"}
    ) as srv:
        for host, want in (("other.lab", 200), ("viewer.lab:8000", 200), ("x.lab", 403)):
            assert httpx.get(f"{srv.url}/health", headers={"host": host}).status_code == want


def test_servers_with_keys_do_not_check_browsers(tmp_path: Path) -> None:
    path = write_native_file(tmp_path / "run.hdf5", DemoSpec(shape=(16, 16), n_delay=4, n_q=2))
    body = mask_body(np.ones((16, 16), dtype="u1"))
    with serving(tmp_path, tmp_path / "keys.log", env={"XPCS_IO_API_KEYS": "wk:write"}) as srv:
        r = httpx.post(
            f"{srv.url}/v1/mask",
            params={"file_path": path.name},
            content=body,
            headers={"x-api-key": "wk", "host": "replica:8000", "origin": "http://proxy.lab"},
            timeout=30,
        )
        assert r.status_code == 201, r.text[:300]
        # Without the key the same browser request is 401, whatever its Host.
        r = httpx.get(f"{srv.url}/v1/files", headers={"host": "evil.example"})
        assert r.status_code == 401


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("127.0.0.1:8000", "127.0.0.1"),
        ("[::1]:8000", "::1"),
        ("[::1]", "::1"),
        ("LocalHost.", "localhost"),
        ("example.org:x", "example.org:x"),
    ],
)
def test_host_name(value: str, name: str) -> None:
    assert host_name(value) == name


def test_guard_accepts_ip_literals_only_on_public_servers() -> None:
    async def app(scope: object, receive: object, send: object) -> None:  # pragma: no cover
        pass

    local = BrowserGuardMiddleware(app, bind_host="127.0.0.1", allowed=frozenset())
    public = BrowserGuardMiddleware(app, bind_host="0.0.0.0", allowed=frozenset({"xpcs.lab"}))
    anything = BrowserGuardMiddleware(app, bind_host="127.0.0.1", allowed=frozenset({"*"}))
    assert local.host_allowed("127.0.0.2:80")
    assert not local.host_allowed("192.168.1.5")
    assert public.host_allowed("192.168.1.5:8000")
    assert public.host_allowed("xpcs.lab")
    assert not public.host_allowed("evil.example")
    assert anything.host_allowed("evil.example")
