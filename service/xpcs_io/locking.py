"""Sharing files with other programs: the service's own write lock, and what HDF5 programs
say about a file through their locks and the superblock.

Two kinds of lock are involved:

* **HDF5's lock**, which every program using HDF5's file locking (h5py, h5py-based viewers,
  the HDF5 tools, PyTables) takes on the data file itself: ``flock`` shared for reading,
  exclusive for writing, held while the file is open (an SWMR writer drops it once the file
  is marked for SWMR). ``writer_present`` probes it; ``edit_atomically`` holds it shared
  while it copies and replaces a file, so no such writer can start in between.
* **The service's write lock**, one writer at a time per file across threads, processes and
  hosts, in a sidecar file beside the data file, ``.<name>.xpcs-io.lock``: writes replace the
  data file by rename, so its inode changes under any lock held on it. Inter-process exclusion
  uses POSIX record locks (``fcntl.lockf``, which also work on NFS); those are per process, so
  a per-path ``threading.Lock`` serialises threads first. The sidecar is opened relative to
  its folder's descriptor with ``O_NOFOLLOW``: a symlink, folder or anything but a regular
  file at that name is refused (``LockFileError``), never followed.

``LockPolicy`` carries the one setting ``XPCS_IO_FILE_LOCKING``: ``on`` requires working
locks (a filesystem refusing them fails with ``LockFileError``), ``off`` takes and checks none
(no protection against other programs), ``auto`` behaves as ``on`` until a filesystem refuses
a lock (``ENOLCK``, e.g. NFS without lockd; ``ENOSYS``; ``EOPNOTSUPP``), then as ``off`` for
that filesystem, with one warning.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Literal, NamedTuple

from xpcs_io.errors import LockFileError, WriteLockTimeout

__all__ = [
    "LOCK_SUFFIX",
    "FileLocking",
    "FileWriteLock",
    "LockPolicy",
    "Superblock",
    "lock_path_for",
    "read_superblock",
]

FileLocking = Literal["auto", "on", "off"]
LOCK_SUFFIX = ".xpcs-io.lock"

log = logging.getLogger(__name__)

# errno values meaning "this filesystem does not do locks", not "somebody holds the lock".
_REFUSED = frozenset({errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP})
_HELD = frozenset({errno.EACCES, errno.EAGAIN, errno.EWOULDBLOCK})

_registry_lock = threading.Lock()
_thread_locks: dict[str, threading.Lock] = {}


class LockPolicy:
    """How the service uses locks (``XPCS_IO_FILE_LOCKING``): ``auto``, ``on`` or ``off``.

    Raises:
        ValueError: an unknown mode.
    """

    def __init__(self, mode: FileLocking = "auto") -> None:
        if mode not in ("auto", "on", "off"):
            raise ValueError(f"file locking must be auto, on or off, got {mode!r}")
        self.mode: FileLocking = mode
        self._refusing: set[int] = set()  # st_dev of filesystems found refusing locks
        self._lock = threading.Lock()

    def enabled(self, device: int) -> bool:
        """Whether locks are taken and checked on the filesystem ``device`` (``st_dev``)."""
        return self.mode != "off" and device not in self._refusing

    def hdf5_locking(self, device: int) -> bool:
        """The ``locking`` argument for ``h5py.File`` on that filesystem."""
        return self.enabled(device)

    def refused(self, exc: OSError, device: int, what: str) -> None:
        """Handle a lock call that failed with ``exc`` on filesystem ``device``.

        Returns normally (locks now off for that filesystem, one warning logged) when the
        filesystem refuses locks and the mode is ``auto``.

        Raises:
            LockFileError: the filesystem refuses locks and the mode is ``on``.
            OSError: ``exc`` itself, for any other failure.
        """
        if exc.errno not in _REFUSED:
            raise exc
        if self.mode == "on":
            raise LockFileError(
                f"the filesystem refuses file locks ({os.strerror(exc.errno or 0)}) while "
                f"locking {what}; set XPCS_IO_FILE_LOCKING=auto (or off) to work without them"
            ) from exc
        with self._lock:
            first = device not in self._refusing
            self._refusing.add(device)
        if first:
            log.warning(
                "the filesystem holding %s refuses file locks (%s): carrying on without them "
                "there, so programs writing these files in place are not detected",
                what,
                os.strerror(exc.errno or 0),
            )

    def writer_present(self, fd: int, what: str, st: os.stat_result | None = None) -> bool:
        """Whether a program holds HDF5's exclusive lock on the file open as ``fd`` (a writer
        using HDF5's file locking). Takes and drops a shared ``flock`` on ``fd``, which must
        be a descriptor of the caller's own that holds no lock. ``st``: the caller's
        ``fstat`` of ``fd``, if it has one."""
        st = st or os.fstat(fd)
        if not self.enabled(st.st_dev):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in _HELD:
                return True
            self.refused(exc, st.st_dev, what)
            return False
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False

    def hold_shared(self, fd: int, what: str) -> bool:
        """Take HDF5's lock shared on ``fd`` without waiting (released when ``fd`` closes).

        Returns False when an HDF5 writer holds it exclusively; True when taken, or when
        locks are off on that filesystem.
        """
        st = os.fstat(fd)
        if not self.enabled(st.st_dev):
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in _HELD:
                return False
            self.refused(exc, st.st_dev, what)
        return True


class Superblock(NamedTuple):
    """The HDF5 superblock's version and file status flags (``open_for_write``, ``swmr``)."""

    version: int
    flags: int

    @property
    def open_for_write(self) -> bool:
        """A writer has the file open (or crashed without closing it)."""
        return bool(self.flags & 0x01)

    @property
    def swmr(self) -> bool:
        """The writer writes in SWMR mode: readers may open it with ``swmr=True``."""
        return bool(self.flags & 0x04)


