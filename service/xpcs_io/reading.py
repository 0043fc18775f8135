"""The facade's read path: resolving a path under the root, borrowing a pooled handle,
checking after each read that the file did not change under it, validating each file
version's objects once; and the reads of q-maps, G2, geometry and two-time maps.

``Reading`` is the base of ``HDF5Facade`` (``xpcs_io.facade``), which sets its state.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from xpcs_io.api import PathLike
from xpcs_io.bounded import BoundedCache
from xpcs_io.checkout import FileCheckout
from xpcs_io.damage import PASS_THROUGH, damage_error
from xpcs_io.decodeslots import one_read
from xpcs_io.errors import FileBusyError, HDF5ValidationError, SchemaError, SchemaTypeError
from xpcs_io.h5access import Locator
from xpcs_io.layouts import registry
from xpcs_io.paths import realpath, resolve_under_root
from xpcs_io.pool import (
    Checkout,
    DataIdentity,
    FileIdentity,
    HDF5ConnectionPool,
    check_descriptor,
)
from xpcs_io.schemas import G2Data, GeometryMetadata, QMapSchema, Schema

__all__ = ["VALIDATED_CACHE_SIZE", "Reading"]

S = TypeVar("S", bound=Schema)

VALIDATED_CACHE_SIZE = 4096

# What each thread's last read used (see ``Reading.last_read_identity``).
_SEEN = threading.local()
# Reads repeated when the file changed under them before answering "busy, retry later".
_READ_ATTEMPTS = 3


class _ChangedDuringReadError(FileBusyError):
    """The file (or a file it links to) changed while it was read: the result may mix old
    and new bytes, so it is thrown away."""

    def __init__(self, display: str) -> None:
        super().__init__(
            f"{display} changed while it was read (written in place by another "
            "program); retry later"
        )


def _replaced_only(fd: int | None, now: FileIdentity, before: FileIdentity) -> bool:
    """Whether the only change is the inode's ctime because it was unlinked (replaced by a
    rename, as every write of this service does, or deleted): its bytes are those read."""
    if fd is None or now[:4] != before[:4]:
        return False
    try:
        return os.fstat(fd).st_nlink == 0
    except OSError:
        return False


class Reading:
    """Base of ``HDF5Facade``: the read path and the reads of the seed's API."""

    pool: HDF5ConnectionPool
    validate: bool
    root: Path | None
    lock_timeout: float
    _validated: BoundedCache[tuple[Any, ...], None]
    _verified_paths: BoundedCache[Any, None]

    # ------------------------------------------------------------------ plumbing

    def _resolve(self, file_path: PathLike) -> tuple[str, str]:
        if self.root is not None:
            real, display = resolve_under_root(self.root, file_path)
            return os.fspath(real), display
        if not isinstance(file_path, str | os.PathLike):
            raise TypeError(f"file_path must be str or Path, got {type(file_path).__name__}")
        return os.fspath(file_path), os.fspath(file_path)

    def _locate(self, file_path: PathLike) -> tuple[str, str, FileCheckout | None]:
        """The resolved path, how errors name it, and the caller's checkout of it if any."""
        if isinstance(file_path, FileCheckout) and file_path.belongs_to(self.pool, self.root):
            return file_path.real, file_path.display, file_path
        path, display = self._resolve(file_path)
        return (path if self.root is not None else realpath(path)), display, None

    @contextlib.contextmanager
    def _borrow(self, file_path: PathLike) -> Iterator[tuple[str, str, Checkout, list[bool]]]:
        """The caller's checkout when it holds one still current, else a fresh borrow. The
        yielded flag list is set to ``[True]`` by a block that saw the file change."""
        real, display, held = self._locate(file_path)
        co = held.use() if held is not None else None
        if co is None or held is None:
            with self.pool.borrow(real, display, root=self.root, resolved=True) as fresh:
                yield real, display, fresh, [False]
            return
        changed = [False]
        try:
            yield real, display, co, changed
        finally:
            held.done(changed=changed[0])

    @contextlib.contextmanager
    def _open(self, file_path: PathLike) -> Iterator[tuple[Locator, FileIdentity]]:
        """Borrow the file and check, once the block is done, that it did not change while it
        was read: an in-place writer at work during the read raises ``_ChangedDuringReadError``
        (retried by ``_read``), an HDF5 failure of a damaged file ``HDF5ValidationError``.
        An SWMR read needs no such check: SWMR orders the writer's flushes for its readers.
        ``file_path`` may be a ``FileCheckout`` of this facade's pool: its handle is read."""
        with self._borrow(file_path) as (real, display, co, changed):
            loc = Locator(
                co.handle,
                display,
                self.root,
                self._verified_paths,
                co.identity,
                policy=self.pool.policy,
            )
            try:
                yield loc, co.identity
            except PASS_THROUGH as exc:
                if not co.swmr and self._changed(real, display, co.identity, loc):
                    changed[0] = True
                    raise _ChangedDuringReadError(display) from None
                damaged = damage_error(exc, display) if isinstance(exc, KeyError) else None
                if damaged is None:
                    raise
                raise damaged from exc
            except Exception as exc:
                if not co.swmr and self._changed(real, display, co.identity, loc):
                    changed[0] = True
                    raise _ChangedDuringReadError(display) from exc
                damaged = damage_error(exc, display)
                if damaged is None:
                    raise
                raise damaged from exc
            else:
                if not co.swmr and self._changed(real, display, co.identity, loc):
                    changed[0] = True
                    raise _ChangedDuringReadError(display)
                self._learn_links(real, loc)
                _SEEN.identity = co.identity
                _SEEN.reached = tuple(loc.reached)
            finally:
                for handle in loc.opened:
                    with contextlib.suppress(Exception):
                        handle.close()

    def _changed(self, real: str, display: str, before: FileIdentity, loc: Locator) -> bool:
        """Whether the file read (the inode, not the name: a replacement by rename leaves
        the inode read intact) or a file reached through a link changed, or a writer
        started on it, since ``before``."""
        try:
            vfd = loc.file.id.get_vfd_handle()
            fd = vfd if isinstance(vfd, int) and loc.file.driver == "sec2" else None
        except (OSError, ValueError, TypeError, RuntimeError):
            fd = None
        try:
            if fd is None:
                now, _ = self.pool.current(real, display, self.root)
            else:
                now = FileIdentity.from_stat(check_descriptor(fd, display, self.pool.policy)[0])
        except (OSError, HDF5ValidationError):
            return True  # gone, replaced by something else, or a writer at work now
        if now != before and not _replaced_only(fd, now, before):
            return True
        for linked, identity in loc.reached:
            try:
                if FileIdentity.of(linked) != identity:
                    return True
            except OSError:
                return True
        return False

    def _learn_links(self, real: str, loc: Locator) -> None:
        known = self.pool.linked_files.get(real, frozenset())
        reached = frozenset(path for path, _ in loc.reached)
        if not reached <= known:
            self.pool.linked_files[real] = known | reached

    @staticmethod
    def _check_group(group: Any) -> str:
        if not isinstance(group, str):
            raise TypeError(f"group must be a string, got {type(group).__name__}")
        if not group.strip("/") or "\x00" in group:
            raise ValueError(f"group must name an HDF5 group, got {group!r}")
        return group

    def _checked(self, obj: S, loc: Locator, group: str, key: tuple[Any, ...], validate: bool) -> S:
        if not validate:
            return obj
        if self._validated.touch(key):
            return obj
        try:
            obj.validate()
        except (SchemaError, SchemaTypeError) as exc:
            raise HDF5ValidationError(
                f"{loc.display}:{group}: {exc}", file=loc.display, group=group, field=exc.field
            ) from exc
        self._validated[key] = None
        return obj

    def _read(
        self,
        file_path: PathLike,
        group: str,
        kind: str,
        reader: Callable[[Locator], S],
        *extra: Any,
    ) -> S:
        group = self._check_group(group)
        with one_read():  # one place in the decode queue, kept by a retry
            for attempt in range(_READ_ATTEMPTS):
                try:
                    with self._open(file_path) as (loc, identity):
                        obj = reader(loc)
                        reached = tuple(loc.reached)
                        key = (loc.file.filename, identity, reached, group, kind, *extra)
                    # Validated only now, once the file is known not to have changed meanwhile.
                    return self._checked(obj, loc, group, key, self.validate)
                except _ChangedDuringReadError:
                    if attempt + 1 >= _READ_ATTEMPTS:
                        raise
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ reads

    def read_qmap(
        self, file_path: PathLike, group: str = "/xpcs/qmap", *, layout: str | None = None
    ) -> QMapSchema:
        """Read the q-map group into a ``QMapSchema``.

        ``layout`` is detected per file when ``None`` (see ``xpcs_io.layouts.registry`` and
        docs/layouts.md): the facade's own layout; an APS 8-ID-I NeXus result, a legacy
        8-ID-I result or a pySimpleMask q-partition (pixel q computed from the geometry in
        A^-1, phi in degrees, the dynamic label map as ``partition_map``). Pass one of
        ``LAYOUTS`` ("native", "aps8idi", "aps8idi-legacy", "pysimplemask") to force it.

        Raises:
            FileNotFoundError: the file does not exist.
            KeyError: the group or a required dataset is missing (the message names it and
                the layout), or the file is of no known layout.
            ValueError: ``layout`` is not one of ``LAYOUTS``.
            HDF5ValidationError: the data break a schema rule, or the file is not HDF5.
            PermissionError: the path leads outside the facade's root.
        """

        registry.check_layout(layout)

        def reader(loc: Locator) -> QMapSchema:
            return registry.read_qmap(loc, layout, group)

        return self._read(file_path, group, "qmap", reader, layout)

    def read_g2_data(
        self,
        file_path: PathLike,
        q_idx: int | None = None,
        group: str = "/xpcs/g2",
        *,
        layout: str | None = None,
    ) -> G2Data:
        """Read G2 shaped (n_delay, n_q); ``q_idx=k`` reads only q bin k (n_q becomes 1).

        On an APS 8-ID-I file (detected, or ``layout="aps8idi"``) G2 comes from
        ``/xpcs/multitau``, on a legacy one (``layout="aps8idi-legacy"``) from
        ``/exchange/norm-0-g2``: delays in seconds, the q of each bin in A^-1.

        Raises:
            FileNotFoundError: the file does not exist.
            KeyError: the group or a required dataset is missing (the message names it and
                the layout), or the file is of no known layout.
            ValueError: ``layout`` is not one of ``LAYOUTS``.
            IndexError: ``q_idx`` is outside 0..n_q-1 (negative values are not wrapped).
            TypeError: ``q_idx`` is not an integer.
            HDF5ValidationError: the data break a schema rule, or the file is not HDF5.
            PermissionError: the path leads outside the facade's root.
        """

        registry.check_layout(layout)

        def reader(loc: Locator) -> G2Data:
            return registry.read_g2(loc, layout, group, q_idx)

        return self._read(file_path, group, "g2", reader, q_idx, layout)

    def read_geometry_metadata(
        self, file_path: PathLike, group: str = "/xpcs/metadata", *, layout: str | None = None
    ) -> GeometryMetadata:
        """Read detector geometry into ``GeometryMetadata``.

        On an APS 8-ID-I file it comes from ``/xpcs/qmap`` and ``/entry/instrument``, on a
        legacy one from ``/measurement/instrument``, converted to mm and Angstrom (see
        docs/layouts.md).

        Raises:
            FileNotFoundError: the file does not exist.
            KeyError: the group or a required field is missing (the message names it and
                the layout), or the file is of no known layout.
            ValueError: ``layout`` is not one of ``LAYOUTS``.
            HDF5ValidationError: the data break a schema rule (NaN included), or not HDF5.
            PermissionError: the path leads outside the facade's root.
        """

        registry.check_layout(layout)

        def reader(loc: Locator) -> GeometryMetadata:
            return registry.read_geometry(loc, layout, group)

        return self._read(file_path, group, "geometry", reader, layout)

    def read_c2(
        self, file_path: PathLike, q_idx: int, max_size: int | None = None
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The two-time correlation map of dynamic q bin ``q_idx`` (0-based, as in
        ``read_g2_data``; ROI label ``q_idx + 1``) of an APS 8-ID-I file (NeXus
        ``/xpcs/twotime`` or legacy ``/exchange/C2T_all``): the full symmetric
        (N, N) float32 matrix rebuilt from the stored upper triangle. ``max_size`` block-
        averages it to at most max_size x max_size for quick looks.

        Raises:
            FileNotFoundError: the file does not exist.
            KeyError: no two-time map for that bin (the message lists the available ones),
                or the file's layout holds none.
            TypeError: ``q_idx`` is not an integer.
            ValueError: ``max_size`` < 1.
        """
        if max_size is not None and (
            isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1
        ):
            raise ValueError(f"max_size must be a positive integer, got {max_size!r}")
        with self._open(file_path) as (loc, _):
            return registry.read_c2(loc, q_idx, max_size)

    # ------------------------------------------------------------------ what was read

    def last_read_identity(self) -> FileIdentity | None:
        """The identity of the file version the calling thread's last successful read (by
        any facade) used: the inode read, not what the name leads to now. A server tags its
        answer with it. ``None`` before any read in this thread."""
        identity: FileIdentity | None = getattr(_SEEN, "identity", None)
        return identity

    def last_read_matches(self, identity: DataIdentity) -> bool:
        """Whether the calling thread's last successful read used the file version
        ``identity`` names and reached, through links, only files at the versions it names:
        its result is then the result for ``identity`` (an SWMR file always matches)."""
        if identity.swmr:
            return True
        if getattr(_SEEN, "identity", None) != identity.file:
            return False
        return set(getattr(_SEEN, "reached", ())) <= set(identity.linked)
