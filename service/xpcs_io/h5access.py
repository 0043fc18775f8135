"""Reading HDF5 objects by path with clear errors and a guard against links leaving a root.

``Locator`` walks an HDF5 path one component at a time without following links blindly: an
external link, or a virtual dataset's source file, that points outside the allowed root is
refused with ``PermissionError`` before HDF5 opens it, so neither its bytes nor its existence
leak; one pointing to a missing file inside the root raises ``KeyError`` naming the link.
Linked files are opened as the pool opens files (beneath the root, verified, no lock kept)
and recorded in ``reached`` with their identity, so freshness checks cover them. Missing
objects raise ``KeyError`` naming the HDF5 path and the file.
"""

from __future__ import annotations

import math
import os
import posixpath
import zlib
from collections.abc import Hashable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from xpcs_io import extents
from xpcs_io.chunkread import read_whole
from xpcs_io.errors import DatasetTooLargeError, HDF5ValidationError
from xpcs_io.filters import FILTERS as _FILTERS  # noqa: F401  (registers HDF5 filter plugins)
from xpcs_io.locking import LockPolicy
from xpcs_io.paths import inside_root, realpath
from xpcs_io.pool import FileIdentity, open_hdf5

__all__ = [
    "DEFAULT_MAX_READ_BYTES",
    "Locator",
    "check_allocation",
    "check_read_size",
    "decode_str",
    "is_inside",
    "read_dataset",
    "read_limit",
    "selection_shape",
    "set_read_limit",
]

_MAX_LINK_DEPTH = 16

#: Largest selection one read may allocate by default: 2 GiB. An Eiger 16M map
#: (4371 x 4150) in float64 is 145 MB; a 16,384-frame float64 two-time map just fits.
DEFAULT_MAX_READ_BYTES = 2 << 30
_read_limit = DEFAULT_MAX_READ_BYTES


def set_read_limit(max_bytes: int) -> None:
    """Set the largest number of bytes one dataset read may allocate, for this process
    (the service sets it from ``XPCS_IO_MAX_READ_BYTES`` at start-up).

    Raises:
        ValueError: ``max_bytes`` < 1.
    """
    global _read_limit
    if max_bytes < 1:
        raise ValueError(f"the read limit must be at least 1 byte, got {max_bytes}")
    _read_limit = int(max_bytes)


def read_limit() -> int:
    """The largest number of bytes one dataset read may allocate in this process."""
    return _read_limit


def selection_shape(shape: tuple[int, ...], selection: Any) -> tuple[int, ...]:
    """The shape ``dataset[selection]`` will have, for ``()``, ``...``, integers and slices;
    an axis indexed any other way (lists, masks) counts whole, an upper bound."""
    sel = selection if isinstance(selection, tuple) else (selection,)
    if any(s is Ellipsis for s in sel):
        i = next(i for i, s in enumerate(sel) if s is Ellipsis)
        fill = (slice(None),) * max(0, len(shape) - (len(sel) - 1))
        sel = sel[:i] + fill + sel[i + 1 :]
    out: list[int] = []
    for axis, n in enumerate(shape):
        s = sel[axis] if axis < len(sel) else slice(None)
        if isinstance(s, int | np.integer) and not isinstance(s, bool):
            continue
        out.append(len(range(*s.indices(n))) if isinstance(s, slice) else n)
    return tuple(out)


