"""Sending a ``Call`` with httpx: retries for reads, zero-copy body reading, error mapping.

The response body is read straight into one preallocated writable buffer sized by
Content-Length; decoded arrays are views into it, so a 50 MB q-map is copied once (socket to
buffer) on the client.
"""

from __future__ import annotations

import random
import time
from typing import Any

import httpx
import numpy as np

from xpcs_io.client.calls import Call, decode_body, decode_error
from xpcs_io.errors import RemoteConnectionError

__all__ = ["BodyBuffer", "RetryPolicy", "connection_error", "content_length", "finish"]

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
        if exc is not None:
            return call.idempotent or isinstance(exc, httpx.ConnectError)
        return call.idempotent and call.method == "GET" and status == _RETRY_STATUS


class BodyBuffer:
    """Collects a response body into one writable buffer, preallocated when the length is
    known (a fresh ``np.empty`` avoids the page faults of growing a ``bytearray``)."""

    def __init__(self, length: int | None) -> None:
        self.length = length
        self.n = 0
        self.data: bytearray | np.ndarray[Any, Any] = (
            bytearray() if length is None else np.empty(length, dtype=np.uint8)
        )

    def add(self, chunk: bytes) -> None:
        """Append ``chunk``.

        Raises:
            httpx.RemoteProtocolError: more bytes than Content-Length announced.
        """
        if isinstance(self.data, bytearray):
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
    return int(value) if value and value.isdigit() else None


def finish(call: Call, response: httpx.Response, body: Any) -> Any:
    """Decode a complete response or raise the exception it stands for."""
    ctype = response.headers.get("content-type", "")
    if response.status_code >= 400:
        raise decode_error(response.status_code, ctype, bytes(body))
    if response.status_code == 204:
        return call.decode(None)
    return call.decode(decode_body(ctype, memoryview(body)))


def connection_error(call: Call, base_url: str, exc: BaseException) -> RemoteConnectionError:
    """The one client error type for network failures, keeping the cause."""
    err = RemoteConnectionError(f"{call.method} {base_url}{call.path} failed: {exc!r}")
    err.__cause__ = exc
    return err


def sleep(seconds: float) -> None:
    """Wait before a retry (sync)."""
    time.sleep(seconds)
