"""A bounded, thread-safe LRU pool of read-only ``h5py.File`` handles that never serves stale data.

Every checkout compares the file's identity on disk (device, inode, size, mtime, ctime) with
the identity it had when the handle was opened. A file rewritten in place, replaced by rename
(what the facade's own writes do) or truncated gets a fresh handle; a deleted file raises
``FileNotFoundError``. A handle that is evicted or replaced while another thread still reads
from it is closed when that thread checks it back in, never under its feet.

Handles are opened with h5py's default file-locking setting, so a viewer that embeds the
facade can still open the same file with a plain ``h5py.File(path)`` (HDF5 refuses a second
open of one file with different locking flags). Writers never open a pooled file for writing:
they build the new state in a copy and rename it over the original (see ``xpcs_io.atomic``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import h5py

from xpcs_io.errors import HDF5ValidationError
from xpcs_io.filters import FILTERS as _FILTERS  # noqa: F401  (registers HDF5 filter plugins)

__all__ = ["FileIdentity", "HDF5ConnectionPool", "get_default_pool"]

log = logging.getLogger(__name__)


class FileIdentity(NamedTuple):
    """What makes a file "the same file with the same bytes" for the pool.

    ``ctime_ns`` is in it because tools that rewrite a file in place can keep its size and
    restore its mtime (``cp -p``, ``rsync --inplace -t``), but nothing can set the ctime: any
    change of the content moves it.
    """

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> FileIdentity:
        """Stat ``path`` (following symlinks).

        Raises:
            FileNotFoundError: the file does not exist, or the path cannot name a file (a
                symlink loop, a component that is not a directory, a name too long).
        """
        try:
            return cls.from_stat(os.stat(path))
        except OSError as exc:
            if exc.errno in _NOT_A_FILE:
                raise FileNotFoundError(exc.errno, "No such file", os.fspath(path)) from None
            raise

    @classmethod
    def from_stat(cls, st: os.stat_result) -> FileIdentity:
        """The identity a ``stat`` result describes."""
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


# stat() errors that mean "there is no file by that name", to be answered like ENOENT.
_NOT_A_FILE = frozenset({errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.ENAMETOOLONG})


@dataclass
class _Entry:
    handle: h5py.File
    identity: FileIdentity
    accesses: int = 0
    users: int = 0
    retired: bool = False  # evicted or replaced while in use: close at the last check-in


def open_hdf5(path: str, display: str | None = None, *, driver: str | None = None) -> h5py.File:
    """Open ``path`` read-only, turning "not HDF5 / truncated" into ``HDF5ValidationError``.

    ``driver`` is passed to ``h5py.File`` (``None``: HDF5's default ``sec2``).

    Raises:
        FileNotFoundError: the file does not exist.
        PermissionError: the OS refuses to open it.
        HDF5ValidationError: the file is not HDF5, is truncated or is a directory.
    """
    name = display or path
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno in _NOT_A_FILE:
            raise FileNotFoundError(f"No such file: {name}") from None
        raise
    if stat.S_ISDIR(mode):
        raise HDF5ValidationError(f"{name} is a directory, not an HDF5 file", file=name)
    if not stat.S_ISREG(mode):
        # A FIFO or device would block open(2) inside HDF5, with h5py's lock held.
        raise HDF5ValidationError(f"{name} is not a regular file", file=name)
    if not os.access(path, os.R_OK):
        raise PermissionError(f"Permission denied: {name}")
    try:
        return h5py.File(path, "r", driver=driver)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"No such file: {name}") from exc
    except OSError as exc:
        # h5py reports "file signature not found", "truncated file", "bad object header"...
        # all as OSError; the file exists and is readable, so it is not valid HDF5.
        reason = str(exc).split("(", 1)[-1].rstrip(")") if "(" in str(exc) else str(exc)
        raise HDF5ValidationError(
            f"{name} is not a readable HDF5 file ({reason})", file=name
        ) from exc


def _open_in_process(identity: FileIdentity) -> bool:
    """Whether HDF5 already has the file ``identity`` names (device, inode) open here."""
    for fid in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE):
        try:
            st = os.fstat(fid.get_vfd_handle())
        except (OSError, ValueError, TypeError, OverflowError, RuntimeError):
            # not a sec2 file (stdio, core...): no usable descriptor
            continue
        if (st.st_dev, st.st_ino) == (identity.device, identity.inode):
            return True
    return False


class HDF5ConnectionPool:
    """Bounded LRU of open read-only HDF5 handles, safe to share between threads.

    Use ``with pool.checkout(path) as f:`` to borrow a handle. ``stats()`` reports hits,
    misses, opens, evictions, reopens_on_change, pool_size, max_pool_size, hit_ratio and the
    open files with their access counts.
    """

    def __init__(self, max_size: int = 32) -> None:
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise ValueError(f"max_size must be a positive integer, got {max_size!r}")
        self.max_size = max_size
        self._lock = threading.RLock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._closed = False
        self.hits = 0
        self.misses = 0
        self.opens = 0
        self.evictions = 0
        self.reopens_on_change = 0
        self.closes = 0

    # ------------------------------------------------------------------ checkout

    @contextlib.contextmanager
    def checkout(self, path: str | os.PathLike[str], display: str | None = None) -> Iterator[Any]:
        """Borrow an open, current handle on ``path`` for the duration of the block.

        ``display`` is how errors name the file (the server passes the path under its root).

        Raises:
            FileNotFoundError: the file does not exist (or vanished).
            PermissionError: the OS refuses to open it.
            HDF5ValidationError: the file is not readable HDF5.
            RuntimeError: the pool has been shut down.
        """
        key = os.path.realpath(path)
        entry = self._acquire(key, display or os.fspath(path))
        try:
            yield entry.handle
        finally:
            self._release(entry)

    def _acquire(self, key: str, display: str) -> _Entry:
        try:
            identity = FileIdentity.of(key)
        except FileNotFoundError:
            self._drop(key)
            raise FileNotFoundError(f"No such file: {display}") from None
        with self._lock:
            if self._closed:
                raise RuntimeError("the HDF5 connection pool has been shut down")
            entry = self._entries.get(key)
            if entry is not None and entry.identity == identity:
                self.hits += 1
                self._entries.move_to_end(key)
                entry.accesses += 1
                entry.users += 1
                return entry
            self.misses += 1
            if entry is not None:
                self.reopens_on_change += 1
                del self._entries[key]
                self._retire(entry)
            # HDF5 shares one open file, metadata cache included, between all opens of an
            # inode through one driver. If this inode is still open in the process (a retired
            # handle still in use, or the caller's own h5py.File) and was rewritten in place,
            # a sec2 open would serve that handle's stale metadata: open a private view
            # through another driver instead.
            private = _open_in_process(identity)
            # Opening under the lock keeps the bound exact and avoids two threads opening the
            # same file at once; h5py serialises every call behind its own global lock anyway.
            handle = open_hdf5(key, display, driver="stdio" if private else None)
            # The identity may have changed between stat and open (a rename racing us): take
            # the identity of what was opened, so the next checkout compares against it.
            # (A stdio handle has no file descriptor: keep the identity from before the open.)
            if not private:
                try:
                    st = os.fstat(handle.id.get_vfd_handle())
                    identity = FileIdentity.from_stat(st)
                except (OSError, ValueError, TypeError):
                    pass
            self.opens += 1
            entry = _Entry(handle=handle, identity=identity, accesses=1, users=1)
            self._entries[key] = entry
            while len(self._entries) > self.max_size:
                _, old = self._entries.popitem(last=False)
                self.evictions += 1
                self._retire(old)
            return entry

    def _release(self, entry: _Entry) -> None:
        with self._lock:
            entry.users -= 1
            if entry.retired and entry.users == 0:
                self._close(entry)

    def _retire(self, entry: _Entry) -> None:
        entry.retired = True
        if entry.users == 0:
            self._close(entry)

    def _close(self, entry: _Entry) -> None:
        try:
            entry.handle.close()
        except Exception:  # a handle whose file vanished may fail to close; it is gone anyway
            log.debug("closing a pooled handle failed", exc_info=True)
        self.closes += 1

    def _drop(self, key: str) -> None:
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self._retire(entry)

    # ------------------------------------------------------------------ management

    def invalidate(self, path: str | os.PathLike[str]) -> None:
        """Forget the handle on ``path`` (closed now, or at its last check-in)."""
        self._drop(os.path.realpath(path))

    def clear(self) -> None:
        """Close every pooled handle (those in use close at their check-in)."""
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
            for entry in entries:
                self._retire(entry)

    def shutdown(self) -> None:
        """Clear the pool and refuse further checkouts."""
        with self._lock:
            self._closed = True
            self.clear()

    def reopen(self) -> None:
        """Accept checkouts again after ``shutdown``."""
        with self._lock:
            self._closed = False

    def __enter__(self) -> HDF5ConnectionPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    @property
    def closed(self) -> bool:
        """True after ``shutdown`` (until ``reopen``)."""
        return self._closed

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def stats(self) -> dict[str, Any]:
        """Return counters and the open files (path, access count, in use).

        Keys: hits, misses, opens, evictions, reopens_on_change, closes, pool_size,
        max_pool_size, hit_ratio, open_files (list of dicts with path, accesses, in_use).
        """
        with self._lock:
            total = self.hits + self.misses
            return {
                "hits": self.hits,
                "misses": self.misses,
                "opens": self.opens,
                "evictions": self.evictions,
                "reopens_on_change": self.reopens_on_change,
                "closes": self.closes,
                "pool_size": len(self._entries),
                "max_pool_size": self.max_size,
                "hit_ratio": (self.hits / total) if total else 0.0,
                "open_files": [
                    {"path": key, "accesses": e.accesses, "in_use": e.users}
                    for key, e in self._entries.items()
                ],
            }


_default_pool: HDF5ConnectionPool | None = None
_default_lock = threading.Lock()


def get_default_pool() -> HDF5ConnectionPool:
    """The process-wide pool used by ``HDF5Facade()`` when no pool is given."""
    global _default_pool
    with _default_lock:
        if _default_pool is None:
            _default_pool = HDF5ConnectionPool()
        return _default_pool


def resolve(path: str | os.PathLike[str]) -> Path:
    """The absolute, symlink-free path of ``path``."""
    return Path(os.path.realpath(path))