def _size_text(nbytes: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


def check_allocation(nbytes: int, *, display: str, path: str, what: str) -> None:
    """Refuse to allocate ``nbytes`` for ``what`` (read from dataset ``path`` of file
    ``display``) when that is more than the read limit.

    Raises:
        DatasetTooLargeError: ``nbytes`` > ``read_limit()``; the message names the dataset,
            ``what`` and both sizes.
    """
    limit = _read_limit
    if nbytes > limit:
        group, _, name = path.rpartition("/")
        raise DatasetTooLargeError(
            f"{display}: {path} {what} ({_size_text(nbytes)} to read), more than the read "
            f"limit of {_size_text(limit)} (XPCS_IO_MAX_READ_BYTES)",
            file=display,
            group=group or "/",
            field=name,
        )


def check_read_size(ds: h5py.Dataset, selection: Any = (), *, display: str, path: str) -> None:
    """Refuse a read of ``selection`` of ``ds`` that would allocate more than the read limit,
    before HDF5 or numpy allocate anything (a file of a few KB can declare a dataset of
    149 GiB: chunked and never written).

    Raises:
        DatasetTooLargeError: the selection is larger than ``read_limit()`` bytes; the
            message names the dataset, its declared shape and dtype, and both sizes.
    """
    shape = selection_shape(tuple(int(n) for n in ds.shape or ()), selection)
    nbytes = math.prod(shape) * ds.dtype.itemsize  # Python ints: no overflow
    dims = " x ".join(map(str, ds.shape or ())) or "scalar"
    check_allocation(nbytes, display=display, path=path, what=f"declares {dims} {ds.dtype}")


def read_dataset(ds: h5py.Dataset, selection: Any = (), *, display: str, path: str) -> Any:
    """``ds[selection]`` after ``check_read_size``, with HDF5 read failures as
    ``HDF5ValidationError``: the one way layouts read dataset values.

    Raises:
        DatasetTooLargeError: the selection is larger than the read limit.
        HDF5ValidationError: its bytes cannot be read (truncated or corrupt file).
    """
    check_read_size(ds, selection, display=display, path=path)
    try:
        if selection == ():
            # Compressed chunks decoded outside HDF5's lock; None: HDF5 reads it.
            whole = read_whole(ds)
            if whole is not None:
                return whole
        return ds[selection]
    except (OSError, RuntimeError, zlib.error) as exc:
        group, _, name = path.rpartition("/")
        raise HDF5ValidationError(
            f"{display}: cannot read {path} ({exc})",
            file=display,
            group=group or "/",
            field=name,
        ) from exc


def is_inside(path: str | os.PathLike[str], root: Path) -> bool:
    """True when ``path`` (symlinks resolved) is ``root`` or lies below it."""
    return inside_root(root, Path(realpath(path)))


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
    #: Files this locator opened while following external links (kept open while it lives,
    #: since objects found in them need them), shared with the locators it spawns.
    opened: list[Any] = field(default_factory=list, repr=False, compare=False)
    #: How linked files are opened (locks as configured; default ``auto``).
    policy: LockPolicy | None = field(default=None, repr=False, compare=False)
    #: (resolved path, identity when opened) of each file reached through a link, shared
    #: with the locators this one spawns.
    reached: list[tuple[str, FileIdentity]] = field(default_factory=list, repr=False, compare=False)

    def _check_external(self, holder: str, target_file: str, hdf5_path: str) -> Path:
        """Refuse a link (or virtual source) held in file ``holder`` unless its target file
        exists inside the root. Relative names are taken from the holder's folder, as HDF5
        does first; requiring that the file exists there stops HDF5 from searching on (its
        later candidates, such as the working directory, may lie outside the root).

        Raises:
            PermissionError: the target lies outside the root.
            KeyError: the target would lie inside the root but does not exist there.
        """
        base = Path(os.path.dirname(realpath(holder)))
        target = Path(target_file)
        candidate = target if target.is_absolute() else base / target
        assert self.root is not None
        if not is_inside(candidate, self.root):
            raise PermissionError(
                f"{self.display}: {hdf5_path} links to a file outside the data root"
            )
        if not candidate.is_file():
            shown = Path(realpath(candidate)).relative_to(self.root).as_posix()
            raise KeyError(f"{hdf5_path} in {self.display} links to {shown}, which does not exist")
        return Path(realpath(candidate))

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
        crossed = len(self.opened)
        node = self._walk(norm)
        # Only paths inside this one file are remembered: another file reached through a
        # link can change without this file's identity changing.
        if self.verified is not None and self.root is not None and len(self.opened) == crossed:
            self.verified[key] = None
        return node

    def _walk(self, norm: str, depth: int = 0) -> Any:
        """Resolve ``norm`` one link at a time: soft links are followed through this walk
        (so a chain cannot hide an external link), external links are checked against the
        root before HDF5 opens their file, and virtual datasets have every source checked,
        recursively. ``depth`` bounds link chains and nesting."""
        if depth > _MAX_LINK_DEPTH:
            raise HDF5ValidationError(
                f"{self.display}: too many links resolving {norm}", file=self.display
            )
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
            if self.root is not None and isinstance(link, h5py.SoftLink):
                target = posixpath.normpath(posixpath.join(posixpath.dirname(walked), link.path))
                node = self._in_file(node.file).walk_from(target, depth + 1)
                continue
            if self.root is not None and isinstance(link, h5py.ExternalLink):
                real = self._check_external(node.file.filename, link.filename, walked)
                node = self._open_external(real, link.path, walked, depth)
                continue
            try:
                node = node[part]
            except KeyError:
                raise KeyError(f"{walked} not found in {self.display} (dangling link)") from None
            except (OSError, RuntimeError) as exc:
                raise HDF5ValidationError(
                    f"{self.display}: cannot read {walked} ({exc})", file=self.display
                ) from exc
        if self.root is not None and isinstance(node, h5py.Dataset) and node.is_virtual:
            self._check_virtual(node, norm, depth)
        return node

    def walk_from(self, norm: str, depth: int) -> Any:
        """``_walk`` for a path reached through a link (depth counted)."""
        return self._walk(norm, depth)

    def _in_file(self, handle: Any) -> Locator:
        return Locator(
            handle,
            self.display,
            self.root,
            opened=self.opened,
            policy=self.policy,
            reached=self.reached,
        )

    def _open_external(self, real: Path, path: str, walked: str, depth: int) -> Any:
        # Open the (checked, inside) target ourselves, as the pool opens files (beneath the
        # root, the inode verified, no lock kept), and walk the link's path in it with the
        # same guard, so a link found there is checked as well.
        assert self.root is not None
        shown = real.relative_to(self.root).as_posix()
        try:
            target = open_hdf5(os.fspath(real), shown, root=self.root, policy=self.policy)
        except HDF5ValidationError as exc:
            raise HDF5ValidationError(
                f"{self.display}: {walked} links to {shown}, which is not readable HDF5",
                file=self.display,
            ) from exc
        except FileNotFoundError:
            raise KeyError(
                f"{walked} in {self.display} links to {shown}, which does not exist"
            ) from None
        self.opened.append(target)
        try:
            identity = FileIdentity.from_stat(os.fstat(target.id.get_vfd_handle()))
        except (OSError, ValueError, TypeError):
            identity = FileIdentity.of(real)
        self.reached.append((os.fspath(real), identity))
        return self._in_file(target).walk_from(
            posixpath.normpath("/" + path.lstrip("/")), depth + 1
        )

    def _check_virtual(self, node: h5py.Dataset, norm: str, depth: int) -> None:
        holder = node.file.filename
        for source in node.virtual_sources():
            if source.file_name == ".":
                continue
            real = self._check_external(holder, source.file_name, norm)
            # A source that is itself virtual may point further out: check it too.
            src = self._open_external(real, source.dset_name, norm, depth)
            if not isinstance(src, h5py.Dataset):
                raise KeyError(f"{norm} in {self.display}: a virtual source is not a dataset")

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
        """Read dataset ``name`` of ``group_path`` (optionally a selection of it) into memory,
        once its size is checked against the read limit (``read_dataset``).

        Raises:
            KeyError: the dataset is missing.
            DatasetTooLargeError: the selection is larger than the read limit.
            HDF5ValidationError: its bytes cannot be read (truncated or corrupt file).
        """
        ds = self.dataset(group_path, name)
        path = f"{group_path.rstrip('/')}/{name}"
        value = read_dataset(ds, selection, display=self.display, path=path)
        if isinstance(selection, tuple) and not selection:
            extents.note(value, ds)  # a whole read: its bytes may be sent from the file later
        return value
