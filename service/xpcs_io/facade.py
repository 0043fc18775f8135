"""``HDF5Facade``: validated reads and versioned, crash-safe writes of XPCS data in HDF5.

The API mirrors the seed (``read_qmap``, ``read_g2_data``, ``read_geometry_metadata``,
``write_mask``, ``write_partition``, ``get_pool_stats``, ``clear_pool``) and adds reading back
what was written (``read_mask``, ``read_partition``, ``list_mask_versions``,
``list_partition_versions``). Errors follow ``xpcs_io.errors``.

The class is assembled from one module per concern: the read path and the seed's reads
(``xpcs_io.reading``), versions read back (``xpcs_io.version_reads``), writes
(``xpcs_io.writing``), the viewer reads (``xpcs_io.viewer_reads``) and file identities and
checkouts (``xpcs_io.identity``); each file's layout is found by ``xpcs_io.layouts.registry``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from xpcs_io.api import PathLike
from xpcs_io.bounded import BoundedCache
from xpcs_io.errors import HDF5ValidationError
from xpcs_io.identity import Identities
from xpcs_io.layouts import registry
from xpcs_io.paths import display_path
from xpcs_io.pool import HDF5ConnectionPool, get_default_pool
from xpcs_io.reading import VALIDATED_CACHE_SIZE
from xpcs_io.schemas import G2Data, QMapSchema, Schema
from xpcs_io.version_reads import VersionReads
from xpcs_io.viewer_reads import ViewerReads
from xpcs_io.writing import Writing

__all__ = ["LAYOUTS", "HDF5Facade", "HDF5ValidationError"]

S = TypeVar("S", bound=Schema)

LAYOUTS = registry.LAYOUTS


class HDF5Facade(Writing, VersionReads, ViewerReads, Identities):
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
        self._validated: BoundedCache[tuple[Any, ...], None] = BoundedCache(VALIDATED_CACHE_SIZE)
        self._verified_paths: BoundedCache[Any, None] = BoundedCache(VALIDATED_CACHE_SIZE * 4)

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
