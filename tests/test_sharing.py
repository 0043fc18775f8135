"""Sharing files with other programs, each one a real separate process: plain h5py writers
in "a" mode, an SWMR writer appending, a writer that crashed, a writer holding the file open
while the service writes, and a filesystem that refuses locks (an ``LD_PRELOAD`` shim,
compiled here with gcc, whose ``flock`` and ``fcntl`` lock calls fail with ENOLCK as on NFS
without lockd)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import h5py
import httpx
import numpy as np
import pytest

from xpcs_io.atomic import edit_atomically
from xpcs_io.client import RemoteHDF5Facade
from xpcs_io.errors import FileBusyError, FileMarkedOpenError, HDF5ValidationError
from xpcs_io.facade import HDF5Facade
from xpcs_io.locking import LockPolicy
from xpcs_io.pool import HDF5ConnectionPool
from xpcs_io.schemas import MaskSchema
from xpcs_io.tools.demo import DemoSpec, write_native_file

from .conftest import Server, start_server

SPEC = DemoSpec(shape=(16, 16), n_delay=6, n_q=3)
TIMEOUT = 60


class Program:
    """Another program: a Python process running ``code`` (``path`` is ``sys.argv[1]``) that
    prints one line per step and waits for a line on stdin before each next step."""

    def __init__(self, code: str, path: Path, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )

    def said(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def step(self) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return self.said()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TIMEOUT)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


@contextlib.contextmanager
def program(code: str, path: Path, env: dict[str, str] | None = None) -> Iterator[Program]:
    p = Program(code, path, env)
    try:
        yield p
    finally:
        p.close()


HOLD_OPEN = """
import h5py, sys
f = h5py.File(sys.argv[1], "a")
f["/fit/first"] = 1.0
f.flush()
print("ready", flush=True)
sys.stdin.readline()
f["/fit/second"] = 2.0
f.close()
print("closed", flush=True)
"""


def mask_for(path: Path) -> MaskSchema:
    geo = HDF5Facade(pool=HDF5ConnectionPool(max_size=1)).read_geometry_metadata(path)
    return MaskSchema(mask=np.ones(geo.shape, np.uint8), metadata=geo, description="m")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "root"
    root.mkdir()
    srv = start_server(root, tmp_path / "server.log", env={"XPCS_IO_LOCK_TIMEOUT": "1"})
    try:
        yield srv
    finally:
        srv.stop()


# ---------------------------------------------------------------- readers never block writers


def test_pooled_handles_let_another_program_write(served: Server) -> None:
    local = write_native_file(served.root / "local.h5", SPEC)
    remote = write_native_file(served.root / "remote.h5", SPEC)
    facade = HDF5Facade(pool=HDF5ConnectionPool(max_size=4))
    facade.read_g2_data(local)
    with RemoteHDF5Facade(served.url) as api:
        api.read_g2_data("remote.h5")
    write = "import h5py, sys\nwith h5py.File(sys.argv[1], 'a') as f: f['/fit/tau'] = 3.0"
    for path in (local, remote):  # the handles stay pooled meanwhile
        done = subprocess.run([sys.executable, "-c", write, str(path)], capture_output=True)
        assert done.returncode == 0, done.stderr.decode()[-400:]
    # ... and the pool then serves the new file, not the handle's old view of it.
    facade.read_g2_data(local)
    assert facade.get_pool_stats()["reopens_on_change"] == 1
    with h5py.File(local, "r") as f:
        assert f["/fit/tau"][()] == 3.0


def test_plain_h5py_reader_in_the_same_process_while_pooled(tmp_path: Path) -> None:
    path = write_native_file(tmp_path / "a.h5", SPEC)
    facade = HDF5Facade(pool=HDF5ConnectionPool(max_size=2))
    facade.read_g2_data(path)
    with h5py.File(path, "r") as f:  # default flags, as a viewer embedding the facade uses
        assert f["/xpcs/g2/g2"].shape == (SPEC.n_delay, SPEC.n_q)


# ---------------------------------------------------------------- the real problem, named


def test_file_open_for_writing_is_busy_not_corrupt(served: Server) -> None:
    path = write_native_file(served.root / "busy.h5", SPEC)
    with program(HOLD_OPEN, path) as other:
        assert other.said() == "ready"
        with pytest.raises(FileBusyError, match="open for writing by another program"):
            HDF5Facade(pool=HDF5ConnectionPool(max_size=1)).read_g2_data(path)
        r = httpx.get(f"{served.url}/v1/g2", params={"file_path": "busy.h5"})
        assert r.status_code == 423
        assert r.headers["retry-after"] == "1"
        assert r.json()["error"] == "FileBusyError"
        with RemoteHDF5Facade(served.url) as api, pytest.raises(FileBusyError):
            api.read_g2_data("busy.h5")
        assert other.step() == "closed"
    assert HDF5Facade(pool=HDF5ConnectionPool(max_size=1)).read_g2_data(path).g2.shape == (6, 3)


CRASH = """
import h5py, os, sys
f = h5py.File(sys.argv[1], "a")
f["/fit/x"] = 1.0
f.flush()
os._exit(0)  # dies with the file open: its superblock keeps saying "open for writing"
"""


def test_crashed_writer_is_named_with_the_fix(served: Server) -> None:
    src = write_native_file(served.root / "src.h5", SPEC)
    path = served.root / "crashed.h5"
    with h5py.File(src, "r") as s, h5py.File(path, "w", libver="latest") as f:
        for key in s:
            s.copy(key, f)
    before = sha(path)
    subprocess.run([sys.executable, "-c", CRASH, str(path)], check=True, timeout=TIMEOUT)
    facade = HDF5Facade(pool=HDF5ConnectionPool(max_size=1), lock_timeout=1)
    with pytest.raises(FileMarkedOpenError, match=r"h5clear -s crashed\.h5"):
        facade.read_g2_data(path)
    with pytest.raises(FileMarkedOpenError, match="crashed"):
        facade.write_mask(path, mask_for(src))
    r = httpx.get(f"{served.url}/v1/g2", params={"file_path": "crashed.h5"})
    assert (r.status_code, r.json()["error"]) == (409, "FileMarkedOpenError")
    assert "h5clear -s" in r.json()["detail"]
    assert sha(path) != before  # the crashed writer's flush reached the disk...
    assert not list(served.root.glob(".crashed.h5.xpcs-io-tmp-*"))  # ...ours left nothing
    if shutil.which("h5clear"):  # the HDF5 tools are installed: the advice works
        subprocess.run(["h5clear", "-s", str(path)], check=True, timeout=TIMEOUT)
        assert facade.read_g2_data(path).g2.shape == (6, 3)


def test_not_hdf5_is_still_422(tmp_path: Path) -> None:
    path = tmp_path / "text.h5"
    path.write_text("not HDF5 at all\n" * 100)
    with pytest.raises(HDF5ValidationError, match="not a readable HDF5 file"):
        HDF5Facade(pool=HDF5ConnectionPool(max_size=1)).read_g2_data(path)


# ---------------------------------------------------------------- writes never lose theirs


def test_write_waits_for_a_writer_then_refuses_and_loses_nothing(served: Server) -> None:
    path = write_native_file(served.root / "w.h5", SPEC)
    mask = mask_for(path)
    facade = HDF5Facade(pool=HDF5ConnectionPool(max_size=1), lock_timeout=1)
    with program(HOLD_OPEN, path) as other:
        assert other.said() == "ready"
        with pytest.raises(FileBusyError, match="nothing it writes is lost"):
            facade.write_mask(path, mask)
        with RemoteHDF5Facade(served.url) as api, pytest.raises(FileBusyError):
            api.write_mask("w.h5", mask)
        assert other.step() == "closed"
    with h5py.File(path, "r") as f:
        assert f["/fit/first"][()] == 1.0
        assert f["/fit/second"][()] == 2.0
        assert "simplemask" not in f
    facade.write_mask(path, mask)  # free now
    with h5py.File(path, "r") as f:
        assert f["/fit/second"][()] == 2.0
        assert "simplemask/mask/versions/v000001" in f


def test_write_waits_while_a_writer_finishes(tmp_path: Path) -> None:
    path = write_native_file(tmp_path / "w.h5", SPEC)
    code = HOLD_OPEN.replace("sys.stdin.readline()", "import time; time.sleep(0.5)")
    mask = mask_for(path)
    with program(code, path) as other:
        assert other.said() == "ready"
        HDF5Facade(pool=HDF5ConnectionPool(max_size=1), lock_timeout=30).write_mask(path, mask)
        assert other.said() == "closed"  # it finished first: the write waited for it
    with h5py.File(path, "r") as f:
        assert f["/fit/second"][()] == 2.0
        assert "simplemask/mask/versions/v000001" in f


TRY_WRITE = """
import h5py, sys
for line in sys.stdin:
    try:
        with h5py.File(sys.argv[1], "a") as f:
            f.attrs["n"] = f.attrs.get("n", 0) + 1
        print("wrote", flush=True)
    except OSError as exc:
        print("refused" if "unable to lock file" in str(exc) else f"error {exc}", flush=True)
