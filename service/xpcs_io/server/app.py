"""The application factory. Its lifespan owns the one pool and the facades built on it and
closes every handle at shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.staticfiles import StaticFiles

from xpcs_io.facade import HDF5Facade
from xpcs_io.h5access import set_read_limit
from xpcs_io.locking import LockPolicy
from xpcs_io.paths import display_path
from xpcs_io.pool import HDF5ConnectionPool
from xpcs_io.server import h5grove_api, service_routes, viewer_routes
from xpcs_io.server.browsers import BrowserGuardMiddleware
from xpcs_io.server.docs_pages import DOCS_ASSETS
from xpcs_io.server.events import EventHub
from xpcs_io.server.fileplans import PlanStore
from xpcs_io.server.limits import BodyBudget, ResourceGuardMiddleware
from xpcs_io.server.logs import configure_logging
from xpcs_io.server.middleware import BodyLimitMiddleware, RequestIdMiddleware
from xpcs_io.server.observability import Metrics, ObservabilityMiddleware
from xpcs_io.server.problems import install_handlers
from xpcs_io.server.results import ResultCache
from xpcs_io.server.routes import router
from xpcs_io.server.service_routes import STATIC, VERSION
from xpcs_io.server.settings import Settings, is_loopback
from xpcs_io.server.strict import check_request
from xpcs_io.server.watcher import RootWatcher
from xpcs_io.server.workers import WorkerGroup
from xpcs_io.server.zerocopy import SendfileMiddleware

__all__ = ["VERSION", "create_app"]

log = logging.getLogger("xpcs_io.server")


def _check_security(settings: Settings, keys: Mapping[str, str]) -> None:
    if not keys and not is_loopback(settings.host) and not settings.allow_anonymous:
        raise ValueError(
            f"refusing to serve {settings.host} without API keys: set XPCS_IO_API_KEYS or "
            "XPCS_IO_API_KEYS_FILE, or pass --allow-anonymous to serve openly on purpose"
        )


def _lifespan(
    settings: Settings, root: Path
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's lifespan: it opens the pool and the facades on it, the result cache, the
    worker group and the watcher of the root, and closes every handle at shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = HDF5ConnectionPool(
            max_size=settings.pool_size, policy=LockPolicy(settings.file_locking)
        )
        timeout = settings.lock_timeout
        app.state.pool = pool
        app.state.facade = HDF5Facade(pool, True, root=root, lock_timeout=timeout)
        app.state.facade_unchecked = HDF5Facade(pool, False, root=root, lock_timeout=timeout)
        app.state.results = ResultCache(
            settings.cache_bytes, unshared_bytes=settings.max_unshared_result_bytes
        )
        app.state.plans = PlanStore(pool.policy)
        group = None
        if settings.state_dir is not None:
            group = WorkerGroup(
                settings.state_dir,
                pool,
                lambda p: display_path(root, p),
                lambda: {**app.state.results.stats(), **app.state.plans.stats()},
            )
            group.start()
        app.state.workers = group
        events: EventHub = app.state.events
        events.bind(asyncio.get_running_loop())
        watcher = None
        if settings.watch:
            # The app's own pool: its handles hold no lock other programs would wait for, and
            # one pool knows every open of a file in this process.
            watcher = RootWatcher(root, events, app.state.facade_unchecked)
            watch_task = asyncio.create_task(watcher.run())
        app.state.watcher = watcher  # /ready waits for it to watch
        log.info("serving %s with a pool of %d handles", root, settings.pool_size)
        try:
            yield
        finally:
            events.close()
            if watcher is not None:
                watcher.stop()
                await watch_task
            if group is not None:
                await group.stop()
            pool.shutdown()
            log.info("pool shut down: every handle closed")

    return lifespan


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the xpcs-io FastAPI application.

    Raises:
        ValueError: the settings are unsafe (no keys on a public address) or invalid.
        FileNotFoundError: the data root does not exist.
    """
    settings = settings or Settings()
    if settings.state_dir is not None:
        configure_logging(settings.log_level)  # a worker process spawned by `serve --workers`
    keys = settings.keys()
    _check_security(settings, keys)
    root = Path(os.path.realpath(settings.data_root))
    if not root.is_dir():
        raise FileNotFoundError(f"data root {settings.data_root} is not a directory")
    set_read_limit(settings.max_read_bytes)  # one limit per process, for every layout

    lifespan = _lifespan(settings, root)

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
        docs_url=None,  # served below from packaged assets: no CDN, works offline
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.events = EventHub(settings.events_retention)
    app.state.api_keys = keys
    app.state.root = root
    app.state.root_str = str(root)

    def pool_stats() -> dict[str, Any] | None:
        group: WorkerGroup | None = getattr(app.state, "workers", None)
        if group is not None:
            return group.stats()
        return app.state.pool.stats() if hasattr(app.state, "pool") else None

    def result_stats() -> dict[str, Any] | None:
        group: WorkerGroup | None = getattr(app.state, "workers", None)
        if group is not None:
            return group.result_stats()
        if not hasattr(app.state, "results"):
            return None
        return {**app.state.results.stats(), **app.state.plans.stats()}

    shared = settings.state_dir / "metrics" if settings.state_dir is not None else None
    metrics = Metrics(pool_stats, result_stats, shared)
    app.state.metrics = metrics
    install_handlers(app)
    strict = [Depends(check_request)]  # every /v1 route: unknown parameters, Accept
    app.include_router(router, dependencies=strict)
    app.include_router(viewer_routes.router, dependencies=strict)
    app.include_router(h5grove_api.router)
    app.mount("/docs-assets", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(service_routes.router)

    budget = BodyBudget(settings.max_inflight_body_bytes)
    app.state.body_budget = budget
    app.add_middleware(ResourceGuardMiddleware, budget=budget, body_timeout=settings.body_timeout)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    if not keys:
        app.add_middleware(
            BrowserGuardMiddleware,
            bind_host=settings.host,
            allowed=settings.allowed_host_names(),
        )
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(SendfileMiddleware)  # outermost: it needs the server's own send
    return app
