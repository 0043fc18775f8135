"""``xpcs_io.client.transport``: the one HTTP/1.1 parser both drivers feed, the request
bytes, base URLs, Content-Encoding, and the Dechunker, on bytes split at every size."""

from __future__ import annotations

import gzip
import random

import numpy as np
import pytest

from xpcs_io.client.transport import (
    ContentEncodingError,
    Dechunker,
    Origin,
    ProtocolError,
    Request,
    ResponseReader,
    ResponseTooLargeError,
    TransportError,
    decode_content,
)


def _read(wire: bytes, step: int, *, limit: int = 1 << 30, method: str = "GET") -> ResponseReader:
    """Feed ``wire`` in pieces of ``step`` bytes as a socket would, then the close."""
    reader = ResponseReader(method, limit)
    pos = 0
    while not reader.done:
        target = reader.buffer()
        n = min(len(target), step, len(wire) - pos)
        target[:n] = wire[pos : pos + n]
        pos += n
        reader.received(n)
    return reader


@pytest.mark.parametrize("step", [1, 7, 4096, 1 << 20])
def test_length_chunked_and_close_framing(step: int) -> None:
    body = bytes(range(256)) * 400
    length = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-A: 1\r\nx-a: 2\r\n\r\n" % len(body)
    got = _read(length + body, step)
    assert got.response().body.tobytes() == body
    assert got.response().headers["x-a"] == "1, 2"
    assert got.keep_alive
    pieces = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    chunks = b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in pieces)
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    assert _read(chunked, step).response().body.tobytes() == body
    closed = _read(b"HTTP/1.0 200 OK\r\n\r\n" + body, step)
    assert closed.response().body.tobytes() == body
    assert not closed.keep_alive


def test_a_length_body_is_one_writable_buffer() -> None:
    wire = b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n" + b"\x01" * 300_000
    body = _read(wire, 1 << 20).response().body
    assert isinstance(body, np.ndarray)
    assert body.flags.writeable
    assert body.nbytes == 300_000


def test_no_body_statuses_and_head() -> None:
    assert _read(b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n", 100).response().body == b""
    head = _read(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", 100, method="HEAD")
    assert head.response().status == 200


def test_bytes_past_the_length_end_keep_alive() -> None:
    got = _read(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", 100)
    assert got.response().body.tobytes() == b"ok"
    assert not got.keep_alive  # the extra bytes would be read as the next answer


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Le", "inside its head"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 101 Switching\r\n\r\n", "unexpected status"),
        (b"SPDY/3 200 OK\r\n\r\n", "unexpected status"),
        (b"HTTP/1.1 200 OK\r\n: empty name\r\n\r\n", "bad header"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 20_000, "head too large"),
    ],
)
def test_malformed_answers_are_protocol_errors(wire: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match) as info:
        _read(wire, 1000)
    assert not info.value.transient  # never retried


def test_nothing_at_all_is_a_stale_close() -> None:
    with pytest.raises(TransportError) as info:
        _read(b"", 10)
    assert info.value.stale
    assert info.value.transient


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", "ended after 3 of 10"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", "ended early"),
    ],
)
def test_a_body_cut_short_is_transient(wire: bytes, match: str) -> None:
    with pytest.raises(TransportError, match=match) as info:
        _read(wire, 1000)
    assert info.value.transient
    assert not info.value.stale


