"""Sending a ``Call`` with httpx: retries for reads, zero-copy body reading, error mapping.

The response body is read straight into one preallocated writable buffer sized by
Content-Length; decoded arrays are views into it, so a 50 MB q-map is copied once (socket to
buffer) on the client.

A server can be broken or hostile: a Content-Length that is negative, not a number or larger
than ``max_response_bytes``, a body that runs past its length, a chunked or close-delimited
body that never ends, or bytes that do not decode. Framing and size problems become
``RemoteConnectionError`` (nothing larger than the cap is ever allocated); a complete body
that does not decode as the expected answer becomes ``WireFormatError``.
"""

from __future__ import annotations

import random
import time
from typing import Any

import httpx
import numpy as np

from xpcs_io.client.calls import Call, decode_body, decode_error
from xpcs_io.errors import RemoteConnectionError, WireFormatError

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "BodyBuffer",
    "ResponseTooLargeError",
    "RetryPolicy",
    "check_length",
    "connection_error",
    "content_length",
    "finish",
    "parse_length",
    "undecodable",
]

#: The largest response body a client accepts unless told otherwise: 4 GiB (an Eiger 16M
#: q-map with its masks is about 0.5 GB).
DEFAULT_MAX_RESPONSE_BYTES = 4 << 30


class ResponseTooLargeError(httpx.RemoteProtocolError):
    """A response body larger than the client's ``max_response_bytes`` (never retried)."""


def parse_length(value: bytes | str) -> int:
    """A Content-Length value as an int.

    Raises:
        httpx.RemoteProtocolError: not a plain non-negative decimal number.
    """
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        raise httpx.RemoteProtocolError(f"bad Content-Length {text[:40]!r}")
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


_RETRY_STATUS = 503


class RetryPolicy:
    """Bounded exponential backoff: ``attempts`` tries, ``base`` seconds doubling, jittered."""

    def __init__(self, attempts: int = 4, base: float = 0.05, cap: float = 1.0) -> None:
        self.attempts = max(1, attempts)
        self.base = base
        self.cap = cap

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        backoff: float = min(self.cap, self.base * 2.0**attempt)
        return backoff * (0.5 + random.random() / 2)

    def may_retry(
        self, call: Call, attempt: int, exc: BaseException | None, status: int | None
    ) -> bool:
        """Idempotent calls (reads, and writes carrying an idempotency key) retry on
        transport errors; others only when the connection was never made (the server cannot
        have acted on them). Reads also retry on 503; a write's 503 is answered at once (a
        lock another writer held past the server's timeout would only be waited for again)."""
        if attempt + 1 >= self.attempts:
            return False
        if isinstance(exc, ResponseTooLargeError):
            return False  # the same answer would come again
        if exc is not None:
            return call.idempotent or isinstance(exc, httpx.ConnectError)
        return call.idempotent and call.method == "GET" and status == _RETRY_STATUS


class BodyBuffer:
    """Collects a response body into one writable buffer, preallocated when the length is
    known (a fresh ``np.empty`` avoids the page faults of growing a ``bytearray``), never
    larger than ``limit`` bytes.

    Raises:
        ResponseTooLargeError: ``length`` > ``limit``.
    """

    def __init__(self, length: int | None, limit: int = DEFAULT_MAX_RESPONSE_BYTES) -> None:
        if length is not None:
            check_length(length, limit)
        self.length = length
        self.limit = limit
        self.n = 0
        self.data: bytearray | np.ndarray[Any, Any] = (
            bytearray() if length is None else np.empty(length, dtype=np.uint8)
        )

    def add(self, chunk: bytes) -> None:
        """Append ``chunk``.

        Raises:
            httpx.RemoteProtocolError: more bytes than Content-Length announced.
            ResponseTooLargeError: more bytes than ``limit``.
        """
        if isinstance(self.data, bytearray):
            check_length(len(self.data) + len(chunk), self.limit)
            self.data += chunk
            return
        if (
            self.n == 0
            and isinstance(chunk, memoryview)
            and not chunk.readonly
            and chunk.nbytes == self.data.shape[0]
        ):
            # The whole body in one writable buffer (the fast transport read straight into
            # it): adopt it instead of copying.
            self.data = np.frombuffer(chunk, dtype=np.uint8)
            self.n = chunk.nbytes
            return
        end = self.n + len(chunk)
        if end > self.data.shape[0]:
            raise httpx.RemoteProtocolError("response body longer than its Content-Length")
        self.data[self.n : end] = np.frombuffer(chunk, dtype=np.uint8)
        self.n = end

    def result(self) -> bytearray | np.ndarray[Any, Any]:
        """The complete body.

        Raises:
            httpx.RemoteProtocolError: fewer bytes than Content-Length announced.
        """
        if self.length is not None and self.n != self.length:
            raise httpx.RemoteProtocolError(
                f"response body ended after {self.n} of {self.length} bytes"
            )
        return self.data


def content_length(response: httpx.Response) -> int | None:
    """Content-Length when the body is not content-encoded, else None."""
    if response.headers.get("content-encoding", "identity") != "identity":
        return None
    value = response.headers.get("content-length")
    if value is None:
        return None
    try:
        return parse_length(value)
    except httpx.RemoteProtocolError:
        return None  # framing was the transport's business; count what arrives


def finish(call: Call, response: httpx.Response, body: Any) -> Any:
    """Decode a complete response or raise the exception it stands for.

    Raises:
        WireFormatError: a success body that is not a valid answer to ``call``.
        Exception: the exception an error response names.
    """
    ctype = response.headers.get("content-type", "")
    if response.status_code >= 400:
        raise decode_error(response.status_code, ctype, bytes(body))
    try:
        if response.status_code == 204:
            return call.decode(None)
        return call.decode(decode_body(ctype, memoryview(body)))
    except WireFormatError:
        raise
    except Exception as exc:  # a hostile body may break any decoder (RecursionError too)
        raise WireFormatError(
            f"the answer to {call.method} {call.path} is not valid "
            f"({type(exc).__name__}: {str(exc)[:200]})"
        ) from exc


def undecodable(call: Call, exc: BaseException) -> WireFormatError:
    """The error for a body that cannot be decoded at all (its Content-Encoding is false)."""
    return WireFormatError(f"the answer to {call.method} {call.path} cannot be decoded: {exc}")


def connection_error(call: Call, base_url: str, exc: BaseException) -> RemoteConnectionError:
    """The one client error type for network failures, keeping the cause."""
    err = RemoteConnectionError(f"{call.method} {base_url}{call.path} failed: {exc!r}")
    err.__cause__ = exc
    return err


def sleep(seconds: float) -> None:
    """Wait before a retry (sync)."""
    time.sleep(seconds)
