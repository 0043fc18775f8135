"""The facade's writes: a mask or partition stored as a new version of its group, in one
atomic, crash-safe edit of the file under its write lock; a resend with the same
idempotency key answered from what the first write stored.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xpcs_io.api import PathLike, VersionRecord
from xpcs_io.atomic import edit_atomically
from xpcs_io.damage import PASS_THROUGH, damage_error
from xpcs_io.errors import HDF5ValidationError
from xpcs_io.idempotency import ReplayedWrite, check_key, request_sha256
from xpcs_io.reading import Reading
from xpcs_io.schemas import MaskSchema, PartitionSchema
from xpcs_io.versions import default_writer, find_replay, write_version

__all__ = ["Writing"]

_COMPRESSIONS = {"gzip", "lzf", "szip"}


class Writing(Reading):
    """Mixin of ``HDF5Facade``: ``write_mask`` and ``write_partition``."""

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

    # The service's name for it, from when ``write_mask`` returned nothing.
    write_mask_version = write_mask

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

    write_partition_version = write_partition

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
                except (*PASS_THROUGH, ReplayedWrite):
                    raise
                except (ValueError, TypeError) as exc:
                    if display in str(exc) or group in str(exc):
                        raise
                    raise type(exc)(f"{display}: cannot write {group} ({exc})") from exc
                except Exception as exc:
                    damaged = damage_error(exc, display)
                    if damaged is None:
                        raise
                    raise damaged from exc  # a full disk is still told apart by the edit
        except ReplayedWrite as replay:
            return replay.record  # stored before under this key: the file was not touched
        self.pool.invalidate(path)
        return record
