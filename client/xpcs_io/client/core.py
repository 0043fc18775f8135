"""What the blocking and the asyncio clients share: configuration, headers, the response
cache and turning a finished response into a result or an exception."""

from __future__ import annotations

from typing import Any

import httpx

from xpcs_io.client.cache import ResponseCache
from xpcs_io.client.calls import Call
from xpcs_io.client.transport import DEFAULT_MAX_RESPONSE_BYTES, RetryPolicy, finish

__all__ = ["ClientCore"]

# Bodies are consumed as httpcore receives them: asking httpx for fixed-size chunks would
# re-buffer every byte through a BytesIO (a third copy of a 50 MB q-map).
USER_AGENT = "xpcs-io-client/0.1"
# Bars only for downloads that take noticeable time.
PROGRESS_MIN_BYTES = 8 << 20


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
        result = finish(call, response, body)
        if call.cacheable and self.cache.max_bytes > 0:
            key = self.cache.key(call.path, call.params)
            return self.cache.store(key, response.headers.get("etag"), result)
        return result
