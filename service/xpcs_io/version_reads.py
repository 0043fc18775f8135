"""Reading back what ``write_mask`` and ``write_partition`` stored: the newest version or
a given one, a mask or partition another program left in the group, and the version lists.
"""

from __future__ import annotations

import numpy as np

from xpcs_io.api import PathLike, VersionRecord
from xpcs_io.h5access import Locator, decode_str
from xpcs_io.original_mask import read_original_mask
from xpcs_io.reading import Reading
from xpcs_io.schemas import MaskSchema, PartitionSchema
from xpcs_io.versions import holds_entries, list_versions, read_version

__all__ = ["VersionReads"]

_DEFAULT_MASK_GROUP = "/simplemask/mask"


class VersionReads(Reading):
    """Mixin of ``HDF5Facade``: mask and partition versions read back."""

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
