"""One writer at a time per file, across threads, processes and hosts sharing a filesystem.

The lock lives in a sidecar file beside the data file, ``.<name>.xpcs-io.lock``, never in the
data file itself: writes replace the data file by rename, so its inode changes under any lock
held on it. Inter-process exclusion uses POSIX record locks (``fcntl.lockf``), which also work
on NFS; those are per process, so a per-path ``threading.Lock`` serialises threads first.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from pathlib import Path
from types import TracebackType

from xpcs_io.errors import WriteLockTimeout

__all__ = ["FileWriteLock", "lock_path_for"]

_registry_lock = threading.Lock()
_thread_locks: dict[str, threading.Lock] = {}


def lock_path_for(target: Path) -> Path:
    """The sidecar lock file of the data file ``target`` (an absolute, resolved path)."""
    return target.with_name(f".{target.name}.xpcs-io.lock")


def _thread_lock(key: str) -> threading.Lock:
    with _registry_lock:
        lock = _thread_locks.get(key)
        if lock is None:
            lock = _thread_locks[key] = threading.Lock()
        return lock


class FileWriteLock:
    """Context manager holding the exclusive write lock of ``target`` for ``timeout`` seconds
    at most while waiting.

    Raises:
        WriteLockTimeout: another writer kept the lock longer than ``timeout``.
        PermissionError: the lock file cannot be created (directory not writable).
    """

    def __init__(self, target: Path, timeout: float = 60.0) -> None:
        self.target = target
        self.path = lock_path_for(target)
        self.timeout = timeout
        self._thread_lock = _thread_lock(str(self.path))
        self._fd: int | None = None

    def __enter__(self) -> FileWriteLock:
        deadline = time.monotonic() + self.timeout
        if not self._thread_lock.acquire(timeout=max(self.timeout, 0.0)):
            raise WriteLockTimeout(f"timed out waiting for the write lock of {self.target.name}")
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            delay = 0.001
            while True:
                try:
                    fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return self
                except OSError as exc:
                    if exc.errno not in (errno.EACCES, errno.EAGAIN):
                        raise
                if time.monotonic() >= deadline:
                    raise WriteLockTimeout(
                        f"timed out waiting for the write lock of {self.target.name}"
                    )
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        try:
            if self._fd is not None:
                try:
                    fcntl.lockf(self._fd, fcntl.LOCK_UN)
                finally:
                    os.close(self._fd)
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
