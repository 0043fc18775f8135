"""The service over a real socket: the error table in both directions, auth, limits,
content negotiation, request ids and path security."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import httpx
import msgpack
import numpy as np
import pytest

from xpcs_io import wire
from xpcs_io.client import (
    AsyncRemoteHDF5Facade,
    RemoteConnectionError,
    RemoteHDF5Facade,
    RetryPolicy,
)
from xpcs_io.errors import HDF5ValidationError, PayloadTooLargeError, SchemaError, WireFormatError
from xpcs_io.schemas import GeometryMetadata, MaskSchema
from xpcs_io.server import create_app
from xpcs_io.server.settings import Settings
from xpcs_io.tools.demo import DemoSpec, write_native_file

from .conftest import Server, free_port, start_server

KEYS = {"read": "r-key-0123456789", "write": "w-key-0123456789", "admin": "a-key-0123456789"}
BODY_LIMIT = 2_000_000
JSON_LIMIT = 5_000


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with API keys, a small body limit and a small JSON limit."""
    root = tmp_path_factory.mktemp("keyed-root")
    write_native_file(root / "small.hdf5", DemoSpec(shape=(48, 40), n_delay=20, n_q=12))
    write_native_file(root / "big.hdf5", DemoSpec(shape=(100, 100), n_delay=20, n_q=12))
    (root / "notes.txt").write_text("not hdf5")
    outside = tmp_path_factory.mktemp("outside")
    write_native_file(outside / "secret.hdf5", DemoSpec(shape=(8, 8), n_delay=4, n_q=2))
    (root / "escape.hdf5").symlink_to(outside / "secret.hdf5")
    (root / "linkdir").symlink_to(outside, target_is_directory=True)
    with h5py.File(root / "extlink.hdf5", "w") as f:
        f["xpcs/metadata"] = h5py.ExternalLink(str(outside / "secret.hdf5"), "/xpcs/metadata")
        f["xpcs/g2"] = h5py.ExternalLink(str(outside / "missing.hdf5"), "/xpcs/g2")
    env = {
        "XPCS_IO_API_KEYS": ",".join(f"{k}:{s}" for s, k in KEYS.items()),
        "XPCS_IO_MAX_BODY_BYTES": str(BODY_LIMIT),
        "XPCS_IO_JSON_MAX_ELEMENTS": str(JSON_LIMIT),
    }
    srv = start_server(root, tmp_path_factory.mktemp("keyed-logs") / "server.log", env=env)
    yield srv
    srv.stop()


def _get(srv: Server, path: str, key: str | None = "read", **kw: Any) -> httpx.Response:
    headers = kw.pop("headers", {})
    if key:
        headers["authorization"] = f"Bearer {KEYS[key]}"
    return httpx.request(kw.pop("method", "GET"), srv.url + path, headers=headers, timeout=30, **kw)


def _problem(r: httpx.Response, status: int, error: str | None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert {"type", "title", "status", "detail"} <= body.keys()
    assert body["status"] == status
    if error:
        assert body["error"] == error
    return body


def _mask_body(shape: tuple[int, int] = (48, 40)) -> bytes:
    geo = GeometryMetadata(
        bcx=1.0, bcy=2.0, det_dist=5000.0, lambda_=1.5, pix_dim=0.075, shape=shape
    )
    return wire.pack(MaskSchema(mask=np.ones(shape, np.uint8), metadata=geo).to_dict())


# ---------------------------------------------------------------- the error table, over HTTP


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        ("/v1/qmap?file_path=nope.hdf5", 404, "FileNotFoundError"),
        ("/v1/qmap?file_path=small.hdf5&group=/nope", 404, "KeyError"),
        ("/v1/qmap?file_path=notes.txt", 422, "HDF5ValidationError"),
        ("/v1/g2?file_path=small.hdf5&q_idx=12", 422, "IndexError"),
        ("/v1/g2?file_path=small.hdf5&q_idx=-1", 422, "IndexError"),
        ("/v1/g2?file_path=small.hdf5&q_idx=one", 422, "TypeError"),
        ("/v1/qmap?file_path=../etc/passwd", 403, "PermissionError"),
        ("/v1/qmap", 422, "ValueError"),
        ("/v1/mask?file_path=small.hdf5&version=3", 404, "KeyError"),
        ("/v1/nowhere", 404, None),
    ],
)
def test_error_table_over_http(keyed: Server, path: str, status: int, error: str | None) -> None:
    body = _problem(_get(keyed, path), status, error)
    assert keyed.root.as_posix() not in body["detail"]
    assert _get(keyed, "/health", key=None).status_code == 200


