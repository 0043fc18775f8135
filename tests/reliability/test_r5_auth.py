"""R5: the authorisation matrix, generated from the application itself.

Every route of ``create_app(...)`` (walked recursively, mounts included) and every operation
of its OpenAPI document is looked up in ``EXPECTED``; one without an entry fails the test, so
a new endpoint cannot escape the matrix. Each endpoint is then called on a real server with no
key, a bad key, and read, write and admin keys (as ``Authorization: Bearer`` and as
``X-API-Key``): open endpoints answer the same to all; protected ones answer 401 without a
valid key, 403 below their scope and their normal status at or above it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from starlette.routing import Mount

from xpcs_io import wire
from xpcs_io.facade import HDF5Facade
from xpcs_io.pool import HDF5ConnectionPool
from xpcs_io.schemas import MaskSchema, PartitionSchema
from xpcs_io.server import create_app
from xpcs_io.server.settings import Settings
from xpcs_io.tools.demo import DemoSpec, write_native_file
from xpcs_io.tools.demo_aps8idi import write_aps8idi_file

from ..conftest import Server
from .support import Figure, geometry, serving

KEYS = {"read": "r5-read-key-000000", "write": "r5-write-key-00000", "admin": "r5-admin-key-0000"}
SCOPE_RANK = {"read": 0, "write": 1, "admin": 2}
CREDENTIALS = ("none", "bad", "read", "write", "admin")

# (method, path) -> what it needs. MOUNT entries cover everything below a mount.
EXPECTED: dict[tuple[str, str], str] = {
    ("GET", "/"): "open",
    ("GET", "/docs"): "open",
    ("GET", "/redoc"): "open",
    ("GET", "/openapi.json"): "open",
    ("HEAD", "/openapi.json"): "open",
    ("GET", "/health"): "open",
    ("GET", "/ready"): "open",
    ("GET", "/metrics"): "open",
    ("MOUNT", "/static"): "open",
    ("MOUNT", "/docs-assets"): "open",
    ("GET", "/v1/qmap"): "read",
    ("GET", "/v1/g2"): "read",
    ("GET", "/v1/geometry"): "read",
    ("GET", "/v1/c2"): "read",
    ("GET", "/v1/mask"): "read",
    ("GET", "/v1/mask/versions"): "read",
    ("GET", "/v1/partition"): "read",
    ("GET", "/v1/partition/versions"): "read",
    ("GET", "/v1/files"): "read",
    ("GET", "/v1/pool/stats"): "read",
    ("GET", "/v1/events"): "read",
    ("POST", "/v1/g2/many"): "read",
    ("POST", "/v1/qmap/many"): "read",
    ("POST", "/v1/mask"): "write",
    ("POST", "/v1/partition"): "write",
    ("POST", "/v1/pool/clear"): "admin",
    ("GET", "/v1/saxs2d"): "read",
    ("GET", "/v1/saxs1d"): "read",
    ("GET", "/v1/intensity-time"): "read",
    ("GET", "/v1/g2/twotime"): "read",
    ("GET", "/v1/metadata"): "read",
    ("GET", "/v1/tree"): "read",
    ("GET", "/v1/dataset"): "read",
    **{
        ("GET", f"/h5grove/{r}{end}"): "read" for r in ("meta", "attr", "data") for end in ("", "/")
    },
}


def _mask_body() -> bytes:
    m = MaskSchema(mask=np.ones((16, 16), np.uint8), metadata=geometry((16, 16)))
    return wire.pack(m.to_dict())


def _partition_body() -> bytes:
    p = PartitionSchema(
        partition_map=np.ones((16, 16), np.uint16),
        num_pts=1,
        val_list=np.array([0.5]),
        num_list=np.array([256]),
        metadata=geometry((16, 16)),
    )
    return wire.pack(p.to_dict())


@dataclass
class Call:
    """A well-formed request for an endpoint and the status it answers when allowed."""

    url: str
    ok: int
    params: dict[str, Any] | None = None
    body: bytes | None = None


def _call(method: str, path: str) -> Call:
    """A valid request for each endpoint; an endpoint without one fails the test."""
    small = {"file_path": "small.hdf5"}
    msgpack_body = method == "POST" and path in (
        "/v1/mask",
        "/v1/partition",
        "/v1/g2/many",
        "/v1/qmap/many",
    )
    many = wire.pack({"file_paths": ["small.hdf5"]})
    aps = {"file_path": "aps.hdf5"}
    grove = {"file": "aps.hdf5", "path": "/xpcs/qmap/mask"}
    table: dict[tuple[str, str], Call] = {
        ("GET", "/"): Call("/", 200),
        ("GET", "/docs"): Call("/docs", 200),
        ("GET", "/redoc"): Call("/redoc", 200),
        ("GET", "/openapi.json"): Call("/openapi.json", 200),
        ("HEAD", "/openapi.json"): Call("/openapi.json", 200),
        ("GET", "/health"): Call("/health", 200),
        ("GET", "/ready"): Call("/ready", 200),
        ("GET", "/metrics"): Call("/metrics", 200),
        ("MOUNT", "/static"): Call("/static/index.html", 200),
        ("MOUNT", "/docs-assets"): Call("/docs-assets/swagger-ui.css", 200),
        ("GET", "/v1/qmap"): Call("/v1/qmap", 200, small),
        ("GET", "/v1/g2"): Call("/v1/g2", 200, small),
        ("GET", "/v1/geometry"): Call("/v1/geometry", 200, small),
        ("GET", "/v1/c2"): Call("/v1/c2", 200, {"file_path": "aps.hdf5", "q_idx": 0}),
        ("GET", "/v1/mask"): Call("/v1/mask", 200, small),
        ("GET", "/v1/mask/versions"): Call("/v1/mask/versions", 200, small),
        ("GET", "/v1/partition"): Call("/v1/partition", 200, small),
        ("GET", "/v1/partition/versions"): Call("/v1/partition/versions", 200, small),
        ("GET", "/v1/files"): Call("/v1/files", 200),
        ("GET", "/v1/pool/stats"): Call("/v1/pool/stats", 200),
        ("POST", "/v1/mask"): Call("/v1/mask", 201, {"file_path": "w.hdf5"}, _mask_body()),
        ("POST", "/v1/partition"): Call(
            "/v1/partition", 201, {"file_path": "w.hdf5"}, _partition_body()
        ),
        ("POST", "/v1/pool/clear"): Call("/v1/pool/clear", 204),
        ("GET", "/v1/events"): Call("/v1/events", 200),
        ("POST", "/v1/g2/many"): Call("/v1/g2/many", 200, None, many),
        ("POST", "/v1/qmap/many"): Call("/v1/qmap/many", 200, None, many),
        **{
            ("GET", f"/v1/{r}"): Call(f"/v1/{r}", 200, aps)
            for r in ("saxs2d", "saxs1d", "intensity-time", "g2/twotime", "metadata", "tree")
        },
        ("GET", "/v1/dataset"): Call("/v1/dataset", 200, {**aps, "path": "/xpcs/qmap/mask"}),
        **{
            ("GET", f"/h5grove/{r}{end}"): Call(f"/h5grove/{r}{end}", 200, grove)
            for r in ("meta", "attr", "data")
            for end in ("", "/")
        },
    }
    call = table.get((method, path))
    assert call is not None, f"no request written for {method} {path}"
    assert (call.body is not None) == msgpack_body
    return call


def _walk(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for route in routes:
        nested = getattr(route, "original_router", None)  # FastAPI's included routers
        if nested is not None:
            inner = getattr(getattr(route, "include_context", None), "prefix", "") or ""
            yield from _walk(list(nested.routes), prefix + inner)
        elif isinstance(route, Mount):
            yield "MOUNT", prefix + route.path
        elif getattr(route, "methods", None):
            for method in sorted(route.methods):
                yield method, prefix + route.path
        elif getattr(route, "routes", None):
            yield from _walk(list(route.routes), prefix + getattr(route, "path", ""))


def app_endpoints(app: FastAPI) -> set[tuple[str, str]]:
    """Every (method, path) the app serves: its route table and its OpenAPI operations."""
    found = set(_walk(list(app.routes)))
    for path, ops in app.openapi()["paths"].items():
        found |= {(method.upper(), path) for method in ops}
    return found


@pytest.fixture(scope="module")
def keyed_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("r5-root")
    write_native_file(root / "small.hdf5", DemoSpec(shape=(16, 16), n_delay=5, n_q=3))
    write_aps8idi_file(root / "aps.hdf5")
    facade = HDF5Facade(HDF5ConnectionPool(2), root=root)
    facade.write_mask("small.hdf5", MaskSchema.from_dict(wire.unpack(_mask_body())))
    facade.write_partition("small.hdf5", PartitionSchema.from_dict(wire.unpack(_partition_body())))
    facade.clear_pool()
    return root


@pytest.fixture(scope="module")
def keyed_server(keyed_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"XPCS_IO_API_KEYS": ",".join(f"{k}:{s}" for s, k in KEYS.items())}
    with serving(keyed_root, tmp_path_factory.mktemp("r5-logs") / "server.log", env=env) as srv:
        yield srv


def _headers(credential: str, style: str) -> dict[str, str]:
    if credential == "none":
        return {}
    key = "not-a-valid-key-123" if credential == "bad" else KEYS[credential]
    return {"authorization": f"Bearer {key}"} if style == "bearer" else {"x-api-key": key}


def _expected(need: str, credential: str, ok: int) -> int:
    if need == "open":
        return ok
    if credential in ("none", "bad"):
        return 401
    return ok if SCOPE_RANK[credential] >= SCOPE_RANK[need] else 403


def test_every_endpoint_has_an_expectation(keyed_root: Path) -> None:
    app = create_app(Settings(data_root=keyed_root, api_keys="k:read"))
    endpoints = app_endpoints(app)
    missing = sorted(endpoints - EXPECTED.keys())
    assert not missing, f"endpoints with no documented auth expectation: {missing}"
    gone = sorted(EXPECTED.keys() - endpoints)
    assert not gone, f"expectations for endpoints the app no longer has: {gone}"
    assert ("GET", "/v1/qmap") in endpoints, "the walk must find the /v1 router"


def test_auth_matrix(keyed_server: Server, keyed_root: Path) -> None:
    fig = Figure("R5", "auth-matrix", "Every endpoint x {no key, bad key, read, write, admin}")
    app = create_app(Settings(data_root=keyed_root, api_keys="k:read"))
    endpoints = sorted(app_endpoints(app))
    mismatches: list[str] = []
    cells = 0
    with httpx.Client(base_url=keyed_server.url, timeout=30) as http:
        for method, path in endpoints:
            need = EXPECTED.get((method, path))
            if need is None:
                mismatches.append(f"{method} {path}: no expectation")
                continue
            call = _call(method, path)
            verb = "GET" if method == "MOUNT" else method
            for credential in CREDENTIALS:
                for style in ("bearer", "x-api-key"):
                    cells += 1
                    want = _expected(need, credential, call.ok)
                    headers = _headers(credential, style)
                    if call.body is not None:
                        headers["content-type"] = wire.MEDIA_TYPE
                    # Streamed: an event stream answers 200 and never ends, so only the
                    # head is read, and the body only when it is a refusal.
                    with http.stream(
                        verb, call.url, params=call.params, content=call.body, headers=headers
                    ) as r:
                        if r.status_code in (401, 403):
                            r.read()
                    where = f"{method} {path} [{credential}, {style}]"
                    if r.status_code != want:
                        mismatches.append(f"{where}: {r.status_code}, want {want}")
                        continue
                    if want in (401, 403):
                        doc = json.loads(r.content)
                        if not r.headers["content-type"].startswith("application/problem+json"):
                            mismatches.append(f"{where}: not problem+json")
                        elif doc.get("error") != "PermissionError":
                            mismatches.append(f"{where}: error {doc.get('error')!r}")
                        if want == 401 and "www-authenticate" not in r.headers:
                            mismatches.append(f"{where}: 401 without WWW-Authenticate")
            if need != "open":
                # Without a key, even a malformed request is 401: nothing is validated first.
                cells += 1
                r = http.request(verb, call.url)
                if r.status_code != 401:
                    mismatches.append(f"{method} {path} [none, no params]: {r.status_code}")
    fig["endpoints"] = len(endpoints)
    fig["cells checked"] = cells
    fig["by scope"] = {
        need: sum(1 for e in endpoints if EXPECTED.get(e) == need)
        for need in ("open", "read", "write", "admin")
    }
    fig.notes += mismatches[:40]
    fig.target("mismatches with the documented outcome", len(mismatches), "0", not mismatches)
    fig.check()