_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def read_superblock(fd: int, size: int | None = None) -> Superblock | None:
    """The superblock of the HDF5 file open as ``fd``, searched where HDF5 searches (offset
    0, then 512, 1024, ... for files with a user block); ``None`` when it is not HDF5.
    ``size``: the file's size, when the caller already has it.

    Only superblock versions 2 and 3 keep status flags; HDF5 writes them only in version 3
    (files made with ``libver="latest"`` or for SWMR), so older files always read 0.
    """
    size = os.fstat(fd).st_size if size is None else size
    offset = 0
    while offset + 16 <= size:
        head = os.pread(fd, 24, offset)
        if head[:8] == _SIGNATURE:
            version = head[8]
            if version in (2, 3):
                return Superblock(version, head[11])
            if version in (0, 1) and len(head) >= 24:
                return Superblock(version, int.from_bytes(head[20:24], "little"))
            return Superblock(version, 0)
        offset = 512 if offset == 0 else offset * 2
    return None


def lock_path_for(target: Path) -> Path:
    """The sidecar lock file of the data file ``target`` (an absolute, resolved path)."""
    return target.with_name(f".{target.name}{LOCK_SUFFIX}")


def _thread_lock(key: str) -> threading.Lock:
    with _registry_lock:
        lock = _thread_locks.get(key)
        if lock is None:
            lock = _thread_locks[key] = threading.Lock()
        return lock


def _open_sidecar(dir_fd: int, name: str, shown: str) -> int:
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, 0o666, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):
            raise LockFileError(
                f"the write lock {shown} is a symbolic link; remove it to write this file"
            ) from None
        if exc.errno == errno.EISDIR:
            raise LockFileError(
                f"the write lock {shown} is a folder, not a file; remove it to write this file"
            ) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LockFileError(f"the write lock {shown} is not a regular file; remove it")
    return fd


class FileWriteLock:
    """Context manager holding the exclusive write lock of ``target`` for ``timeout`` seconds
    at most while waiting.

    ``dir_fd`` is a descriptor of the folder holding ``target`` (the sidecar is created
    relative to it, never through a path that could be swapped); without it the folder is
    opened by name.

    Raises:
        WriteLockTimeout: another writer kept the lock longer than ``timeout``.
        LockFileError: the lock path is not a regular file, or the filesystem refuses locks
            while the policy is ``on``.
        PermissionError: the lock file cannot be created (directory not writable).
    """

    def __init__(
        self,
        target: Path,
        timeout: float = 60.0,
        *,
        dir_fd: int | None = None,
        policy: LockPolicy | None = None,
        display: str | None = None,
    ) -> None:
        self.target = target
        self.path = lock_path_for(target)
        self.timeout = timeout
        self.policy = policy or LockPolicy()
        self.display = display or target.name
        self._dir_fd = dir_fd
        self._thread_lock = _thread_lock(str(self.path))
        self._fd: int | None = None

    def __enter__(self) -> FileWriteLock:
        deadline = time.monotonic() + self.timeout
        if not self._thread_lock.acquire(timeout=max(self.timeout, 0.0)):
            raise WriteLockTimeout(f"timed out waiting for the write lock of {self.display}")
        own_dir = self._dir_fd is None
        dir_fd = (
            os.open(self.target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            if self._dir_fd is None
            else self._dir_fd
        )
        try:
            shown = str(Path(self.display).with_name(self.path.name))
            self._fd = _open_sidecar(dir_fd, self.path.name, shown)
            device = os.fstat(self._fd).st_dev
            delay = 0.001
            while self.policy.enabled(device):
                try:
                    fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in _HELD:
                        self.policy.refused(exc, device, f"the write lock of {self.display}")
                        break
                if time.monotonic() >= deadline:
                    raise WriteLockTimeout(
                        f"timed out waiting for the write lock of {self.display}"
                    )
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
            return self
        except BaseException:
            self._release()
            raise
        finally:
            if own_dir:
                os.close(dir_fd)

    def _release(self) -> None:
        try:
            if self._fd is not None:
                try:
                    # Closing drops the record lock (a lock never taken needs no unlock).
                    os.close(self._fd)
                finally:
                    self._fd = None
        finally:
            self._thread_lock.release()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release()
