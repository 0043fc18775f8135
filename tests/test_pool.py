"""``HDF5ConnectionPool`` on real files: reuse, LRU eviction, invalidation on change, threads,
and coexistence with other HDF5 handles in this process and in other processes."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt
import pytest

from xpcs_io.errors import FileBusyError, HDF5ValidationError
from xpcs_io.facade import HDF5Facade
from xpcs_io.pool import HDF5ConnectionPool, get_default_pool
from xpcs_io.schemas import GeometryMetadata, MaskSchema
from xpcs_io.tools.demo import DemoSpec, write_native_file

Array = npt.NDArray[Any]
SUBPROCESS_TIMEOUT = 30.0


@pytest.fixture
def pool() -> Iterator[HDF5ConnectionPool]:
    p = HDF5ConnectionPool(max_size=3)
    yield p
    p.shutdown()


def make_file(path: Path, value: float, n: int = 64) -> Path:
    """A small file whose ``/data`` holds ``value`` everywhere and ``/data.attrs['v']``."""
    with h5py.File(path, "w") as f:
        f["data"] = np.full(n, value, dtype=np.float64)
        f["data"].attrs["v"] = value
    return path


def read_value(pool: HDF5ConnectionPool, path: Path) -> float:
    with pool.checkout(path) as f:
        return float(f["data"][0])


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in another interpreter; fail the test with its stderr if it fails."""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def rewrite_in_place(path: Path, value: float, add: str | None = None) -> None:
    """Another process edits ``path`` in place (same inode), bypassing HDF5 file locks."""
    extra = f"\n    f[{add!r}] = [1, 2, 3]" if add else ""
    run_python(
        "import h5py\n"
        f"with h5py.File({str(path)!r}, 'a', locking=False) as f:\n"
        f"    f['data'][...] = {value!r}\n"
        f"    f['data'].attrs['v'] = {value!r}"
        f"{extra}\n"
    )


# ---------------------------------------------------------------- reuse and stats


def test_one_open_serves_many_checkouts(pool: HDF5ConnectionPool, tmp_path: Path) -> None:
    path = make_file(tmp_path / "a.h5", 1.0)
    handles = []
    for _ in range(10):
        with pool.checkout(path) as f:
            handles.append(f)
            assert f["data"][3] == 1.0
    assert all(h is handles[0] for h in handles)
    stats = pool.stats()
    assert stats["opens"] == 1
    assert stats["misses"] == 1
    assert stats["hits"] == 9
    assert stats["hit_ratio"] == pytest.approx(0.9)
    assert stats["pool_size"] == 1
    assert stats["open_files"] == [{"path": os.path.realpath(path), "accesses": 10, "in_use": 0}]


def test_stats_keys_and_initial_values(pool: HDF5ConnectionPool) -> None:
    stats = pool.stats()
    for key in (
        "hits",
        "misses",
        "opens",
        "evictions",
        "reopens_on_change",
        "pool_size",
        "max_pool_size",
        "hit_ratio",
        "open_files",
    ):
        assert key in stats, key
    assert stats["max_pool_size"] == 3
    assert stats["hit_ratio"] == 0.0
    assert stats["open_files"] == []
    assert stats["pool_size"] == len(pool) == 0