"""


def test_no_writer_starts_while_the_service_writes(tmp_path: Path) -> None:
    path = write_native_file(tmp_path / "w.h5", SPEC)
    with program(TRY_WRITE, path) as other:
        with edit_atomically(path) as h5:
            h5["/mine"] = 1  # mid-write: the original is held shared until the rename
            assert other.step() == "refused"
        assert other.step() == "wrote"
    with h5py.File(path, "r") as f:
        assert f["/mine"][()] == 1
        assert f.attrs["n"] == 1


# ---------------------------------------------------------------- SWMR


SWMR_WRITER = """
import h5py, numpy as np, sys
src, dst = sys.argv[1], sys.argv[1] + ".live.h5"
with h5py.File(src, "r") as s:
    f = h5py.File(dst, "w", libver="latest")
    for key in s:
        if key != "xpcs":
            s.copy(key, f)
    for key in s["xpcs"]:
        if key != "g2":
            s.copy(s["xpcs"][key], f.require_group("xpcs"), key)
    g = f.create_group("xpcs/g2")
    n_q = s["xpcs/g2/g2"].shape[1]
    g.create_dataset("g2", data=s["xpcs/g2/g2"][:3], maxshape=(None, n_q), chunks=(4, n_q))
    g.create_dataset("g2_err", data=s["xpcs/g2/g2_err"][:3], maxshape=(None, n_q), chunks=(4, n_q))
    g.create_dataset("delay_times", data=s["xpcs/g2/delay_times"][:3], maxshape=(None,), chunks=(4,))
    g.create_dataset("q_values", data=s["xpcs/g2/q_values"][()])
    rows = (s["xpcs/g2/g2"][()], s["xpcs/g2/g2_err"][()], s["xpcs/g2/delay_times"][()])
