"""A bounded, thread-safe LRU pool of read-only ``h5py.File`` handles that never serves stale
data, never keeps other programs from writing, and never opens a file outside the data root.

Every checkout opens the file again from the data root's descriptor (``paths.open_beneath``:
one component at a time, no symlink followed) and compares that descriptor's identity (device,
inode, size, mtime, ctime) with the one the pooled handle was opened on. A file rewritten in
place, replaced by rename (what the facade's own writes do) or truncated gets a fresh handle; a
deleted file raises ``FileNotFoundError``. A handle is only opened by name after that
descriptor was taken, and is kept only if HDF5 opened the very same inode: a folder swapped for
a symlink in between is noticed and the open retried, so a handle never reads a file outside
the root. A handle that is evicted or replaced while another thread still reads from it is
closed when that thread checks it back in, never under its feet; a checkout of the same inode
meanwhile waits for that (HDF5 would share the old handle's stale metadata with a new one).

**Readers never block writers.** HDF5 takes a ``flock`` on every file it opens (shared for
reading) and keeps it while the file is open, so a pooled handle would keep every other
program from opening that file for writing for as long as it stays pooled. The pool opens
with HDF5's locking as configured (``LockPolicy``), then drops the shared lock HDF5 took on
its descriptor at once. Releasing rather than opening with ``locking=False`` is deliberate:
HDF5 refuses a second open of one file in one process with different locking flags, so a
viewer embedding the facade can still open the same files with a plain ``h5py.File(path)``.
Since pooled handles then no longer exclude in-place writers, each checkout first asks
whether one is at work (``FileBusyError`` when a program holds HDF5's exclusive lock), and the
facade checks after each read that the file did not change under it (see ``HDF5Facade``).

Files marked open for writing in their superblock: by an SWMR writer they are opened for SWMR
reading (``swmr=True``; each flush by the writer changes the identity, so the next checkout
opens a fresh view that sees what was appended); without SWMR and without a lock holder (a
crashed writer) they raise ``FileMarkedOpenError`` naming ``h5clear -s``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import h5py

from xpcs_io.errors import FileBusyError, FileMarkedOpenError, HDF5ValidationError
from xpcs_io.filters import FILTERS as _FILTERS  # noqa: F401  (registers HDF5 filter plugins)
from xpcs_io.locking import LockPolicy, read_superblock
from xpcs_io.paths import PathChangedError, open_beneath, realpath

__all__ = [
    "Checkout",
    "DataIdentity",
    "FileIdentity",
    "HDF5ConnectionPool",
    "check_descriptor",
    "get_default_pool",
    "open_hdf5",
]

log = logging.getLogger(__name__)

# Opening again after a rename or a symlink swap raced the open: a few attempts, then a
# retryable error (a loop or a persistent swap is answered, never waited out).
_OPEN_ATTEMPTS = 4
# Seconds a checkout waits for a replaced handle on the same inode to be checked in.
_RETIRED_WAIT = 5.0


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


class DataIdentity(NamedTuple):
    """The identity of everything a read of one file reaches: the file itself and each file
    its external links and virtual datasets lead to (resolved path, identity or ``None`` when
    missing). Equal data identities mean equal read results (ETags and caches rely on it)."""

    file: FileIdentity
    linked: tuple[tuple[str, FileIdentity | None], ...] = ()
    #: Being written in SWMR mode: read with ``swmr=True``; it changes between reads.
    swmr: bool = False


# stat() errors that mean "there is no file by that name", to be answered like ENOENT.
_NOT_A_FILE = frozenset({errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.ENAMETOOLONG})


@dataclass
class _Entry:
    handle: h5py.File
    identity: FileIdentity
    swmr: bool = False
    accesses: int = 0
    users: int = 0
    retired: bool = False  # evicted or replaced while in use: close at the last check-in


class Checkout(NamedTuple):
    """A borrowed handle, the identity of the file it reads and whether it is an SWMR read."""

    handle: Any
    identity: FileIdentity
    swmr: bool


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return text.split("(", 1)[-1].rstrip(")") if "(" in text else text


def _open_error(exc: OSError, name: str) -> Exception:
    """What an ``OSError`` from ``h5py.File`` on an existing, readable file means."""
    text = str(exc)
    if "unable to lock file" in text:
        return FileBusyError(f"{name} is open for writing by another program; retry later")
    if "already open for write" in text:
        return _marked_open(name)
    # h5py reports "file signature not found", "truncated file", "bad object header"...
    # all as OSError; the file exists and is readable, so it is not valid HDF5.
    return HDF5ValidationError(f"{name} is not a readable HDF5 file ({_reason(exc)})", file=name)


def _marked_open(name: str) -> FileMarkedOpenError:
    return FileMarkedOpenError(
        f"{name} is marked open for writing, but no program holds its lock: its writer "
        f"crashed (or writes without HDF5 file locking). If nothing is writing it, clear the "
        f"mark with `h5clear -s {name.rsplit('/', 1)[-1]}`"
    )


def check_descriptor(fd: int, name: str, policy: LockPolicy) -> tuple[os.stat_result, bool]:
    """Check the file open as ``fd`` can be read now: returns its ``stat`` and whether to read
    it in SWMR mode.

    Raises:
        HDF5ValidationError: a directory or not a regular file.
        FileBusyError: a program holds HDF5's exclusive lock on it (writing in place).
        FileMarkedOpenError: marked open for writing (not SWMR) with no lock holder.
    """
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        raise HDF5ValidationError(f"{name} is a directory, not an HDF5 file", file=name)
    if not stat.S_ISREG(st.st_mode):
        # A FIFO or device would block open(2) inside HDF5.
        raise HDF5ValidationError(f"{name} is not a regular file", file=name)
    if policy.writer_present(fd, name, st):
        raise FileBusyError(f"{name} is open for writing by another program; retry later")
    sb = read_superblock(fd, st.st_size)
    if sb is not None and sb.open_for_write:
        if not sb.swmr:
            raise _marked_open(name)
        return st, True
    return st, False


def open_hdf5(
    path: str,
    display: str | None = None,
    *,
    driver: str | None = None,
    root: Path | None = None,
    policy: LockPolicy | None = None,
) -> h5py.File:
    """Open ``path`` read-only (checked against ``root`` as the pool does), turning "not
    HDF5 / truncated" into ``HDF5ValidationError``. ``driver`` is passed to ``h5py.File``
    (``None``: HDF5's default ``sec2``). The handle holds no lock on the file.

    Raises:
        FileNotFoundError: the file does not exist.
        PermissionError: the OS refuses to open it, or it lies outside ``root``.
        HDF5ValidationError: the file is not HDF5, is truncated or is a directory.
        FileBusyError: another program is writing it.
        FileMarkedOpenError: a crashed writer left it marked open.
    """
    real = Path(realpath(path))
    handle, _, _ = _open_verified(real, display or path, driver, root, policy or LockPolicy())
    return handle


def _safe_fd(real: Path, name: str, root: Path | None) -> int:
    try:
        return open_beneath(root, real)
    except PathChangedError:
        raise
    except PermissionError:
        raise PermissionError(f"Permission denied: {name}") from None
    except OSError as exc:
        if exc.errno in _NOT_A_FILE:
            raise FileNotFoundError(f"No such file: {name}") from None
        raise


def _open_verified(
    real: Path,
    name: str,
    driver: str | None,
    root: Path | None,
    policy: LockPolicy,
    known: FileIdentity | None = None,
) -> tuple[h5py.File, FileIdentity, bool]:
    """Open ``real`` by name with h5py and keep the handle only when it reads the inode a
    descriptor opened safely beneath ``root`` names (retried a few times)."""
    for _ in range(_OPEN_ATTEMPTS):
        try:
            fd = _safe_fd(real, name, root)
        except PathChangedError:
            continue
        try:
            st, swmr = check_descriptor(fd, name, policy)
            identity = FileIdentity.from_stat(st)
            # A private view through another driver shares nothing with other opens here, so
            # it can skip HDF5's lock altogether (its descriptor is not ours to unlock).
            locking = driver is None and policy.hdf5_locking(st.st_dev)
            try:
                handle = _h5open(real, driver, locking, swmr)
            except FileNotFoundError:
                continue  # renamed away between the two opens: open the new one
            except OSError as exc:
                if exc.errno in _REFUSED_LOCKS or "errno = 37" in str(exc):
                    policy.refused(OSError(errno.ENOLCK, "No locks available"), st.st_dev, name)
                    continue
                if not _names(real, st) or any(t in str(exc) for t in _NAME_MOVED):
                    continue  # the name moved during the open: HDF5 saw something else
                raise _open_error(exc, name) from exc
            try:
                vfd = handle.id.get_vfd_handle()
                opened = os.fstat(vfd) if isinstance(vfd, int) and driver is None else None
            except (OSError, ValueError, TypeError, RuntimeError):
                opened = None
            if opened is not None and (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
                handle.close()  # a rename or a symlink swap raced the open: try again
                continue
            if opened is not None and locking:
                # Drop the shared lock HDF5 just took (see the module docstring).
                with contextlib.suppress(OSError):
                    fcntl.flock(vfd, fcntl.LOCK_UN)
            return handle, identity, swmr
        finally:
            os.close(fd)
    if root is not None and os.path.islink(real):
        raise FileNotFoundError(f"No such file: {name} (symlink loop)")
    raise FileBusyError(f"{name} kept changing while it was opened; retry later")


# HDF5's words when the name it opens stops leading to a file halfway through the open.
_NAME_MOVED = ("can't retrieve stat info", "unable to open file", "No such file")

_REFUSED_LOCKS = frozenset({errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP})


def _names(real: Path, st: os.stat_result) -> bool:
    """Whether the name ``real`` still leads to the file ``st`` describes."""
    try:
        now = os.stat(real)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


def _h5open(real: Path, driver: str | None, locking: bool, swmr: bool) -> h5py.File:
    # ``None`` leaves HDF5's default file-access flags alone, exactly what a plain
    # ``h5py.File(path)`` uses: HDF5 refuses a second open of one file in one process whose
    # locking flags differ, so the pool must match the embedding program's own opens.
    first: bool | None = None if locking else False
    try:
        return h5py.File(real, "r", driver=driver, locking=first, swmr=swmr)
    except OSError as exc:
        if "flag values don't match" not in str(exc):
            raise
    # The process holds this file open with the other flags: join it as it is.
    return h5py.File(real, "r", driver=driver, locking=False if locking else None, swmr=swmr)


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

    def __init__(self, max_size: int = 32, *, policy: LockPolicy | None = None) -> None:
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise ValueError(f"max_size must be a positive integer, got {max_size!r}")
        self.max_size = max_size
        #: How locks are used (``XPCS_IO_FILE_LOCKING``); shared with the facade's writes.
        self.policy = policy or LockPolicy()
        self._lock = threading.RLock()
        self._checked_in = threading.Condition(self._lock)  # a retired handle was closed
        self._retired_in_use: dict[int, _Entry] = {}
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._closed = False
        #: The files each file's reads reached through external links and virtual datasets
        #: (resolved paths), learnt by the facade: freshness checks cover them too.
        self.linked_files: dict[str, frozenset[str]] = {}
        self.hits = 0
        self.misses = 0
        self.opens = 0
        self.evictions = 0
        self.reopens_on_change = 0
        self.closes = 0

    # ------------------------------------------------------------------ checkout

    @contextlib.contextmanager
    def checkout(
        self,
        path: str | os.PathLike[str],
        display: str | None = None,
        *,
        root: Path | None = None,
    ) -> Iterator[Any]:
        """Borrow an open, current handle on ``path`` for the duration of the block.

        ``display`` is how errors name the file (the server passes the path under its root);
        ``root``, when given, is the resolved data root the file must be opened beneath.

        Raises:
            FileNotFoundError: the file does not exist (or vanished).
            PermissionError: the OS refuses to open it, or it lies outside ``root``.
            HDF5ValidationError: the file is not readable HDF5.
            FileBusyError: another program is writing it (retry later).
            FileMarkedOpenError: a crashed writer left it marked open.
            RuntimeError: the pool has been shut down.
        """
        with self.borrow(path, display, root=root) as borrowed:
            yield borrowed.handle

    @contextlib.contextmanager
    def borrow(
        self,
        path: str | os.PathLike[str],
        display: str | None = None,
        *,
        root: Path | None = None,
        resolved: bool = False,
    ) -> Iterator[Checkout]:
        """``checkout`` yielding a ``Checkout``: the handle, the identity of the file it
        reads and whether it reads in SWMR mode. ``resolved``: ``path`` is already absolute
        and symlink-free (it is not resolved again).

        Raises:
            See ``checkout``.
        """
        key = os.fspath(path) if resolved else realpath(path)
        entry = self._acquire(key, display or os.fspath(path), root)
        assert entry is not None
        with self._lent(entry) as checkout:
            yield checkout

    def borrow_pooled(
        self, key: str, display: str, *, root: Path | None = None
    ) -> contextlib.AbstractContextManager[Checkout] | None:
        """``borrow`` of an absolute, symlink-free ``key``, only when it costs no HDF5 call
        and no wait: the pool holds a handle on the file as it is now and its lock is free.
        Else ``None`` (ask ``borrow`` on a thread that may block). A few system calls: cheap
        enough for an event loop, which must never wait for another thread's open.

        Raises:
            See ``checkout`` (the file's state is checked as ``borrow`` checks it).
        """
        entry = self._acquire(key, display, root, pooled_only=True)
        return None if entry is None else self._lent(entry)

    @contextlib.contextmanager
    def _lent(self, entry: _Entry) -> Iterator[Checkout]:
        try:
            yield Checkout(entry.handle, entry.identity, entry.swmr)
        finally:
            self._release(entry)

    def current(self, key: str, display: str, root: Path | None) -> tuple[FileIdentity, bool]:
        """The identity of the file at ``key`` now and whether it is written in SWMR mode,
        checked as a checkout checks it (opened beneath ``root``, no writer at work).

        Raises:
            See ``checkout``.
        """
        identity, swmr, fd = self.current_open(key, display, root)
        os.close(fd)
        return identity, swmr

    def current_open(
        self, key: str, display: str, root: Path | None
    ) -> tuple[FileIdentity, bool, int]:
        """``current``, and the descriptor the file was checked through (the caller closes
        it): reading its bytes through it reads the version the identity names, unless the
        file changes afterwards.

        Raises:
            See ``checkout``.
        """
        for _ in range(_OPEN_ATTEMPTS):
            try:
                fd = _safe_fd(Path(key), display, root)
            except PathChangedError:
                continue
            try:
                st, swmr = check_descriptor(fd, display, self.policy)
            except BaseException:
                os.close(fd)
                raise
            return FileIdentity.from_stat(st), swmr, fd
        if os.path.islink(key):
            raise FileNotFoundError(f"No such file: {display} (symlink loop)")
        raise FileBusyError(f"{display} kept changing while it was opened; retry later")

    def _acquire(
        self, key: str, display: str, root: Path | None, *, pooled_only: bool = False
    ) -> _Entry | None:
        try:
            identity, swmr = self.current(key, display, root)
        except FileNotFoundError:
            self._drop(key)
            raise
        if pooled_only:
            # Another thread may hold the lock while it opens a file: never wait for it.
            if not self._lock.acquire(blocking=False):
                return None
            try:
                if self._closed:
                    raise RuntimeError("the HDF5 connection pool has been shut down")
                entry = self._entries.get(key)
                if entry is None or entry.identity != identity:
                    return None
                return self._hit(key, entry)
            finally:
                self._lock.release()
        deadline = time.monotonic() + _RETIRED_WAIT
        with self._lock:
            while True:
                if self._closed:
                    raise RuntimeError("the HDF5 connection pool has been shut down")
                entry = self._entries.get(key)
                if entry is not None and entry.identity == identity:
                    return self._hit(key, entry)
                if entry is not None:
                    self.reopens_on_change += 1
                    del self._entries[key]
                    self._retire(entry)
                # HDF5 shares one open file, metadata cache included, between all opens of
                # an inode through one driver: if this inode is still open in the process and
                # was rewritten in place, a sec2 open would serve that open's stale metadata.
                # A replaced handle of ours still in use is waited for (reads are short).
                left = deadline - time.monotonic()
                if swmr or left <= 0 or not self._retired_on(identity):
                    break
                self._checked_in.wait(left)  # the pool lock is released meanwhile
            self.misses += 1
            # Still open here (the caller's own h5py.File, or a handle this thread holds):
            # without a root, read a private view through another driver. Beneath a root,
            # where nothing else opens files, never: that driver's inode cannot be verified.
            private = not swmr and _open_in_process(identity)
            if private and root is not None:
                raise FileBusyError(f"{display} is still being read here; retry later")
            # Opening under the lock keeps the bound exact and avoids two threads opening the
            # same file at once; h5py serialises every call behind its own global lock anyway.
            handle, identity, swmr = _open_verified(
                Path(key), display, "stdio" if private else None, root, self.policy
            )
            self.opens += 1
            entry = _Entry(handle=handle, identity=identity, swmr=swmr, accesses=1, users=1)
            self._entries[key] = entry
            while len(self._entries) > self.max_size:
                _, old = self._entries.popitem(last=False)
                self.evictions += 1
                self._retire(old)
            return entry

    def _hit(self, key: str, entry: _Entry) -> _Entry:
        # Called with the pool lock held.
        self.hits += 1
        self._entries.move_to_end(key)
        entry.accesses += 1
        entry.users += 1
        return entry

    def _retired_on(self, identity: FileIdentity) -> bool:
        """Whether a replaced handle of ours on the inode ``identity`` names is in use."""
        return any(e.identity[:2] == identity[:2] for e in self._retired_in_use.values())

    def _release(self, entry: _Entry) -> None:
        with self._lock:
            entry.users -= 1
            if entry.retired and entry.users == 0:
                self._retired_in_use.pop(id(entry), None)
                self._close(entry)
                self._checked_in.notify_all()

    def _retire(self, entry: _Entry) -> None:
        entry.retired = True
        if entry.users == 0:
            self._close(entry)
        else:
            self._retired_in_use[id(entry)] = entry

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
        self._drop(realpath(path))

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
