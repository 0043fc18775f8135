"""The facade API as a ``typing.Protocol``: what ``HDF5Facade`` (local) and
``RemoteHDF5Facade`` (HTTP) both provide, with the seed's names, parameters and defaults."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from xpcs_io.schemas import (
    G2Data,
    GeometryMetadata,
    IntensityTimeData,
    MaskSchema,
    PartitionSchema,
    QMapSchema,
    Saxs1DData,
    Saxs2DData,
)

__all__ = ["FacadeAPI", "PathLike", "VersionRecord"]

PathLike = str | Path
VersionRecord = dict[str, Any]


@runtime_checkable
class FacadeAPI(Protocol):
    """Reads of q-maps, G2, geometry, SAXS, intensity vs time and metadata; versioned mask
    and partition writes; pool control."""

    validate: bool

    def read_qmap(
        self, file_path: PathLike, group: str = "/xpcs/qmap", *, layout: str | None = None
    ) -> QMapSchema: ...

    def read_g2_data(
        self,
        file_path: PathLike,
        q_idx: int | None = None,
        group: str = "/xpcs/g2",
        *,
        layout: str | None = None,
    ) -> G2Data: ...

    def read_geometry_metadata(
        self, file_path: PathLike, group: str = "/xpcs/metadata", *, layout: str | None = None
    ) -> GeometryMetadata: ...

    def read_c2(
        self, file_path: PathLike, q_idx: int, max_size: int | None = None
    ) -> npt.NDArray[np.float32]: ...

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
    ) -> VersionRecord: ...

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
    ) -> VersionRecord: ...

    def read_mask(
        self, file_path: PathLike, group: str = "/simplemask/mask", version: int | None = None
    ) -> MaskSchema: ...

    def read_partition(
        self,
        file_path: PathLike,
        group: str = "/simplemask/partition",
        version: int | None = None,
    ) -> PartitionSchema: ...

    def list_mask_versions(
        self, file_path: PathLike, group: str = "/simplemask/mask"
    ) -> list[VersionRecord]: ...

    def list_partition_versions(
        self, file_path: PathLike, group: str = "/simplemask/partition"
    ) -> list[VersionRecord]: ...

    def read_g2_data_many(
        self,
        file_paths: Sequence[PathLike],
        q_idx: int | None = None,
        group: str = "/xpcs/g2",
        *,
        layout: str | None = None,
    ) -> list[G2Data | Exception]: ...

    def read_qmap_many(
        self,
        file_paths: Sequence[PathLike],
        group: str = "/xpcs/qmap",
        *,
        layout: str | None = None,
    ) -> list[QMapSchema | Exception]: ...

    def read_saxs_2d(self, file_path: PathLike, layout: str | None = None) -> Saxs2DData: ...

    def read_saxs_1d(self, file_path: PathLike, layout: str | None = None) -> Saxs1DData: ...

    def read_intensity_time(
        self, file_path: PathLike, layout: str | None = None
    ) -> IntensityTimeData: ...

    def read_twotime_g2(
        self, file_path: PathLike, q_idx: int | None = None, layout: str | None = None
    ) -> G2Data: ...

    def read_metadata(self, file_path: PathLike, layout: str | None = None) -> dict[str, Any]: ...

    def get_pool_stats(self) -> dict[str, Any]: ...

    def clear_pool(self) -> None: ...
