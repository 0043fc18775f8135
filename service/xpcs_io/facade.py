"""``HDF5Facade``: validated reads and versioned, crash-safe writes of XPCS data in HDF5.

The API mirrors the seed (``read_qmap``, ``read_g2_data``, ``read_geometry_metadata``,
``write_mask``, ``write_partition``, ``get_pool_stats``, ``clear_pool``) and adds reading back
what was written (``read_mask``, ``read_partition``, ``list_mask_versions``,
``list_partition_versions``). Errors follow ``xpcs_io.errors``.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from xpcs_io.api import PathLike, VersionRecord
from xpcs_io.atomic import edit_atomically
from xpcs_io.errors import (
    FileBusyError,
    FileMarkedOpenError,
    HDF5ValidationError,
    InsufficientStorageError,
    LockFileError,
    SchemaError,
    SchemaTypeError,
    WriteLockTimeout,
)
from xpcs_io.h5access import Locator, decode_str
from xpcs_io.idempotency import ReplayedWrite, check_key, request_sha256
from xpcs_io.layouts import registry
from xpcs_io.original_mask import read_original_mask
from xpcs_io.paths import display_path, realpath, resolve_under_root
from xpcs_io.pool import (
    DataIdentity,
    FileIdentity,
    HDF5ConnectionPool,
    check_descriptor,
    get_default_pool,
)
from xpcs_io.schemas import (
    G2Data,
    GeometryMetadata,
    MaskSchema,
    PartitionSchema,
    QMapSchema,
    Schema,
)
from xpcs_io.versions import (
    default_writer,
    find_replay,
    holds_entries,
    list_versions,
    read_version,
    write_version,
)
from xpcs_io.viewer_reads import ViewerReads

__all__ = ["HDF5Facade", "HDF5ValidationError"]

S = TypeVar("S", bound=Schema)

_COMPRESSIONS = {"gzip", "lzf", "szip"}
LAYOUTS = registry.LAYOUTS
_VALIDATED_CACHE_SIZE = 4096
_DEFAULT_MASK_GROUP = "/simplemask/mask"

# What each thread's last read used (see ``HDF5Facade.last_read_identity``).
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


# Errors that already say precisely what is wrong: never re-labelled as damage.
_PASS_THROUGH = (
    LookupError,
    FileNotFoundError,
    PermissionError,
    FileBusyError,
    FileMarkedOpenError,
    LockFileError,
    InsufficientStorageError,
    WriteLockTimeout,
    HDF5ValidationError,
    SchemaError,
    SchemaTypeError,
)


def _HDF5_DAMAGE_KEY(text: str) -> bool:  # noqa: N802  (reads as a constant predicate)
    missing = ("not found", "doesn't exist", "does not exist", "no such")
    return "Unable to" in text and not any(m in text.lower() for m in missing)


def _damaged(exc: Exception, display: str) -> HDF5ValidationError | None:
    """The error to answer for an HDF5 library failure while reading a file that did not
    change: its bytes are damaged. ``None`` for anything else (the caller's mistakes)."""
    if isinstance(exc, KeyError) and _HDF5_DAMAGE_KEY(str(exc)):
        # h5py raises KeyError for every failure to open an object, damage included.
        return HDF5ValidationError(
            f"{display} is damaged: HDF5 cannot read it ({str(exc).strip(chr(39))})",
            file=display,
        )
    if isinstance(exc, OSError | RuntimeError | SystemError | OverflowError):
        reason = str(exc).split("(", 1)[-1].rstrip(")") if "(" in str(exc) else str(exc)
        return HDF5ValidationError(
            f"{display} is damaged: HDF5 cannot read it ({reason or type(exc).__name__})",
            file=display,
        )
    if type(exc) in (ValueError, TypeError) and _raised_in_h5py(exc):
        # e.g. a datatype h5py cannot map to numpy: a bad file, not a bad request.
        return HDF5ValidationError(f"{display}: HDF5 cannot read it ({exc})", file=display)
    return None


def _replaced_only(fd: int | None, now: FileIdentity, before: FileIdentity) -> bool:
    """Whether the only change is the inode's ctime because it was unlinked (replaced by a
    rename, as every write of this service does, or deleted): its bytes are those read."""
    if fd is None or now[:4] != before[:4]:
        return False
    try:
        return os.fstat(fd).st_nlink == 0
    except OSError:
        return False


def _raised_in_h5py(exc: BaseException) -> bool:
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return last is not None and ("/h5py/" in last or last.startswith("h5py/"))


class _BoundedKeys(OrderedDict[Any, None]):
    """A set of keys that forgets the oldest beyond ``limit`` (dict ops are atomic in
    CPython, so concurrent readers at worst re-walk a path)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def __setitem__(self, key: Any, value: None) -> None:
        super().__setitem__(key, value)
        while len(self) > self.limit:
            try:
                self.popitem(last=False)
            except KeyError:
                break


class HDF5Facade(ViewerReads):
    """Unified facade for HDF5 I/O with schema validation, pooling and consistent errors.

    Args:
        pool: the connection pool to use; ``None`` uses the process-wide default pool.
        validate: check every object read against its schema (``False`` returns it unchecked).
        root: when set, ``file_path`` arguments are paths under this directory; anything that
            leads outside it (``..``, absolute paths, symlinks, HDF5 external links or virtual
            datasets) raises ``PermissionError``, and errors name files relative to it.
        lock_timeout: seconds a write waits for another writer of the same file.
    """

    def __init__(
        self,
        pool: HDF5ConnectionPool | None = None,
        validate: bool = True,
        *,
        root: PathLike | None = None,
        lock_timeout: float = 60.0,
    ) -> None:
        self.pool = pool if pool is not None else get_default_pool()
        self.validate = validate
        self.root = Path(os.path.realpath(root)) if root is not None else None
        self.lock_timeout = lock_timeout
        # Validation of a 4-megapixel q-map costs milliseconds; an unchanged file (same
        # identity) holds the same bytes, so each (file version, group) is checked once.
        self._validated: OrderedDict[tuple[Any, ...], None] = OrderedDict()
        self._validated_lock = threading.Lock()
        self._verified_paths = _BoundedKeys(_VALIDATED_CACHE_SIZE * 4)

    # ------------------------------------------------------------------ plumbing

    def _resolve(self, file_path: PathLike) -> tuple[str, str]:
        if self.root is not None:
            real, display = resolve_under_root(self.root, file_path)
            return os.fspath(real), display
        if not isinstance(file_path, str | os.PathLike):
            raise TypeError(f"file_path must be str or Path, got {type(file_path).__name__}")
        return os.fspath(file_path), os.fspath(file_path)

    @contextlib.contextmanager
    def _open(self, file_path: PathLike) -> Iterator[tuple[Locator, FileIdentity]]:
        """Borrow the file and check, once the block is done, that it did not change while it
        was read: an in-place writer at work during the read raises ``_ChangedDuringReadError``
        (retried by ``_read``), an HDF5 failure of a damaged file ``HDF5ValidationError``.
        An SWMR read needs no such check: SWMR orders the writer's flushes for its readers."""
        path, display = self._resolve(file_path)
        real = realpath(path)
        with self.pool.borrow(path, display, root=self.root) as co:
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
            except _PASS_THROUGH as exc:
                if not co.swmr and self._changed(real, display, co.identity, loc):
                    raise _ChangedDuringReadError(display) from None
                damaged = _damaged(exc, display) if isinstance(exc, KeyError) else None
                if damaged is None:
                    raise
                raise damaged from exc
            except Exception as exc:
                if not co.swmr and self._changed(real, display, co.identity, loc):
                    raise _ChangedDuringReadError(display) from exc
                damaged = _damaged(exc, display)
                if damaged is None:
                    raise
                raise damaged from exc
            else:
                if not co.swmr and self._changed(real, display, co.identity, loc):
                    raise _ChangedDuringReadError(display)
                self._learn_links(real, loc)
                _SEEN.identity = co.identity
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
        with self._validated_lock:
            if key in self._validated:
                self._validated.move_to_end(key)
                return obj
        try:
            obj.validate()
        except (SchemaError, SchemaTypeError) as exc:
            raise HDF5ValidationError(
                f"{loc.display}:{group}: {exc}", file=loc.display, group=group, field=exc.field
            ) from exc
        with self._validated_lock:
            self._validated[key] = None
            while len(self._validated) > _VALIDATED_CACHE_SIZE:
                self._validated.popitem(last=False)
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
        for attempt in range(_READ_ATTEMPTS):
            try:
                with self._open(file_path) as (loc, identity):
                    obj = reader(loc)
                    key = (loc.file.filename, identity, tuple(loc.reached), group, kind, *extra)
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

    # ------------------------------------------------------------------ versioned reads

    def read_mask(
        self, file_path: PathLike, group: str = "/simplemask/mask", version: int | None = None
    ) -> MaskSchema:
        """Read a mask of ``group``: the newest version, or ``version`` (1 = the oldest).

        Versions are what ``write_mask`` stored, and a mask another program left in the group
        (the reference facade's unversioned layout: dataset ``mask``, geometry attributes on
        a ``metadata`` subgroup), which counts as the newest until the next write keeps it.
        When the default group holds neither, the newest is the mask the file's producer
        stored (``/xpcs/qmap/mask`` of APS 8-ID-I NeXus files, ``/xpcs/mask`` of legacy ones).

        Raises:
            FileNotFoundError: the file does not exist.
            KeyError: no such group or version.
            ValueError: the group lies inside a versioned group (read that one with version=).
            HDF5ValidationError: the stored mask breaks a schema rule.
            PermissionError: a link on the way leads outside the facade's root.
        """
        return self._read(
            file_path, group, "mask", lambda loc: self._mask_from(loc, group, version), version
        )

    def _mask_from(self, loc: Locator, group: str, version: int | None) -> MaskSchema:
        if (
            version is None
            and group.rstrip("/") == _DEFAULT_MASK_GROUP
            and not holds_entries(loc, group, "mask")
        ):
            original = read_original_mask(loc)
            if original is not None:
                return original
        record, vpath, geometry, _ = read_version(loc, group, "mask", version)
        return MaskSchema.unchecked(
            mask=loc.read(vpath, "mask"),
            metadata=geometry,
            version=record["schema_version"] or MaskSchema.version,
            description=record["description"],
        )

    def read_partition(
        self,
        file_path: PathLike,
        group: str = "/simplemask/partition",
        version: int | None = None,
    ) -> PartitionSchema:
        """Read a partition of ``group``: the newest version, or ``version`` (1 = the oldest);
        a partition another program left in the group counts as in ``read_mask``.

        Raises:
            FileNotFoundError: the file does not exist.
            KeyError: no such group or version.
            ValueError: the group lies inside a versioned group.
            HDF5ValidationError: the stored partition breaks a schema rule.
            PermissionError: a link on the way leads outside the facade's root.
        """
        return self._read(
            file_path,
            group,
            "partition",
            lambda loc: self._partition_from(loc, group, version),
            version,
        )

    def _partition_from(self, loc: Locator, group: str, version: int | None) -> PartitionSchema:
        record, vpath, geometry, attrs = read_version(loc, group, "partition", version)
        vgrp = loc.group(vpath)
        val_list = loc.read(vpath, "val_list")
        num_pts = np.asarray(attrs["num_pts"]) if "num_pts" in attrs else np.asarray(len(val_list))
        return PartitionSchema.unchecked(
            partition_map=loc.read(vpath, "partition_map"),
            num_pts=int(num_pts.reshape(-1)[0]) if num_pts.size else 0,
            val_list=val_list,
            num_list=loc.read(vpath, "num_list"),
            metadata=geometry,
            version=record["schema_version"] or PartitionSchema.version,
            mask=loc.read(vpath, "mask") if loc.has(vgrp, "mask") else None,
            method=decode_str(attrs["method"]) if "method" in attrs else None,
        )

    def list_mask_versions(
        self, file_path: PathLike, group: str = "/simplemask/mask"
    ) -> list[VersionRecord]:
        """The versions of a mask group, oldest first: dicts with version, origin ("xpcs-io"
        for versions written here, "found" for a mask another program left in the group:
        listed last, with created and writer None), created (UTC ISO 8601), description,
        sha256 (of the mask's bytes), schema_version, writer, dtype, shape and, for writes
        that carried one, idempotency_key.

        Raises:
            FileNotFoundError: the file does not exist.
            KeyError: the group does not exist.
            ValueError: the group lies inside a versioned group.
            PermissionError: a link on the way leads outside the facade's root.
        """
        return self._list_versions(file_path, group, "mask")

    def _list_versions(self, file_path: PathLike, group: str, kind: str) -> list[VersionRecord]:
        group = self._check_group(group)
        with self._open(file_path) as (loc, _):
            return list_versions(loc, group, kind)

    def list_partition_versions(
        self, file_path: PathLike, group: str = "/simplemask/partition"
    ) -> list[VersionRecord]:
        """The versions of a partition group, oldest first (see ``list_mask_versions``).

        Raises:
            FileNotFoundError: the file does not exist.
            KeyError: the group does not exist.
            ValueError: the group lies inside a versioned group.
            PermissionError: a link on the way leads outside the facade's root.
        """
        return self._list_versions(file_path, group, "partition")

    # ------------------------------------------------------------------ writes

    def write_mask(
        self,
        file_path: PathLike,
        mask_schema: MaskSchema,
        group: str = "/simplemask/mask",
        compression: str | None = "gzip",
        compression_opts: int | None = 4,
        *,
        writer: str | None = None,
        idempotency_key: str | None = None,
    ) -> VersionRecord:
        """Write ``mask_schema`` as a new version of ``group`` (earlier versions are kept).

        The file is changed atomically: readers see the old state or the complete new one,
        and a crash at any moment leaves the file intact. A missing file is created.
        ``group`` must be new, one of this service's mask groups, or a mask group in the
        reference facade's unversioned layout (whose mask is kept as the version before the
        new one): never a group holding other data, nor one inside a versioned group.

        ``idempotency_key`` (letters, digits, ``._:-``, at most 200) makes the write safe to
        repeat: a write whose key is already stored in the group stores nothing and returns
        the first write's record.

        Returns:
            The new version's record (``version``, ``created``, ``writer``, ``sha256``, ...);
            the reference facade returned ``None``, so callers that ignore it are unaffected.

        Raises:
            TypeError: ``mask_schema`` is not a ``MaskSchema`` or a field has a wrong type.
            ValueError: the schema, the compression settings, the key or the group are
                invalid, or the key was used for a different write (file untouched).
            PermissionError: the group path or its members link outside the facade's root.
            WriteLockTimeout: another writer held the file too long.
        """
        return self.write_mask_version(
            file_path,
            mask_schema,
            group,
            compression,
            compression_opts,
            writer=writer,
            idempotency_key=idempotency_key,
        )

    def write_mask_version(
        self,
        file_path: PathLike,
        mask_schema: MaskSchema,
        group: str = "/simplemask/mask",
        compression: str | None = "gzip",
        compression_opts: int | None = 4,
        *,
        writer: str | None = None,
        idempotency_key: str | None = None,
    ) -> VersionRecord:
        """``write_mask`` returning the new version's record (what the service answers).

        Raises:
            See ``write_mask``.
        """
        if not isinstance(mask_schema, MaskSchema):
            raise TypeError(f"mask_schema must be a MaskSchema, got {type(mask_schema).__name__}")
        mask_schema.validate()
        return self._write(
            file_path,
            group,
            "mask",
            {"mask": mask_schema.mask},
            metadata=mask_schema.metadata,
            attrs={},
            description=mask_schema.description,
            schema_version=mask_schema.version,
            compression=compression,
            compression_opts=compression_opts,
            writer=writer,
            idempotency_key=idempotency_key,
        )

    def write_partition(
        self,
        file_path: PathLike,
        partition_schema: PartitionSchema,
        group: str = "/simplemask/partition",
        compression: str | None = "gzip",
        compression_opts: int | None = 4,
        *,
        writer: str | None = None,
        idempotency_key: str | None = None,
    ) -> VersionRecord:
        """Write ``partition_schema`` as a new version of ``group`` (earlier versions kept);
        ``group`` and ``idempotency_key`` as in ``write_mask``.

        Raises:
            TypeError: not a ``PartitionSchema``, or a field has a wrong type.
            ValueError: the schema, the compression settings, the key or the group are
                invalid, or the key was used for a different write (file untouched).
            PermissionError: the group path or its members link outside the facade's root.
            WriteLockTimeout: another writer held the file too long.
        """
        return self.write_partition_version(
            file_path,
            partition_schema,
            group,
            compression,
            compression_opts,
            writer=writer,
            idempotency_key=idempotency_key,
        )

    def write_partition_version(
        self,
        file_path: PathLike,
        partition_schema: PartitionSchema,
        group: str = "/simplemask/partition",
        compression: str | None = "gzip",
        compression_opts: int | None = 4,
        *,
        writer: str | None = None,
        idempotency_key: str | None = None,
    ) -> VersionRecord:
        """``write_partition`` returning the new version's record.

        Raises:
            See ``write_partition``.
        """
        if not isinstance(partition_schema, PartitionSchema):
            raise TypeError(
                f"partition_schema must be a PartitionSchema, got {type(partition_schema).__name__}"
            )
        partition_schema.validate()
        p = partition_schema
        return self._write(
            file_path,
            group,
            "partition",
            {
                "partition_map": p.partition_map,
                "val_list": p.val_list,
                "num_list": p.num_list,
                "mask": p.mask,
            },
            metadata=p.metadata,
            attrs={"num_pts": p.num_pts, "method": p.method},
            description=None,
            schema_version=p.version,
            compression=compression,
            compression_opts=compression_opts,
            writer=writer,
            idempotency_key=idempotency_key,
        )

    @staticmethod
    def _check_compression(compression: Any, opts: Any) -> None:
        if compression is None:
            return
        if isinstance(compression, bool) or not isinstance(compression, str | int):
            raise TypeError(f"compression must be a string or None, got {compression!r}")
        if isinstance(compression, str) and compression not in _COMPRESSIONS:
            raise ValueError(
                f"compression {compression!r} is not supported (use {sorted(_COMPRESSIONS)})"
            )
        bad_level = isinstance(opts, bool) or not isinstance(opts, int) or not 0 <= opts <= 9
        if compression == "gzip" and opts is not None and bad_level:
            raise ValueError(f"compression_opts for gzip must be 0..9, got {opts!r}")
        if compression == "lzf" and opts is not None:
            raise ValueError("lzf takes no compression_opts (pass None)")

    def _find_replay(
        self, file_path: PathLike, group: str, key: str, digest: str
    ) -> VersionRecord | None:
        # Best effort: whatever keeps this read from answering (no file yet, a file another
        # program holds, a link the guard refuses) is decided again by the locked write.
        try:
            with self._open(file_path) as (loc, _):
                return find_replay(loc, group, key, digest)
        except (OSError, KeyError, HDF5ValidationError):
            return None

    def _write(
        self,
        file_path: PathLike,
        group: str,
        kind: str,
        arrays: dict[str, np.ndarray[Any, Any] | None],
        *,
        writer: str | None,
        idempotency_key: str | None,
        **kwargs: Any,
    ) -> VersionRecord:
        group = self._check_group(group)
        self._check_compression(kwargs["compression"], kwargs["compression_opts"])
        if writer is not None and not isinstance(writer, str):
            raise TypeError(f"writer must be a string, got {type(writer).__name__}")
        key = check_key(idempotency_key)
        path, display = self._resolve(file_path)
        digest = None
        if key is not None:
            digest = request_sha256(
                kind,
                arrays,
                kwargs["metadata"],
                kwargs["attrs"],
                kwargs["description"],
                kwargs["schema_version"],
            )
            # A resend usually finds its version already stored: answer it from a read,
            # without the lock and the copy of the file a write costs.
            previous = self._find_replay(file_path, group, key, digest)
            if previous is not None:
                return previous
        try:
            with edit_atomically(
                path,
                lock_timeout=self.lock_timeout,
                display=display,
                root=self.root,
                policy=self.pool.policy,
            ) as h5:
                try:
                    record = write_version(
                        h5,
                        group,
                        kind,
                        arrays,
                        writer=writer or default_writer(),
                        idempotency_key=key,
                        request_sha=digest,
                        root=self.root,
                        display=display,
                        **kwargs,
                    )
                except (*_PASS_THROUGH, ReplayedWrite):
                    raise
                except (ValueError, TypeError) as exc:
                    if display in str(exc) or group in str(exc):
                        raise
                    raise type(exc)(f"{display}: cannot write {group} ({exc})") from exc
                except Exception as exc:
                    damaged = _damaged(exc, display)
                    if damaged is None:
                        raise
                    raise damaged from exc  # a full disk is still told apart by the edit
        except ReplayedWrite as replay:
            return replay.record  # stored before under this key: the file was not touched
        self.pool.invalidate(path)
        return record

    def resolve(self, file_path: PathLike) -> str:
        """The absolute, symlink-free path ``file_path`` names (checked against the root).

        Raises:
            PermissionError: the path leads outside the facade's root.
        """
        return realpath(self._resolve(file_path)[0])

    def last_read_identity(self) -> FileIdentity | None:
        """The identity of the file version the calling thread's last successful read (by
        any facade) used: the inode read, not what the name leads to now. A server tags its
        answer with it. ``None`` before any read in this thread."""
        identity: FileIdentity | None = getattr(_SEEN, "identity", None)
        return identity

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
        """``(resolve(file_path), file_identity(file_path))``, the path resolved once (a
        many-file read asks this of every file).

        Raises:
            See ``file_identity``.
        """
        path, display = self._resolve(file_path)
        # Beneath a root the path is already resolved (symlinks included).
        real = path if self.root is not None else realpath(path)
        identity, swmr = self.pool.current(real, display, self.root)
        linked: list[tuple[str, FileIdentity | None]] = []
        for other in sorted(self.pool.linked_files.get(real, ())):
            try:
                linked.append((other, FileIdentity.of(other)))
            except OSError:
                linked.append((other, None))
        return real, DataIdentity(identity, tuple(linked), swmr)

    # ------------------------------------------------------------------ pool

    def get_pool_stats(self) -> dict[str, Any]:
        """Connection pool statistics: hits, misses, opens, evictions, reopens_on_change,
        pool_size, max_pool_size, hit_ratio and the open files with their access counts."""
        stats = self.pool.stats()
        if self.root is not None:
            for entry in stats["open_files"]:
                entry["path"] = display_path(self.root, entry["path"])
        return stats

    def clear_pool(self) -> None:
        """Close every pooled handle (e.g. before shutdown); later reads reopen files."""
        self.pool.clear()

    # ------------------------------------------------------------------ many files

    def read_g2_data_many(
        self,
        file_paths: Sequence[PathLike],
        q_idx: int | None = None,
        group: str = "/xpcs/g2",
        *,
        layout: str | None = None,
    ) -> list[G2Data | Exception]:
        """``read_g2_data`` of each file, in the order of ``file_paths``: each item is the
        file's ``G2Data`` or the exception reading it raised (one bad file never fails the
        others), e.g. to average repeats of one measurement.

        Raises:
            TypeError: ``file_paths`` is not a sequence of paths (a single string is not),
                or ``q_idx`` is not an integer.
            IndexError: ``q_idx`` is negative (a bin missing from one file is that file's
                IndexError item).
            ValueError: ``layout`` is not a known layout.
        """
        self._check_many(group, layout)
        if q_idx is not None:
            if isinstance(q_idx, bool) or not isinstance(q_idx, int):
                raise TypeError(f"q_idx must be an integer, got {type(q_idx).__name__}")
            if q_idx < 0:
                raise IndexError(f"q_idx {q_idx} out of range: negative indices are not allowed")
        return [
            self._one(lambda p: self.read_g2_data(p, q_idx, group, layout=layout), p)
            for p in _paths(file_paths)
        ]

    def read_qmap_many(
        self,
        file_paths: Sequence[PathLike],
        group: str = "/xpcs/qmap",
        *,
        layout: str | None = None,
    ) -> list[QMapSchema | Exception]:
        """``read_qmap`` of each file, in order; each item is the result or its exception.

        Raises:
            TypeError: ``file_paths`` is not a sequence of paths.
            ValueError: ``layout`` is not a known layout.
        """
        self._check_many(group, layout)
        return [
            self._one(lambda p: self.read_qmap(p, group, layout=layout), p)
            for p in _paths(file_paths)
        ]

    def _check_many(self, group: Any, layout: Any) -> None:
        # Mistakes that do not depend on the file fail the call, as they do remotely.
        self._check_group(group)
        if layout is not None and layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {list(LAYOUTS)} or None, got {layout!r}")

    @staticmethod
    def _one(read: Callable[[PathLike], S], path: PathLike) -> S | Exception:
        try:
            return read(path)
        except Exception as exc:  # the caller gets it as this file's item
            return exc


def _paths(file_paths: Any) -> list[PathLike]:
    if isinstance(file_paths, str | bytes | os.PathLike) or not isinstance(file_paths, Sequence):
        raise TypeError(f"file_paths must be a list of paths, got {type(file_paths).__name__}")
    return list(file_paths)
