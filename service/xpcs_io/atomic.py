"""Crash-safe modification of an HDF5 file: edit a copy, fsync it, rename it over the original.

A process killed at any moment leaves either the old file (the copy was not yet renamed; its
leftover is removed by the next writer) or the complete new one. Readers holding the old
file open keep a consistent snapshot of it; the pool notices the new inode and reopens.

**Never over another program's writes.** Before copying, the original is checked for a
program writing it: one holding HDF5's exclusive lock (h5py and every HDF5 program that
uses HDF5's file locking, in "a"/"r+"/"w" mode), or an SWMR writer (its superblock says so).
The write waits for it up to the lock timeout, then raises ``FileBusyError`` (retryable). Once
the original is free, a shared lock on it is held until the rename, so such a program cannot
start writing it in between (its open fails at once with "unable to lock file"), and for two
seconds after it, so a program that opened the old file just before the rename cannot lock it
and write into a file that is no longer there (its open fails; opened again, it is the new
file). Just before
the rename the original must still be the file that was copied (same inode, size, mtime and
ctime), so a program writing without HDF5's locking is caught unless it writes in the last
microseconds; such programs cannot be fully protected (see README, "Sharing files").

**Never outside the data root.** Everything happens relative to a descriptor of the file's
folder opened beneath the root (``paths.open_dir_beneath``): the lock file, the original
(opened with ``O_NOFOLLOW``), the copy (``O_CREAT | O_EXCL | O_NOFOLLOW``), which HDF5 edits
through that descriptor (h5py's file-object driver, so HDF5 never looks the name up), and
the rename. A folder swapped for a symlink meanwhile changes nothing the write touches.

What a plain copy would lose is kept: a symlinked path updates its target (the symlink stays a
symlink), the file mode is copied and the owner and group are kept where the OS permits. A
full disk or quota raises ``InsufficientStorageError`` and leaves the original untouched.
Cost: one in-kernel copy of the file per write (see BENCHMARKS.md for 100 MB and 1 GB).
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import os
import secrets
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import h5py

from xpcs_io.errors import (
    FileBusyError,
    FileMarkedOpenError,
    HDF5ValidationError,
    InsufficientStorageError,
)
from xpcs_io.filters import FILTERS as _FILTERS  # noqa: F401  (registers HDF5 filter plugins)
from xpcs_io.locking import FileWriteLock, LockPolicy, read_superblock
from xpcs_io.paths import PathChangedError, inside_root, open_dir_beneath, realpath
from xpcs_io.pool import FileIdentity

__all__ = ["TMP_MARK", "edit_atomically"]

TMP_MARK = ".xpcs-io-tmp-"

_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "errno = 28", "errno = 122")
_ATTEMPTS = 4
# Seconds the replaced file stays locked after the rename (see edit_atomically).
_GRACE = 2.0


_later: list[tuple[float, int]] = []  # (monotonic deadline, descriptor) heap
_later_cv = threading.Condition()
_later_thread: threading.Thread | None = None


def _close_later(fd: int, delay: float) -> None:
    """Close ``fd`` after ``delay`` seconds, from one background thread for all of them."""
    global _later_thread
    with _later_cv:
        heapq.heappush(_later, (time.monotonic() + delay, fd))
        if _later_thread is None or not _later_thread.is_alive():
            _later_thread = threading.Thread(
                target=_closer, name="xpcs-io-close-later", daemon=True
            )
            _later_thread.start()
        _later_cv.notify()


def _closer() -> None:
    while True:
        with _later_cv:
            while not _later or _later[0][0] > time.monotonic():
                _later_cv.wait(max(0.0, _later[0][0] - time.monotonic()) if _later else None)
            _, fd = heapq.heappop(_later)
        with contextlib.suppress(OSError):
            os.close(fd)


def _storage_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it: HDF5 wraps the OS error) says the disk is full."""
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if isinstance(node, OSError) and node.errno in _FULL:
            return True
        if any(text in str(node) for text in _FULL_TEXT):
            return True
        node = node.__cause__ or node.__context__
    return False


def _remove_leftovers(dir_fd: int, name: str) -> None:
    # Only called under the file's write lock: no live writer can own these.
    prefix = f".{name}{TMP_MARK}"
    for entry in os.listdir(dir_fd):
        if entry.startswith(prefix):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry, dir_fd=dir_fd)


def _copy(src: int, dst: int) -> None:
    # sendfile copies in the kernel: the bytes never enter Python.
    size = os.fstat(src).st_size
    offset = 0
    while offset < size:
        sent = os.sendfile(dst, src, offset, min(size - offset, 1 << 30))
        if sent == 0:
            break
        offset += sent


def _open_folder(root: Path | None, target: Path, name: str) -> int:
    for attempt in range(_ATTEMPTS):
        try:
            return open_dir_beneath(root, target.parent)
        except PathChangedError:
            if attempt + 1 >= _ATTEMPTS:
                raise
        except FileNotFoundError:
            raise FileNotFoundError(f"No such directory: {target.parent.name}") from None
        except NotADirectoryError:
            raise FileNotFoundError(f"No such directory: {target.parent.name}") from None
    raise AssertionError("unreachable")


def _open_original(dir_fd: int, target: Path, name: str) -> int | None:
    try:
        fd = os.open(
            target.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
        )
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            if os.path.islink(target) and realpath(target) == os.fspath(target):
                raise FileNotFoundError(f"No such file: {name} (symlink loop)") from None
            raise PathChangedError(f"access denied: {name} changed while it was opened") from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        # A FIFO or device would block the copy; a directory cannot be written as HDF5.
        raise HDF5ValidationError(f"{name} is not a regular file", file=name)
    return fd


