"""Reading HDF5 objects by path with clear errors and a guard against links leaving a root.

``Locator`` walks an HDF5 path one component at a time without following links blindly: an
external link, or a virtual dataset's source file, that points outside the allowed root is
refused with ``PermissionError`` before HDF5 opens it, so neither its bytes nor its existence
leak. Missing objects raise ``KeyError`` naming the HDF5 path and the file.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Hashable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from xpcs_io.errors import HDF5ValidationError

__all__ = ["Locator", "decode_str", "is_inside"]


def is_inside(path: str | os.PathLike[str], root: Path) -> bool:
    """True when ``path`` (symlinks resolved) is ``root`` or lies below it."""
    real = Path(os.path.realpath(path))
    return real == root or root in real.parents


def decode_str(value: Any) -> str:
    """A str from what h5py returns for a string dataset or attribute."""
    if isinstance(value, np.ndarray):
        value = value.item() if value.size == 1 else value.tolist()
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    raise TypeError(f"expected a string, got {type(value).__name__}")


@dataclass(frozen=True)
class Locator:
    """Finds objects in one open file; ``display`` names the file in errors, ``root`` (if set)
    bounds where external links and virtual dataset sources may point."""

    file: h5py.File
    display: str
    root: Path | None = None
    #: Paths already walked and found safe in this very file version (shared by the facade,
    #: keyed by file identity), so repeated reads skip the link-by-link walk.
    verified: MutableMapping[Hashable, None] | None = None
    version: Hashable = None

    def _check_external(self, target_file: str, hdf5_path: str) -> None:
        if self.root is None:
            return
        base = Path(os.path.dirname(os.path.realpath(self.file.filename)))
        target = Path(target_file)
        candidate = target if target.is_absolute() else base / target
        if not is_inside(candidate, self.root):
            raise PermissionError(
                f"{self.display}: {hdf5_path} links to a file outside the data root"
            )

    def get(self, hdf5_path: str) -> Any:
        """The group or dataset at ``hdf5_path``.

        Raises:
            KeyError: nothing exists at that path.
            PermissionError: a link on the way leads outside the data root.
            HDF5ValidationError: the object cannot be read (corrupt metadata).
        """
        if not isinstance(hdf5_path, str) or "\x00" in hdf5_path:
            raise ValueError(f"invalid HDF5 path {hdf5_path!r}")
        norm = posixpath.normpath("/" + hdf5_path.strip("/")) if hdf5_path.strip("/") else "/"
        key = (self.file.filename, self.version, norm)
        if self.root is None or (self.verified is not None and key in self.verified):
            # Nothing to guard, or guarded before in this same file version: one HDF5 call.
            try:
                return self.file[norm]
            except (KeyError, OSError, RuntimeError):
                pass  # fall through to the walk, which says precisely what is wrong
        node = self._walk(norm)
        if self.verified is not None and self.root is not None:
            self.verified[key] = None
        return node

    def _walk(self, norm: str) -> Any:
        node: Any = self.file["/"]
        walked = ""
        for part in [p for p in norm.split("/") if p]:
            walked = f"{walked}/{part}"
            if not isinstance(node, h5py.Group):
                raise KeyError(f"{norm} not found in {self.display} ({walked} is not a group)")
            try:
                link = node.get(part, getlink=True)
            except (OSError, RuntimeError) as exc:
                raise HDF5ValidationError(
                    f"{self.display}: cannot read {walked} ({exc})", file=self.display
                ) from exc
            if link is None:
                where = "" if walked == norm else f" (no {walked})"
                raise KeyError(f"{norm} not found in {self.display}{where}")
            if isinstance(link, h5py.ExternalLink):
                self._check_external(link.filename, walked)
            try:
                node = node[part]
            except KeyError:
                raise KeyError(f"{walked} not found in {self.display} (dangling link)") from None
            except (OSError, RuntimeError) as exc:
                raise HDF5ValidationError(
                    f"{self.display}: cannot read {walked} ({exc})", file=self.display
                ) from exc
        if isinstance(node, h5py.Dataset) and node.is_virtual:
            for source in node.virtual_sources():
                if source.file_name != ".":
                    self._check_external(source.file_name, norm)
        return node

    def group(self, hdf5_path: str) -> h5py.Group:
        """The group at ``hdf5_path``.

        Raises:
            KeyError: missing, or not a group.
        """
        node = self.get(hdf5_path)
        if not isinstance(node, h5py.Group):
            raise KeyError(f"{hdf5_path} in {self.display} is not a group")
        return node

    def has(self, group: h5py.Group, name: str) -> bool:
        """Whether ``group`` has a member ``name`` (without following it)."""
        return group.get(name, getlink=True) is not None

    def dataset(self, group_path: str, name: str) -> h5py.Dataset:
        """The dataset ``name`` inside ``group_path``.

        Raises:
            KeyError: missing, or not a dataset.
        """
        path = f"{group_path.rstrip('/')}/{name}"
        node = self.get(path)
        if not isinstance(node, h5py.Dataset):
            raise KeyError(f"{path} in {self.display} is not a dataset")
        return node

    def read(self, group_path: str, name: str, selection: Any = ()) -> Any:
        """Read dataset ``name`` of ``group_path`` (optionally a selection of it) into memory.

        Raises:
            KeyError: the dataset is missing.
            HDF5ValidationError: its bytes cannot be read (truncated or corrupt file).
        """
        ds = self.dataset(group_path, name)
        try:
            return ds[selection]
        except (OSError, RuntimeError) as exc:
            raise HDF5ValidationError(
                f"{self.display}: cannot read {group_path.rstrip('/')}/{name} ({exc})",
                file=self.display,
                group=group_path,
                field=name,
            ) from exc
