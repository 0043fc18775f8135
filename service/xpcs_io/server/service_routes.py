"""The routes outside ``/v1``: the quick-look page, the API docs served from packaged assets
(no CDN, works offline), Prometheus metrics, liveness and readiness."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response

from xpcs_io.server.deps import MetricsDep, RootDep, get_pool
from xpcs_io.server.observability import render
from xpcs_io.server.problems import problem
from xpcs_io.server.watcher import RootWatcher

__all__ = ["STATIC", "VERSION", "router"]

VERSION = "0.1.0"
STATIC = Path(__file__).with_name("static")

router = APIRouter()


@router.get("/", include_in_schema=False)
def quicklook() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/docs", include_in_schema=False)
def docs() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="xpcs-io API",
        swagger_js_url="/docs-assets/swagger-ui-bundle.js",
        swagger_css_url="/docs-assets/swagger-ui.css",
        swagger_favicon_url="/docs-assets/favicon.png",
    )


@router.get("/redoc", include_in_schema=False)
def redoc() -> HTMLResponse:
    page = get_redoc_html(
        openapi_url="/openapi.json",
        title="xpcs-io API",
        redoc_js_url="/docs-assets/redoc.standalone.js",
        redoc_favicon_url="/docs-assets/favicon.png",
        with_google_fonts=False,
    )
    # ReDoc's footer logo comes from its vendor's CDN: keep the page offline.
    page.headers["content-security-policy"] = "img-src 'self' data:"
    return page


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    operation_id="service-metrics",
    tags=["service"],
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
def prometheus(metrics: MetricsDep) -> Response:
    """Request latency by route, bytes sent, write durations, pool counters and handles."""
    return Response(render(metrics), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/health", summary="Liveness", operation_id="service-health", tags=["service"])
def health() -> dict[str, str]:
    """Answers while the process serves requests."""
    return {"status": "ok", "version": VERSION}


@router.get(
    "/ready",
    summary="Readiness",
    operation_id="service-ready",
    tags=["service"],
    responses={503: {"description": "Data root unreadable or pool shut down."}},
)
def ready(request: Request, root: RootDep) -> Response:
    """Ready when the data root is readable and the pool accepts checkouts."""
    pool = get_pool(request)
    problems = []
    # And once the file watcher watches the root (unless watching is off): a client that
    # waited for /ready gets an event for a file it creates right after.
    watcher: RootWatcher | None = getattr(request.app.state, "watcher", None)
    if watcher is not None and not watcher.ready.is_set():
        problems.append("file watcher not watching yet")
    if not os.access(root, os.R_OK | os.X_OK):
        problems.append("data root not readable")
    if pool is None or pool.closed:
        problems.append("pool not running")
    if problems or pool is None:
        return problem(request, 503, "; ".join(problems))
    return JSONResponse({"status": "ready", "pool_size": len(pool)})
