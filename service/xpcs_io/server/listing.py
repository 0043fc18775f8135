"""Listing the HDF5 files under a data root, without ever leaving it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from xpcs_io.paths import inside_root, resolve_under_root

__all__ = ["HDF5_SUFFIXES", "MAX_FILES", "list_hdf5_files"]

HDF5_SUFFIXES = frozenset({".h5", ".hdf5", ".hdf", ".nxs", ".nx5", ".he5"})
MAX_FILES = 10_000


def list_hdf5_files(root: Path, prefix: str | None = None) -> list[dict[str, Any]]:
    """Files with an HDF5 suffix under ``root`` (or its sub-folder ``prefix``), sorted by
    path, at most ``MAX_FILES``; hidden entries (lock and temporary files) are skipped.

    Raises:
        PermissionError: ``prefix`` leads outside the root.
        FileNotFoundError: ``prefix`` is not a folder.
    """
    start = root
    if prefix:
        start, shown = resolve_under_root(root, prefix)
        if not start.is_dir():
            raise FileNotFoundError(f"No such folder: {shown}")
    out: list[dict[str, Any]] = []
    for dirpath, dirnames, filenames in os.walk(start, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or Path(name).suffix.lower() not in HDF5_SUFFIXES:
                continue
            path = Path(dirpath, name)
            real = Path(os.path.realpath(path))
            if not inside_root(root, real):
                continue  # a symlink pointing out of the root
            try:
                st = real.stat()
            except OSError:
                continue
            out.append(
                {
                    "path": path.relative_to(root).as_posix(),
                    "size": st.st_size,
                    "mtime": st.st_mtime,
                }
            )
            if len(out) >= MAX_FILES:
                return out
    return out
