"""Crash-safe modification of an HDF5 file: edit a copy, fsync it, rename it over the original.

A process killed at any moment leaves either the old file (the copy was not yet renamed; its
leftover is removed by the next writer) or the complete new one. Readers holding the old
file open keep a consistent snapshot of it; the pool notices the new inode and reopens.

What a plain copy would lose is kept: a symlinked path updates its target (the symlink stays a
symlink), the file mode is copied and the owner and group are kept where the OS permits.
Cost: one in-kernel copy of the file per write (see BENCHMARKS.md for 100 MB and 1 GB).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import h5py

from xpcs_io.errors import HDF5ValidationError
from xpcs_io.filters import FILTERS as _FILTERS  # noqa: F401  (registers HDF5 filter plugins)
from xpcs_io.locking import FileWriteLock

__all__ = ["TMP_MARK", "edit_atomically"]

TMP_MARK = ".xpcs-io-tmp-"


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, (os.O_RDONLY | os.O_DIRECTORY) if directory else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_leftovers(target: Path) -> None:
    # Only called under the file's write lock: no live writer can own these.
    prefix = f".{target.name}{TMP_MARK}"
    for entry in target.parent.iterdir():
        if entry.name.startswith(prefix):
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()


def _copy_ownership(src: Path, dst: Path) -> None:
    st = src.stat()
    os.chmod(dst, st.st_mode & 0o7777)
    # Only root (or the owner within its groups) may chown: keep what we are allowed to.
    with contextlib.suppress(PermissionError):
        os.chown(dst, st.st_uid, st.st_gid)


@contextlib.contextmanager
def edit_atomically(
    path: str | os.PathLike[str], *, lock_timeout: float = 60.0, display: str | None = None
) -> Iterator[h5py.File]:
    """Yield a writable ``h5py.File`` on a copy of ``path``; on success replace ``path`` by it.

    The file's write lock is held throughout. If the block raises, the copy is deleted and
    ``path`` is untouched. A missing file is created.

    Raises:
        HDF5ValidationError: ``path`` exists but is not HDF5 (it is left untouched).
        WriteLockTimeout: another writer held the lock too long.
        PermissionError: the directory or file cannot be written.
        FileNotFoundError: the directory does not exist.
    """
    target = Path(os.path.realpath(path))
    if target.is_symlink():  # realpath stops inside a symlink loop
        raise FileNotFoundError(f"No such file: {display or Path(path).name} (symlink loop)")
    if not target.parent.is_dir():
        raise FileNotFoundError(f"No such directory: {target.parent.name}")
    with FileWriteLock(target, timeout=lock_timeout):
        _remove_leftovers(target)
        tmp = target.with_name(f".{target.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")
        exists = target.exists()
        name = display or target.name
        if exists and not target.is_file():
            # A FIFO or device would block the copy; a directory cannot be written as HDF5.
            raise HDF5ValidationError(f"{name} is not a regular file", file=name)
        # A rename would bypass a read-only file's mode: honour it as an in-place write would.
        if exists and not os.access(target, os.W_OK):
            raise PermissionError(f"Permission denied: {name} is read-only")
        try:
            if exists:
                # copyfile uses sendfile/copy_file_range: the bytes never enter Python.
                shutil.copyfile(target, tmp)
            try:
                h5 = h5py.File(tmp, "r+" if exists else "w")
            except PermissionError:
                raise
            except OSError as exc:
                raise HDF5ValidationError(
                    f"{name} is not a writable HDF5 file ({exc})", file=name
                ) from exc
            with h5:
                yield h5
            if exists:
                # Mode and owner last: the copy had to stay writable while it was edited.
                _copy_ownership(target, tmp)
            _fsync_path(tmp)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        _fsync_path(target.parent, directory=True)
