"""The facade's file identities: the path a caller names resolved under the root, the
identity of a file and of the files its reads reach through links (what the service's ETags
and result cache key on), and ``check_out``, which holds one file for several steps.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from xpcs_io.api import PathLike
from xpcs_io.checkout import FileCheckout
from xpcs_io.paths import open_dir_beneath, path_parts
from xpcs_io.pool import DataIdentity, FileIdentity, check_descriptor
from xpcs_io.reading import Reading

__all__ = ["Identities"]


class Identities(Reading):
    """Mixin of ``HDF5Facade``: ``resolve``, ``file_identity``, ``resolve_identity``,
    ``open_identity``, ``resolve_identities``, ``open_identities``, ``check_out`` and
    ``check_out_pooled``."""

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

    def open_identities(
        self, file_paths: Sequence[PathLike]
    ) -> list[tuple[str, DataIdentity, int] | Exception]:
        """``open_identity`` of each path, or the exception it raises, with each folder
        walked once: files of one folder are opened from one descriptor of it (opened
        beneath the root, no symlink followed), so that a many-file read checks a file with
        one open. A file that is a symlink, or in a folder reached through one, and every
        failure are answered by ``open_identity`` itself (same results, same errors). The
        caller closes the descriptors.
        """
        folders: dict[str, int | None] = {}
        out: list[tuple[str, DataIdentity, int] | Exception] = []
        try:
            for path in file_paths:
                found = self._open_in_folder(path, folders) if self.root is not None else None
                if found is None:
                    try:
                        found = self.open_identity(path)
                    except Exception as exc:
                        out.append(exc)
                        continue
                out.append(found)
        finally:
            for fd in folders.values():
                if fd is not None:
                    os.close(fd)
        return out

    def resolve_identities(
        self, file_paths: Sequence[PathLike]
    ) -> list[tuple[str, DataIdentity] | Exception]:
        """``resolve_identity`` of each path, or the exception it raises, each folder walked
        once (see ``open_identities``)."""
        out: list[tuple[str, DataIdentity] | Exception] = []
        for found in self.open_identities(file_paths):
            if isinstance(found, Exception):
                out.append(found)
            else:
                os.close(found[2])
                out.append(found[:2])
        return out

    def _open_in_folder(
        self, file_path: PathLike, folders: dict[str, int | None]
    ) -> tuple[str, DataIdentity, int] | None:
        assert self.root is not None
        try:
            parts = path_parts(os.fspath(file_path))
        except (PermissionError, TypeError):
            return None
        folder = "/".join(parts[:-1])
        if folder not in folders:
            top = os.fspath(self.root).rstrip("/")
            try:
                folders[folder] = open_dir_beneath(
                    self.root, Path(f"{top}/{folder}" if folder else top or "/"), path_only=True
                )
            except OSError:  # a symlink or a missing folder on the way: the full resolution
                folders[folder] = None
        dir_fd = folders[folder]
        if dir_fd is None:
            return None
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(parts[-1], flags, dir_fd=dir_fd)
        except OSError:
            return None
        try:
            st, swmr = check_descriptor(fd, "/".join(parts), self.pool.policy)
        except Exception:
            os.close(fd)
            return None
        real = f"{os.fspath(self.root).rstrip('/')}/{'/'.join(parts)}"
        identity = DataIdentity(FileIdentity.from_stat(st), self._linked_identities(real), swmr)
        return real, identity, fd

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
