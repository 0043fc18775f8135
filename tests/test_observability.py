"""Probes, metrics, logs and offline docs of a running server."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx

from .conftest import Server, start_server


def test_health_ready_and_offline_docs(server: Server) -> None:
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    assert httpx.get(f"{server.url}/ready").json()["status"] == "ready"
    page = httpx.get(f"{server.url}/docs").text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert assets
    assert all(a.startswith("/") for a in assets), assets  # nothing from a CDN
    assert "cdn" not in page.lower()
    for asset in assets:
        r = httpx.get(f"{server.url}{asset}")
        assert r.status_code == 200, asset
        assert len(r.content) > 100


def test_metrics_cover_routes_bytes_pool_and_writes(server: Server, native_file: Path) -> None:
    rel = native_file.relative_to(server.root).as_posix()
    httpx.get(f"{server.url}/v1/geometry", params={"file_path": rel})
    text = httpx.get(f"{server.url}/metrics").text
    for family in (
        'xpcs_io_request_duration_seconds_bucket{le="0.005",method="GET",route="/v1/geometry"',
        'xpcs_io_response_bytes_total{route="/v1/geometry"}',
        "xpcs_io_pool_hits_total",
        "xpcs_io_pool_misses_total",
        "xpcs_io_pool_evictions_total",
        "xpcs_io_pool_open_handles",
        "xpcs_io_write_duration_seconds",
        "xpcs_io_result_cache_bytes",
    ):
        assert family in text, family


def test_access_log_is_json_with_the_request_id(tmp_path: Path) -> None:
    srv = start_server(tmp_path, tmp_path / "server.log", args=("--log-level", "info"))
    try:
        httpx.get(f"{srv.url}/health", headers={"x-request-id": "trace-me-42"})
        httpx.get(f"{srv.url}/v1/qmap", params={"file_path": "missing.hdf5"})
    finally:
        srv.stop()
    records = [
        json.loads(line) for line in srv.log.read_text().splitlines() if line.startswith("{")
    ]
    access = [r for r in records if r.get("logger") == "xpcs_io.access"]
    assert any(r["request_id"] == "trace-me-42" and r["route"] == "/health" for r in access)
    missing = next(r for r in access if r["route"] == "/v1/qmap")
    assert missing["status"] == 404
    assert len(missing["request_id"]) >= 8
    assert {"time", "level", "duration_ms", "bytes"} <= missing.keys()
