"""What a server without API keys does about web browsers.

A server without keys trusts whoever can reach it, which on loopback means every program of
this machine's users, and also every web page they open: a page can send requests to
``http://127.0.0.1:8000`` (cross-site requests), or have its own name resolve to 127.0.0.1
(DNS rebinding) and then read answers as if it were the server's own page. So, without keys:

- ``Host`` must name the server's loopback address (``127.0.0.1``, ``localhost``, ``[::1]``,
  with or without the port) or one of ``XPCS_IO_ALLOWED_HOSTS`` / ``--allowed-host``; a
  server bound to a public address (``--allow-anonymous``) also answers IP literals. Other
  names get 403: a rebinding page names its own domain.
- A browser's ``Origin`` must be the server's own (the quick-look page at ``/`` is); any
  other, or ``null``, gets 403, as does ``Sec-Fetch-Site: cross-site`` on a write.
- Requests that change state (POST, PUT, PATCH, DELETE) with a body must say
  ``Content-Type: application/msgpack`` or ``application/json``, which a browser cannot send
  cross-origin without a CORS preflight (which this server never grants): anything else,
  no type included, gets 415. (Every browser sends ``Origin`` with a cross-origin POST, so
  a bodiless one, such as a pool clear, is refused by the Origin check.)

With keys none of this applies: a browser cannot attach an ``Authorization`` or
``X-API-Key`` header to a cross-site request on its own.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from xpcs_io.server.problems import UnsupportedMediaTypeError, send_problem

__all__ = ["WRITE_MEDIA_TYPES", "BrowserGuardMiddleware", "host_name"]

LOOPBACK_NAMES = frozenset(("127.0.0.1", "localhost", "::1"))
WRITE_MEDIA_TYPES = frozenset(("application/msgpack", "application/x-msgpack", "application/json"))
_SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def host_name(value: str) -> str:
    """The name part of a ``Host`` value, lower case, without port, brackets or final dot."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    name, sep, port = value.rpartition(":")
    if sep and port.isdigit() and ":" not in name:
        value = name
    return value.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _netloc(scheme: str, netloc: str) -> str:
    netloc = netloc.lower()
    name, sep, port = netloc.rpartition(":")
    if sep and "]" not in port and _DEFAULT_PORTS.get(scheme) == port:
        return name
    return netloc


class BrowserGuardMiddleware:
    """Host, Origin and Content-Type checks for a server without API keys (see the module).

    ``bind_host`` is the address the server listens on; ``allowed`` the extra Host names
    (``*`` accepts any).
    """

    def __init__(self, app: ASGIApp, *, bind_host: str, allowed: frozenset[str]) -> None:
        self.app = app
        self.any_host = "*" in allowed
        names = set(LOOPBACK_NAMES) | {host_name(h) for h in allowed}
        bind = host_name(bind_host)
        try:
            public = not ipaddress.ip_address(bind).is_loopback
        except ValueError:
            public = bind != "localhost"
            names.add(bind)
        else:
            names.add(bind)
        self.names = frozenset(names)
        self.ip_literals = public  # an IP literal cannot be rebound to another address

    def host_allowed(self, host: str) -> bool:
        """Whether a request naming ``host`` (a ``Host`` value) is for this server."""
        if self.any_host:
            return True
        name = host_name(host)
        if name in self.names:
            return True
        if _is_ip(name):
            return self.ip_literals or ipaddress.ip_address(name).is_loopback
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name, value)
        host = headers.get(b"host", b"").decode("latin-1")
        if host and not self.host_allowed(host):
            await send_problem(
                scope,
                send,
                PermissionError(
                    f"this server (no API keys) does not answer for Host {host_name(host)!r}: use "
                    "127.0.0.1 or localhost, or start it with --allowed-host NAME"
                ),
            )
            return
        origin = headers.get(b"origin")
        if origin is not None and not self._same_origin(origin.decode("latin-1"), host):
            await send_problem(
                scope,
                send,
                PermissionError(
                    "requests from other web sites are refused by a server without API keys"
                ),
            )
            return
        if scope["method"] not in _SAFE_METHODS:
            if headers.get(b"sec-fetch-site", b"") in (b"cross-site", b"same-site"):
                await send_problem(
                    scope,
                    send,
                    PermissionError(
                        "writes from other web sites are refused by a server without API keys"
                    ),
                )
                return
            ctype = headers.get(b"content-type", b"").decode("latin-1")
            media = ctype.split(";", 1)[0].strip().lower()
            has_body = headers.get(b"content-length", b"0") != b"0" or (
                b"transfer-encoding" in headers
            )
            if has_body and media not in WRITE_MEDIA_TYPES:
                await send_problem(
                    scope,
                    send,
                    UnsupportedMediaTypeError(
                        f"a {scope['method']} needs Content-Type application/msgpack or "
                        f"application/json (got {media or 'none'!r})"
                    ),
                )
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _same_origin(origin: str, host: str) -> bool:
        if not host or origin.strip().lower() == "null":
            return False
        parts = urlsplit(origin.strip())
        if parts.scheme not in _DEFAULT_PORTS or not parts.netloc:
            return False
        return _netloc(parts.scheme, parts.netloc) == _netloc(parts.scheme, host)
