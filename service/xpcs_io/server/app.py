"""The application factory. Its lifespan owns the one pool and the facades built on it and
closes every handle at shutdown."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response

from xpcs_io.facade import HDF5Facade
from xpcs_io.pool import HDF5ConnectionPool
from xpcs_io.server.middleware import BodyLimitMiddleware, RequestIdMiddleware
from xpcs_io.server.problems import install_handlers, problem
from xpcs_io.server.routes import router
from xpcs_io.settings import Settings, is_loopback

__all__ = ["VERSION", "create_app"]

VERSION = "0.1.0"
log = logging.getLogger("xpcs_io.server")


def _check_security(settings: Settings, keys: Mapping[str, str]) -> None:
    if not keys and not is_loopback(settings.host) and not settings.allow_anonymous:
        raise ValueError(
            f"refusing to serve {settings.host} without API keys: set XPCS_IO_API_KEYS or "
            "XPCS_IO_API_KEYS_FILE, or pass --allow-anonymous to serve openly on purpose"
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the xpcs-io FastAPI application.

    Raises:
        ValueError: the settings are unsafe (no keys on a public address) or invalid.
        FileNotFoundError: the data root does not exist.
    """
    settings = settings or Settings()
    keys = settings.keys()
    _check_security(settings, keys)
    root = Path(os.path.realpath(settings.data_root))
    if not root.is_dir():
        raise FileNotFoundError(f"data root {settings.data_root} is not a directory")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = HDF5ConnectionPool(max_size=settings.pool_size)
        timeout = settings.lock_timeout
        app.state.pool = pool
        app.state.facade = HDF5Facade(pool, True, root=root, lock_timeout=timeout)
        app.state.facade_unchecked = HDF5Facade(pool, False, root=root, lock_timeout=timeout)
        log.info("serving %s with a pool of %d handles", root, settings.pool_size)
        try:
            yield
        finally:
            pool.shutdown()
            log.info("pool shut down: every handle closed")

    app = FastAPI(
        title="xpcs-io",
        version=VERSION,
        summary="Typed, validated XPCS data (q-maps, G2, geometry, masks, partitions) over HTTP.",
        description=(
            "Reads answer `application/msgpack` (arrays as `{dtype, shape, data}` maps, see "
            "docs/wire-format.md) or JSON with `Accept: application/json`. Errors are "
            "`application/problem+json`. File paths are relative to the server's data root."
        ),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.api_keys = keys
    app.state.root = root
    app.state.root_str = str(root)
    install_handlers(app)
    app.include_router(router)

    @app.get("/health", summary="Liveness", operation_id="service-health", tags=["service"])
    def health() -> dict[str, str]:
        """Answers while the process serves requests."""
        return {"status": "ok", "version": VERSION}

    @app.get(
        "/ready",
        summary="Readiness",
        operation_id="service-ready",
        tags=["service"],
        responses={503: {"description": "Data root unreadable or pool shut down."}},
    )
    def ready(request: Request) -> Response:
        """Ready when the data root is readable and the pool accepts checkouts."""
        pool: HDF5ConnectionPool | None = getattr(request.app.state, "pool", None)
        problems = []
        if not os.access(root, os.R_OK | os.X_OK):
            problems.append("data root not readable")
        if pool is None or pool.closed:
            problems.append("pool not running")
        if problems:
            return problem(request, 503, "; ".join(problems))
        return JSONResponse({"status": "ready", "pool_size": len(pool)})  # type: ignore[arg-type]

    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(RequestIdMiddleware)
    return app
