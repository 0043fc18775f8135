"""What the blocking and the asyncio clients share: configuration, headers, the response
cache and turning a finished response into a result or an exception."""

from __future__ import annotations

import ipaddress
import time
from typing import Any

import httpx
import numpy as np

from xpcs_io import arraycodec
from xpcs_io.client.cache import ResponseCache
from xpcs_io.client.calls import Call
from xpcs_io.client.transport import DEFAULT_MAX_RESPONSE_BYTES, RetryPolicy, finish
from xpcs_io.schemas import Schema

__all__ = ["ClientCore"]

# Bodies are consumed as httpcore receives them: asking httpx for fixed-size chunks would
# re-buffer every byte through a BytesIO (a third copy of a 50 MB q-map).
USER_AGENT = "xpcs-io-client/0.1"
# Bars only for downloads that take noticeable time.
PROGRESS_MIN_BYTES = 8 << 20


def _is_loopback(base_url: str) -> bool:
    host = httpx.URL(base_url).host
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def array_compression(compression: str, base_url: str) -> str | None:
    """The ``XPCS-Array-Codec`` preset a client asks for, or None (raw arrays).

    Raises:
        ValueError: ``compression`` is not "auto", "none" or a preset.
        ImportError: a preset was named and blosc2 is not installed.
    """
    if compression == "none":
        return None
    if compression == "auto":
        # On loopback nothing limits raw bytes but the copies: compressing only adds CPU.
        if _is_loopback(base_url) or not arraycodec.available():
            return None
        return "blosc2-zstd"
    if compression not in arraycodec.PRESETS:
        names = ", ".join(["auto", "none", *arraycodec.PRESETS])
        raise ValueError(f"compression must be one of {names}; got {compression!r}")
    if not arraycodec.available():
        raise ImportError(f"compression={compression!r} needs blosc2: pip install blosc2")
    return compression


def _nbytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, Schema):
        value = value.to_dict()
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_nbytes(v) for v in value)
    return 0


class AutoCompression:
    """``compression="auto"``: ask for compressed arrays only while that is faster here.

    Whether compression pays depends on the link (and on whether the server has the
    compressed answer cached), which a client cannot know in advance. So it measures: every
    large answer (at least ``MIN_BYTES`` of arrays) gives seconds per array byte, request to
    decoded result, kept as a running mean for "compressed" and for "raw". It asks for the
    cheaper one, and for the other on every ``PROBE_EVERY``-th large read, so a changed link
    is noticed. It starts with compression (the default off loopback).
    """

    MIN_BYTES = 1 << 20
    PROBE_EVERY = 8

    def __init__(self, preset: str) -> None:
        self.preset = preset
        self.cost: dict[bool, float | None] = {True: None, False: None}
        self.large = 0

    def wanted(self) -> bool:
        """Whether the next request should ask for compressed arrays."""
        on, off = self.cost[True], self.cost[False]
        if on is None or off is None:
            return on is None  # one large answer each way first: compressed, then raw
        best = on <= off
        return (not best) if self.large % self.PROBE_EVERY == 0 else best

    def observe(self, compressed: bool, nbytes: int, seconds: float) -> None:
        """Record one answer: whether compression was asked, array bytes, seconds taken."""
        if nbytes < self.MIN_BYTES or seconds <= 0:
            return
        self.large += 1
        cost = seconds / nbytes
        old = self.cost[compressed]
        self.cost[compressed] = cost if old is None else 0.5 * old + 0.5 * cost


class ClientCore:
    """Configuration and per-call logic of a remote facade (no I/O here)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        validate: bool,
        retry: RetryPolicy | None,
        cache_bytes: int,
        progress: bool = False,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        compression: str = "auto",
    ) -> None:
        if isinstance(max_response_bytes, bool) or not isinstance(max_response_bytes, int):
            raise TypeError("max_response_bytes must be an int")
        if max_response_bytes < 1:
            raise ValueError(f"max_response_bytes must be positive, got {max_response_bytes}")
        self.max_response_bytes = max_response_bytes
        self.base_url = base_url.rstrip("/")
        self.validate = validate
        self.retry = retry or RetryPolicy()
        self.cache = ResponseCache(cache_bytes)
        headers = {"accept": "application/msgpack", "user-agent": USER_AGENT}
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

    def progress_bar(self, call: Call, length: int | None) -> Any:
        """A tqdm bar for a large download when ``progress`` is on, else None."""
        if not self.progress or length is None or length < PROGRESS_MIN_BYTES:
            return None
        from tqdm.auto import tqdm

        name = call.params.get("file_path", "")
        return tqdm(
            total=length, unit="B", unit_scale=True, leave=False, desc=f"{call.path} {name}"
        )

    def build(
        self, http: httpx.Client | httpx.AsyncClient, call: Call
    ) -> tuple[httpx.Request, tuple[str, Any] | None]:
        """The HTTP request for ``call`` (conditional when a cached answer exists) and the
        cached (ETag, result) it is conditional on."""
        headers = {**self._headers, **call.headers}
        if self.auto is not None and not self.auto.wanted():
            del headers[arraycodec.HEADER]
        cached = None
        if call.cacheable and self.cache.max_bytes > 0:
            cached = self.cache.lookup(self.cache.key(call.path, call.params))
            if cached is not None:
                headers["if-none-match"] = cached[0]
        request = http.build_request(
            call.method,
            self.base_url + call.path,
            params=call.params,
            headers=headers,
            content=b"".join(call.body) if call.body is not None else None,
        )
        return request, cached

    def complete(
        self, call: Call, response: httpx.Response, body: Any, cached: tuple[str, Any] | None
    ) -> Any:
        """The result of a finished exchange.

        Raises:
            Exception: the exception the server's problem+json names.
        """
        if response.status_code == 304 and cached is not None:
            self.cache.hit()
            return cached[1]
        start = time.perf_counter()
        result = finish(call, response, body)
        if self.auto is not None and response.status_code == 200:
            asked = arraycodec.HEADER in response.request.headers
            seconds = response.elapsed.total_seconds() + time.perf_counter() - start
            self.auto.observe(asked, _nbytes(result), seconds)
        if call.cacheable and self.cache.max_bytes > 0:
            key = self.cache.key(call.path, call.params)
            return self.cache.store(key, response.headers.get("etag"), result)
        return result
