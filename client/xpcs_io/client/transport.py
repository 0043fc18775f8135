"""HTTP/1.1 as bytes, without I/O: the request a call becomes and the response parser both
drivers feed.

How the client package is split:

- ``calls`` / ``viewer_calls``: what each facade method sends (path, parameters, body) and how
  the decoded message becomes its result. No HTTP, no I/O.
- ``core``: everything about one call between facade and bytes: headers, the result cache,
  array compression, retries, an answer turned into a result or an exception. No I/O.
- ``transport`` (this module): requests to bytes and bytes to responses, framing and size
  limits. No policy, no I/O.
- ``sync`` / ``aio``: the two drivers. They only move bytes between sockets (or an httpx
  client) and the objects of this module.

``ResponseReader`` hands out the buffer the next bytes must land in (``buffer()``) and is told
how many did (``received(n)``; 0 means the peer closed). A Content-Length body is received
straight into one preallocated numpy buffer, which becomes the decoded arrays' memory: a 67 MB
q-map is copied once, socket to buffer. Nothing larger than the reader's ``limit`` is ever
allocated: a Content-Length above it, a chunked or close-delimited body growing past it, a
gzip body inflating past it are refused as they are seen. A ``BodyWatcher`` the reader is
given may look at the body as it grows (``piecedecode`` decompresses arrays meanwhile).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import numpy as np
import numpy.typing as npt

from xpcs_io.client.bodypool import BODIES

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "BodyWatcher",
    "Dechunker",
    "Origin",
    "ProtocolError",
    "Request",
    "Response",
    "ResponseReader",
    "ResponseTooLargeError",
    "TransportError",
    "chunk_size",
    "decode_content",
    "parse_length",
]

#: The largest response body a client accepts unless told otherwise: 4 GiB (an Eiger 16M
#: q-map with its masks is about 0.5 GB).
DEFAULT_MAX_RESPONSE_BYTES = 4 << 30

_HEAD_BUFFER = 64 * 1024  # also the largest response head accepted
_SCRATCH = 256 * 1024  # chunked and close-delimited bodies are received through this
_MAX_CHUNK_LINE = 1024
_PROXY_VARS = ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


class TransportError(httpx.TransportError):
    """An exchange that ended below HTTP semantics (no complete, well-formed answer); an
    ``httpx.TransportError`` so code that inspects a ``RemoteConnectionError``'s cause keeps
    working whichever driver ran.

    ``sent``: the request may have reached the server (False: it certainly did not, so even
    a write may be resent). ``transient``: trying again may succeed (a refused, reset or
    timed-out connection; False for answers that are not HTTP, TLS failures, sizes above the
    limit). ``stale``: a kept-alive connection the server had closed before any byte of an
    answer (resent once at once, on a fresh connection).
    """

    def __init__(
        self, message: str, *, sent: bool = True, transient: bool = True, stale: bool = False
    ) -> None:
        super().__init__(message)
        self.sent = sent
        self.transient = transient
        self.stale = stale


class ProtocolError(TransportError):
    """The server's bytes are not an HTTP/1.1 answer this parser accepts (never retried:
    the same server would send the same bytes)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=False)


class ResponseTooLargeError(ProtocolError):
    """A response body larger than the client's ``max_response_bytes``."""


class ContentEncodingError(ProtocolError):
    """A body whose Content-Encoding is unknown or does not match its bytes."""


