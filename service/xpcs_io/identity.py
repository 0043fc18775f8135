"""The facade's file identities: the path a caller names resolved under the root, the
identity of a file and of the files its reads reach through links (what the service's ETags
and result cache key on), and ``check_out``, which holds one file for several steps.
"""

from __future__ import annotations

import os

from xpcs_io.api import PathLike
from xpcs_io.checkout import FileCheckout
from xpcs_io.pool import DataIdentity, FileIdentity
from xpcs_io.reading import Reading

__all__ = ["Identities"]


class Identities(Reading):
    """Mixin of ``HDF5Facade``: ``resolve``, ``file_identity``, ``resolve_identity``,
    ``open_identity``, ``check_out`` and ``check_out_pooled``."""

    def resolve(self, file_path: PathLike) -> str:
        """The absolute, symlink-free path ``file_path`` names (checked against the root).

        Raises:
            PermissionError: the path leads outside the facade's root.
        """
        return self._locate(file_path)[0]

    def file_identity(self, file_path: PathLike) -> DataIdentity:
        """The identity now of the file and of every file its reads were seen to reach
        through external links and virtual datasets (device, inode, size, mtime, ctime
        each): equal identities mean the reads return equal results, which is what the
        service's ETags and result cache rely on.

        Raises:
            FileNotFoundError: the file does not exist.
            PermissionError: the path leads outside the facade's root.
            FileBusyError: another program is writing the file.
            FileMarkedOpenError: a crashed writer left it marked open.
            HDF5ValidationError: the path names a folder or a non-regular file.
        """
        return self.resolve_identity(file_path)[1]

    def resolve_identity(self, file_path: PathLike) -> tuple[str, DataIdentity]:
        """``(resolve(file_path), file_identity(file_path))`` with the path resolved once (a
        many-file read asks this of every file).

        Raises:
            See ``file_identity``.
        """
        real, display, _ = self._locate(file_path)
        identity, swmr = self.pool.current(real, display, self.root)
        return real, DataIdentity(identity, self._linked_identities(real), swmr)

    def open_identity(self, file_path: PathLike) -> tuple[str, DataIdentity, int]:
        """``resolve_identity`` and a read-only descriptor of the file checked for it (the
        caller closes it): a reader of the file's own bytes then reads the version the
        identity names, as long as the file does not change (check it again after reading).

        Raises:
            See ``file_identity``.
        """
        real, display, _ = self._locate(file_path)
        identity, swmr, fd = self.pool.current_open(real, display, self.root)
        try:
            return real, DataIdentity(identity, self._linked_identities(real), swmr), fd
        except BaseException:
            os.close(fd)
            raise

    def check_out(self, file_path: PathLike) -> FileCheckout:
        """Resolve ``file_path`` once and borrow its pooled handle until ``release()``:
        reads given the checkout in place of the path read through that handle, and its
        ``identity`` is that of the file version they read (see ``file_identity``).

        Raises:
            See ``file_identity``; RuntimeError: the pool has been shut down.
        """
        real, display, _ = self._locate(file_path)
        borrowed = self.pool.borrow(real, display, root=self.root, resolved=True)
        return FileCheckout(
            real, display, self.root, self.pool, borrowed, lambda: self._linked_identities(real)
        )

    def check_out_pooled(self, file_path: PathLike) -> FileCheckout | None:
        """``check_out`` when the pool already holds a current handle on the file and no
        other thread is opening one: no HDF5 call and no wait, a few system calls (what an
        event loop may do). ``None`` otherwise: then ``check_out`` on a worker thread.

        Raises:
            See ``check_out``.
        """
        real, display, _ = self._locate(file_path)
        borrowed = self.pool.borrow_pooled(real, display, root=self.root)
        if borrowed is None:
            return None
        return FileCheckout(
            real, display, self.root, self.pool, borrowed, lambda: self._linked_identities(real)
        )

    def _linked_identities(self, real: str) -> tuple[tuple[str, FileIdentity | None], ...]:
        linked: list[tuple[str, FileIdentity | None]] = []
        for other in sorted(self.pool.linked_files.get(real, ())):
            try:
                linked.append((other, FileIdentity.of(other)))
            except OSError:
                linked.append((other, None))
        return tuple(linked)