f.swmr_mode = True
f.flush()
print("ready", flush=True)
for n in range(4, rows[0].shape[0] + 1):
    sys.stdin.readline()
    for name, data in zip(("g2", "g2_err", "delay_times"), rows):
        g[name].resize(n, axis=0)
        g[name][n - 1] = data[n - 1]
        g[name].flush()
    print(n, flush=True)
sys.stdin.readline()
f.close()
print("closed", flush=True)
"""


def test_swmr_file_is_read_and_later_reads_see_appends(served: Server) -> None:
    src = write_native_file(served.root / "src.h5", SPEC)
    with h5py.File(src, "r") as f:
        want = f["xpcs/g2/g2"][()]
    live = Path(f"{src}.live.h5")
    facade = HDF5Facade(pool=HDF5ConnectionPool(max_size=2))
    with program(SWMR_WRITER, src) as writer, RemoteHDF5Facade(served.url) as api:
        assert writer.said() == "ready"
        url = f"{served.url}/v1/g2"
        params = {"file_path": live.name}
        etags = []
        for n in range(3, SPEC.n_delay + 1):
            local = facade.read_g2_data(live, layout="native")
            np.testing.assert_array_equal(local.g2, want[:n])
            np.testing.assert_array_equal(api.read_g2_data(live.name).g2, want[:n])
            r = httpx.get(url, params=params)
            assert r.status_code == 200
            etags.append(r.headers["etag"])
            if n < SPEC.n_delay:
                assert writer.step() == str(n + 1)
        assert len(set(etags)) == len(etags), "an append kept the old ETag"
        assert writer.step() == "closed"
    np.testing.assert_array_equal(facade.read_g2_data(live).g2, want)


# ---------------------------------------------------------------- filesystems without locks


@pytest.fixture(scope="module")
def no_locks_shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shared object making ``flock`` and the ``fcntl`` lock commands fail with ENOLCK."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is needed to build the lock-refusing shim")
    folder = tmp_path_factory.mktemp("shim")
    source = folder / "nolocks.c"
    source.write_text(NOLOCKS_C)
    shim = folder / "nolocks.so"
    subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-o", shim, source, "-ldl"], check=True)
    return shim


NOLOCKS_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>

int flock(int fd, int op) { (void)fd; (void)op; errno = ENOLCK; return -1; }

static int is_lock(int cmd) {
    return cmd == F_SETLK || cmd == F_SETLKW || cmd == F_GETLK
        || cmd == F_OFD_SETLK || cmd == F_OFD_SETLKW || cmd == F_OFD_GETLK;
}

#define FORWARD(name)                                                              \
    int name(int fd, int cmd, ...) {                                               \
        va_list ap; va_start(ap, cmd); void *arg = va_arg(ap, void *); va_end(ap); \
        if (is_lock(cmd)) { errno = ENOLCK; return -1; }                           \
        static int (*real)(int, int, ...) = 0;                                     \
        if (!real) real = (int (*)(int, int, ...))dlsym(RTLD_NEXT, #name);         \
        return real(fd, cmd, arg);                                                 \
    }
FORWARD(fcntl)
FORWARD(fcntl64)
"""