@dataclass(frozen=True)
class Origin:
    """Where a client's requests go: scheme, host, port and path prefix of its base URL."""

    scheme: str
    host: str
    port: int
    prefix: str

    @staticmethod
    def parse(base_url: str) -> Origin:
        """The origin of ``base_url``; a trailing slash and a trailing ``/v1`` are dropped
        (the calls' paths start with ``/v1``).

        Raises:
            ValueError: no scheme, a scheme other than http and https, or no host.
        """
        if not isinstance(base_url, str):
            raise TypeError(f"base_url must be a string, got {type(base_url).__name__}")
        parts = urlsplit(base_url.strip())
        if parts.scheme not in ("http", "https") or "://" not in base_url:
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r:.80}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise ValueError(f"base_url has a bad port: {base_url!r:.80}") from exc
        if not parts.hostname:
            raise ValueError(f"base_url names no host: {base_url!r:.80}")
        prefix = parts.path.rstrip("/")
        prefix = prefix.removesuffix("/v1")
        return Origin(parts.scheme, parts.hostname, port, prefix.rstrip("/"))

    @property
    def url(self) -> str:
        """The base URL, normalised (no trailing slash, no ``/v1``)."""
        return f"{self.scheme}://{self.authority}{self.prefix}"

    @property
    def authority(self) -> str:
        """The Host header: host, and port unless it is the scheme's default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    def plain_sockets(self) -> bool:
        """Whether the client's own sockets can serve this origin: plain http and no proxy
        configured (TLS and proxies go through httpx)."""
        return self.scheme == "http" and not any(os.environ.get(v) for v in _PROXY_VARS)


@dataclass(frozen=True)
class Request:
    """One HTTP request: ``target`` is the origin-form path and query, ``url`` the absolute
    URL of the same resource."""

    method: str
    url: str
    target: str
    headers: dict[str, str]
    body: list[bytes | memoryview] = field(default_factory=list)

    def content(self) -> bytes:
        """The whole body as one bytes object."""
        return b"".join(self.body)

    def encode(self, authority: str) -> list[bytes | memoryview]:
        """The request as bytes to send in order: the head (with Host and Content-Length),
        then the body; a small body is joined to the head (one packet)."""
        size = sum(len(c) for c in self.body)
        lines = [f"{self.method} {self.target} HTTP/1.1", f"host: {authority}"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        if self.body or self.method in ("POST", "PUT", "PATCH"):
            lines.append(f"content-length: {size}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if size < 65536:
            return [b"".join([head, *self.body])]
        return [head, *self.body]


@dataclass
class Response:
    """A complete answer: status, headers (names in lower case) and the whole body."""

    status: int
    headers: dict[str, str]
    body: Any  # a uint8 numpy array or bytes
    watcher: BodyWatcher | None = None  # what looked at the body while it arrived


def parse_length(value: bytes | str) -> int:
    """A Content-Length value as an int.

    Raises:
        ProtocolError: not a plain non-negative decimal number.
    """
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        raise ProtocolError(f"bad Content-Length {text[:40]!r}")
    return int(text)


def check_length(n: int, limit: int) -> None:
    """Refuse a body of ``n`` bytes above ``limit`` before anything is allocated for it.

    Raises:
        ResponseTooLargeError: ``n`` > ``limit``.
    """
    if n > limit:
        raise ResponseTooLargeError(
            f"the response body has {n:,} bytes, more than max_response_bytes={limit:,}"
        )


def chunk_size(line: bytes) -> int:
    """The size on a chunk-size line of a chunked body (extensions after ';' ignored).

    Raises:
        ProtocolError: not a hexadecimal number of at most 16 digits.
    """
    text = line.split(b";", 1)[0].strip()
    if not text or len(text) > 16 or text.strip(b"0123456789abcdefABCDEF"):
        raise ProtocolError(f"bad chunk size {line[:40]!r}")
    return int(text, 16)


class Dechunker:
    """Decodes a chunked HTTP body into one growing buffer as its bytes arrive.

    A chunk's payload is received straight into place: ``space()`` is where the rest of the
    current chunk goes and ``taken(n)`` says ``n`` bytes landed there. Chunk-size lines, and
    whatever arrives with them, go through ``feed`` (a copy). A many-file answer streamed in
    chunks of megabytes is thus copied once by the kernel, as a Content-Length answer is;
    the buffer grows by doubling, so growing costs at most one more copy of the body.
    ``body`` is the payload (a view of the buffer) once ``done``.
    """

    __slots__ = ("_left", "_line", "_state", "_store", "done", "limit", "size")

    def __init__(self, limit: int = DEFAULT_MAX_RESPONSE_BYTES) -> None:
        self._store = np.empty(_SCRATCH, dtype=np.uint8)
        self.size = 0
        self._left = 0  # payload bytes of the current chunk still to come
        self._line = b""  # an unfinished line (a chunk size, or the CRLF after a payload)
        self._state = "size"  # the line expected next: "size", "crlf" or "trailer"
        self.done = False
        self.limit = limit

    @property
    def body(self) -> npt.NDArray[np.uint8]:
        """The payload received so far (all of it once ``done``)."""
        return self._store[: self.size]

    def space(self) -> memoryview | None:
        """Where the rest of the current chunk's payload goes, or None while a line is due."""
        if self.done or not self._left:
            return None
        self._reserve(self._left)
        return self._store.data[self.size : self.size + self._left]

    def taken(self, n: int) -> None:
        """``n`` payload bytes were written into the last ``space()``."""
        self.size += n
        self._left -= n
        if not self._left:
            self._state = "crlf"

    def feed(self, data: bytes | bytearray | memoryview) -> bool:
        """Add ``data``; True when the body is complete (trailers are skipped).

        Raises:
            ProtocolError: a malformed chunk-size line, or a chunk not followed by CRLF.
            ResponseTooLargeError: the body grows past ``limit``.
        """
        view = memoryview(data).cast("B")
        pos, end = 0, len(view)
        while pos < end and not self.done:
            if self._left:
                n = min(self._left, end - pos)
                self._reserve(n)
                self._store.data[self.size : self.size + n] = view[pos : pos + n]
                pos += n
                self.taken(n)
                continue
            window = self._line + bytes(view[pos : pos + _MAX_CHUNK_LINE])
            cut = window.find(b"\r\n")
            if cut < 0:
                if len(window) > _MAX_CHUNK_LINE:
                    raise ProtocolError("chunk-size line too long")
                self._line = window
                pos = end
                continue
            pos += cut + 2 - len(self._line)
            self._line = b""
            self._line_read(window[:cut])
        return self.done

    def _line_read(self, line: bytes) -> None:
        if self._state == "crlf":
            if line:
                raise ProtocolError("a chunk's payload is longer than its size line says")
            self._state = "size"
        elif self._state == "size":
            size = chunk_size(line)
            if size == 0:
                self._state = "trailer"
                return
            check_length(self.size + size, self.limit)
            self._left = size
        elif not line:  # the empty line after the last chunk (and any trailers)
            self.done = True

    def _reserve(self, n: int) -> None:
        need = self.size + n
        if need > len(self._store):
            grown = np.empty(max(need, 2 * len(self._store)), dtype=np.uint8)
            grown[: self.size] = self._store[: self.size]
            self._store = grown


