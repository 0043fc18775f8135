"""Versioned, atomic, locked writes on real files: accumulation, symlinks, file mode, leftovers,
concurrent writers (threads and processes), SIGKILL at random moments, readers during writes,
permissions and lock timeouts."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import inspect
import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt
import pytest

from xpcs_io.atomic import TMP_MARK
from xpcs_io.errors import WriteLockTimeout
from xpcs_io.facade import HDF5Facade
from xpcs_io.locking import FileWriteLock, lock_path_for
from xpcs_io.pool import HDF5ConnectionPool
from xpcs_io.schemas import GeometryMetadata, MaskSchema
from xpcs_io.tools.demo import DemoSpec, write_native_file

Array = npt.NDArray[Any]
SHAPE = (24, 20)
SUBPROCESS_TIMEOUT = 30.0


def mask_for(description: str, shape: tuple[int, int]) -> Array:
    """The mask a writer stores under ``description`` (the same in every process)."""
    seed = int(hashlib.sha256(description.encode()).hexdigest()[:12], 16)
    return (np.random.default_rng(seed).random(shape) > 0.5).astype(np.uint8)


def geometry(shape: tuple[int, int] = SHAPE) -> GeometryMetadata:
    return GeometryMetadata(
        bcx=10.0, bcy=12.0, det_dist=5000.0, lambda_=1.54, pix_dim=0.075, shape=shape
    )


def schema_for(description: str, shape: tuple[int, int] = SHAPE) -> MaskSchema:
    return MaskSchema(
        mask=mask_for(description, shape), metadata=geometry(shape), description=description
    )


def sha(arr: Array) -> str:
    return hashlib.sha256(arr.tobytes()).hexdigest()


# A writer in another interpreter: prints "ready" once imported, waits for a line on stdin,
# then writes ``count`` masks (forever if negative) described "<prefix>-<i>", printing "wrote"
# after each; with a last argument "step", it waits for another line before each later one.
WRITER = f"""
from __future__ import annotations
import hashlib, sys
import numpy as np
from xpcs_io.facade import HDF5Facade
from xpcs_io.pool import HDF5ConnectionPool
from xpcs_io.schemas import GeometryMetadata, MaskSchema

{inspect.getsource(mask_for)}

path, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
shape = (int(sys.argv[4]), int(sys.argv[5]))
step = sys.argv[6:] == ["step"]
facade = HDF5Facade(pool=HDF5ConnectionPool(max_size=1))
geometry = GeometryMetadata(
    bcx=10.0, bcy=12.0, det_dist=5000.0, lambda_=1.54, pix_dim=0.075, shape=shape
)
print("ready", flush=True)
sys.stdin.readline()
i = 0
while count < 0 or i < count:
    if step and i:
        sys.stdin.readline()
    description = f"{{prefix}}-{{i}}"
    schema = MaskSchema(
        mask=mask_for(description, shape), metadata=geometry, description=description
    )
    facade.write_mask(path, schema, compression=None)
    i += 1
    print("wrote", flush=True)
"""


class Writer:
    """A writer process started on ``path``; ``go()`` lets it write (with ``step``: write
    one mask; each later ``go()`` the next one)."""

    def __init__(
        self,
        path: Path,
        prefix: str,
        count: int,
        shape: tuple[int, int] = SHAPE,
        *,
        step: bool = False,
    ):
        args = [str(path), prefix, str(count), *map(str, shape), *(["step"] if step else [])]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            _, err = self.proc.communicate()
            pytest.fail(f"writer did not start: {err}")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def wait_writes(self, count: int) -> None:
        """Return once the writer has reported ``count`` more completed writes."""
        assert self.proc.stdout is not None
        for _ in range(count):
            line = self.proc.stdout.readline()
            assert line.strip() == "wrote", f"writer stopped: {line!r}"

    def finish(self) -> None:
        _, err = self.proc.communicate(timeout=SUBPROCESS_TIMEOUT)
        assert self.proc.returncode == 0, err

    def kill(self) -> str:
        """SIGKILL the writer (if still running); return its stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        _, err = self.proc.communicate(timeout=SUBPROCESS_TIMEOUT)
        return err or ""


@pytest.fixture
def facade() -> Iterator[HDF5Facade]:
    pool = HDF5ConnectionPool(max_size=4)
    yield HDF5Facade(pool=pool)
    pool.shutdown()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if TMP_MARK in p.name)


# ---------------------------------------------------------------- versions