def test_symlinked_and_relative_paths_share_one_handle(
    pool: HDF5ConnectionPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make_file(tmp_path / "a.h5", 4.0)
    link = tmp_path / "link.h5"
    link.symlink_to(path)
    monkeypatch.chdir(tmp_path)
    assert read_value(pool, path) == read_value(pool, link) == read_value(pool, Path("a.h5"))
    assert pool.stats()["opens"] == 1
    assert pool.stats()["hits"] == 2


def test_checkout_in_use_is_reported(pool: HDF5ConnectionPool, tmp_path: Path) -> None:
    path = make_file(tmp_path / "a.h5", 1.0)
    with pool.checkout(path), pool.checkout(path):
        assert pool.stats()["open_files"][0]["in_use"] == 2
    assert pool.stats()["open_files"][0]["in_use"] == 0


@pytest.mark.parametrize("size", [0, -1, True, 1.5, "3"])
def test_max_size_must_be_positive_int(size: Any) -> None:
    with pytest.raises(ValueError, match="max_size"):
        HDF5ConnectionPool(max_size=size)


# ---------------------------------------------------------------- eviction and closing


def test_lru_eviction_closes_least_recently_used(pool: HDF5ConnectionPool, tmp_path: Path) -> None:
    paths = [make_file(tmp_path / f"f{i}.h5", float(i)) for i in range(4)]
    handles: list[h5py.File] = []
    for p in paths[:3]:
        with pool.checkout(p) as f:
            handles.append(f)
    with pool.checkout(paths[0]):  # f0 becomes the most recently used: f1 is now the LRU
        pass
    with pool.checkout(paths[3]) as f3:
        assert f3["data"][0] == 3.0
    evicted = handles[1]
    assert not bool(evicted)
    assert not evicted.id.valid
    assert bool(handles[0])
    assert bool(handles[2])
    stats = pool.stats()
    assert stats["evictions"] == 1
    assert stats["pool_size"] == 3
    assert [e["path"] for e in stats["open_files"]] == [
        os.path.realpath(p) for p in (paths[2], paths[0], paths[3])
    ]
    assert read_value(pool, paths[1]) == 1.0  # reopened on demand
    assert pool.stats()["evictions"] == 2


def test_handle_evicted_while_checked_out_closes_at_check_in(tmp_path: Path) -> None:
    a = make_file(tmp_path / "a.h5", 1.0)
    b = make_file(tmp_path / "b.h5", 2.0)
    with HDF5ConnectionPool(max_size=1) as pool:
        with pool.checkout(a) as fa:
            with pool.checkout(b) as fb:
                assert fb["data"][0] == 2.0
            assert pool.stats()["evictions"] == 1
            assert pool.stats()["open_files"][0]["path"] == os.path.realpath(b)
            assert fa.id.valid
            np.testing.assert_array_equal(fa["data"][:], np.full(64, 1.0))
            assert fa["data"].attrs["v"] == 1.0
        assert not fa.id.valid
        assert fb.id.valid  # still pooled
    assert not fb.id.valid  # the context manager shut the pool down


def test_clear_closes_every_handle(pool: HDF5ConnectionPool, tmp_path: Path) -> None:
    paths = [make_file(tmp_path / f"f{i}.h5", float(i)) for i in range(3)]
    handles = []
    for p in paths[:2]:
        with pool.checkout(p) as f:
            handles.append(f)
    with pool.checkout(paths[2]) as busy:
        pool.clear()
        assert pool.stats()["pool_size"] == 0
        assert not any(h.id.valid for h in handles)
        assert busy["data"][0] == 2.0  # in use: closes at check-in
    assert not busy.id.valid
    assert read_value(pool, paths[0]) == 0.0
    assert pool.stats()["opens"] == 4


def test_invalidate_forgets_one_file(pool: HDF5ConnectionPool, tmp_path: Path) -> None:
    a = make_file(tmp_path / "a.h5", 1.0)
    b = make_file(tmp_path / "b.h5", 2.0)
    with pool.checkout(a) as fa, pool.checkout(b) as fb:
        pass
    pool.invalidate(a)
    assert not fa.id.valid
    assert fb.id.valid
    assert [e["path"] for e in pool.stats()["open_files"]] == [os.path.realpath(b)]


def test_shutdown_refuses_checkouts(tmp_path: Path) -> None:
    path = make_file(tmp_path / "a.h5", 1.0)
    pool = HDF5ConnectionPool(max_size=2)
    with pool.checkout(path) as f:
        pass
    pool.shutdown()
    assert not f.id.valid
    assert len(pool) == 0
    with pytest.raises(RuntimeError, match="shut down"), pool.checkout(path):
        pass
    pool.reopen()
    assert read_value(pool, path) == 1.0
    pool.shutdown()


# ---------------------------------------------------------------- files changing on disk


def test_file_replaced_by_rename_is_reopened(pool: HDF5ConnectionPool, tmp_path: Path) -> None:
    path = make_file(tmp_path / "a.h5", 1.0)
    with pool.checkout(path) as old:
        assert old["data"][0] == 1.0
    new = make_file(tmp_path / "new.h5", 2.0, n=10)
    os.replace(new, path)
    with pool.checkout(path) as f:
        assert f["data"].shape == (10,)
        assert f["data"][0] == 2.0
    assert not old.id.valid
    stats = pool.stats()
    assert stats["reopens_on_change"] == 1
    assert stats["opens"] == 2
    assert stats["pool_size"] == 1


def test_file_rewritten_in_place_by_another_process_is_read_fresh(
    pool: HDF5ConnectionPool, tmp_path: Path
) -> None:
    path = make_file(tmp_path / "a.h5", 1.0)
    ino = path.stat().st_ino
    assert read_value(pool, path) == 1.0
    rewrite_in_place(path, 7.0, add="added")
    assert path.stat().st_ino == ino  # really the same file
    with pool.checkout(path) as f:
        assert f["data"][5] == 7.0
        assert f["data"].attrs["v"] == 7.0
        assert "added" in f
    assert pool.stats()["reopens_on_change"] == 1


def test_in_place_rewrite_while_a_handle_is_checked_out_is_read_fresh(
    pool: HDF5ConnectionPool, tmp_path: Path
) -> None:
    # HDF5 shares one open file (and its metadata cache) between opens of the same inode:
    # a reopen while the old handle is still in use must not inherit its stale metadata.
    path = make_file(tmp_path / "a.h5", 1.0)
    with pool.checkout(path) as outer:
        assert outer["data"].attrs["v"] == 1.0
        rewrite_in_place(path, 3.0, add="added")
        with pool.checkout(path) as inner:
            assert inner is not outer
            assert "added" in inner
            assert inner["data"].attrs["v"] == 3.0
            assert inner["data"][0] == 3.0
        assert outer.id.valid
    assert not outer.id.valid
    with pool.checkout(path) as f:
        assert "added" in f
        assert f["data"].attrs["v"] == 3.0
    assert pool.stats()["reopens_on_change"] == 1


def test_file_deleted_while_pooled_is_file_not_found(
    pool: HDF5ConnectionPool, tmp_path: Path
) -> None:
    path = make_file(tmp_path / "gone.h5", 1.0)
    with pool.checkout(path) as f:
        pass
    path.unlink()
    with pytest.raises(FileNotFoundError, match=r"gone\.h5"), pool.checkout(path):
        pass
    assert not f.id.valid
    assert pool.stats()["pool_size"] == 0
    make_file(path, 5.0)  # a new file under the same name is a new file
    assert read_value(pool, path) == 5.0


def test_file_truncated_while_pooled_is_never_served_stale(
    pool: HDF5ConnectionPool, tmp_path: Path
) -> None:
    path = write_native_file(tmp_path / "cut.h5", DemoSpec(shape=(64, 64)))
    with pool.checkout(path) as f:
        assert f["/xpcs/qmap/sqmap"].shape == (64, 64)
    size = path.stat().st_size
    os.truncate(path, size // 3)
    for _ in range(2):  # and again: the broken file is not cached either
        with pytest.raises(HDF5ValidationError, match=r"cut\.h5"), pool.checkout(path) as g:
            g["/xpcs/qmap/sqmap"][...]
    assert not f.id.valid
    assert pool.stats()["pool_size"] == 0


def test_not_hdf5_and_directory_are_validation_errors(
    pool: HDF5ConnectionPool, tmp_path: Path
) -> None:
    text = tmp_path / "notes.h5"
    text.write_text("hello\n" * 100)
    with pytest.raises(HDF5ValidationError, match="not a readable HDF5"), pool.checkout(text):
        pass
    with pytest.raises(HDF5ValidationError, match="directory"), pool.checkout(tmp_path):
        pass
    assert len(pool) == 0


# ---------------------------------------------------------------- threads


def test_sixteen_threads_eight_files_small_pool(tmp_path: Path) -> None:
    specs = [DemoSpec(shape=(16 + i, 12 + i), n_delay=6 + i, n_q=3 + i, seed=i) for i in range(8)]
    paths = [write_native_file(tmp_path / f"r{i}.h5", s) for i, s in enumerate(specs)]
    expected: list[dict[str, Array]] = []
    for p in paths:
        with h5py.File(p, "r") as f:
            expected.append(
                {
                    "sqmap": f["/xpcs/qmap/sqmap"][()],
                    "g2": f["/xpcs/g2/g2"][()],
                    "bcx": f["/xpcs/metadata/bcx"][()],
                }
            )
    pool = HDF5ConnectionPool(max_size=4)
    facade = HDF5Facade(pool=pool)
    barrier = threading.Barrier(16)
    errors: list[BaseException] = []
    reads = [0] * 16

    def worker(tid: int) -> None:
        rng = random.Random(tid)
        try:
            barrier.wait()
            for _ in range(25):
                i = rng.randrange(8)
                kind = rng.randrange(3)
                if kind == 0:
                    got: Array = facade.read_qmap(paths[i]).sqmap
                    np.testing.assert_array_equal(got, expected[i]["sqmap"])
                elif kind == 1:
                    got = facade.read_g2_data(paths[i]).g2
                    np.testing.assert_array_equal(got, expected[i]["g2"])
                else:
                    geo = facade.read_geometry_metadata(paths[i])
                    assert geo.bcx == expected[i]["bcx"]
                    assert geo.shape == specs[i].shape
                reads[tid] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert sum(reads) == 16 * 25
    stats = pool.stats()
    assert stats["hits"] + stats["misses"] == 16 * 25
    assert stats["evictions"] > 0
    assert stats["pool_size"] <= 4
    assert all(e["in_use"] == 0 for e in stats["open_files"])
    pool.shutdown()
    # Every handle the pool ever opened is closed again: nothing leaks.
    open_ids = h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE)
    leaked = {os.path.realpath(fid.name.decode()) for fid in open_ids}
    assert leaked.isdisjoint(os.path.realpath(p) for p in paths)


# ---------------------------------------------------------------- the default pool


def test_default_pool_is_shared_by_facades(tmp_path: Path) -> None:
    path = make_file(tmp_path / "d.h5", 1.0)
    assert get_default_pool() is get_default_pool()
    a, b = HDF5Facade(), HDF5Facade()
    assert a.pool is b.pool is get_default_pool()
    own = HDF5ConnectionPool(max_size=1)
    assert HDF5Facade(pool=own).pool is own
    native = write_native_file(tmp_path / "n.h5", DemoSpec(shape=(8, 8), n_delay=4, n_q=2))
    before = get_default_pool().stats()
    try:
        a.read_geometry_metadata(native)
        b.read_geometry_metadata(native)
        after = get_default_pool().stats()
        assert after["opens"] == before["opens"] + 1
        assert after["hits"] == before["hits"] + 1
        assert os.path.realpath(native) in {e["path"] for e in after["open_files"]}
        assert a.get_pool_stats()["opens"] == after["opens"]
    finally:
        get_default_pool().invalidate(native)
        get_default_pool().invalidate(path)
        own.shutdown()


# ---------------------------------------------------------------- other handles on the file


def test_plain_h5py_open_in_same_process_while_pooled(
    pool: HDF5ConnectionPool, tmp_path: Path
) -> None:
    path = make_file(tmp_path / "a.h5", 1.0)
    with pool.checkout(path) as pooled:
        assert pooled["data"][0] == 1.0
    with h5py.File(path) as plain:  # default flags, like a viewer embedding the facade
        assert plain["data"][0] == 1.0
        assert read_value(pool, path) == 1.0
    assert pooled.id.valid  # closing the viewer's file leaves the pooled handle alone
    assert read_value(pool, path) == 1.0
    assert pool.stats()["opens"] == 1


def test_plain_handle_held_open_does_not_make_pool_stale(
    pool: HDF5ConnectionPool, tmp_path: Path
) -> None:
    path = make_file(tmp_path / "a.h5", 1.0)
    with h5py.File(path, "r") as plain:
        assert plain["data"].attrs["v"] == 1.0
        rewrite_in_place(path, 9.0, add="added")
        with pool.checkout(path) as f:
            assert "added" in f
            assert f["data"].attrs["v"] == 9.0
        assert plain["data"].shape == (64,)


def _geometry(shape: tuple[int, int]) -> GeometryMetadata:
    return GeometryMetadata(
        bcx=10.0, bcy=12.0, det_dist=5000.0, lambda_=1.54, pix_dim=0.075, shape=shape
    )


def test_write_while_pool_and_another_process_hold_the_file(tmp_path: Path) -> None:
    path = write_native_file(tmp_path / "busy.h5", DemoSpec(shape=(24, 20), n_delay=6, n_q=3))
    pool = HDF5ConnectionPool(max_size=4)
    facade = HDF5Facade(pool=pool)
    sqmap = facade.read_qmap(path).sqmap  # the pool now holds a handle
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, h5py\n"
            f"f = h5py.File({str(path)!r}, 'r')\n"
            "print('opened', flush=True)\n"
            "sys.stdin.readline()\n"
            "print(float(f['/xpcs/qmap/sqmap'][()].sum()), 'simplemask' in f, flush=True)\n"
            "f.close()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout is not None
        assert reader.stdin is not None
        assert reader.stdout.readline().strip() == "opened"
        mask = MaskSchema(
            mask=(np.arange(24 * 20).reshape(24, 20) % 3 > 0).astype(np.uint8),
            metadata=_geometry((24, 20)),
            description="while busy",
        )
        with pool.checkout(path) as held:  # and a handle is checked out during the write
            facade.write_mask(path, mask)
            assert held["/xpcs/qmap/sqmap"].shape == (24, 20)  # its snapshot still works
        assert facade.read_mask(path) == mask
        np.testing.assert_array_equal(facade.read_qmap(path).sqmap, sqmap)
        assert [v["version"] for v in facade.list_mask_versions(path)] == [1]
        out, err = reader.communicate("go\n", timeout=SUBPROCESS_TIMEOUT)
        assert reader.returncode == 0, err
        total, has_mask = out.split()
        assert float(total) == pytest.approx(float(sqmap.sum(dtype=np.float64)), rel=1e-6)
        assert has_mask == "False"  # the other process keeps its consistent old snapshot
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.communicate()
        pool.shutdown()


# ---------------------------------------------------------------- sharing and the data root

EXCLUSIVE = (
    "import fcntl, sys\nf = open(sys.argv[1], 'rb')\nfcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)"
)


def test_pooled_handle_holds_no_lock_on_the_file(pool: HDF5ConnectionPool, tmp_path: Path) -> None:
    path = make_file(tmp_path / "a.h5", 1.0)
    with pool.checkout(path) as f:
        assert f["data"][0] == 1.0
        # Even while the handle is in use, another process may lock the file exclusively,
        # as HDF5 does when a program opens it for writing.
        done = subprocess.run([sys.executable, "-c", EXCLUSIVE, str(path)], capture_output=True)
        assert done.returncode == 0, done.stderr.decode()
    assert pool.stats()["pool_size"] == 1


def test_borrow_reports_the_identity_read(pool: HDF5ConnectionPool, tmp_path: Path) -> None:
    path = make_file(tmp_path / "a.h5", 1.0)
    with pool.borrow(path) as co:
        st = os.stat(path)
        assert (co.identity.device, co.identity.inode) == (st.st_dev, st.st_ino)
        assert co.identity.ctime_ns == st.st_ctime_ns
        assert co.swmr is False


def test_a_name_swapped_during_the_open_is_never_served(tmp_path: Path) -> None:
    """The pool opens by name only after a descriptor taken beneath the root; a symlink
    swapped in between is caught by comparing inodes, and the open retried."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "d").mkdir(parents=True)
    outside.mkdir()
    make_file(root / "d" / "x.h5", 1.0)
    make_file(outside / "x.h5", 4242.0)
    pool = HDF5ConnectionPool(max_size=2)
    real = os.path.realpath(root / "d" / "x.h5")
    original = h5py.File.__init__
    swaps = 0

    def swapping_init(self: Any, name: Any, *args: Any, **kwargs: Any) -> None:
        # The attacker's move, at the worst moment: just before HDF5 opens the name.
        nonlocal swaps
        if swaps == 0:
            swaps += 1
            os.rename(root / "d", root / ".d")
            os.symlink(outside, root / "d")
            try:
                original(self, name, *args, **kwargs)
            finally:
                os.unlink(root / "d")
                os.rename(root / ".d", root / "d")
            return
        original(self, name, *args, **kwargs)

    h5py.File.__init__ = swapping_init
    try:
        with pool.checkout(real, "d/x.h5", root=root) as f:
            assert f["data"][0] == 1.0
    finally:
        h5py.File.__init__ = original
        pool.shutdown()
    assert swaps == 1


def test_a_folder_turned_symlink_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "d").mkdir(parents=True)
    outside.mkdir()
    make_file(outside / "x.h5", 4242.0)
    real = os.path.realpath(root / "d" / "x.h5")  # resolved while d was a folder
    os.rmdir(root / "d")
    os.symlink(outside, root / "d")
    pool = HDF5ConnectionPool(max_size=2)
    try:
        with pytest.raises(PermissionError), pool.checkout(real, "d/x.h5", root=root):
            pass
    finally:
        pool.shutdown()


def test_private_view_holds_no_lock_either(pool: HDF5ConnectionPool, tmp_path: Path) -> None:
    path = make_file(tmp_path / "a.h5", 1.0)
    with h5py.File(path, "r", locking=False) as plain:  # this process holds the inode open
        rewrite_in_place(path, 9.0, add="added")
        with pool.checkout(path) as f:
            assert f.driver == "stdio"  # a private view: the shared one would be stale
            assert f["data"].attrs["v"] == 9.0
            done = subprocess.run([sys.executable, "-c", EXCLUSIVE, str(path)], capture_output=True)
            assert done.returncode == 0, done.stderr.decode()
        assert plain["data"].shape == (64,)


def test_a_replaced_handle_in_use_is_waited_for_then_a_fresh_one_opened(tmp_path: Path) -> None:
    path = make_file(tmp_path / "a.h5", 1.0)
    pool = HDF5ConnectionPool(max_size=2)
    got: list[tuple[float, str]] = []

    def reader() -> None:
        with pool.checkout(path) as f:
            got.append((float(f["data"].attrs["v"]), f.driver))

    try:
        with pool.checkout(path):
            rewrite_in_place(path, 9.0)
            second = threading.Thread(target=reader)
            second.start()
            second.join(0.3)
            assert second.is_alive()  # waiting for the replaced handle to be checked in
        second.join(30)
        assert got == [(9.0, "sec2")]  # a fresh, shared-driver handle: no private view
    finally:
        pool.shutdown()


def test_beneath_a_root_no_unverifiable_private_view_is_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import xpcs_io.pool as pool_module

    monkeypatch.setattr(pool_module, "_RETIRED_WAIT", 0.2)
    root = tmp_path / "root"
    root.mkdir()
    path = make_file(root / "a.h5", 1.0)
    real = os.path.realpath(path)
    pool = HDF5ConnectionPool(max_size=2)
    try:
        with pool.checkout(real, "a.h5", root=root):
            rewrite_in_place(path, 9.0)
            # This thread itself still holds the replaced handle: the only way to read the
            # new bytes now would be a private view through the stdio driver, whose opened
            # file cannot be checked against the root: refused, retryable.
            with (
                pytest.raises(FileBusyError, match="still being read"),
                pool.checkout(real, "a.h5", root=root),
            ):
                pass
        with pool.checkout(real, "a.h5", root=root) as f:
            assert f["data"].attrs["v"] == 9.0
    finally:
        pool.shutdown()
