"""Large response bodies reuse memory only once nothing can read the old body any more."""

from __future__ import annotations

import gc
import mmap
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from tests.clientsupport import CLIENTS, run
from tests.conftest import Server
from xpcs_io.client import bodypool
from xpcs_io.client.bodypool import MIN_BYTES, BodyPool
from xpcs_io.tools.demo import DemoSpec, write_native_file

N = MIN_BYTES + 12345


def _collect() -> None:
    gc.collect()


def test_small_bodies_are_plain_arrays() -> None:
    pool = BodyPool()
    body = pool.take(1000)
    assert body.flags.owndata
    assert body.nbytes == 1000
    del body
    _collect()
    assert pool.idle() == 0


def test_a_slab_comes_back_only_when_every_view_is_gone() -> None:
    pool = BodyPool()
    body = pool.take(N)
    assert body.nbytes == N
    assert body.flags.writeable
    assert body.dtype == np.uint8
    body[:] = 7
    views: list[Any] = [
        body[100:200],  # a numpy view
        np.frombuffer(body.data[5:N], dtype=np.float32, count=10),  # through a memoryview
        body.data[1:10],  # a bare memoryview
        body[:1000].view(np.int16)[3:9].reshape(2, 3),  # a view of a view
    ]
    del body
    for i in range(len(views)):
        _collect()
        assert pool.idle() == 0, f"a slab came back while view {i}.. still lived"
        assert bytes(views[i])[:1] == b"\x07"
        views[i] = None
    _collect()
    assert pool.idle() >= N
    again = pool.take(N)
    assert pool.reused == 1
    assert pool.idle() == 0
    assert again.nbytes == N


def test_a_slightly_larger_body_fits_the_slab_an_earlier_one_left() -> None:
    """Compressed answers of one file differ a little in size between reads: each must
    reuse the slab the one before it left, not map fresh memory."""
    pool = BodyPool()
    for i in range(6):
        body = pool.take(N + (i % 3) * (N // 10))  # up to 20% larger than the first
        body[-1] = 1
        del body
        _collect()
    assert pool.reused == 5


def test_a_body_collected_while_the_pool_is_locked_comes_back_later() -> None:
    """A finalizer may run in a thread that holds the pool's lock (a collection started
    inside ``take``): it must not wait for the lock, and the slab is not lost."""
    pool = BodyPool()
    body = pool.take(N)
    with pool._lock:
        del body  # the finalizer runs here, in this thread, with the lock held
        _collect()
        assert len(pool._returned) == 1
    assert pool.idle() >= N
    pool.take(N)
    assert pool.reused == 1


def test_reuse_takes_a_fitting_slab_and_idle_memory_is_bounded() -> None:
    pool = BodyPool(idle_bytes=3 * N)
    bodies = [pool.take(N) for _ in range(5)]
    del bodies
    _collect()
    assert 0 < pool.idle() <= 3 * N  # the oldest were dropped past the bound
    small = pool.take(MIN_BYTES)  # N is under twice this: a fitting slab
    assert pool.reused == 1
    huge = pool.take(3 * N)  # no idle slab that large: a fresh one
    assert pool.reused == 1
    del small, huge
    expiring = BodyPool(idle_seconds=0)
    gone = expiring.take(N)
    del gone
    _collect()
    expiring.take(MIN_BYTES)  # every idle slab has expired by now
    assert expiring.reused == 0


def test_an_idle_slab_is_advised_free_and_still_takes_writes(monkeypatch: Any) -> None:
    advised: list[int] = []
    real = mmap.mmap.madvise

    class Probe:
        @staticmethod
        def advise(slab: mmap.mmap, name: str) -> None:
            advised.append(getattr(mmap, name, -1))
            if hasattr(mmap, name):
                real(slab, getattr(mmap, name))  # raises if the kernel refuses the advice

    monkeypatch.setattr(bodypool, "_advise", Probe.advise)
    pool = BodyPool()
    body = pool.take(N)
    del body
    _collect()
    assert getattr(mmap, "MADV_FREE", -1) in advised
    again = pool.take(N)
    again[:] = 3  # every page written again after MADV_FREE keeps what was written
    assert int(again.sum()) == 3 * N


@pytest.fixture(scope="module")
def maps(data_root: Path) -> list[str]:
    """Three q-map files whose sqmap differs (bodies above MIN_BYTES)."""
    folder = data_root / "bodypool"
    folder.mkdir(exist_ok=True)
    names = []
    for i in range(3):
        path = write_native_file(folder / f"m{i}.hdf5", DemoSpec(shape=(700, 760)))
        with h5py.File(path, "r+") as f:
            f["/xpcs/qmap/sqmap"][...] = f["/xpcs/qmap/sqmap"][()] + 100.0 * i
        names.append(f"bodypool/m{i}.hdf5")
    return names


@pytest.mark.parametrize("client", CLIENTS)
def test_results_held_are_never_overwritten_and_dropped_ones_are_reused(
    server: Server, maps: list[str], client: str
) -> None:
    with h5py.File(server.root / maps[0], "r") as f:
        base = f["/xpcs/qmap/sqmap"][()]

    def use(api: Any) -> Any:
        return [api.read_qmap(m) for m in maps]

    first = run(client, server.url, lambda api: api.read_qmap(maps[0]))
    assert first.sqmap.nbytes * 3 > MIN_BYTES
    before = bodypool.BODIES.reused
    # Held while two more bodies are received: each must have its own memory.
    held = [first, *run(client, server.url, lambda api: [api.read_qmap(m) for m in maps[1:]])]
    for i, q in enumerate(held):
        np.testing.assert_array_equal(q.sqmap, base + 100.0 * i)
    del held, first
    _collect()
    # Dropped: the next bodies come from the slabs they used, and are right.
    again = run(client, server.url, use)
    assert bodypool.BODIES.reused >= before + 1
    for i, q in enumerate(again):
        np.testing.assert_array_equal(q.sqmap, base + 100.0 * i)


def test_bodies_alive_at_exit_keep_their_memory(tmp_path: Path) -> None:
    """At interpreter exit, an exit handler may still use a body: its slab must not go back
    to the pool (or be marked free) before the body itself is gone."""
    script = tmp_path / "at_exit.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import atexit
            from xpcs_io.client.bodypool import BODIES

            def check():
                other = BODIES.take({N})
                other[:] = 9
                assert held.ctypes.data != other.ctypes.data, "a live body's slab was reused"
                assert int(held[0]) == 1 and int(held[-1]) == 1
                print("intact", flush=True)

            atexit.register(check)
            held = BODIES.take({N})
            held[:] = 1
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "intact" in done.stdout, done.stderr


def test_without_private_mappings_bodies_are_plain_arrays(monkeypatch: Any) -> None:
    monkeypatch.setattr(bodypool, "_PRIVATE", None)  # as on Windows
    pool = BodyPool()
    body = pool.take(N)
    assert body.flags.owndata
    assert body.nbytes == N