def test_problem_names_the_field(keyed: Server) -> None:
    bad = keyed.root / "nanfile.hdf5"
    write_native_file(bad, DemoSpec(shape=(8, 8), n_delay=4, n_q=2))
    with h5py.File(bad, "a", locking=False) as f:
        f["/xpcs/metadata/pix_dim"][()] = np.nan
    body = _problem(_get(keyed, "/v1/geometry?file_path=nanfile.hdf5"), 422, "HDF5ValidationError")
    assert body["field"] == "pix_dim"
    assert "nanfile.hdf5" in body["detail"]


def test_client_rebuilds_each_exception(keyed: Server) -> None:
    with RemoteHDF5Facade(keyed.url, api_key=KEYS["write"]) as api:
        with pytest.raises(FileNotFoundError):
            api.read_qmap("nope.hdf5")
        with pytest.raises(KeyError):
            api.read_qmap("small.hdf5", group="/nope")
        with pytest.raises(HDF5ValidationError):
            api.read_qmap("notes.txt")
        with pytest.raises(IndexError):
            api.read_g2_data("small.hdf5", q_idx=99)
        with pytest.raises(PermissionError):
            api.read_qmap("../outside.hdf5")
        with pytest.raises(ValueError, match="compression"):
            api.write_mask(
                "small.hdf5", MaskSchema.from_dict(wire.unpack(_mask_body())), compression="zip"
            )


# ---------------------------------------------------------------- bodies


def test_body_not_msgpack_is_400(keyed: Server) -> None:
    r = _get(
        keyed,
        "/v1/mask?file_path=w1.hdf5",
        key="write",
        method="POST",
        content=b"\xc1\xc1 definitely not msgpack",
        headers={"content-type": "application/msgpack"},
    )
    _problem(r, 400, "WireFormatError")


def test_msgpack_missing_field_is_422(keyed: Server) -> None:
    body = msgpack.packb({"mask": wire.encode_array(np.ones((4, 4), np.uint8))})
    r = _get(
        keyed,
        "/v1/mask?file_path=w1.hdf5",
        key="write",
        method="POST",
        content=body,
        headers={"content-type": "application/msgpack"},
    )
    problem = _problem(r, 422, "SchemaError")
    assert problem["field"] == "metadata"


def test_array_lying_about_its_size_is_422(keyed: Server) -> None:
    msg = wire.unpack(_mask_body(), decode_arrays=False)
    msg["mask"]["shape"] = [48, 41]
    r = _get(
        keyed,
        "/v1/mask?file_path=w1.hdf5",
        key="write",
        method="POST",
        content=msgpack.packb(msg),
        headers={"content-type": "application/msgpack"},
    )
    problem = _problem(r, 422, "SchemaError")
    assert problem["field"] == "mask"
    assert not (keyed.root / "w1.hdf5").exists()


def test_invalid_schema_sent_is_422_and_nothing_written(keyed: Server) -> None:
    msg = wire.unpack(_mask_body())
    msg["mask"][0, 0] = 7
    r = _get(
        keyed,
        "/v1/mask?file_path=w2.hdf5",
        key="write",
        method="POST",
        content=wire.pack(msg),
        headers={"content-type": "application/msgpack"},
    )
    assert _problem(r, 422, "SchemaError")["field"] == "mask"
    assert not (keyed.root / "w2.hdf5").exists()


