"""The service's write lock and what it reads of other programs' locks, on real files: a
lock path that is a symlink (planted to point out of the root), a folder or a symlink loop is
refused and never followed; superblock status flags are found past a user block; a path
whose folder became a symlink is refused by the descriptor-relative opens."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import httpx
import numpy as np
import pytest

from xpcs_io.atomic import edit_atomically
from xpcs_io.client import RemoteHDF5Facade
from xpcs_io.errors import LockFileError
from xpcs_io.facade import HDF5Facade
from xpcs_io.locking import LockPolicy, lock_path_for, read_superblock
from xpcs_io.paths import PathChangedError, open_beneath, open_dir_beneath
from xpcs_io.pool import HDF5ConnectionPool
from xpcs_io.schemas import MaskSchema
from xpcs_io.tools.demo import DemoSpec, write_native_file

from .conftest import start_server

SPEC = DemoSpec(shape=(16, 16), n_delay=6, n_q=3)


def _mask(facade: HDF5Facade, name: str) -> MaskSchema:
    geo = facade.read_geometry_metadata(name)
    return MaskSchema(mask=np.ones(geo.shape, np.uint8), metadata=geo)


def _tree(tmp_path: Path) -> tuple[Path, Path, HDF5Facade]:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    write_native_file(root / "run.h5", SPEC)
    return root, outside, HDF5Facade(pool=HDF5ConnectionPool(max_size=2), root=root)


def test_planted_lock_symlink_is_never_followed(tmp_path: Path) -> None:
    root, outside, facade = _tree(tmp_path)
    planted = outside / "created_by_xpcs_io"
    os.symlink(planted, lock_path_for(root / "run.h5"))
    before = (root / "run.h5").read_bytes()
    with pytest.raises(LockFileError, match="symbolic link"):
        facade.write_mask("run.h5", _mask(facade, "run.h5"))
    assert not planted.exists()
    assert list(outside.iterdir()) == []
    assert (root / "run.h5").read_bytes() == before
    assert lock_path_for(root / "run.h5").is_symlink()  # left as it was, for its owner


@pytest.mark.parametrize("kind", ["folder", "symlink loop"])
def test_lock_path_that_is_not_a_file_is_a_clear_409(tmp_path: Path, kind: str) -> None:
    root, _, facade = _tree(tmp_path)
    lock = lock_path_for(root / "run.h5")
    if kind == "folder":
        lock.mkdir()
    else:
        os.symlink(lock, lock)
    with pytest.raises(LockFileError, match="remove it"):
        facade.write_mask("run.h5", _mask(facade, "run.h5"))
    srv = start_server(root, tmp_path / "server.log", env={"XPCS_IO_LOCK_TIMEOUT": "2"})
    try:
        with RemoteHDF5Facade(srv.url) as api, pytest.raises(LockFileError, match="remove it"):
            api.write_mask("run.h5", _mask(facade, "run.h5"))
        r = httpx.get(f"{srv.url}/metrics")
        assert 'status="500"' not in r.text
        assert 'status="409"' in r.text
    finally:
        srv.stop()


def test_write_into_a_folder_that_became_a_symlink_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "d").mkdir(parents=True)
    outside.mkdir()
    write_native_file(root / "d" / "x.h5", SPEC)
    write_native_file(outside / "x.h5", SPEC)
    before = (outside / "x.h5").read_bytes()
    real = Path(os.path.realpath(root / "d" / "x.h5"))  # resolved while d was a folder
    os.rename(root / "d", root / ".d")
    os.symlink(outside, root / "d")
    with pytest.raises(PermissionError), edit_atomically(real, root=root) as h5:
        h5["/mine"] = 1
    assert (outside / "x.h5").read_bytes() == before
    assert sorted(p.name for p in outside.iterdir()) == ["x.h5"]
    with pytest.raises(PathChangedError):
        open_dir_beneath(root, real.parent)
    with pytest.raises(PathChangedError):
        open_beneath(root, real)


def test_superblock_flags_are_found_after_a_user_block(tmp_path: Path) -> None:
    path = tmp_path / "ub.h5"
    with h5py.File(path, "w", libver="latest", userblock_size=512) as f:
        f["x"] = np.arange(3)
        fd = os.open(path, os.O_RDONLY)
        try:
            sb = read_superblock(fd)  # open for writing right now
        finally:
            os.close(fd)
    assert sb is not None
    assert sb.version == 3
    assert sb.open_for_write
    assert not sb.swmr
    fd = os.open(path, os.O_RDONLY)
    try:
        closed = read_superblock(fd)
    finally:
        os.close(fd)
    assert closed is not None
    assert not closed.open_for_write
    text = tmp_path / "text.h5"
    text.write_bytes(b"not HDF5" * 200)
    fd = os.open(text, os.O_RDONLY)
    try:
        assert read_superblock(fd) is None
    finally:
        os.close(fd)


def test_writer_present_sees_an_h5py_writer_in_another_process(tmp_path: Path) -> None:
    path = write_native_file(tmp_path / "w.h5", SPEC)
    code = "import h5py, sys\nf = h5py.File(sys.argv[1], 'a')\nprint('ready', flush=True)\n"
    code += "sys.stdin.readline()\nf.close()\n"
    policy = LockPolicy()
    other = subprocess.Popen(
        [sys.executable, "-c", code, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert other.stdin is not None
    assert other.stdout is not None
    try:
        assert other.stdout.readline().strip() == "ready"
        fd = os.open(path, os.O_RDONLY)
        try:
            assert policy.writer_present(fd, "w.h5")
        finally:
            os.close(fd)
        other.stdin.write("\n")
        other.stdin.flush()
        assert other.wait(30) == 0
        fd = os.open(path, os.O_RDONLY)
        try:
            assert not policy.writer_present(fd, "w.h5")
            assert not LockPolicy("off").writer_present(fd, "w.h5")
        finally:
            os.close(fd)
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
        other.stdin.close()
        other.stdout.close()