class BodyWatcher(Protocol):
    """Looks at a body while it arrives (``piecedecode.PieceDecoder`` is one)."""

    def advance(self, body: npt.NDArray[np.uint8]) -> None:
        """The body received so far; its earlier bytes are as they were at the last call.
        Must not raise."""


class Bar(Protocol):
    """What a progress bar offers the reader (tqdm does)."""

    def update(self, n: int) -> Any: ...  # pragma: no cover

    def close(self) -> Any: ...  # pragma: no cover


class ResponseReader:
    """Parses one HTTP/1.1 response from the bytes a driver receives into ``buffer()``.

    ``progress(length)`` is asked for a bar once the head is read (length None when the body
    is not Content-Length framed). ``done`` turns true once the response is complete; then
    ``response()`` gives it.

    Raises (from ``received``/``feed``/``start``):
        TransportError: the peer closed before any byte of an answer (``stale``), or
            within the body.
        ProtocolError: a malformed head, chunk or length.
        ResponseTooLargeError: a body above ``limit`` bytes.
    """

    def __init__(
        self,
        method: str,
        limit: int = DEFAULT_MAX_RESPONSE_BYTES,
        progress: Callable[[int | None], Bar | None] | None = None,
        watch: Callable[[int, dict[str, str]], BodyWatcher | None] | None = None,
    ) -> None:
        self.method = method
        self.limit = limit
        self.progress = progress
        self.watch = watch
        self._watcher: BodyWatcher | None = None
        self.done = False
        self.status = 0
        self.headers: dict[str, str] = {}
        self.keep_alive = False
        self._head = bytearray(_HEAD_BUFFER)
        self._filled = 0
        self._framing = ""  # "", then "none", "length", "chunked" or "close"
        self._body: Any = None
        self._view: memoryview | None = None
        self._got = 0
        self._scratch: memoryview | None = None
        self._dechunk: Dechunker | None = None
        self._direct = False  # the last buffer() was a chunk's payload space
        self._bar: Bar | None = None

    # ------------------------------------------------------------------ what drivers call

    @property
    def started(self) -> bool:
        """Whether any byte of the answer has arrived."""
        return self._filled > 0

    def buffer(self) -> memoryview:
        """Where the next received bytes must be written (never empty while not done)."""
        if not self._framing:
            return memoryview(self._head)[self._filled :]
        if self._framing == "length":
            assert self._view is not None
            return self._view[self._got :]
        if self._dechunk is not None and (space := self._dechunk.space()) is not None:
            self._direct = True
            return space
        if self._scratch is None:
            self._scratch = memoryview(bytearray(_SCRATCH))
        return self._scratch

    def received(self, n: int) -> None:
        """``n`` bytes were written into the last ``buffer()``; 0: the peer closed."""
        if not self._framing:
            self._head_received(n)
        elif self.done:
            if n:
                raise ProtocolError("response body longer than its Content-Length")
        elif n == 0:
            self._eof()
        elif self._framing == "length":
            self._got += n
            self._advance(n)
            if self._got == len(self._body):
                self._finish()
        elif self._direct:
            assert self._dechunk is not None
            self._direct = False
            self._dechunk.taken(n)
            self._advance(n)
        else:
            assert self._scratch is not None
            self._more(self._scratch[:n])

    def feed(self, data: bytes | memoryview) -> None:
        """Add body bytes that arrived as an object (a driver that cannot receive into a
        buffer): copies them into ``buffer()``.

        Raises:
            ProtocolError: more bytes than Content-Length announced.
        """
        view = memoryview(data)
        while len(view):
            if self.done:
                raise ProtocolError("response body longer than its Content-Length")
            target = self.buffer()
            n = min(len(target), len(view))
            target[:n] = view[:n]
            self.received(n)
            view = view[n:]

    def start(self, status: int, headers: dict[str, str]) -> None:
        """Take a head parsed elsewhere (an httpx response); the raw body follows by ``feed``
        and ``received(0)`` at its end."""
        self.status = status
        self.headers = headers
        length = headers.get("content-length")
        self._begin_body("length" if length is not None else "close", length, memoryview(b""))

    def response(self) -> Response:
        """The complete response."""
        assert self.done
        body = self._body
        if isinstance(body, bytearray):
            body = np.frombuffer(body, dtype=np.uint8)
        return Response(self.status, self.headers, body, self._watcher)

    # ------------------------------------------------------------------ the head

    def _head_received(self, n: int) -> None:
        if n == 0:
            if self._filled == 0:
                msg = "the server closed the connection without answering"
                raise TransportError(msg, stale=True)
            raise ProtocolError("the answer ended inside its head")
        start = max(0, self._filled - 3)
        self._filled += n
        end = self._head.find(b"\r\n\r\n", start, self._filled)
        if end < 0:
            if self._filled == len(self._head):
                raise ProtocolError("response head too large")
            return
        self._parse_head(bytes(self._head[:end]))
        rest = memoryview(self._head)[end + 4 : self._filled]
        self._begin_body(self._framing_of(), self.headers.get("content-length"), rest)

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        try:
            version, status_text = lines[0].split(b" ", 2)[:2]
            if not (len(status_text) == 3 and status_text.isdigit()):
                raise ValueError(status_text)
            status = int(status_text)
        except ValueError:
            raise ProtocolError(f"bad status line {lines[0][:80]!r}") from None
        if not 200 <= status <= 599 or not version.startswith(b"HTTP/1."):
            raise ProtocolError(f"unexpected status line {lines[0][:80]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name.strip():
                raise ProtocolError(f"bad header line {line[:80]!r}")
            key = name.strip().lower().decode("latin-1")
            text = value.strip().decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        self.status = status
        self.headers = headers
        self.keep_alive = (
            version == b"HTTP/1.1" and headers.get("connection", "").lower() != "close"
        )

    def _framing_of(self) -> str:
        if self.method == "HEAD" or self.status in (204, 304):
            return "none"
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            return "chunked"
        if "content-length" in self.headers:
            return "length"
        return "close"

    # ------------------------------------------------------------------ the body

    def _begin_body(self, framing: str, length_text: str | None, rest: memoryview) -> None:
        self._framing = framing
        length = None
        if framing == "length":
            assert length_text is not None
            length = parse_length(length_text)
            check_length(length, self.limit)
            self._body = BODIES.take(length)
            self._view = self._body.data
        elif framing == "chunked":
            self._dechunk = Dechunker(self.limit)
        elif framing == "close":
            self.keep_alive = False
            self._body = bytearray()
        else:
            self._body = b""
        if self.progress is not None:
            self._bar = self.progress(length)
        if self.watch is not None and framing != "none":
            self._watcher = self.watch(self.status, self.headers)
        if framing == "none" or (framing == "length" and length == 0):
            self.keep_alive = self.keep_alive and not len(rest)
            self._finish()
        elif len(rest):
            if framing == "length":
                assert self._view is not None
                assert length is not None
                if len(rest) > length:
                    self.keep_alive = False  # bytes after the body: never reuse this socket
                    rest = rest[:length]
                self._view[: len(rest)] = rest
                self.received(len(rest))
            else:
                self._more(rest)

    def _more(self, data: memoryview) -> None:
        if self._dechunk is not None:
            if self._dechunk.feed(data):
                self._body = self._dechunk.body
                self._finish()
        else:
            check_length(len(self._body) + len(data), self.limit)
            self._body += data
        self._advance(len(data))

    def _eof(self) -> None:
        # A connection lost mid-body: the answer may come whole on a second try.
        if self._framing == "length":
            raise TransportError(f"the body ended after {self._got} of {len(self._body)} bytes")
        if self._framing == "chunked":
            raise TransportError("the chunked body ended early")
        self._finish()

    def _advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)
        if self._watcher is not None:
            if self._dechunk is not None:
                self._watcher.advance(self._dechunk.body)
            elif self._framing == "length":
                self._watcher.advance(self._body[: self._got])
            else:  # a bytearray that grows: the watcher keeps no view of it
                self._watcher.advance(np.frombuffer(self._body, np.uint8))

    def _finish(self) -> None:
        self.done = True
        if self._bar is not None:
            self._bar.close()


def decode_content(headers: dict[str, str], body: Any, limit: int) -> Any:
    """The body with its Content-Encoding (gzip or deflate) undone, at most ``limit`` bytes.

    Raises:
        ContentEncodingError: an unknown encoding, or bytes that do not decode.
        ResponseTooLargeError: the decoded body would pass ``limit``.
    """
    coding = headers.get("content-encoding", "identity").strip().lower()
    if coding in ("identity", ""):
        return body
    if coding not in ("gzip", "x-gzip", "deflate"):
        raise ContentEncodingError(f"the body's Content-Encoding {coding!r:.40} is not known")
    wbits = 47 if coding != "deflate" else 15  # 47: gzip or zlib header, auto-detected
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(memoryview(body), limit + 1)
    except zlib.error as exc:
        raise ContentEncodingError(f"the body is not valid {coding}: {exc}") from None
    check_length(len(out), limit)
    if not inflater.eof:
        raise ContentEncodingError(f"the {coding} body is cut short")
    return np.frombuffer(bytearray(out), dtype=np.uint8)
