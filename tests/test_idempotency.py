"""Idempotent writes: a write carrying a key already stored in the group returns the version
the first one stored, so a client may resend a write whose answer it never received."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import msgpack
import numpy as np
import pytest

from xpcs_io.client import AsyncRemoteHDF5Facade, RemoteHDF5Facade
from xpcs_io.client.core import RetryPolicy
from xpcs_io.errors import WriteLockTimeout
from xpcs_io.facade import HDF5Facade
from xpcs_io.locking import FileWriteLock
from xpcs_io.pool import HDF5ConnectionPool

from .conftest import Server, Side
from .writesupport import SHAPE, mask, partition


def _body(rows: int) -> bytes:
    m = np.zeros(SHAPE, np.uint8)
    m[:rows] = 1
    g = {"bcx": 8.0, "bcy": 8.0, "det_dist": 5000.0, "lambda_": 1.54, "pix_dim": 0.075}
    packed: bytes = msgpack.packb(
        {
            "mask": {"dtype": "|u1", "shape": list(SHAPE), "data": m.tobytes()},
            "metadata": {**g, "shape": list(SHAPE)},
        },
        use_bin_type=True,
    )
    return packed


# ---------------------------------------------------------------- the facade API, both sides


def test_same_key_stores_one_version(side: Side, workdir: Path) -> None:
    p = side.path(workdir / "k.hdf5")
    side.api.write_mask(p, mask(), idempotency_key="call-1")
    side.api.write_mask(p, mask(), idempotency_key="call-1")
    (record,) = side.api.list_mask_versions(p)
    assert record["idempotency_key"] == "call-1"
    side.api.write_partition(p, partition(), idempotency_key="call-2")
    side.api.write_partition(p, partition(), idempotency_key="call-2")
    assert len(side.api.list_partition_versions(p)) == 1
    # The same key in another group is another write.
    side.api.write_mask(p, mask(), group="/other/mask", idempotency_key="call-1")
    assert len(side.api.list_mask_versions(p, group="/other/mask")) == 1


def test_calls_without_a_key_are_separate_writes(side: Side, workdir: Path) -> None:
    p = side.path(workdir / "nokey.hdf5")
    side.api.write_mask(p, mask())
    side.api.write_mask(p, mask())
    versions = side.api.list_mask_versions(p)
    assert [v["version"] for v in versions] == [1, 2]
    if side.name == "remote":  # the client makes up a fresh key for every call
        keys = [v["idempotency_key"] for v in versions]
        assert len(set(keys)) == 2
        assert all(len(k) == 32 for k in keys)


def test_same_key_for_different_data_is_refused(side: Side, workdir: Path) -> None:
    path = workdir / "reuse.hdf5"
    p = side.path(path)
    side.api.write_mask(p, mask(1), idempotency_key="k")
    before = path.read_bytes()
    with pytest.raises(ValueError, match="different write"):
        side.api.write_mask(p, mask(2), idempotency_key="k")
    with pytest.raises(ValueError, match="different write"):
        side.api.write_mask(p, mask(1, description="changed"), idempotency_key="k")
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("key", "error"),
    [("", ValueError), ("a b", ValueError), ("x" * 201, ValueError), (7, TypeError)],
)
def test_malformed_keys_are_refused(side: Side, workdir: Path, key: Any, error: type) -> None:
    path = workdir / "bad.hdf5"
    with pytest.raises(error, match="idempotency_key"):
        side.api.write_mask(side.path(path), mask(), idempotency_key=key)
    assert not path.exists()


def test_replay_returns_the_first_record_and_leaves_the_file(workdir: Path) -> None:
    facade = HDF5Facade(pool=HDF5ConnectionPool(max_size=2))
    path = workdir / "replay.hdf5"
    first = facade.write_mask_version(path, mask(), idempotency_key="abc")
    stat = path.stat()
    again = facade.write_mask_version(path, mask(), idempotency_key="abc")
    assert again == first
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        stat.st_ino,
        stat.st_mtime_ns,
        stat.st_size,
    )


def test_replay_needs_no_write_lock(workdir: Path) -> None:
    """A resend is answered from a read: it neither waits for another writer's lock nor
    copies the file. A new key still waits (and times out here)."""
    facade = HDF5Facade(pool=HDF5ConnectionPool(max_size=2), lock_timeout=0.3)
    path = workdir / "locked.hdf5"
    first = facade.write_mask_version(path, mask(), idempotency_key="held")
    with FileWriteLock(path.resolve(), timeout=5.0):
        assert facade.write_mask_version(path, mask(), idempotency_key="held") == first
        with pytest.raises(WriteLockTimeout):
            facade.write_mask(path, mask(), idempotency_key="new")
        with pytest.raises(ValueError, match="different write"):
            facade.write_mask(path, mask(3), idempotency_key="held")
    assert len(facade.list_mask_versions(path)) == 1


# ---------------------------------------------------------------- HTTP, races


def test_http_resend_answers_the_first_version(server: Server, workdir: Path) -> None:
    rel = (workdir / "http.hdf5").relative_to(server.root).as_posix()
    headers = {"content-type": "application/msgpack", "accept": "application/json"}
    url = f"{server.url}/v1/mask"
    with httpx.Client(timeout=30) as http:
        a = http.post(
            url,
            params={"file_path": rel},
            content=_body(1),
            headers={**headers, "Idempotency-Key": "r1"},
        )
        b = http.post(
            url,
            params={"file_path": rel},
            content=_body(1),
            headers={**headers, "Idempotency-Key": "r1"},
        )
        c = http.post(url, params={"file_path": rel}, content=_body(1), headers=headers)
        d = http.post(
            url,
            params={"file_path": rel},
            content=_body(2),
            headers={**headers, "Idempotency-Key": "r1"},
        )
    assert (a.status_code, b.status_code, c.status_code) == (201, 201, 201)
    assert a.json() == b.json()
    assert a.json()["version"] == 1
    assert c.json()["version"] == 2  # no key: a new write
    assert d.status_code == 422
    assert d.json()["error"] == "ValueError"


def test_concurrent_resends_store_one_version(server: Server, workdir: Path) -> None:
    """Eight clients send the same keyed write at once, for 5 keys: 5 versions, and every
    answer for a key names the same version."""
    rel = (workdir / "race.hdf5").relative_to(server.root).as_posix()
    n_keys, n_senders = 5, 8

    def send(key: str) -> int:
        with httpx.Client(timeout=60) as http:
            r = http.post(
                f"{server.url}/v1/mask",
                params={"file_path": rel},
                content=_body(1),
                headers={
                    "content-type": "application/msgpack",
                    "accept": "application/json",
                    "Idempotency-Key": key,
                },
            )
        assert r.status_code == 201, r.text
        version: int = r.json()["version"]
        return version

    answers: dict[str, set[int]] = {}
    with ThreadPoolExecutor(n_senders) as pool:
        for k in range(n_keys):
            key = f"race-{k}"
            answers[key] = set(pool.map(send, [key] * n_senders))
    assert all(len(v) == 1 for v in answers.values()), answers
    with RemoteHDF5Facade(server.url) as api:
        versions = api.list_mask_versions(rel)
    assert len(versions) == n_keys
    assert sorted(v["idempotency_key"] for v in versions) == sorted(answers)


def _write_with_key(path: str, key: str) -> None:
    HDF5Facade(pool=HDF5ConnectionPool(max_size=1)).write_mask(path, mask(), idempotency_key=key)


def test_processes_writing_the_same_key_store_one_version(workdir: Path) -> None:
    path = workdir / "procs.hdf5"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_with_key, args=(str(path), "same")) for _ in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    facade = HDF5Facade(pool=HDF5ConnectionPool(max_size=1))
    assert len(facade.list_mask_versions(path)) == 1


def test_async_client_sends_one_key_per_call(server: Server, workdir: Path) -> None:
    rel = (workdir / "async.hdf5").relative_to(server.root).as_posix()

    async def run() -> list[dict[str, Any]]:
        async with AsyncRemoteHDF5Facade(server.url) as api:
            await api.write_mask(rel, mask(), idempotency_key="async-1")
            await api.write_mask(rel, mask(), idempotency_key="async-1")
            await api.write_mask(rel, mask())
            return await api.list_mask_versions(rel)

    versions = asyncio.run(run())
    assert len(versions) == 2
    assert versions[0]["idempotency_key"] == "async-1"
    assert versions[1]["idempotency_key"] != "async-1"


# ---------------------------------------------------------------- a connection that drops


class DropProxy:
    """Forwards TCP both ways to the server; the first time the server starts answering a
    POST, closes the client's connection instead (the server has acted; the client never
    sees the answer)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.posts = 0
        self.dropped = 0
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            with self._lock:
                self._socks += [client, upstream]
            state = {"post": False}
            for target in (self._to_server, self._to_client):
                t = threading.Thread(target=target, args=(client, upstream, state), daemon=True)
                self._threads.append(t)
                t.start()

    def _to_server(
        self, client: socket.socket, upstream: socket.socket, state: dict[str, bool]
    ) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if data.startswith(b"POST "):
                    state["post"] = True
                    self.posts += 1
                upstream.sendall(data)

    def _to_client(
        self, client: socket.socket, upstream: socket.socket, state: dict[str, bool]
    ) -> None:
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                if state["post"]:
                    state["post"] = False
                    if not self.dropped:
                        self.dropped += 1
                        client.shutdown(socket.SHUT_RDWR)
                        return
                client.sendall(data)
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self._lock:
            for s in self._socks:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)  # wakes the threads blocked in recv
                s.close()
        for t in self._threads:
            t.join(10)


@contextlib.contextmanager
def drop_proxy(server: Server) -> Iterator[DropProxy]:
    port = int(server.url.rsplit(":", 1)[1])
    proxy = DropProxy(port)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.mark.parametrize("warm", [True, False], ids=["keep-alive", "fresh-connection"])
def test_write_whose_answer_was_lost_is_stored_once(
    server: Server, workdir: Path, warm: bool
) -> None:
    """With a kept-alive connection the transport resends at once; on a fresh one the
    client's retry policy does: either way one call stores one version."""
    rel = (workdir / "drop.hdf5").relative_to(server.root).as_posix()
    with RemoteHDF5Facade(server.url) as api:
        api.write_mask(rel, mask(1, "first"))
    with drop_proxy(server) as proxy:
        url = f"http://127.0.0.1:{proxy.port}"
        with RemoteHDF5Facade(url, timeout=30, retry=RetryPolicy(attempts=3)) as api:
            if warm:
                api.list_mask_versions(rel)
            api.write_mask(rel, mask(2, "one call"))
        assert proxy.dropped == 1
        assert proxy.posts == 2
    with RemoteHDF5Facade(server.url) as api:
        versions = api.list_mask_versions(rel)
    assert [v["description"] for v in versions] == ["first", "one call"]
