"""Resolving a caller's file path under a data root, refusing every way out of it.

The caller's string is taken literally (no URL decoding here: the web layer decoded the query
once, and decoding again is how double-encoding attacks work). It must be relative and free of
``..``, NUL and backslashes; the joined path is then resolved with symlinks and must still lie
inside the resolved root. Every refusal is the same ``PermissionError`` whether or not the
target exists, so the answer never reveals anything about the filesystem outside the root.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

__all__ = ["MAX_PATH_BYTES", "display_path", "resolve_under_root"]

MAX_PATH_BYTES = 4096
MAX_COMPONENT_BYTES = 255


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
    real = Path(os.path.realpath(root.joinpath(*parts)))
    if real != root and root not in real.parents:
        raise _refuse("path leads outside the data root")
    return real, "/".join(parts)


def display_path(root: Path | None, path: str | os.PathLike[str]) -> str:
    """How to name ``path`` to a client: relative to ``root`` when inside it."""
    if root is None:
        return os.fspath(path)
    real = Path(os.path.realpath(path))
    try:
        return real.relative_to(root).as_posix()
    except ValueError:
        return "<outside the data root>"