def test_versions_accumulate_and_read_back(facade: HDF5Facade, tmp_path: Path) -> None:
    path = write_native_file(tmp_path / "v.h5", DemoSpec(shape=SHAPE, n_delay=5, n_q=3))
    rng = np.random.default_rng(3)
    base = rng.random(SHAPE) > 0.3
    masks: list[Array] = [
        base.astype(np.int32),
        (~base).astype(np.uint8),
        np.asfortranarray(base.astype(np.int64)),
        base.astype(np.uint16).T.copy().T,  # C order again, uint16
        np.ones(SHAPE, dtype=np.bool_),
    ]
    for i, m in enumerate(masks, start=1):
        record = facade.write_mask_version(
            path, MaskSchema(mask=m, metadata=geometry(), description=f"d{i}"), writer=f"w{i}"
        )
        assert record["version"] == i
        assert record["sha256"] == sha(m)
    records = facade.list_mask_versions(path)
    assert [r["version"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["description"] for r in records] == ["d1", "d2", "d3", "d4", "d5"]
    assert [r["writer"] for r in records] == ["w1", "w2", "w3", "w4", "w5"]
    assert [r["created"] for r in records] == sorted(r["created"] for r in records)
    for i, (m, r) in enumerate(zip(masks, records, strict=True), start=1):
        got = facade.read_mask(path, version=i)
        np.testing.assert_array_equal(got.mask, m)
        assert got.mask.dtype == m.dtype
        assert got.description == f"d{i}"
        assert got.metadata == geometry()
        assert r["sha256"] == sha(m) == sha(got.mask)
        assert r["dtype"] == m.dtype.str
        assert r["shape"] == list(SHAPE)
    assert facade.read_mask(path) == facade.read_mask(path, version=5)
    with h5py.File(path, "r") as f:
        grp = f["/simplemask/mask"]
        assert grp.attrs["current_version"] == 5
        np.testing.assert_array_equal(grp["mask"][()], masks[-1])
        for i, m in enumerate(masks, start=1):
            vgrp = grp[f"versions/v{i:06d}"]
            assert vgrp.attrs["sha256"] == sha(vgrp["mask"][()]) == sha(m)
        np.testing.assert_array_equal(f["/xpcs/qmap/sqmap"].shape, SHAPE)  # rest untouched


def test_write_creates_missing_file_without_default_writer_name(
    facade: HDF5Facade, tmp_path: Path
) -> None:
    path = tmp_path / "new.h5"
    facade.write_mask(path, schema_for("first"))
    assert path.is_file()
    (record,) = facade.list_mask_versions(path)
    assert record["version"] == 1
    assert isinstance(record["writer"], str)
    assert record["writer"]
    np.testing.assert_array_equal(facade.read_mask(path).mask, mask_for("first", SHAPE))


# ---------------------------------------------------------------- what a rename must keep


def test_write_through_symlink_updates_target(facade: HDF5Facade, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    target = write_native_file(data / "real.h5", DemoSpec(shape=SHAPE, n_delay=5, n_q=3))
    views = tmp_path / "views"
    views.mkdir()
    link = views / "link.h5"
    link.symlink_to(Path("..") / "data" / "real.h5")
    before = os.readlink(link)
    for d in ("a", "b"):
        facade.write_mask(link, schema_for(d))
    assert link.is_symlink()
    assert os.readlink(link) == before
    assert [p.name for p in views.iterdir()] == ["link.h5"]  # nothing written beside the link
    assert lock_path_for(target).exists()
    assert leftovers(data) == []
    assert [r["description"] for r in facade.list_mask_versions(target)] == ["a", "b"]
    np.testing.assert_array_equal(facade.read_mask(link).mask, mask_for("b", SHAPE))
    with h5py.File(target, "r") as f:
        np.testing.assert_array_equal(f["/simplemask/mask/mask"][()], mask_for("b", SHAPE))


def test_file_mode_is_kept(facade: HDF5Facade, tmp_path: Path) -> None:
    path = write_native_file(tmp_path / "m.h5", DemoSpec(shape=SHAPE, n_delay=5, n_q=3))
    os.chmod(path, 0o640)
    facade.write_mask(path, schema_for("x"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    os.chmod(path, 0o604)
    facade.write_mask(path, schema_for("y"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o604
    assert len(facade.list_mask_versions(path)) == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may give a file to another owner")
def test_owner_and_group_are_kept(facade: HDF5Facade, tmp_path: Path) -> None:
    path = write_native_file(tmp_path / "o.h5", DemoSpec(shape=SHAPE, n_delay=5, n_q=3))
    os.chown(path, 12345, 23456)
    facade.write_mask(path, schema_for("x"))
    st = path.stat()
    assert (st.st_uid, st.st_gid) == (12345, 23456)


def test_leftover_temp_files_are_removed_by_next_write(facade: HDF5Facade, tmp_path: Path) -> None:
    path = write_native_file(tmp_path / "l.h5", DemoSpec(shape=SHAPE, n_delay=5, n_q=3))
    stale = [
        tmp_path / f".l.h5{TMP_MARK}99999-deadbeef",
        tmp_path / f".l.h5{TMP_MARK}1-00000000",
    ]
    for p in stale:
        p.write_bytes(b"half-written copy from a killed writer")
    other = tmp_path / f".other.h5{TMP_MARK}1-00000000"  # another file's: not ours to delete
    other.write_bytes(b"x")
    facade.write_mask(path, schema_for("x"))
    assert not any(p.exists() for p in stale)
    assert other.exists()
    assert leftovers(tmp_path) == [other.name]
    assert facade.read_mask(path).description == "x"


# ---------------------------------------------------------------- concurrent writers


def test_concurrent_writers_threads_and_processes(tmp_path: Path) -> None:
    path = write_native_file(tmp_path / "c.h5", DemoSpec(shape=SHAPE, n_delay=5, n_q=3))
    procs = [Writer(path, f"p{k}", 5) for k in range(2)]
    pool = HDF5ConnectionPool(max_size=2)
    facade = HDF5Facade(pool=pool)
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def thread_writer(k: int) -> None:
        try:
            barrier.wait()
            for i in range(5):
                facade.write_mask(path, schema_for(f"t{k}-{i}"))
        except BaseException as exc:
            errors.append(exc)

    try:
        for w in procs:
            w.wait_ready()
        threads = [threading.Thread(target=thread_writer, args=(k,)) for k in range(4)]
        for w in procs:
            w.go()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=SUBPROCESS_TIMEOUT)
        for w in procs:
            w.finish()
    finally:
        for w in procs:
            w.kill()
    assert errors == []
    expected = {f"t{k}-{i}" for k in range(4) for i in range(5)}
    expected |= {f"p{k}-{i}" for k in range(2) for i in range(5)}
    records = facade.list_mask_versions(path)
    assert [r["version"] for r in records] == list(range(1, 31))
    counts = collections.Counter(r["description"] for r in records)
    assert set(counts) == expected
    assert set(counts.values()) == {1}
    for r in records:
        got = facade.read_mask(path, version=r["version"])
        assert got.description == r["description"]
        np.testing.assert_array_equal(got.mask, mask_for(r["description"], SHAPE))
        assert r["sha256"] == sha(got.mask)
    # Each writer's own writes appear in the order it made them.
    for prefix in [f"t{k}" for k in range(4)] + [f"p{k}" for k in range(2)]:
        mine = [r["description"] for r in records if r["description"].startswith(prefix + "-")]
        assert mine == [f"{prefix}-{i}" for i in range(5)]
    assert leftovers(tmp_path) == []
    pool.shutdown()


# ---------------------------------------------------------------- crash safety


def _check_file(path: Path, seen: dict[int, str], payload_sha: str) -> int:
    """Check the file after a crash; return how many versions it holds."""
    with h5py.File(path, "r") as f:
        assert sha(f["payload"][()]) == payload_sha
        if "simplemask" not in f:
            assert not seen
            return 0
        grp = f["/simplemask/mask"]
        names = sorted(grp["versions"])
        numbers = [int(n[1:]) for n in names]
        assert numbers == list(range(1, len(numbers) + 1)), numbers
        assert set(seen) <= set(numbers)  # no version ever disappears
        for n, name in zip(numbers, names, strict=True):
            vgrp = grp["versions"][name]
            data = vgrp["mask"][()]
            recorded = str(vgrp.attrs["sha256"])
            assert recorded == sha(data), f"version {n} does not match its sha256"
            assert seen.setdefault(n, recorded) == recorded, f"version {n} changed"
            np.testing.assert_array_equal(data, mask_for(str(vgrp.attrs["description"]), SHAPE))
        assert int(grp.attrs["current_version"]) == numbers[-1]
        np.testing.assert_array_equal(grp["mask"][()], grp["versions"][names[-1]]["mask"][()])
        return len(numbers)


@pytest.mark.slow
def test_sigkill_at_random_moments_never_corrupts(tmp_path: Path) -> None:
    path = tmp_path / "crash.h5"
    payload = np.random.default_rng(0).integers(0, 256, 6_000_000, dtype=np.uint8)
    with h5py.File(path, "w") as f:
        f["payload"] = payload  # ~6 MB copied by every write: each takes some milliseconds
    payload_sha = sha(payload)
    rng = random.Random(20240601)
    seen: dict[int, str] = {}
    kills_mid_write = 0
    runs = 20
    upcoming = Writer(path, "run0", -1)
    current: Writer | None = None
    try:
        for run in range(runs):
            current = upcoming
            current.wait_ready()
            current.go()
            # Start the next writer now, so its imports overlap with this one's writes.
            upcoming = Writer(path, f"run{run + 1}", -1)
            # Bound by counts, not time: each writer completes a write or two whatever the
            # machine's load, then dies at a random moment of the next one.
            current.wait_writes(rng.randint(1, 2))
            time.sleep(rng.uniform(0.0, 0.03))
            err = current.kill()
            assert current.proc.returncode == -signal.SIGKILL, err
            if leftovers(tmp_path):
                kills_mid_write += 1
            _check_file(path, seen, payload_sha)
    finally:
        upcoming.kill()
        if current is not None:
            current.kill()
    assert len(seen) >= runs, "a completed write was lost"
    assert kills_mid_write >= 3, "no kill landed inside a write: the test proves nothing"
    # The next write cleans up after the killed writers and continues the numbering.
    pool = HDF5ConnectionPool(max_size=1)
    facade = HDF5Facade(pool=pool)
    facade.write_mask(path, schema_for("after"), compression=None)
    assert leftovers(tmp_path) == []
    n = _check_file(path, seen, payload_sha)
    assert n == len(seen)
    assert facade.read_mask(path).description == "after"
    assert facade.list_mask_versions(path)[-1]["version"] == n
    pool.shutdown()


# ---------------------------------------------------------------- readers during writes


@pytest.mark.parametrize("where", ["thread", "process"])
def test_reader_never_sees_a_torn_state(tmp_path: Path, where: str) -> None:
    path = tmp_path / "r.h5"
    with h5py.File(path, "w") as f:
        f["payload"] = np.random.default_rng(1).integers(0, 256, 1_000_000, dtype=np.uint8)
    n_writes = 15
    init_pool = HDF5ConnectionPool(max_size=1)
    HDF5Facade(pool=init_pool).write_mask(path, schema_for("w-init"), compression=None)
    init_pool.shutdown()
    allowed = {"w-init"} | {f"w-{i}" for i in range(n_writes)}
    reader_pool = HDF5ConnectionPool(max_size=2)
    reader = HDF5Facade(pool=reader_pool)
    stop = threading.Event()
    # Driven by counts, not speeds: ``phase`` is 2i+1 while write i runs and 2i+2 once it
    # returned; the next write starts only after a read that began in phase 2i+2 finished.
    phase = 0
    seen: list[tuple[int, int, str]] = []  # (phase a read began in, ended in, description)
    errors: list[BaseException] = []

    def read_loop() -> None:
        try:
            while not stop.is_set():
                began = phase
                got = reader.read_mask(path)
                assert got.description in allowed, got.description
                assert got.description is not None
                np.testing.assert_array_equal(got.mask, mask_for(got.description, SHAPE))
                seen.append((began, phase, got.description))
        except BaseException as exc:
            errors.append(exc)

    def wait_for_a_read_after(write: int) -> None:
        for _ in range(int(SUBPROCESS_TIMEOUT / 0.005)):  # bounded: a safety cap
            if errors or any(began >= 2 * write + 2 for began, _, _ in seen[-50:]):
                return
            time.sleep(0.005)
        raise AssertionError(f"no read began after write {write} within the cap")

    thread = threading.Thread(target=read_loop)
    if where == "process":
        writer = Writer(path, "w", n_writes, step=True)
        try:
            writer.wait_ready()
            thread.start()
            for i in range(n_writes):
                phase = 2 * i + 1
                writer.go()  # one write
                writer.wait_writes(1)
                phase = 2 * i + 2
                wait_for_a_read_after(i)
            writer.finish()
        finally:
            writer.kill()
    else:
        writer_pool = HDF5ConnectionPool(max_size=1)
        writer_facade = HDF5Facade(pool=writer_pool)
        thread.start()
        for i in range(n_writes):
            phase = 2 * i + 1
            writer_facade.write_mask(path, schema_for(f"w-{i}"), compression=None)
            phase = 2 * i + 2
            wait_for_a_read_after(i)
        writer_pool.shutdown()
    stop.set()
    thread.join(timeout=SUBPROCESS_TIMEOUT)
    reader_pool.shutdown()
    assert errors == []
    # A read with no write running from its start to its end sees the last write, exactly.
    for began, ended, description in seen:
        if began == ended and began % 2 == 0:
            assert description == ("w-init" if began == 0 else f"w-{began // 2 - 1}"), (
                began,
                description,
            )
    assert seen[-1][2] == f"w-{n_writes - 1}"
    order = [-1 if d == "w-init" else int(d.split("-")[1]) for _, _, d in seen]
    assert order == sorted(order), "a reader went back in time"
    overlapping = sum(began % 2 == 1 or ended != began for began, ended, _ in seen)
    assert overlapping >= 1, "the reader never overlapped the writer"
    print(f"{len(seen)} reads, {overlapping} of them overlapping a write")


# ---------------------------------------------------------------- permissions and locks


@pytest.mark.skipif(os.geteuid() == 0, reason="root bypasses directory permissions")
def test_read_only_directory_is_permission_error(facade: HDF5Facade, tmp_path: Path) -> None:
    d = tmp_path / "ro"
    d.mkdir()
    existing = write_native_file(d / "e.h5", DemoSpec(shape=SHAPE, n_delay=5, n_q=3))
    facade.write_mask(existing, schema_for("before"))  # its lock file exists now
    before = existing.read_bytes()
    os.chmod(d, 0o555)
    try:
        with pytest.raises(PermissionError):
            facade.write_mask(d / "new.h5", schema_for("x"))
        with pytest.raises(PermissionError):
            facade.write_mask(existing, schema_for("x"))
        assert not (d / "new.h5").exists()
        assert existing.read_bytes() == before
        assert leftovers(d) == []
    finally:
        os.chmod(d, 0o755)


HOLD_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o666)
fcntl.lockf(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.readline()
"""


@contextlib.contextmanager
def lock_held_by_another_process(target: Path) -> Iterator[None]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lock_path_for(target))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        yield
    finally:
        proc.communicate("done\n", timeout=SUBPROCESS_TIMEOUT)


def test_lock_held_by_another_process_times_out(tmp_path: Path) -> None:
    path = write_native_file(tmp_path / "k.h5", DemoSpec(shape=SHAPE, n_delay=5, n_q=3))
    pool = HDF5ConnectionPool(max_size=1)
    facade = HDF5Facade(pool=pool, lock_timeout=0.3)
    before = path.read_bytes()
    with lock_held_by_another_process(path.resolve()):
        start = time.monotonic()
        with pytest.raises(WriteLockTimeout, match=r"k\.h5") as info:
            facade.write_mask(path, schema_for("blocked"))
        elapsed = time.monotonic() - start
        assert isinstance(info.value, TimeoutError)
        # Well below the 60 s default a forgotten timeout would wait (a cap, not a speed).
        assert 0.3 <= elapsed < 30.0
        assert path.read_bytes() == before
        assert leftovers(tmp_path) == []
    facade.write_mask(path, schema_for("free"))  # released: the write goes through
    assert [r["description"] for r in facade.list_mask_versions(path)] == ["free"]
    pool.shutdown()


def test_lock_held_by_another_thread_times_out(tmp_path: Path) -> None:
    path = write_native_file(tmp_path / "t.h5", DemoSpec(shape=SHAPE, n_delay=5, n_q=3))
    pool = HDF5ConnectionPool(max_size=1)
    facade = HDF5Facade(pool=pool, lock_timeout=0.3)
    outcome: list[BaseException | None] = []

    def other() -> None:
        try:
            facade.write_mask(path, schema_for("blocked"))
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    with FileWriteLock(path.resolve(), timeout=1.0):
        t = threading.Thread(target=other)
        t.start()
        t.join(timeout=SUBPROCESS_TIMEOUT)
    assert len(outcome) == 1
    assert isinstance(outcome[0], WriteLockTimeout)
    facade.write_mask(path, schema_for("free"))  # the lock was released on exit
    assert [r["description"] for r in facade.list_mask_versions(path)] == ["free"]
    pool.shutdown()


def test_write_through_a_symlink_loop_is_refused_and_the_link_kept(tmp_path: Path) -> None:
    loop = tmp_path / "loop.hdf5"
    loop.symlink_to("loop.hdf5")
    geo = GeometryMetadata(bcx=1, bcy=1, det_dist=1, lambda_=1, pix_dim=1, shape=(4, 4))
    with pytest.raises(FileNotFoundError, match="symlink loop"):
        HDF5Facade(pool=HDF5ConnectionPool(2)).write_mask(
            loop, MaskSchema(mask=np.ones((4, 4), np.uint8), metadata=geo)
        )
    assert loop.is_symlink()
