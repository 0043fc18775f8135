"""The facade's viewer reads: SAXS 2-D and 1-D, intensity vs time, two-time G2 and the
flat metadata of a result file (``HDF5Facade`` inherits them).

They follow the facade's rules: paths checked against the root, the pool, ``validate=``
(an object that breaks its schema raises ``HDF5ValidationError``; ``validate=False`` returns
it unchecked), and the layout detected per file or forced with ``layout=``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from xpcs_io.api import PathLike
from xpcs_io.h5access import Locator
from xpcs_io.layouts import registry, viewer
from xpcs_io.reading import Reading
from xpcs_io.schemas import G2Data, IntensityTimeData, Saxs1DData, Saxs2DData, Schema

__all__ = ["ViewerReads"]

S = TypeVar("S", bound=Schema)


class ViewerReads(Reading):
    """Mixin of ``HDF5Facade``: the reads a viewer needs besides q-map, G2 and geometry."""

    def _viewer_read(
        self, file_path: PathLike, kind: str, reader: Callable[[Locator], S], *extra: Any
    ) -> S:
        # ``kind`` names the read in validation errors where other reads name their group.
        result: S = self._read(file_path, kind, kind, reader, *extra)
        return result

    def read_saxs_2d(self, file_path: PathLike, layout: str | None = None) -> Saxs2DData:
        """The time-averaged scattering image (H, W) of an APS 8-ID-I result, as stored
        (NeXus ``/xpcs/temporal_mean/scattering_2d`` squeezed from (1, H, W); legacy
        ``/exchange/pixelSum``, transposed back when stored (W, H)), with its unit.

        Raises:
            FileNotFoundError: the file does not exist.
            KeyError: the dataset is missing, or the layout holds no SAXS (native,
                pysimplemask), or the file is of no known layout (the message names it).
            ValueError: ``layout`` is not one of ``LAYOUTS``.
            HDF5ValidationError: the stored image breaks the schema, or not HDF5.
            PermissionError: the path leads outside the facade's root.
        """
        registry.check_layout(layout)
        return self._viewer_read(
            file_path, "saxs_2d", lambda loc: viewer.read_saxs_2d(loc, layout), layout
        )

    def read_saxs_1d(self, file_path: PathLike, layout: str | None = None) -> Saxs1DData:
        """The SAXS 1-D curve: ``q`` (n,) in A^-1 and ``intensity`` (n,), one entry per
        stored static bin, ``intensity_segments`` (n_segments, n) for the stability plot,
        and ``phi`` (deg) when the static partition has several phi sectors (NeXus
        ``scattering_1d``, ``scattering_1d_segments``, ``static_v_list_dim0/1``; legacy
        ``partition-mean-total``, ``partition-mean-partial``, ``sqlist``, ``sphilist``).

        Raises:
            See ``read_saxs_2d``.
        """
        registry.check_layout(layout)
        return self._viewer_read(
            file_path, "saxs_1d", lambda loc: viewer.read_saxs_1d(loc, layout), layout
        )

    def read_intensity_time(
        self, file_path: PathLike, layout: str | None = None
    ) -> IntensityTimeData:
        """Mean intensity per frame, ``time`` (N,) in seconds from the first frame and
        ``intensity`` (N,) (NeXus ``/xpcs/spatial_mean/intensity_vs_time``; legacy
        ``frameSum`` row 1), frame i at i x frame time x stride x averaging.

        Raises:
            See ``read_saxs_2d``.
        """
        registry.check_layout(layout)
        return self._viewer_read(
            file_path, "intensity_time", lambda loc: viewer.read_intensity_time(loc, layout), layout
        )

    def read_twotime_g2(
        self, file_path: PathLike, q_idx: int | None = None, layout: str | None = None
    ) -> G2Data:
        """G2 (n_lag, n_processed) from the two-time result (NeXus
        ``/xpcs/twotime/normalized_g2``, legacy ``g2full``): one column per processed
        dynamic bin, delays in seconds, q (A^-1) and phi (deg, several phi sectors only) of
        each column, ``g2_err`` NaN (not stored). ``q_idx=k`` reads dynamic bin k only (as
        ``read_c2``).

        Raises:
            FileNotFoundError, ValueError, HDF5ValidationError, PermissionError: as
                ``read_saxs_2d``.
            KeyError: no two-time G2 in the file, or none for ``q_idx`` (the message lists
                the available ones).
            TypeError: ``q_idx`` is not an integer.
        """
        registry.check_layout(layout)
        return self._viewer_read(
            file_path,
            "twotime_g2",
            lambda loc: viewer.read_twotime_g2(loc, q_idx, layout),
            q_idx,
            layout,
        )

    def read_metadata(self, file_path: PathLike, layout: str | None = None) -> dict[str, Any]:
        """A flat, JSON-safe dict of the file's instrument, sample and analysis settings:
        summary keys with their unit in the name (``energy_keV``, ``frame_time_s``,
        ``detector_distance_mm``, ``sample_name``, ``start_time``, ``analysis_type``,
        ``layout``, and ``c2_q_idx``: the bins ``read_c2`` has a map for), then every small
        dataset of the layout's configuration groups by HDF5 path, its unit alongside as
        ``"<path>@unit"``.

        Raises:
            FileNotFoundError: the file does not exist.
            KeyError: the file is of no known layout.
            ValueError: ``layout`` is not one of ``LAYOUTS``.
            PermissionError: the path leads outside the facade's root.
        """
        registry.check_layout(layout)
        with self._open(file_path) as (loc, _):
            return viewer.read_metadata(loc, layout)
