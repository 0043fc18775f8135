"""Resolving a caller's file path under a data root, refusing every way out of it.

The caller's string is taken literally (no URL decoding here: the web layer decoded the query
once, and decoding again is how double-encoding attacks work). It must be relative and free of
``..``, NUL and backslashes; the joined path is then resolved with symlinks and must still lie
inside the resolved root. Every refusal is the same ``PermissionError`` whether or not the
target exists, so the answer never reveals anything about the filesystem outside the root.

A resolved path is only a name: a folder on it can be swapped for a symlink a moment later.
``open_beneath`` and ``open_dir_beneath`` therefore open it again from the root's descriptor,
one component at a time with ``O_NOFOLLOW``, so the descriptor they return is of a file that
was inside the root when it was opened, whatever happens to the names afterwards; a component
that has become a symlink meanwhile raises ``PathChangedError`` (the caller resolves again).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path, PurePosixPath

__all__ = [
    "MAX_PATH_BYTES",
    "PathChangedError",
    "display_path",
    "inside_root",
    "open_beneath",
    "open_dir_beneath",
    "realpath",
    "resolve_under_root",
]

MAX_PATH_BYTES = 4096
MAX_COMPONENT_BYTES = 255


def realpath(path: str | os.PathLike[str]) -> str:
    """``os.path.realpath`` that tolerates names changing under it: a component that stops
    being a symlink between ``lstat`` and ``readlink`` makes ``realpath`` fail with EINVAL;
    resolve again (a few times), then answer as for a missing file.

    Raises:
        FileNotFoundError: the path kept changing while it was resolved.
    """
    for _ in range(8):
        try:
            return os.path.realpath(path)
        except OSError:
            continue
    raise FileNotFoundError(f"No such file: {os.fspath(path)} (the path kept changing)")


def inside_root(root: Path, path: Path) -> bool:
    """Whether ``path`` is ``root`` or lies below it, compared component by component: the
    one check of "inside the data root". Both must be resolved (symlink-free): a resolved
    path below the resolved root cannot lead out of it."""
    return path == root or root in path.parents


def _refuse(why: str) -> PermissionError:
    return PermissionError(f"access denied: {why}")


def resolve_under_root(root: Path, user_path: str | os.PathLike[str]) -> tuple[Path, str]:
    """Return (absolute resolved path, display path under the root) for ``user_path``.

    ``root`` must already be resolved (``Path(os.path.realpath(root))``).

    Raises:
        PermissionError: the path is absolute, contains ``..``, NUL or a backslash, is too
            long, or resolves (through symlinks) outside ``root``.
        TypeError: ``user_path`` is not a string or path.
    """
    if isinstance(user_path, os.PathLike):
        user_path = os.fspath(user_path)
    if not isinstance(user_path, str):
        raise TypeError(f"file_path must be a string, got {type(user_path).__name__}")
    if not user_path or user_path.strip() == "":
        raise _refuse("empty path")
    if "\x00" in user_path:
        raise _refuse("NUL byte in path")
    if "\\" in user_path:
        raise _refuse("backslashes are not allowed in paths (use '/')")
    try:
        encoded = user_path.encode("utf-8")
    except UnicodeEncodeError:
        raise _refuse("path is not valid UTF-8") from None
    if len(encoded) > MAX_PATH_BYTES:
        raise _refuse("path too long")
    pure = PurePosixPath(user_path)
    if pure.is_absolute():
        raise _refuse("absolute paths are not allowed; give a path under the data root")
    parts = [p for p in pure.parts if p not in ("", ".")]
    if not parts:
        raise _refuse("path names the data root itself, not a file")
    for part in parts:
        if part == "..":
            raise _refuse("'..' is not allowed in paths")
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise _refuse("path component too long")
    real = Path(realpath(root.joinpath(*parts)))
    if not inside_root(root, real):
        raise _refuse("path leads outside the data root")
    return real, "/".join(parts)


def display_path(root: Path | None, path: str | os.PathLike[str]) -> str:
    """How to name ``path`` to a client: relative to ``root`` when inside it."""
    if root is None:
        return os.fspath(path)
    try:
        real = Path(realpath(path))
        return real.relative_to(root).as_posix()
    except (ValueError, FileNotFoundError):
        return "<outside the data root>"


class PathChangedError(PermissionError):
    """A folder on a resolved path was replaced (by a symlink) while it was being opened."""


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _relative_parts(root: Path | None, real: Path) -> tuple[str, list[str]]:
    if root is None:
        return str(real.anchor or "/"), list(real.parts[1:])
    if not inside_root(root, real):
        raise _refuse("path leads outside the data root")
    return str(root), list(real.relative_to(root).parts)


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return True  # gone meanwhile: the path is changing


def open_dir_beneath(root: Path | None, real_dir: Path) -> int:
    """A descriptor of the folder ``real_dir`` (resolved, inside ``root``), opened from the
    root's descriptor one component at a time without following symlinks. With ``root``
    ``None`` the folder is opened by name.

    Raises:
        PathChangedError: a component is (now) a symlink or not a folder.
        FileNotFoundError: a component does not exist.
        PermissionError: ``real_dir`` is outside the root, or the OS refuses.
    """
    if root is None:
        return os.open(real_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    start, parts = _relative_parts(root, real_dir)
    fd = os.open(start, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            try:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                if _is_link(part, fd):
                    raise PathChangedError(
                        f"access denied: {part} changed while the path was opened"
                    ) from None
                # A file where a folder should be: the path names nothing.
                raise FileNotFoundError(
                    errno.ENOENT, f"No such file: {part} is not a folder"
                ) from None
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_beneath(root: Path | None, real: Path, flags: int = os.O_RDONLY) -> int:
    """A descriptor of the file ``real`` (resolved, inside ``root``) opened with ``flags``
    plus ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO cannot block the open) relative to a descriptor
    of its folder from ``open_dir_beneath``.

    Raises:
        PathChangedError: the file or a folder on the way is (now) a symlink.
        FileNotFoundError: it does not exist.
        PermissionError: outside the root, or the OS refuses.
    """
    dir_fd = open_dir_beneath(root, real.parent)
    try:
        return os.open(
            real.name,
            flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
            dir_fd=dir_fd,
        )
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PathChangedError(
                f"access denied: {real.name} changed while the path was opened"
            ) from None
        raise
    finally:
        os.close(dir_fd)
