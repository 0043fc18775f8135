"""The sans-I/O core of both clients: everything about one call between a facade method and
the bytes, with no socket and no event loop.

``ClientCore.exchange(call)`` is a generator the drivers run: it yields an ``Attempt`` (a
``Request`` to send and the ``ResponseReader`` to fill; a driver that fails throws a
``TransportError`` back in) or a float (seconds to wait before trying again), and returns
the call's result or raises the exception the answer stands for. Request headers, the
conditional request of the result cache, array compression, retries, error mapping and
decoding live here once; ``sync`` and ``aio`` only move bytes (see ``transport`` for the
package's split).

Retries: only transient failures are tried again, up to ``RetryPolicy.attempts`` times with
jittered exponential backoff: a connection refused (for every call: nothing was sent), a
connection reset, closed or timed out before a complete answer, and 502/504 (for idempotent
calls: reads, and writes carrying an idempotency key), 503 (reads only: a write's 503 is a
lock another writer held past the server's timeout, waited for already). Everything else
fails at once: answers that are not HTTP, TLS failures, bodies above ``max_response_bytes``,
every 4xx and other 5xx.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import urlencode

from xpcs_io import arraycodec, wire
from xpcs_io.client.cache import ResponseCache
from xpcs_io.client.calls import Call
from xpcs_io.client.compression import AutoCompression, array_bytes, array_compression
from xpcs_io.client.piecedecode import PieceDecoder
from xpcs_io.client.transport import (
    DEFAULT_MAX_RESPONSE_BYTES,
    Bar,
    ContentEncodingError,
    Origin,
    Request,
    Response,
    ResponseReader,
    TransportError,
    decode_content,
)
from xpcs_io.errors import (
    RemoteConnectionError,
    ServerError,
    WireFormatError,
    exception_from_problem,
)

__all__ = ["Attempt", "ClientCore", "Exchange", "RetryPolicy", "decode_body", "decode_error"]

T = TypeVar("T")
H = TypeVar("H")

USER_AGENT = "xpcs-io-client/0.1"
# Bars only for downloads that take noticeable time.
PROGRESS_MIN_BYTES = 8 << 20
#: What compressed arrays of one answer may decode to (the default limit on a body's size).
MAX_DECODED_BYTES = 4 << 30


class RetryPolicy:
    """Bounded exponential backoff: ``attempts`` tries, ``base`` seconds doubling up to
    ``cap``, jittered."""

    def __init__(self, attempts: int = 4, base: float = 0.05, cap: float = 1.0) -> None:
        self.attempts = max(1, attempts)
        self.base = base
        self.cap = cap

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        backoff: float = min(self.cap, self.base * 2.0**attempt)
        return backoff * (0.5 + random.random() / 2)

    def may_retry(
        self, call: Call[Any], attempt: int, exc: TransportError | None, status: int | None
    ) -> bool:
        """Whether attempt number ``attempt`` (0-based) of ``call``, which failed with
        ``exc`` or answered ``status``, is tried again (see the module docstring)."""
        if attempt + 1 >= self.attempts:
            return False
        if exc is not None:
            return exc.transient and (call.idempotent or not exc.sent)
        if status in (502, 504):
            return call.idempotent
        return status == 503 and call.idempotent and call.method == "GET"


@dataclass(frozen=True)
class Attempt:
    """One try of a call: the request to send and the reader its answer goes into."""

    request: Request
    reader: ResponseReader


class Exchange(Generic[T]):
    """One call as the steps a driver takes: iterate it for the next step (an ``Attempt``
    to move, or seconds to wait), report a failed attempt with ``failed``; once the
    iteration ends, ``result`` holds the call's result (exceptions come out of the
    iteration)."""

    def __init__(self, steps: Generator[Attempt | float, None, T]) -> None:
        self._steps = steps
        self._failure: TransportError | None = None
        self.result: T

    def __iter__(self) -> Exchange[T]:
        return self

    def __next__(self) -> Attempt | float:
        failure, self._failure = self._failure, None
        try:
            return self._steps.send(None) if failure is None else self._steps.throw(failure)
        except StopIteration as done:
            self.result = done.value
            raise StopIteration from None

    def failed(self, exc: TransportError) -> None:
        """The last attempt ended without a complete answer."""
        self._failure = exc


def decode_error(status: int, content_type: str, body: bytes) -> BaseException:
    """The exception a non-2xx response stands for (problem+json names the class)."""
    name = detail = field_name = None
    if "json" in content_type:
        try:
            problem = json.loads(body)
        except (ValueError, RecursionError):  # malformed, or nested to exhaust the stack
            problem = None
        if isinstance(problem, dict):
            name = problem.get("error")
            detail = problem.get("detail")
            field_name = problem.get("field")
    if detail is None:
        text = body[:500].decode("utf-8", errors="replace").strip()
        detail = f"HTTP {status}" + (f": {text}" if text else "")
    exc = exception_from_problem(
        name if isinstance(name, str) else None,
        str(detail),
        status=status,
        field=field_name if isinstance(field_name, str) else None,
    )
    if isinstance(exc, ServerError):
        exc.status = status
    return exc


def decode_body(
    content_type: str,
    body: bytes | bytearray | memoryview,
    decoded: PieceDecoder | None = None,
) -> Any:
    """Decode a success body (msgpack, or JSON if a proxy or server sent that); ``decoded``:
    what decoded its compressed arrays while it arrived.

    Raises:
        WireFormatError: the bytes are not valid msgpack / JSON, or nest too deeply.
    """
    if "json" in content_type:
        try:
            return json.loads(bytes(body))
        except (ValueError, RecursionError) as exc:
            raise WireFormatError(f"the body is not valid JSON ({str(exc)[:200]})") from None
    if not len(body):
        return None
    # The client asks for compressed arrays itself; what they decode to is bounded like a body.
    ready = decoded.ready if decoded is not None else None
    return wire.unpack(body, codecs=True, max_decoded=MAX_DECODED_BYTES, ready=ready)


def early_decoder(status: int, headers: dict[str, str]) -> PieceDecoder | None:
    """A ``PieceDecoder`` for an answer whose compressed arrays it may decode as they
    arrive: a success whose msgpack body is not content-encoded (else None)."""
    coding = headers.get("content-encoding", "identity").strip().lower()
    if (
        status != 200
        or coding not in ("identity", "")
        or "msgpack" not in headers.get("content-type", "")
    ):
        return None
    return PieceDecoder(MAX_DECODED_BYTES)


def finish(
    call: Call[T],
    status: int,
    content_type: str,
    body: Any,
    decoded: PieceDecoder | None = None,
) -> T:
    """Decode a complete answer or raise the exception it stands for.

    Raises:
        WireFormatError: a success body that is not a valid answer to ``call``.
        Exception: the exception an error response names.
    """
    if status >= 400:
        raise decode_error(status, content_type, bytes(body))
    try:
        if status == 204:
            return call.decode(None)
        return call.decode(decode_body(content_type, memoryview(body), decoded))
    except WireFormatError:
        raise
    except Exception as exc:  # a hostile body may break any decoder (RecursionError too)
        raise WireFormatError(
            f"the answer to {call.method} {call.path} is not valid "
            f"({type(exc).__name__}: {str(exc)[:200]})"
        ) from exc


class ClientCore(Generic[H]):
    """Configuration and per-call logic of a remote facade (no I/O here); ``H`` is the
    httpx client type a driver may be given."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        validate: bool = True,
        http: H | None = None,
        retry: RetryPolicy | None = None,
        cache_bytes: int = 0,
        progress: bool = False,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        compression: str = "auto",
    ) -> None:
        if isinstance(max_response_bytes, bool) or not isinstance(max_response_bytes, int):
            raise TypeError("max_response_bytes must be an int")
        if max_response_bytes < 1:
            raise ValueError(f"max_response_bytes must be positive, got {max_response_bytes}")
        self.origin = Origin.parse(base_url)
        self.base_url = self.origin.url
        self.max_response_bytes = max_response_bytes
        self.validate = validate
        self.retry = retry or RetryPolicy()
        self.cache = ResponseCache(cache_bytes)
        self._timeout = timeout
        headers = {
            "accept": "application/msgpack",
            "accept-encoding": "gzip",
            "user-agent": USER_AGENT,
        }
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        preset = array_compression(compression, self.base_url)
        if preset is not None:
            headers[arraycodec.HEADER] = preset
        self.compression = preset
        self.auto = AutoCompression(preset) if compression == "auto" and preset else None
        self._headers = headers
        self.progress = progress
        if progress:
            try:
                import tqdm  # noqa: F401  (only checked here; imported where used)
            except ImportError:
                raise ImportError(
                    "progress=True needs tqdm: pip install 'xpcs-io[progress]'"
                ) from None
        self._connect(http)

    def _connect(self, http: H | None) -> None:
        """Set up the driver (each client class does)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ one call

    def exchange(self, call: Call[T]) -> Exchange[T]:
        """The steps of one call, for a driver to run (see the module docstring).

        Raises:
            RemoteConnectionError: no complete answer (after the retries allowed).
            WireFormatError: an answer that does not decode.
            Exception: the exception the server's problem+json names.
        """
        return Exchange(self._steps(call))

    def _steps(self, call: Call[T]) -> Generator[Attempt | float, None, T]:
        attempt = 0
        resent_stale = False
        while True:
            step, cached = self._attempt(call)
            started = time.perf_counter()
            try:
                yield step
            except TransportError as exc:
                if exc.stale and not resent_stale:
                    resent_stale = True  # a kept-alive connection the server had closed
                    continue
                if self.retry.may_retry(call, attempt, exc, None):
                    yield float(self.retry.delay(attempt))
                    attempt += 1
                    continue
                err = RemoteConnectionError(
                    f"{call.method} {self.base_url}{call.path} failed: {exc}"
                )
                raise err from exc
            response = step.reader.response()
            if self.retry.may_retry(call, attempt, None, response.status):
                yield float(self.retry.delay(attempt))
                attempt += 1
                continue
            return self._complete(call, step.request, response, cached, started)

    def _connection_error(self, call: Call[Any], exc: TransportError) -> RemoteConnectionError:
        return RemoteConnectionError(f"{call.method} {self.base_url}{call.path} failed: {exc}")

    def _attempt(self, call: Call[Any]) -> tuple[Attempt, tuple[str, Any] | None]:
        headers = {**self._headers, **call.headers}
        if self.auto is not None and not self.auto.wanted():
            del headers[arraycodec.HEADER]
        cached = None
        if call.cacheable and self.cache.max_bytes > 0:
            cached = self.cache.lookup(self.cache.key(call.path, call.params))
            if cached is not None:
                headers["if-none-match"] = cached[0]
        target = self.origin.prefix + call.path
        if call.params:
            target += "?" + urlencode(call.params)
        url = f"{self.origin.scheme}://{self.origin.authority}{target}"
        request = Request(call.method, url, target, headers, call.body or [])
        reader = ResponseReader(
            call.method,
            self.max_response_bytes,
            self._progress_bar(call) if self.progress else None,
            early_decoder if arraycodec.HEADER in headers else None,
        )
        return Attempt(request, reader), cached

    def _progress_bar(self, call: Call[Any]) -> Any:
        def bar(length: int | None) -> Bar | None:
            if length is None or length < PROGRESS_MIN_BYTES:
                return None
            from tqdm.auto import tqdm

            name = call.params.get("file_path", "")
            desc = f"{call.path} {name}"
            made: Bar = tqdm(total=length, unit="B", unit_scale=True, leave=False, desc=desc)
            return made

        return bar

    def _complete(
        self,
        call: Call[T],
        request: Request,
        response: Response,
        cached: tuple[str, Any] | None,
        started: float,
    ) -> T:
        if response.status == 304 and cached is not None:
            self.cache.hit()
            hit: T = cached[1]
            return hit
        try:
            body = decode_content(response.headers, response.body, self.max_response_bytes)
        except ContentEncodingError as exc:
            msg = f"the answer to {call.method} {call.path} cannot be decoded: {exc}"
            raise WireFormatError(msg) from exc
        except TransportError as exc:  # inflates past max_response_bytes
            raise RemoteConnectionError(
                f"{call.method} {self.base_url}{call.path} failed: {exc}"
            ) from exc
        if self.auto is not None:
            arraycodec.take_decode_stats()  # from here on: this answer's decompression only
        early = response.watcher if isinstance(response.watcher, PieceDecoder) else None
        content_type = response.headers.get("content-type", "")
        result = finish(call, response.status, content_type, body, early)
        if self.auto is not None and response.status == 200:
            late_bytes, late_s = arraycodec.take_decode_stats()
            if early is not None:
                # Decoded while the answer arrived, too. All of it is taken off the link's
                # time: exact where decoding held the receiving back (the link waited); else
                # the link looks faster than it was, which can only make raw look cheaper.
                late_bytes, late_s = late_bytes + early.nbytes, late_s + early.seconds
            asked = arraycodec.HEADER in request.headers
            streamed = "content-length" not in response.headers  # compressed while sent
            elapsed = time.perf_counter() - started
            self.auto.observe(
                asked,
                array_bytes(result),
                elapsed,
                streamed=streamed,
                decoded=(late_bytes, late_s),
                server_rate=_rate(response.headers.get(arraycodec.RATE_HEADER)),
                link_paced=None
                if early is None
                else arraycodec.link_paced(self.auto.preset, early.later),
            )
        if call.cacheable and self.cache.max_bytes > 0:
            key = self.cache.key(call.path, call.params)
            stored: T = self.cache.store(key, response.headers.get("etag"), result)
            return stored
        return result


def _rate(text: str | None) -> float | None:
    """A server's ``arraycodec.RATE_HEADER`` value, None when absent or not a rate."""
    try:
        rate = float(text) if text is not None else None
    except ValueError:
        return None
    return rate if rate is not None and 0 < rate < float("inf") else None
