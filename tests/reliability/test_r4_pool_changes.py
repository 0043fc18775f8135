"""R4: files that change while the server's pool holds them open. After each change the next
read over HTTP returns the new content or a clear 404/422, never the old content, and the
server keeps answering /health. Both a plain client and one with an ETag cache (which could
be fooled into a stale 304) read after every change.

Each content generation has its own detector distance and q-map, so a stale answer is seen
in the geometry and in the q-map checksum.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import httpx
import pytest

from xpcs_io.client import RemoteHDF5Facade
from xpcs_io.errors import HDF5ValidationError, ServerError
from xpcs_io.tools.demo import DemoSpec, write_native_file

from ..conftest import Server
from .support import Figure, scale, serving, sha256_of

ROUNDS = scale(2, 25)
SHAPE = (32, 32)


def _spec(gen: int) -> DemoSpec:
    return DemoSpec(shape=SHAPE, n_delay=8, n_q=4, det_dist=1000.0 + gen, seed=gen)


def _write(path: Path, gen: int) -> None:
    # Written beside and renamed in: the server may hold the old inode open (HDF5 locks it).
    tmp = path.with_name(f".{path.name}.{gen}.tmp")
    write_native_file(tmp, _spec(gen))
    os.replace(tmp, path)


def _expected(gen: int, scratch: Path) -> tuple[float, str]:
    p = scratch / f"expected-{gen}.hdf5"
    if not p.exists():
        _write(p, gen)
    with h5py.File(p, "r", locking=False) as f:
        return float(f["/xpcs/metadata/det_dist"][()]), sha256_of(f["/xpcs/qmap/sqmap"][()])


@dataclass
class Outcome:
    reads: int = 0
    stale: int = 0
    server_errors: int = 0
    wrong_errors: int = 0
    health_failures: int = 0


# Each change takes the file (and the generation it holds) and returns what a read must give:
# a new generation number, or an exception class name with its status.
Change = Callable[[Path, int, Path], "int | tuple[int, str]"]


def _rewrite_in_place(path: Path, gen: int, scratch: Path) -> int:
    # Same inode, same size: only the bytes (and mtime) change.
    new = gen + 1
    src = scratch / f"expected-{new}.hdf5"
    _expected(new, scratch)
    with open(src, "rb") as s, open(path, "r+b") as d:
        d.write(s.read())
        d.truncate()
    return new


def _replace_by_rename(path: Path, gen: int, scratch: Path) -> int:
    new = gen + 1
    tmp = path.with_name(f".{path.name}.new")
    _write(tmp, new)
    os.replace(tmp, path)
    return new


def _truncate_half(path: Path, gen: int, scratch: Path) -> tuple[int, str]:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    return 422, "HDF5ValidationError"


def _truncate_empty(path: Path, gen: int, scratch: Path) -> tuple[int, str]:
    with open(path, "r+b") as f:
        f.truncate(0)
    return 422, "HDF5ValidationError"


def _delete(path: Path, gen: int, scratch: Path) -> tuple[int, str]:
    path.unlink()
    return 404, "FileNotFoundError"


def _delete_and_recreate(path: Path, gen: int, scratch: Path) -> int:
    path.unlink()
    _write(path, gen + 1)
    return gen + 1


def _replace_by_directory(path: Path, gen: int, scratch: Path) -> tuple[int, str]:
    path.unlink()
    path.mkdir()
    return 422, "HDF5ValidationError"


def _replace_by_text(path: Path, gen: int, scratch: Path) -> tuple[int, str]:
    tmp = path.with_name(f".{path.name}.txt")
    tmp.write_text("not HDF5 at all\n" * 100)
    os.replace(tmp, path)
    return 422, "HDF5ValidationError"


def _replace_by_symlink(path: Path, gen: int, scratch: Path) -> int:
    target = path.with_name(f"{path.stem}-target-{gen + 1}.hdf5")
    _write(target, gen + 1)
    path.unlink()
    path.symlink_to(target.name)
    return gen + 1


CHANGES: dict[str, Change] = {
    "rewritten in place": _rewrite_in_place,
    "replaced by rename": _replace_by_rename,
    "truncated to half": _truncate_half,
    "truncated to 0 bytes": _truncate_empty,
    "deleted": _delete,
    "deleted and recreated": _delete_and_recreate,
    "replaced by a directory": _replace_by_directory,
    "replaced by a text file": _replace_by_text,
    "replaced by a symlink": _replace_by_symlink,
}


def _restore(path: Path, gen: int) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    _write(path, gen)


def _read_all(
    clients: list[RemoteHDF5Facade],
    srv: Server,
    rel: str,
    want: int | tuple[int, str],
    scratch: Path,
    out: Outcome,
    notes: list[str],
    label: str,
) -> None:
    for api in clients:
        for what in ("geometry", "qmap"):
            out.reads += 1
            try:
                if what == "geometry":
                    got: object = api.read_geometry_metadata(rel).det_dist
                else:
                    got = sha256_of(api.read_qmap(rel).sqmap)
            except ServerError as exc:
                out.server_errors += 1
                notes.append(f"{label}: {what}: 5xx {exc}")
                continue
            except (FileNotFoundError, HDF5ValidationError, KeyError) as exc:
                if isinstance(want, int):
                    out.wrong_errors += 1
                    notes.append(f"{label}: {what}: {type(exc).__name__} instead of new content")
                elif type(exc).__name__ != want[1]:
                    out.wrong_errors += 1
                    notes.append(f"{label}: {what}: {type(exc).__name__}, want {want[1]}")
                continue
            if not isinstance(want, int):
                out.stale += 1
                notes.append(f"{label}: {what}: served content, want {want[1]}")
                continue
            det_dist, qsha = _expected(want, scratch)
            if got != (det_dist if what == "geometry" else qsha):
                out.stale += 1
                notes.append(f"{label}: {what}: stale content")
    try:
        ok = httpx.get(f"{srv.url}/health", timeout=10).status_code == 200
    except httpx.TransportError:
        ok = False
    out.health_failures += not ok


@pytest.fixture(scope="module")
def pool_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("r4-root")
    with serving(root, tmp_path_factory.mktemp("r4-logs") / "server.log") as srv:
        yield srv


def _clients(srv: Server) -> list[RemoteHDF5Facade]:
    return [RemoteHDF5Facade(srv.url), RemoteHDF5Facade(srv.url, cache_bytes=64 << 20)]


@pytest.mark.slow
def test_files_changing_under_the_pool(pool_server: Server, tmp_path: Path) -> None:
    fig = Figure("R4", "files-changing", "Files rewritten, replaced, truncated, deleted")
    srv = pool_server
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    out = Outcome()
    per_change: dict[str, str] = {}
    clients = _clients(srv)
    try:
        for n, (label, change) in enumerate(CHANGES.items()):
            before = (out.stale, out.server_errors, out.wrong_errors, out.health_failures)
            rel = f"r4-{n}.hdf5"
            path = srv.root / rel
            gen = 10 * n
            _restore(path, gen)
            for _ in range(ROUNDS):
                _read_all(clients, srv, rel, gen, scratch, out, fig.notes, f"{label} (before)")
                want = change(path, gen, scratch)
                _read_all(clients, srv, rel, want, scratch, out, fig.notes, label)
                if isinstance(want, int):
                    gen = want
                else:
                    gen += 1
                    _restore(path, gen)
            after = (out.stale, out.server_errors, out.wrong_errors, out.health_failures)
            per_change[label] = "ok" if after == before else "FAILED"
    finally:
        for api in clients:
            api.close()
    fig["changes x rounds"] = f"{len(CHANGES)} x {ROUNDS}"
    fig["reads after a change (2 clients x 2 kinds)"] = out.reads
    fig["per change"] = per_change
    fig.target("stale reads", out.stale, "0", out.stale == 0)
    fig.target("5xx responses", out.server_errors, "0", out.server_errors == 0)
    fig.target("unclear or wrong errors", out.wrong_errors, "0", out.wrong_errors == 0)
    fig.target("/health failures", out.health_failures, "0", out.health_failures == 0)
    fig.target(
        "server process alive", srv.process.poll() is None, "True", srv.process.poll() is None
    )
    fig.check()


BUG_MTIME = (
    "BUG: a file rewritten in place with size and mtime preserved (cp -p, rsync --inplace -t) "
    "keeps its pool identity (dev, inode, size, mtime) and is served stale"
)


def test_rewrite_in_place_with_mtime_preserved_is_not_served_stale(
    pool_server: Server, tmp_path: Path
) -> None:
    fig = Figure("R4", "mtime-preserved", "Rewritten in place, size and mtime preserved")
    fig.bug = BUG_MTIME
    srv = pool_server
    path = srv.root / "r4-mtime.hdf5"
    _write(path, 1)
    other = tmp_path / "other.hdf5"
    _write(other, 2)
    assert path.stat().st_size == other.stat().st_size
    stale = 0
    with RemoteHDF5Facade(srv.url) as api:
        previous = api.read_geometry_metadata(path.name).det_dist
        for _ in range(ROUNDS):
            st = path.stat()
            data = other.read_bytes()
            other.write_bytes(path.read_bytes())  # swap contents for the next round
            with open(path, "r+b") as f:
                f.write(data)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # what cp -p / rsync -t do
            # Before Linux 6.13 the ctime moves once per clock tick: a rewrite within the
            # tick of the last change could keep it. Touch again (mtime kept) until it moved,
            # so the file's identity surely changed (bounded).
            for _ in range(1000):
                if path.stat().st_ctime_ns != st.st_ctime_ns:
                    break
                time.sleep(0.001)
                os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
            assert path.stat().st_ctime_ns != st.st_ctime_ns
            with h5py.File(path, "r", locking=False) as f:
                on_disk = float(f["/xpcs/metadata/det_dist"][()])
            assert on_disk != previous
            previous = on_disk
            stale += api.read_geometry_metadata(path.name).det_dist != on_disk
    fig["rounds"] = ROUNDS
    fig.target("stale reads", stale, "0", stale == 0)
    fig.check()
