"""``FileCheckout``: one caller's hold on one file across several steps, e.g. a server request
that tags its answer with the file's identity and then reads it.

The path is resolved once and the pooled handle borrowed once; the identity the hold carries
(``DataIdentity``) is that of the file the handle reads plus each file its reads were seen to
reach through links. A facade read given the checkout in place of a path reads through that
handle, so an answer tagged with the identity was read from that very file version.

The handle goes back to the pool when the holder releases the checkout and no read through
it is still running (a read started by the holder may finish after the holder has gone). A
read that starts after the release, or after the file changed under a read, borrows afresh
from the resolved path.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

from xpcs_io.pool import Checkout, DataIdentity, FileIdentity, HDF5ConnectionPool

__all__ = ["FileCheckout"]


class FileCheckout(os.PathLike[str]):
    """A resolved path, its borrowed pooled handle and the identity of what it reads.

    Built by ``HDF5Facade.check_out``; a path-like naming the resolved file (``os.fspath``).
    Release it with ``release()`` or by using it as a context manager.
    """

    def __init__(
        self,
        real: str,
        display: str,
        root: Path | None,
        pool: HDF5ConnectionPool,
        borrowed: contextlib.AbstractContextManager[Checkout],
        linked: Callable[[], tuple[tuple[str, FileIdentity | None], ...]],
    ) -> None:
        self.real = real
        self.display = display
        self.root = root
        self.pool = pool
        self._borrowed = borrowed
        self.checkout: Checkout = borrowed.__enter__()
        try:
            links = linked()  # stat'ed after the borrow: never older than the handle
        except BaseException:
            borrowed.__exit__(None, None, None)
            raise
        #: The file the handle reads and the files its reads reach (see ``DataIdentity``).
        self.identity = DataIdentity(self.checkout.identity, links, self.checkout.swmr)
        self._lock = threading.Lock()
        self._readers = 0
        self._released = False
        self._returned = False
        self._stale = False

    def __fspath__(self) -> str:
        return self.real

    def __repr__(self) -> str:
        return f"FileCheckout({self.display!r}, {self.identity.file})"

    def __enter__(self) -> FileCheckout:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def belongs_to(self, pool: HDF5ConnectionPool, root: Path | None) -> bool:
        """Whether a facade on ``pool`` under ``root`` may read through this checkout."""
        return pool is self.pool and root == self.root

    def use(self) -> Checkout | None:
        """The held handle for one read (give it back with ``done()``), or ``None`` when the
        holder released it or the file changed under an earlier read: borrow afresh."""
        with self._lock:
            if self._released or self._stale:
                return None
            self._readers += 1
            return self.checkout

    def done(self, *, changed: bool = False) -> None:
        """End a read started with ``use()``; ``changed``: the file changed under it."""
        with self._lock:
            self._readers -= 1
            self._stale = self._stale or changed
            last = self._released and self._readers == 0
        if last:
            self._give_back()

    def release(self) -> None:
        """The holder is done: the handle goes back to the pool after the last read."""
        with self._lock:
            if self._released:
                return
            self._released = True
            last = self._readers == 0
        if last:
            self._give_back()

    def _give_back(self) -> None:
        with self._lock:
            if self._returned:
                return
            self._returned = True
        self._borrowed.__exit__(None, None, None)