def test_wrong_content_type_is_422_type_error(keyed: Server) -> None:
    r = _get(
        keyed,
        "/v1/mask?file_path=w3.hdf5",
        key="write",
        method="POST",
        content=b"x",
        headers={"content-type": "text/plain"},
    )
    _problem(r, 422, "SchemaTypeError")


def test_json_body_is_accepted(keyed: Server) -> None:
    mask = np.ones((6, 5), np.uint8)
    mask[0, 0] = 0
    doc = {
        "mask": mask.tolist(),
        "metadata": {
            "bcx": 1.0,
            "bcy": 2.0,
            "det_dist": 5000.0,
            "lambda_": 1.5,
            "pix_dim": 0.075,
            "shape": [6, 5],
        },
        "description": "from curl",
    }
    r = _get(
        keyed,
        "/v1/mask?file_path=json.hdf5",
        key="write",
        method="POST",
        content=json.dumps(doc),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 201, r.text
    assert wire.unpack(r.content)["version"] == 1
    with RemoteHDF5Facade(keyed.url, api_key=KEYS["read"]) as api:
        got = api.read_mask("json.hdf5")
    np.testing.assert_array_equal(got.mask, mask)
    assert got.description == "from curl"


def test_body_above_limit_is_413_before_reading(keyed: Server) -> None:
    big = b"\0" * (BODY_LIMIT + 1)
    r = _get(
        keyed,
        "/v1/mask?file_path=w4.hdf5",
        key="write",
        method="POST",
        content=big,
        headers={"content-type": "application/msgpack"},
    )
    _problem(r, 413, "PayloadTooLargeError")


def test_chunked_body_above_limit_is_413(keyed: Server) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(BODY_LIMIT // 65536 + 2):
            yield b"\0" * 65536

    r = _get(
        keyed,
        "/v1/mask?file_path=w5.hdf5",
        key="write",
        method="POST",
        content=chunks(),
        headers={"content-type": "application/msgpack"},
    )
    _problem(r, 413, "PayloadTooLargeError")
    assert _get(keyed, "/health", key=None).status_code == 200


def test_client_maps_413(keyed: Server) -> None:
    geo = GeometryMetadata(bcx=1, bcy=1, det_dist=1, lambda_=1, pix_dim=1, shape=(1500, 1500))
    big = MaskSchema(mask=np.ones((1500, 1500), np.uint8), metadata=geo)
    with (
        RemoteHDF5Facade(keyed.url, api_key=KEYS["write"]) as api,
        pytest.raises(PayloadTooLargeError),
    ):
        api.write_mask("w6.hdf5", big)


# ---------------------------------------------------------------- negotiation and ids


def test_json_with_nan_as_null(keyed: Server) -> None:
    path = keyed.root / "nan-err.hdf5"
    write_native_file(path, DemoSpec(shape=(8, 8), n_delay=4, n_q=2))
    with h5py.File(path, "a", locking=False) as f:
        f["/xpcs/g2/g2_err"][0, 1] = np.nan
    r = _get(keyed, "/v1/g2?file_path=nan-err.hdf5", headers={"accept": "application/json"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["g2_err"][0][1] is None
    with h5py.File(path, "r", locking=False) as f:
        np.testing.assert_allclose(doc["g2"], f["/xpcs/g2/g2"][()], rtol=1e-7)


def test_json_refuses_large_arrays_with_406(keyed: Server) -> None:
    body = _problem(
        _get(keyed, "/v1/qmap?file_path=big.hdf5", headers={"accept": "application/json"}),
        406,
        None,
    )
    assert "msgpack" in body["detail"]


def test_msgpack_is_the_default_and_decodes_with_plain_msgpack(keyed: Server) -> None:
    r = _get(keyed, "/v1/qmap?file_path=small.hdf5")
    assert r.headers["content-type"] == "application/msgpack"
    doc = msgpack.unpackb(r.content)
    sq = doc["sqmap"]
    arr = np.frombuffer(sq["data"], dtype=np.dtype(sq["dtype"])).reshape(sq["shape"])
    with h5py.File(keyed.root / "small.hdf5", "r", locking=False) as f:
        np.testing.assert_array_equal(arr, f["/xpcs/qmap/sqmap"][()])
    assert int(r.headers["content-length"]) == len(r.content)


def test_request_id_echoed_or_made(keyed: Server) -> None:
    r = _get(keyed, "/v1/geometry?file_path=small.hdf5", headers={"x-request-id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r2 = _get(keyed, "/v1/geometry?file_path=nope.hdf5")
    assert len(r2.headers["x-request-id"]) >= 8
    assert r2.json()["request_id"] == r2.headers["x-request-id"]
    r3 = _get(keyed, "/health", key=None, headers={"x-request-id": "bad id\twith tabs"})
    assert r3.headers["x-request-id"] != "bad id\twith tabs"


# ---------------------------------------------------------------- auth


def test_auth_scopes(keyed: Server) -> None:
    path = "/v1/geometry?file_path=small.hdf5"
    _problem(_get(keyed, path, key=None), 401, "PermissionError")
    r = httpx.get(keyed.url + path, headers={"authorization": "Bearer wrong"})
    _problem(r, 401, "PermissionError")
    assert "www-authenticate" in r.headers
    assert _get(keyed, path, key="read").status_code == 200
    assert httpx.get(keyed.url + path, headers={"x-api-key": KEYS["read"]}).status_code == 200
    post = {
        "method": "POST",
        "content": _mask_body(),
        "headers": {"content-type": "application/msgpack"},
    }
    _problem(
        _get(keyed, "/v1/mask?file_path=auth.hdf5", key="read", **post), 403, "PermissionError"
    )
    assert _get(keyed, "/v1/mask?file_path=auth.hdf5", key="write", **post).status_code == 201
    _problem(_get(keyed, "/v1/pool/clear", key="write", method="POST"), 403, "PermissionError")
    assert _get(keyed, "/v1/pool/clear", key="admin", method="POST").status_code == 204
    stats_read = _get(keyed, "/v1/pool/stats", key="read")
    assert "open_files" not in wire.unpack(stats_read.content)
    stats_admin = wire.unpack(_get(keyed, "/v1/pool/stats", key="admin").content)
    assert all(not f["path"].startswith("/") for f in stats_admin["open_files"])
    with RemoteHDF5Facade(keyed.url, api_key="nope") as api, pytest.raises(PermissionError):
        api.read_geometry_metadata("small.hdf5")
    assert _get(keyed, "/health", key=None).status_code == 200


def test_write_records_key_scope_as_writer_by_default(keyed: Server) -> None:
    with RemoteHDF5Facade(keyed.url, api_key=KEYS["write"]) as api:
        api.write_mask("who.hdf5", MaskSchema.from_dict(wire.unpack(_mask_body())))
        api.write_mask("who.hdf5", MaskSchema.from_dict(wire.unpack(_mask_body())), writer="bob")
        assert [v["writer"] for v in api.list_mask_versions("who.hdf5")] == ["api-key:write", "bob"]


def test_refuses_public_bind_without_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="allow-anonymous"):
        create_app(Settings(data_root=tmp_path, host="0.0.0.0"))
    create_app(Settings(data_root=tmp_path, host="0.0.0.0", allow_anonymous=True))
    create_app(Settings(data_root=tmp_path, host="0.0.0.0", api_keys="k:read"))
    with pytest.raises(ValueError, match="scope"):
        create_app(Settings(data_root=tmp_path, api_keys="k:superuser"))


# ---------------------------------------------------------------- path security


@pytest.mark.parametrize(
    "bad",
    [
        "../secret.hdf5",
        "/etc/passwd",
        "escape.hdf5",
        "linkdir/secret.hdf5",
        "a/../../x.hdf5",
        "..\\secret.hdf5",
        "small.hdf5\x00.txt",
        "x" * 5000,
    ],
)
def test_path_escapes_are_403(keyed: Server, bad: str) -> None:
    body = _problem(_get(keyed, "/v1/geometry", params={"file_path": bad}), 403, "PermissionError")
    assert "secret" not in body["detail"] or bad.startswith("..")


def test_outside_existence_is_not_revealed(keyed: Server) -> None:
    a = _get(keyed, "/v1/geometry", params={"file_path": "linkdir/secret.hdf5"})
    b = _get(keyed, "/v1/geometry", params={"file_path": "linkdir/does-not-exist.hdf5"})
    assert a.status_code == b.status_code == 403
    assert a.json()["detail"] == b.json()["detail"]


def test_external_links_out_of_root_are_403(keyed: Server) -> None:
    _problem(_get(keyed, "/v1/geometry?file_path=extlink.hdf5"), 403, "PermissionError")
    # A link to a missing outside file answers the same: existence is not revealed.
    _problem(_get(keyed, "/v1/g2?file_path=extlink.hdf5"), 403, "PermissionError")


# ---------------------------------------------------------------- client plumbing


def test_in_process_client_via_http_argument(tmp_path: Path) -> None:
    write_native_file(tmp_path / "f.hdf5", DemoSpec(shape=(16, 16), n_delay=5, n_q=3))
    app = create_app(Settings(data_root=tmp_path, allowed_hosts="app"))  # no keys: name it

    async def run() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
                api = AsyncRemoteHDF5Facade("http://app", http=http)
                assert (await api.read_geometry_metadata("f.hdf5")).shape == (16, 16)
                assert (await api.read_g2_data("f.hdf5", q_idx=1)).g2.shape == (5, 1)
                with pytest.raises(FileNotFoundError):
                    await api.read_qmap("missing.hdf5")

    asyncio.run(run())


def test_unreachable_server_is_connection_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with RemoteHDF5Facade(url, retry=RetryPolicy(attempts=3, base=0.01)) as api:
        with pytest.raises(RemoteConnectionError) as info:
            api.read_qmap("x.hdf5")
        assert isinstance(info.value, ConnectionError)
        assert isinstance(info.value.__cause__, httpx.TransportError)


def test_reads_retry_until_the_server_is_up(data_root: Path, tmp_path: Path) -> None:
    import threading

    write_native_file(tmp_path / "late.hdf5", DemoSpec(shape=(8, 8), n_delay=4, n_q=2))
    port = free_port()
    started: list[Server] = []

    def start_later() -> None:
        import subprocess
        import sys

        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "xpcs_io.tools.cli",
                "serve",
                "--root",
                str(tmp_path),
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            env={k: v for k, v in os.environ.items() if not k.startswith("XPCS_IO_")},
        )
        started.append(Server(proc, f"http://127.0.0.1:{port}", tmp_path, tmp_path / "log"))

    timer = threading.Timer(0.3, start_later)
    timer.start()
    try:
        with RemoteHDF5Facade(
            # At least 50 s of attempts (jitter halves a delay at most): more than the 30 s a
            # start may take on a loaded machine.
            f"http://127.0.0.1:{port}",
            retry=RetryPolicy(attempts=40, base=0.1, cap=3.0),
        ) as api:
            assert api.read_geometry_metadata("late.hdf5").shape == (8, 8)
    finally:
        timer.join()
        for srv in started:
            srv.stop()


def test_wire_errors_are_value_errors() -> None:
    assert issubclass(WireFormatError, ValueError)
    assert issubclass(SchemaError, ValueError)
