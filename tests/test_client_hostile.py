"""The client against a broken or hostile server: every malformed, truncated, lying or
oversized answer becomes ``RemoteConnectionError`` or ``WireFormatError`` (an error status,
``ServerError`` or the class it names), never ``ValueError``, ``MemoryError``,
``RecursionError`` or ``KeyError`` from the decoding itself; nothing larger than
``max_response_bytes`` is allocated. Both clients, on both their drivers (their own
sockets, and an httpx client passed as ``http``), against a real raw-socket server on
127.0.0.1."""

from __future__ import annotations

import asyncio
import gzip
import os
from collections.abc import Iterator
from typing import Any

import httpx
import msgpack
import pytest

from xpcs_io.client import AsyncRemoteHDF5Facade, RemoteHDF5Facade
from xpcs_io.client.core import RetryPolicy
from xpcs_io.errors import RemoteConnectionError, ServerError, WireFormatError

from .clientsupport import RawServer
from .reliability.support import rss_bytes

BAD = (RemoteConnectionError, WireFormatError)
MSGPACK = b"Content-Type: application/msgpack\r\n"
DEEP_JSON = b"[" * 100_000 + b"]" * 100_000
DEEP_MSGPACK = b"\x91" * 100_000 + b"\xc0"


def _ok(body: bytes, ctype: bytes = MSGPACK, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\n" + ctype + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body


def _problem(status: int, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 %d Problem\r\nContent-Type: application/problem+json\r\n" % status
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


def _array(dtype: str, shape: list[Any], data: Any) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data": data}


def _qmap(**arrays: Any) -> bytes:
    good = _array("<f4", [2, 2], b"\0" * 16)
    fields = {"sqmap": good, "dqmap": good, "phis": good, **arrays}
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return packed


# name -> raw answer; each must end as RemoteConnectionError or WireFormatError.
MALFORMED: dict[str, bytes] = {
    "Content-Length -1": b"HTTP/1.1 200 OK\r\n" + MSGPACK + b"Content-Length: -1\r\n\r\n\xc0",
    "Content-Length 10**13": b"HTTP/1.1 200 OK\r\n"
    + MSGPACK
    + b"Content-Length: 10000000000000\r\n\r\n\xc0",
    "Content-Length 2**64": b"HTTP/1.1 200 OK\r\n"
    + MSGPACK
    + b"Content-Length: 18446744073709551616\r\n\r\n",
    "Content-Length abc": b"HTTP/1.1 200 OK\r\n" + MSGPACK + b"Content-Length: abc\r\n\r\n\xc0",
    "Content-Length in Arabic digits": b"HTTP/1.1 200 OK\r\n"
    + MSGPACK
    + "Content-Length: ١٢\r\n\r\n".encode(),
    "short body, then close": b"HTTP/1.1 200 OK\r\n"
    + MSGPACK
    + b"Content-Length: 1000\r\n\r\n\x81\xa1a",
    "no body at all": b"HTTP/1.1 200 OK\r\n" + MSGPACK + b"Content-Length: 50\r\n\r\n",
    "head only, then close": b"HTTP/1.1 200 OK\r\n" + MSGPACK,
    "nothing, then close": b"",
    "status line garbage": b"FOO BAR\r\n\r\n",
    "status 2000": b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    "header without colon": b"HTTP/1.1 200 OK\r\nno colon here\r\nContent-Length: 0\r\n\r\n",
    "chunk size zz": b"HTTP/1.1 200 OK\r\n"
    + MSGPACK
    + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n\xc0\r\n0\r\n\r\n",
    "chunk size -5": b"HTTP/1.1 200 OK\r\n"
    + MSGPACK
    + b"Transfer-Encoding: chunked\r\n\r\n-5\r\n\xc0\r\n0\r\n\r\n",
    "chunk size 2**64": b"HTTP/1.1 200 OK\r\n"
    + MSGPACK
    + b"Transfer-Encoding: chunked\r\n\r\n10000000000000000\r\n\xc0",
    "chunk size line without end": b"HTTP/1.1 200 OK\r\n"
    + MSGPACK
    + b"Transfer-Encoding: chunked\r\n\r\n"
    + b"a" * (1 << 20),
    "chunked body cut short": b"HTTP/1.1 200 OK\r\n"
    + MSGPACK
    + b"Transfer-Encoding: chunked\r\n\r\n10\r\n\x81\xa1",
    "close-delimited body past the cap": b"HTTP/1.0 200 OK\r\n"
    + MSGPACK
    + b"\r\n"
    + b"\xc0" * (3 << 20),
    "gzip that is not gzip": _ok(b"not gzip at all", extra=b"Content-Encoding: gzip\r\n"),
    "gzip bomb past the cap": _ok(
        gzip.compress(b"\0" * (8 << 20)), extra=b"Content-Encoding: gzip\r\n"
    ),
    "not msgpack": _ok(b"\xc1\xc1\xc1"),
    "msgpack with trailing bytes": _ok(b"\xc0\xc0"),
    "msgpack nested 100,000 deep": _ok(DEEP_MSGPACK),
    "JSON nested 100,000 deep": _ok(DEEP_JSON, b"Content-Type: application/json\r\n"),
    "JSON that is not JSON": _ok(b"{'a': NaN", b"Content-Type: application/json\r\n"),
    "a number, not a map": _ok(b"\x05"),
    "a map without the fields": _ok(msgpack.packb({"x": 1})),
    "object dtype": _qmap(sqmap=_array("|O8", [1], b"\0" * 8)),
    "unicode dtype": _qmap(sqmap=_array("<U4", [1], b"\0" * 16)),
    "dtype without byte order": _qmap(sqmap=_array("f4", [1], b"\0" * 4)),
    "huge shape, no data": _qmap(sqmap=_array("<f4", [10**12, 10**12], b"")),
    "negative shape": _qmap(sqmap=_array("<f4", [-1, 4], b"\0" * 16)),
    "65 dimensions": _qmap(sqmap=_array("<f4", [1] * 65, b"\0" * 4)),
    "shape of strings": _qmap(sqmap=_array("<f4", ["2", "2"], b"\0" * 16)),
    "data not bytes": _qmap(sqmap=_array("<f4", [1], "abcd")),
    "maps of the wrong shape": _qmap(sqmap=_array("<f4", [3], b"\0" * 12)),
    "ext type": _ok(b"\xd4\x01\x00"),
    "str claiming 4 GiB": _ok(b"\xdb\xff\xff\xff\xff" + b"x" * 10),
    "map claiming 2**32 entries": _ok(b"\xdf\xff\xff\xff\xff"),
    "Content-Length shorter than the body": b"HTTP/1.1 200 OK\r\n"
    + MSGPACK
    + b"Content-Length: 3\r\n\r\n"
    + _qmap(),
    "two Content-Lengths that differ": b"HTTP/1.1 200 OK\r\n"
    + MSGPACK
    + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n\xc0",
    "chunked and a Content-Length": b"HTTP/1.1 200 OK\r\n"
    + MSGPACK
    + b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n\xc0\r\n",
    "an interim 100 answer only": b"HTTP/1.1 100 Continue\r\n\r\n",
    "a head line of 100 KB": b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
    "304 to a request that was not conditional": b"HTTP/1.1 304 Not Modified\r\n\r\n",
    "closed in the middle of an array": b"HTTP/1.1 200 OK\r\n"
    + MSGPACK
    + b"Content-Length: %d\r\n\r\n" % (len(_qmap()) + 4096)
    + _qmap()[:40],
    "object dtype in a G2-sized array": _qmap(sqmap=_array("|O", [2, 2], b"\0" * 32)),
    "shape that overflows int64": _qmap(sqmap=_array("<f4", [2**62, 2**62], b"")),
}

# name -> (raw answer, the exception its status stands for).
ERRORS: dict[str, tuple[bytes, type[BaseException]]] = {
    "problem+json nested 100,000 deep (500)": (
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/problem+json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(DEEP_JSON) + DEEP_JSON,
        ServerError,
    ),
    "problem+json nested 100,000 deep (404)": (
        b"HTTP/1.1 404 Not Found\r\nContent-Type: application/problem+json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(DEEP_JSON) + DEEP_JSON,
        KeyError,
    ),
    "problem naming a class outside the table": (
        _problem(500, b'{"error": "SystemExit", "detail": "bye!"}'),
        ServerError,
    ),
    "problem with fields of the wrong types": (
        _problem(422, b'{"error": ["KeyError"], "detail": {"a": []}}'),
        ValueError,
    ),
    "error body past the cap": (
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: %d\r\n\r\n" % (3 << 20)
        + b"x" * (3 << 20),
        RemoteConnectionError,
    ),
}

CAP = 2 << 20  # the clients below accept at most 2 MiB


def Hostile() -> RawServer:
    """A raw-socket HTTP server on 127.0.0.1 answering every request with ``.reply``."""
    return RawServer(b"")


@pytest.fixture(scope="module")
def hostile() -> Iterator[RawServer]:
    h = Hostile()
    yield h
    h.close()


RETRY = RetryPolicy(attempts=2, base=0.001)


DRIVERS = ["sockets", "httpx"]


def _sync(url: str, transport: str) -> Any:
    http = httpx.Client(base_url=url, timeout=10) if transport == "httpx" else None
    try:
        with RemoteHDF5Facade(
            url, timeout=10, retry=RETRY, http=http, max_response_bytes=CAP
        ) as api:
            return api.read_qmap("x.hdf5")
    finally:
        if http is not None:
            http.close()


def _async(url: str, transport: str) -> Any:
    async def go() -> Any:
        http = httpx.AsyncClient(base_url=url, timeout=10) if transport == "httpx" else None
        try:
            async with AsyncRemoteHDF5Facade(
                url, timeout=10, retry=RETRY, http=http, max_response_bytes=CAP
            ) as api:
                return await api.read_qmap("x.hdf5")
        finally:
            if http is not None:
                await http.aclose()

    return asyncio.run(go())


CLIENTS = {"sync": _sync, "async": _async}


def _outcome(hostile: RawServer, reply: bytes, client: str, transport: str) -> BaseException | None:
    hostile.reply = reply
    try:
        CLIENTS[client](f"http://127.0.0.1:{hostile.port}", transport)
    except Exception as exc:  # every outcome is classified by the caller
        return exc
    return None


@pytest.mark.parametrize("transport", DRIVERS)
@pytest.mark.parametrize("client", ["sync", "async"])
@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_answers(hostile: RawServer, name: str, client: str, transport: str) -> None:
    got = _outcome(hostile, MALFORMED[name], client, transport)
    assert isinstance(got, BAD), f"{name}: {type(got).__name__}: {got!s:.200}"


@pytest.mark.parametrize("transport", DRIVERS)
@pytest.mark.parametrize("client", ["sync", "async"])
@pytest.mark.parametrize("name", sorted(ERRORS))
def test_hostile_error_answers(hostile: RawServer, name: str, client: str, transport: str) -> None:
    reply, want = ERRORS[name]
    got = _outcome(hostile, reply, client, transport)
    assert type(got) is want, f"{name}: {type(got).__name__}: {got!s:.200}"


@pytest.mark.parametrize("client", ["sync", "async"])
def test_declared_terabytes_allocate_nothing(hostile: RawServer, client: str) -> None:
    before = rss_bytes(os.getpid())
    for _ in range(5):
        got = _outcome(hostile, MALFORMED["Content-Length 10**13"], client, "sockets")
        assert isinstance(got, RemoteConnectionError)
        assert "max_response_bytes" in str(got)
    assert rss_bytes(os.getpid()) - before < 50e6


def test_default_cap_and_its_checks() -> None:
    api = RemoteHDF5Facade("http://127.0.0.1:9")
    assert api.max_response_bytes == 4 << 30
    api.close()
    with pytest.raises(ValueError, match="positive"):
        RemoteHDF5Facade("http://127.0.0.1:9", max_response_bytes=0)
    with pytest.raises(TypeError):
        AsyncRemoteHDF5Facade("http://127.0.0.1:9", max_response_bytes=1.5)  # type: ignore[arg-type]


def test_a_good_answer_under_the_cap_still_reads(hostile: RawServer) -> None:
    good = _qmap()
    hostile.reply = _ok(good)
    for client in CLIENTS.values():
        for transport in DRIVERS:
            q = client(f"http://127.0.0.1:{hostile.port}", transport)
            assert q.sqmap.shape == (2, 2)