def _wait_for_writers(fd: int, name: str, policy: LockPolicy, deadline: float) -> None:
    """Return holding HDF5's lock shared on ``fd`` once no program writes the file."""
    delay = 0.005
    while True:
        free = policy.hold_shared(fd, name)
        sb = read_superblock(fd)
        if free and sb is not None and sb.open_for_write and not sb.swmr:
            raise FileMarkedOpenError(
                f"{name} is marked open for writing, but no program holds its lock: its "
                f"writer crashed (or writes without HDF5 file locking). If nothing is writing "
                f"it, clear the mark with `h5clear -s {name.rsplit('/', 1)[-1]}`"
            )
        if free and not (sb is not None and sb.open_for_write):
            return
        if time.monotonic() >= deadline:
            how = "in SWMR mode " if sb is not None and sb.swmr else ""
            raise FileBusyError(
                f"{name} is open for writing {how}by another program; not replaced, so "
                f"nothing it writes is lost. Retry once it has closed the file"
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


@contextlib.contextmanager
def edit_atomically(
    path: str | os.PathLike[str],
    *,
    lock_timeout: float = 60.0,
    display: str | None = None,
    root: Path | None = None,
    policy: LockPolicy | None = None,
) -> Iterator[h5py.File]:
    """Yield a writable ``h5py.File`` on a copy of ``path``; on success replace ``path`` by it.

    The file's write lock is held throughout. If the block raises, the copy is deleted and
    ``path`` is untouched. A missing file is created. ``root`` (resolved) bounds where the
    file may be; ``policy`` says how locks are used (default ``auto``).

    Raises:
        HDF5ValidationError: ``path`` exists but is not HDF5 (it is left untouched).
        WriteLockTimeout: another writer held the service's lock too long.
        FileBusyError: another program has the file open for writing (waited for up to
            ``lock_timeout``), or replaced it meanwhile.
        FileMarkedOpenError: a crashed writer left the file marked open.
        LockFileError: the lock path is not a regular file, or locks are refused.
        InsufficientStorageError: the disk or quota is full (the file is untouched).
        PermissionError: the directory or file cannot be written, or lies outside ``root``.
        FileNotFoundError: the directory does not exist.
    """
    policy = policy or LockPolicy()
    deadline = time.monotonic() + lock_timeout
    target = Path(realpath(path))
    name = display or Path(path).name
    if root is not None and not inside_root(root, target):
        raise PermissionError("access denied: path leads outside the data root")
    dir_fd = _open_folder(root, target, name)
    try:
        with FileWriteLock(
            target, timeout=lock_timeout, dir_fd=dir_fd, policy=policy, display=name
        ):
            _remove_leftovers(dir_fd, target.name)
            src = _open_original(dir_fd, target, name)
            replaced = False
            try:
                yield from _edit(dir_fd, src, target, name, policy, deadline)
                replaced = True
            finally:
                if src is not None and replaced:
                    # A program that opened the old file just before the rename locks it a
                    # moment later: keep it locked a while, so that program's lock fails
                    # and it opens the new file, instead of writing into the replaced one.
                    _close_later(src, _GRACE)
                elif src is not None:
                    os.close(src)  # drops the shared lock on the original
        with contextlib.suppress(OSError):
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _edit(
    dir_fd: int, src: int | None, target: Path, name: str, policy: LockPolicy, deadline: float
) -> Iterator[h5py.File]:
    if src is not None:
        # A rename would bypass a read-only file's mode: honour it as an in-place write would.
        if not os.access(target.name, os.W_OK, dir_fd=dir_fd):
            raise PermissionError(f"Permission denied: {name} is read-only")
        _wait_for_writers(src, name, policy, deadline)
        copied = FileIdentity.from_stat(os.fstat(src))
    tmp = f".{target.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o666, dir_fd=dir_fd)
    except OSError as exc:
        if _storage_full(exc):
            raise InsufficientStorageError(f"cannot write {name}: {exc.strerror}") from exc
        raise
    try:
        with open(fd, "r+b", closefd=False) as fobj:
            if src is not None:
                _copy(src, fd)
            try:
                h5 = h5py.File(fobj, "r+" if src is not None else "w")
            except (OSError, ValueError, RuntimeError) as exc:
                if _storage_full(exc):
                    raise
                raise HDF5ValidationError(
                    f"{name} is not a writable HDF5 file ({exc})", file=name
                ) from exc
            with h5:
                yield h5
            fobj.flush()
        if src is not None:
            # Mode and owner last: the copy had to stay writable while it was edited.
            st = os.fstat(src)
            os.fchmod(fd, st.st_mode & 0o7777)
            # Only root (or the owner within its groups) may chown: keep what we may.
            with contextlib.suppress(PermissionError):
                os.fchown(fd, st.st_uid, st.st_gid)
        os.fsync(fd)
        _check_unchanged(dir_fd, src, copied if src is not None else None, target, name)
        os.replace(tmp, target.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        if isinstance(exc, Exception) and _storage_full(exc):
            raise InsufficientStorageError(
                f"cannot write {name}: the disk (or quota) is full; the file is unchanged"
            ) from exc
        raise
    finally:
        os.close(fd)


def _check_unchanged(
    dir_fd: int, src: int | None, copied: FileIdentity | None, target: Path, name: str
) -> None:
    """Refuse to replace a file that is no longer the one copied (another program replaced
    or wrote it meanwhile without HDF5's locking): its change would be lost."""
    try:
        now = os.stat(target.name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        if src is None:
            return
        raise FileBusyError(f"{name} was removed while it was being written; retry") from None
    if src is None or copied is None or FileIdentity.from_stat(now) != copied:
        raise FileBusyError(
            f"{name} was changed by another program while it was being written; not "
            f"replaced, so that change is kept. Retry"
        )
