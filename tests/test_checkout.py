"""One file checkout per request: a remote read resolves its path once, checks the file a
bounded number of times, and tags its answer with the identity of the handle it read.

The app runs in this process (its lifespan included) behind httpx's ASGI transport, so the
system calls the read makes can be counted here; the reads themselves are real.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import h5py
import httpx
import numpy as np
import pytest

from xpcs_io import paths, reading
from xpcs_io.api import PathLike
from xpcs_io.checkout import FileCheckout
from xpcs_io.client import AsyncRemoteHDF5Facade
from xpcs_io.facade import HDF5Facade
from xpcs_io.pool import HDF5ConnectionPool
from xpcs_io.server import create_app
from xpcs_io.server.settings import Settings
from xpcs_io.tools.demo import DemoSpec, write_native_file

SPEC = DemoSpec(shape=(16, 12), n_delay=6, n_q=3)
# stat calls on the file per read once its handle is pooled: one when it is checked out, one
# after the read to see it did not change meanwhile (none more on a result-cache hit).
MAX_STATS = 2


class Calls:
    """Counts, while active, path resolutions and stats that land on one file."""

    def __init__(self, path: Path) -> None:
        self.name = path.name
        self.inode = os.stat(path).st_ino
        self.resolves = 0
        self.stats = 0

    @contextmanager
    def counting(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[Calls]:
        realpath, stat, fstat = os.path.realpath, os.stat, os.fstat
        under_root = paths.resolve_under_root

        def counted_realpath(path: Any, *args: Any, **kwargs: Any) -> Any:
            if os.fspath(path).endswith(self.name):
                self.resolves += 1
            return realpath(path, *args, **kwargs)

        def counted_under_root(root: Path, path: Any) -> tuple[Path, str]:
            # A resolution under the root (which walks the path itself and calls realpath
            # only on finding a symlink: this file has none) or a realpath elsewhere.
            if os.fspath(path).endswith(self.name):
                self.resolves += 1
            return under_root(root, path)

        def counted_stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
            result = stat(path, *args, **kwargs)
            self.stats += result.st_ino == self.inode
            return result

        def counted_fstat(fd: int) -> os.stat_result:
            result = fstat(fd)
            self.stats += result.st_ino == self.inode
            return result

        self.resolves = self.stats = 0
        with monkeypatch.context() as patch:
            patch.setattr(os.path, "realpath", counted_realpath)
            patch.setattr(reading, "resolve_under_root", counted_under_root)
            patch.setattr(os, "stat", counted_stat)
            patch.setattr(os, "fstat", counted_fstat)
            yield self


Scenario = Callable[[AsyncRemoteHDF5Facade, httpx.AsyncClient], Coroutine[Any, Any, None]]


def run_in_process(root: Path, scenario: Scenario, **settings: Any) -> Any:
    app = create_app(Settings(data_root=root, watch=False, **settings))

    async def main() -> Any:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://127.0.0.1:8000"
            ) as http:
                remote = AsyncRemoteHDF5Facade("http://127.0.0.1:8000", http=http)
                await scenario(remote, http)
                return app.state.pool.stats()

    return asyncio.run(main())


def rewrite_in_place(path: Path, dataset: str, value: float) -> None:
    """Change one value of ``dataset`` the way another program would: from another process,
    in place (same inode), with a visibly later mtime."""
    code = (
        "import h5py, sys\n"
        "with h5py.File(sys.argv[1], 'a', locking=False) as f:\n"
        "    f[sys.argv[2]][0, 0] = float(sys.argv[3])\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(path), dataset, str(value)], check=True, timeout=60
    )
    os.utime(path, ns=(1, os.stat(path).st_mtime_ns + 10_000_000))


@pytest.fixture
def data(tmp_path: Path) -> Path:
    write_native_file(tmp_path / "run.hdf5", SPEC)
    return tmp_path / "run.hdf5"


@pytest.mark.parametrize("read", ["qmap", "g2"])
def test_a_remote_read_resolves_once_and_checks_the_file_a_bounded_number_of_times(
    data: Path, read: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = Calls(data)
    local = HDF5Facade(HDF5ConnectionPool(2))
    seen: dict[str, Any] = {}

    async def scenario(remote: AsyncRemoteHDF5Facade, http: httpx.AsyncClient) -> None:
        async def one() -> Any:
            if read == "qmap":
                return await remote.read_qmap("run.hdf5")
            return await remote.read_g2_data("run.hdf5", q_idx=1)

        # The pool opens the file (opening is counted elsewhere); another query is another
        # cache entry, so the client's first read below misses the result cache.
        warm = await http.get(f"/v1/{read}", params={"file_path": "run.hdf5", "validate": "no"})
        assert warm.status_code == 200
        for label in ("miss", "hit"):
            with calls.counting(monkeypatch):
                seen[label] = await one()
            seen[f"{label} counts"] = (calls.resolves, calls.stats)

    run_in_process(data.parent, scenario)
    for label in ("miss", "hit"):
        resolves, stats = seen[f"{label} counts"]
        assert resolves == 1, label
        assert 1 <= stats <= MAX_STATS, (label, stats)
    if read == "qmap":
        expected = local.read_qmap(data)
        np.testing.assert_array_equal(seen["miss"].sqmap, expected.sqmap)
        np.testing.assert_array_equal(seen["hit"].dqmap, expected.dqmap)
    else:
        expected_g2 = local.read_g2_data(data, q_idx=1)
        np.testing.assert_array_equal(seen["miss"].g2, expected_g2.g2)
        np.testing.assert_array_equal(seen["hit"].g2, expected_g2.g2)
    local.pool.shutdown()


def test_the_etag_names_the_version_read_and_the_handle_goes_back(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = Calls(data)
    answers: list[httpx.Response] = []

    async def scenario(remote: AsyncRemoteHDF5Facade, http: httpx.AsyncClient) -> None:
        first = await http.get("/v1/g2", params={"file_path": "run.hdf5"})
        with calls.counting(monkeypatch):
            again = await http.get(
                "/v1/g2",
                params={"file_path": "run.hdf5"},
                headers={"if-none-match": first.headers["etag"]},
            )
        answers[:] = [first, again]

    stats = run_in_process(data.parent, scenario)
    first, again = answers
    assert first.status_code == 200
    assert again.status_code == 304
    assert again.headers["etag"] == first.headers["etag"]
    assert calls.resolves == 1
    assert [f["in_use"] for f in stats["open_files"]] == [0]

    # A new version is a new tag.
    os.utime(data, ns=(1, 1))  # same bytes, another mtime: another identity

    async def after(remote: AsyncRemoteHDF5Facade, http: httpx.AsyncClient) -> None:
        answers.append(await http.get("/v1/g2", params={"file_path": "run.hdf5"}))

    run_in_process(data.parent, after)
    assert answers[-1].status_code == 200
    assert answers[-1].headers["etag"] != first.headers["etag"]


def test_a_checkout_reads_through_its_handle_and_only_for_its_facade(tmp_path: Path) -> None:
    path = write_native_file(tmp_path / "a.hdf5", SPEC)
    pool = HDF5ConnectionPool(2)
    facade = HDF5Facade(pool, root=tmp_path)
    with facade.check_out("a.hdf5") as held:
        assert isinstance(held, FileCheckout)
        assert held.identity == facade.file_identity("a.hdf5")
        np.testing.assert_array_equal(
            facade.read_qmap(cast(PathLike, held)).sqmap,
            HDF5Facade(HDF5ConnectionPool(1)).read_qmap(path).sqmap,
        )
        assert facade.last_read_matches(held.identity)
        assert pool.stats()["open_files"][0]["in_use"] == 1
        # Another pool, or another root, is a path from outside: refused, not trusted.
        other = HDF5Facade(HDF5ConnectionPool(1), root=tmp_path)
        with pytest.raises(PermissionError):
            other.read_qmap(cast(PathLike, held))
    assert pool.stats()["open_files"][0]["in_use"] == 0
    pool.shutdown()


def test_a_read_still_running_keeps_the_handle_until_it_is_done(tmp_path: Path) -> None:
    write_native_file(tmp_path / "a.hdf5", SPEC)
    pool = HDF5ConnectionPool(2)
    facade = HDF5Facade(pool, root=tmp_path)
    held = facade.check_out("a.hdf5")
    borrowed = held.use()
    assert borrowed is not None
    held.release()  # the holder is gone; the read is not
    assert pool.stats()["open_files"][0]["in_use"] == 1
    assert held.use() is None  # a read starting now borrows afresh
    held.done()
    assert pool.stats()["open_files"][0]["in_use"] == 0
    assert facade.read_g2_data(cast(PathLike, held), q_idx=0).g2.shape == (SPEC.n_delay, 1)
    pool.shutdown()


def test_check_out_pooled_only_takes_a_current_pooled_handle_without_waiting(
    tmp_path: Path,
) -> None:
    path = tmp_path / "a.hdf5"
    write_native_file(path, SPEC)
    facade = HDF5Facade(pool=HDF5ConnectionPool(max_size=4), root=tmp_path)
    try:
        assert facade.check_out_pooled("a.hdf5") is None  # not open yet: a thread must open it
        with facade.check_out("a.hdf5"):
            pass
        opens = facade.pool.opens
        held = facade.check_out_pooled("a.hdf5")
        assert held is not None
        with held:
            qmap = facade.read_qmap(cast(PathLike, held))
        assert facade.pool.opens == opens  # the pooled handle, not a new open
        with h5py.File(path, "r") as f:
            np.testing.assert_array_equal(qmap.sqmap, f["/xpcs/qmap/sqmap"][()])

        # Another thread holds the pool's lock (as while it opens a file): no wait, None.
        facade.pool._lock.acquire()
        try:
            got: list[object] = []
            worker = threading.Thread(target=lambda: got.append(facade.check_out_pooled("a.hdf5")))
            worker.start()
            worker.join(timeout=30)
            assert not worker.is_alive()
            assert got == [None]
        finally:
            facade.pool._lock.release()

        # Rewritten in place by another program: the pooled handle is stale, so None.
        rewrite_in_place(path, "/xpcs/qmap/sqmap", 123.0)
        assert facade.check_out_pooled("a.hdf5") is None
        with pytest.raises(PermissionError):
            facade.check_out_pooled("../outside.hdf5")
    finally:
        facade.pool.shutdown()


def test_a_cached_read_of_a_file_the_pool_let_go_opens_nothing(tmp_path: Path) -> None:
    # More files read in turn than the pool holds: a cached answer (or a 304) must not
    # reopen the file, and a file rewritten meanwhile must still be read anew.
    for name in ("a.hdf5", "b.hdf5"):
        write_native_file(tmp_path / name, SPEC)
    seen: dict[str, Any] = {}

    async def scenario(remote: AsyncRemoteHDF5Facade, http: httpx.AsyncClient) -> None:
        seen["first"] = await remote.read_g2_data("a.hdf5")
        await remote.read_g2_data("b.hdf5")  # the pool of one lets a.hdf5 go
        opens = (await remote.get_pool_stats())["opens"]
        seen["again"] = await remote.read_g2_data("a.hdf5")
        seen["opens"] = (opens, (await remote.get_pool_stats())["opens"])
        rewrite_in_place(tmp_path / "a.hdf5", "/xpcs/g2/g2", 42.0)
        seen["changed"] = await remote.read_g2_data("a.hdf5")

    run_in_process(tmp_path, scenario, pool_size=1)
    before, after = seen["opens"]
    assert after == before  # served from the result cache: no HDF5 open
    np.testing.assert_array_equal(seen["again"].g2, seen["first"].g2)
    assert seen["first"].g2[0, 0] != 42.0
    with h5py.File(tmp_path / "a.hdf5", "r") as f:
        np.testing.assert_array_equal(seen["changed"].g2, f["/xpcs/g2/g2"][()])
    assert seen["changed"].g2[0, 0] == 42.0