def test_limits_are_checked_before_allocating() -> None:
    with pytest.raises(ResponseTooLargeError, match="max_response_bytes"):
        _read(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000000\r\n\r\n", 100, limit=1000)
    with pytest.raises(ResponseTooLargeError):
        _read(b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * 2000, 100, limit=1000)
    with pytest.raises(ResponseTooLargeError):
        _read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n", 100, limit=1000)


def test_request_bytes() -> None:
    req = Request("POST", "http://h/v1/mask", "/v1/mask?a=1", {"x-k": "v"}, [b"abc"])
    (data,) = req.encode("h:8000")
    assert data == (
        b"POST /v1/mask?a=1 HTTP/1.1\r\nhost: h:8000\r\nx-k: v\r\ncontent-length: 3\r\n\r\nabc"
    )
    big = Request("POST", "http://h/", "/", {}, [b"x" * 70_000])
    assert len(big.encode("h")) == 2  # a large body is not copied into the head
    assert b"content-length" not in Request("GET", "u", "/", {}).encode("h")[0]


@pytest.mark.parametrize(
    "url",
    [
        "http://example.org:8000",
        "http://example.org:8000/",
        "http://example.org:8000/v1",
        "http://example.org:8000/v1/",
    ],
)
def test_base_url_forms(url: str) -> None:
    origin = Origin.parse(url)
    assert origin.url == "http://example.org:8000"
    assert origin.authority == "example.org:8000"
    assert Origin.parse("https://x.org/xpcs/v1/").url == "https://x.org/xpcs"
    assert Origin.parse("http://[::1]:80/").authority == "[::1]"


@pytest.mark.parametrize(
    "url", ["127.0.0.1:8000", "localhost:8000/v1", "ftp://x.org", "http://", "//x.org", ""]
)
def test_base_url_without_a_usable_scheme_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="base_url"):
        Origin.parse(url)


def test_content_encoding_is_undone_within_the_limit() -> None:
    body = np.frombuffer(gzip.compress(b"abc" * 1000), np.uint8)
    assert decode_content({"content-encoding": "gzip"}, body, 1 << 20).tobytes() == b"abc" * 1000
    with pytest.raises(ResponseTooLargeError):
        decode_content({"content-encoding": "gzip"}, body, 100)
    with pytest.raises(ContentEncodingError):
        decode_content({"content-encoding": "gzip"}, b"not gzip", 1 << 20)
    with pytest.raises(ContentEncodingError):
        decode_content({"content-encoding": "br"}, b"x", 1 << 20)
    assert decode_content({}, b"x", 1) == b"x"


def test_dechunker_reassembles_many_chunks_split_anywhere() -> None:
    rng = random.Random(3)
    pieces = [bytes([i % 251]) * rng.randint(1, 3000) for i in range(2000)]
    wire = b"".join(b"%x;ext=1\r\n" % len(p) + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"
    body = Dechunker()
    pos, done = 0, False
    while not done:
        step = rng.randint(1, 70_000)
        done = body.feed(wire[pos : pos + step])
        pos += step
    assert pos >= len(wire)
    assert bytes(body.body) == b"".join(pieces)
    # The last chunk is complete only with its CRLF (else it would be left in the socket).
    partial = Dechunker()
    assert not partial.feed(b"3\r\nabc\r\n0\r\n")
    assert partial.feed(b"\r\n")
    assert bytes(partial.body) == b"abc"
    with pytest.raises(ProtocolError, match="bad chunk size"):
        Dechunker().feed(b"zz\r\n")


def test_dechunker_takes_payloads_in_place_and_lines_by_feed() -> None:
    """A chunk's payload is written straight into the body (``space``/``taken``); only
    size lines and what comes with them go through ``feed``; the buffer grows as needed."""
    big = bytes(range(256)) * 4096  # 1 MiB: the buffer starts smaller
    body = Dechunker()
    assert body.space() is None  # a size line is due first
    assert not body.feed(b"%x\r\n" % len(big))
    space = body.space()
    assert space is not None
    assert len(space) == len(big)
    space[:10] = big[:10]
    body.taken(10)
    rest = body.space()
    assert rest is not None
    assert len(rest) == len(big) - 10
    rest[:] = big[10:]
    body.taken(len(rest))
    assert body.space() is None
    assert not body.feed(b"\r\n4\r\ntail\r\n0\r\n")
    assert body.feed(b"\r\n")
    assert bytes(body.body) == big + b"tail"
    with pytest.raises(ProtocolError, match="longer than its size line"):
        Dechunker().feed(b"2\r\nabc\r\n")