LOCAL_WITHOUT_LOCKS = """
import sys
import numpy as np
from xpcs_io.facade import HDF5Facade
from xpcs_io.locking import LockPolicy
from xpcs_io.pool import HDF5ConnectionPool
from xpcs_io.schemas import MaskSchema
pool = HDF5ConnectionPool(max_size=2, policy=LockPolicy(sys.argv[2]))
facade = HDF5Facade(pool=pool)
try:
    geo = facade.read_geometry_metadata(sys.argv[1])
    facade.write_mask(sys.argv[1], MaskSchema(mask=np.ones(geo.shape, np.uint8), metadata=geo))
    print("ok", len(facade.list_mask_versions(sys.argv[1])), flush=True)
except Exception as exc:
    print(type(exc).__name__, exc, flush=True)
"""


@pytest.mark.parametrize("mode", ["auto", "off", "on"])
def test_filesystem_refusing_locks(no_locks_shim: Path, tmp_path: Path, mode: str) -> None:
    path = write_native_file(tmp_path / "nfs.h5", SPEC)
    env = {**os.environ, "LD_PRELOAD": str(no_locks_shim)}
    probe = subprocess.run(
        [sys.executable, "-c", "import fcntl; fcntl.flock(0, fcntl.LOCK_SH)"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert "No locks available" in probe.stderr  # the shim is in effect
    out = subprocess.run(
        [sys.executable, "-c", LOCAL_WITHOUT_LOCKS, str(path), mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    said = out.stdout.strip()
    if mode == "on":
        assert said.startswith("LockFileError"), said
        assert "XPCS_IO_FILE_LOCKING" in said
    else:
        assert said == "ok 1", said + out.stderr[-800:]
    warnings = out.stderr.count("refuses file locks")
    assert warnings == (1 if mode == "auto" else 0), out.stderr


@pytest.mark.parametrize(
    "env",
    [{"XPCS_IO_FILE_LOCKING": "auto"}, {"HDF5_USE_FILE_LOCKING": "FALSE"}],
    ids=["auto", "hdf5-locking-false"],
)
def test_server_without_locks_reads_and_writes(
    no_locks_shim: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    write_native_file(root / "nfs.h5", SPEC)
    log = tmp_path / "server.log"
    srv = start_server(root, log, env={"LD_PRELOAD": str(no_locks_shim), **env})
    try:
        with RemoteHDF5Facade(srv.url) as api:
            geo = api.read_geometry_metadata("nfs.h5")
            for _ in range(2):
                api.write_mask(
                    "nfs.h5", MaskSchema(mask=np.ones(geo.shape, np.uint8), metadata=geo)
                )
            assert [v["version"] for v in api.list_mask_versions("nfs.h5")] == [1, 2]
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert 'status="500"' not in metrics
    finally:
        srv.stop()
    assert log.read_text().count("refuses file locks") == 1


def test_policy_rejects_unknown_modes() -> None:
    with pytest.raises(ValueError, match="auto, on or off"):
        LockPolicy("maybe")  # type: ignore[arg-type]


# ---------------------------------------------------------------- freshness follows links


def _linked_tree(root: Path, kind: str = "external") -> tuple[Path, Path]:
    """main.h5 whose G2 comes from data/linked.h5: /xpcs/g2 an external link to its group,
    or /xpcs/g2/g2 a virtual dataset whose source is its G2."""
    (root / "data").mkdir()
    linked = write_native_file(root / "data" / "linked.h5", SPEC)
    main = write_native_file(root / "main.h5", SPEC)
    with h5py.File(main, "a") as f:
        if kind == "external":
            del f["/xpcs/g2"]
            f["/xpcs/g2"] = h5py.ExternalLink("data/linked.h5", "/xpcs/g2")
        else:
            shape, dtype = f["/xpcs/g2/g2"].shape, f["/xpcs/g2/g2"].dtype
            del f["/xpcs/g2/g2"]
            layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
            layout[...] = h5py.VirtualSource("data/linked.h5", "/xpcs/g2/g2", shape=shape)
            f["/xpcs/g2"].create_virtual_dataset("g2", layout)
    return main, linked


def _bump(linked: Path, value: float) -> None:
    with h5py.File(linked, "a") as f:
        f["/xpcs/g2/g2"][0, 0] = value


@pytest.mark.parametrize("kind", ["external", "virtual"])
def test_a_change_in_a_linked_file_is_seen_with_a_new_etag(served: Server, kind: str) -> None:
    _, linked = _linked_tree(served.root, kind)
    facade = HDF5Facade(pool=HDF5ConnectionPool(max_size=4), root=served.root)
    url, params = f"{served.url}/v1/g2", {"file_path": "main.h5"}
    tags = []
    for value in (1.5, 1.25):
        _bump(linked, value)
        assert facade.read_g2_data("main.h5").g2[0, 0] == value
        with RemoteHDF5Facade(served.url) as api:
            assert api.read_g2_data("main.h5").g2[0, 0] == value
        r = httpx.get(url, params=params, headers={"accept": "application/json"})
        assert r.json()["g2"][0][0] == value
        tags.append(r.headers["etag"])
        again = httpx.get(
            url, params=params, headers={"accept": "application/json", "if-none-match": tags[-1]}
        )
        assert again.status_code == 304
    assert tags[0] != tags[1]
    linked_id = facade.file_identity("main.h5").linked
    assert [p for p, _ in linked_id] == [str(linked)]


def test_missing_link_target_inside_the_root_is_a_key_error(served: Server) -> None:
    main, linked = _linked_tree(served.root)
    linked.unlink()
    facade = HDF5Facade(pool=HDF5ConnectionPool(max_size=2), root=served.root)
    with pytest.raises(KeyError, match=r"/xpcs/g2 in main\.h5 links to data/linked\.h5"):
        facade.read_g2_data("main.h5")
    r = httpx.get(f"{served.url}/v1/g2", params={"file_path": "main.h5"})
    assert (r.status_code, r.json()["error"]) == (404, "KeyError")
    assert "data/linked.h5, which does not exist" in r.json()["detail"]
    facade.clear_pool()  # this process writes the file next: HDF5 shares one open per file
    with h5py.File(main, "a") as f:  # a link out of the root stays a refusal
        del f["/xpcs/g2"]
        f["/xpcs/g2"] = h5py.ExternalLink("../elsewhere.h5", "/xpcs/g2")
    with pytest.raises(PermissionError, match="outside the data root"):
        facade.read_g2_data("main.h5")
    r = httpx.get(f"{served.url}/v1/g2", params={"file_path": "main.h5"})
    assert r.status_code == 403


def test_server_with_hdf5_locking_disabled_in_its_environment(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    path = write_native_file(root / "x.h5", SPEC)
    srv = start_server(root, tmp_path / "server.log", env={"HDF5_USE_FILE_LOCKING": "FALSE"})
    try:
        with RemoteHDF5Facade(srv.url) as api:
            geo = api.read_geometry_metadata("x.h5")
            api.write_mask("x.h5", MaskSchema(mask=np.ones(geo.shape, np.uint8), metadata=geo))
            assert api.read_mask("x.h5").mask.sum() == geo.shape[0] * geo.shape[1]
            with program(HOLD_OPEN, path) as other:  # its writers still hold HDF5's lock
                assert other.said() == "ready"
                with pytest.raises(FileBusyError):
                    api.read_g2_data("x.h5")
                assert other.step() == "closed"
        assert 'status="500"' not in httpx.get(f"{srv.url}/metrics").text
    finally:
        srv.stop()
