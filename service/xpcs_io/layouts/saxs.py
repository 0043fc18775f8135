"""SAXS 2-D, SAXS 1-D (with its stability segments) and intensity vs time of APS 8-ID-I
result files, NeXus and legacy.

Sources (what the beamline's viewer pyXpcsViewer reads):

- NeXus: ``/xpcs/temporal_mean/scattering_2d`` (1, H, W) or (H, W);
  ``scattering_1d`` (one value per static bin, stored (n,) or (1, n)) and
  ``scattering_1d_segments`` (n_segments, n); ``/xpcs/spatial_mean/intensity_vs_time``
  (N,) or (2, N) whose last row is the intensity. Static bin i (label i + 1) has the flat q-phi
  index ``static_index_mapping[i]``, its q ``static_v_list_dim0[m // n_phi]`` and phi
  ``static_v_list_dim1[m % n_phi]`` (``n_phi = static_num_pts[1]``); a curve as long as the
  whole grid is in grid order.
- Legacy: ``<result>/pixelSum`` (H, W) or (1, H, W); ``partition-mean-total`` (1, n) and
  ``partition-mean-partial`` (P, n); ``frameSum`` (2, N), row 1 the intensity (row 0, the
  frame number, is 1- or 0-based depending on the producer and is not used). q and phi of
  static bins come from ``/xpcs/sqlist`` / ``sphilist`` (full grid, NaN for empty cells): a
  curve as long as the grid keeps the non-NaN cells, a "compressed" one (boost_corr's GPU
  code drops empty bins) is one value per non-NaN cell.

Time of frame i = i x frame time x stride x averaging (NeXus ``detector_1/frame_time`` and
``/xpcs/multitau/config``; legacy ``exposure_period``, ``/xpcs/stride_frames``,
``avg_frames``), as the delays of G2. Values are returned as stored (dtype kept); a unit
attribute names the intensity unit, "a.u." otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from xpcs_io.h5access import Locator, check_read_size
from xpcs_io.layouts import legacy8idi
from xpcs_io.layouts.common import (
    TO_INV_ANGSTROM,
    TO_SECONDS,
    exists,
    invalid,
    map_shape,
    norm_unit,
    quantity,
    scalar,
    unit_of,
    vector,
)
from xpcs_io.schemas import IntensityTimeData, Saxs1DData, Saxs2DData

__all__ = [
    "checked_size",
    "legacy_intensity_time",
    "legacy_saxs_1d",
    "legacy_saxs_2d",
    "legacy_seconds_per_frame",
    "nexus_intensity_time",
    "nexus_saxs_1d",
    "nexus_saxs_2d",
    "nexus_seconds_per_frame",
]

TEMPORAL = "/xpcs/temporal_mean"
SPATIAL = "/xpcs/spatial_mean"
QMAP = "/xpcs/qmap"
DETECTOR = "/entry/instrument/detector_1"
LEGACY_DETECTOR = "/measurement/instrument/detector"
Array = npt.NDArray[Any]


def checked_size(loc: Locator, group: str, name: str) -> None:
    """Refuse a dataset larger than the read limit before reading it (a tiny file can declare
    a 149 GiB dataset that is never written).

    Raises:
        KeyError: the dataset is missing.
        DatasetTooLargeError: it declares more bytes than ``h5access.read_limit()``.
    """
    ds = loc.dataset(group, name)
    check_read_size(ds, display=loc.display, path=f"{group.rstrip('/')}/{name}")


def _unit(loc: Locator, group: str, name: str) -> str:
    return unit_of(loc, group, name) or "a.u."


def _image(loc: Locator, group: str, name: str) -> Array:
    h, w = map_shape(loc, group, name)
    checked_size(loc, group, name)
    return np.asarray(loc.read(group, name)).reshape(h, w)


def _curve(loc: Locator, group: str, name: str) -> Array:
    checked_size(loc, group, name)
    return vector(loc, group, name)


def _segments(loc: Locator, group: str, name: str, n_full: int) -> Array:
    """(n_segments, n_full) from a 2-D dataset (or (0, n_full) when absent)."""
    if not exists(loc, group, name):
        return np.zeros((0, n_full), dtype=np.float32)
    checked_size(loc, group, name)
    seg = np.asarray(loc.read(group, name))
    if seg.ndim == 3 and seg.shape[0] == 1:
        seg = seg[0]
    if seg.ndim == 1 and seg.size == n_full:
        seg = seg[None]
    if seg.ndim != 2 or seg.shape[1] != n_full:
        why = f"expected shape (n_segments, {n_full}), found shape {seg.shape}"
        raise invalid(loc, group, name, why)
    return seg


def nexus_saxs_2d(loc: Locator) -> Saxs2DData:
    """``/xpcs/temporal_mean/scattering_2d`` squeezed to (H, W) (unchecked).

    Raises:
        KeyError: the dataset is missing.
        HDF5ValidationError: it is not (H, W) or (1, H, W).
    """
    return Saxs2DData.unchecked(
        image=_image(loc, TEMPORAL, "scattering_2d"), unit=_unit(loc, TEMPORAL, "scattering_2d")
    )


def _static_q_phi(loc: Locator, n: int) -> tuple[Array, Array | None]:
    """q (A^-1) and phi (deg, None for one phi sector) of ``n`` stored static values."""
    v0 = vector(loc, QMAP, "static_v_list_dim0").astype(np.float64)
    unit = unit_of(loc, QMAP, "static_v_list_dim0")
    factor = 1.0 if unit is None else TO_INV_ANGSTROM.get(norm_unit(unit))
    if factor is None:
        raise invalid(loc, QMAP, "static_v_list_dim0", f"unknown q unit {unit!r}")
    v1 = (
        vector(loc, QMAP, "static_v_list_dim1").astype(np.float64)
        if exists(loc, QMAP, "static_v_list_dim1")
        else np.zeros(1)
    )
    n_phi = max(1, v1.size)
    if exists(loc, QMAP, "static_num_pts"):
        pts = vector(loc, QMAP, "static_num_pts")
        n_phi = int(pts[1]) if pts.size > 1 else 1
    if n == v0.size * n_phi:
        flat = np.arange(n, dtype=np.int64)
    elif exists(loc, QMAP, "static_index_mapping"):
        flat = vector(loc, QMAP, "static_index_mapping").astype(np.int64)
        if flat.size != n:
            why = f"has {flat.size} entries, scattering_1d has {n} values"
            raise invalid(loc, QMAP, "static_index_mapping", why)
    else:
        raise KeyError(
            f"{QMAP}/static_index_mapping not found in {loc.display}: scattering_1d has {n} "
            f"values for {v0.size * n_phi} q-phi bins"
        )
    iq, ip = flat // n_phi, flat % n_phi
    if flat.size and (iq.max() >= v0.size or flat.min() < 0):
        raise invalid(loc, QMAP, "static_index_mapping", f"indices beyond {v0.size} q bins")
    phi = v1[ip] if n_phi > 1 and v1.size >= n_phi else None
    return v0[iq] * factor, phi


def nexus_saxs_1d(loc: Locator) -> Saxs1DData:
    """``scattering_1d`` with the q (and phi) of each static bin and the segments
    (unchecked).

    Raises:
        KeyError: ``scattering_1d`` or the static q list is missing.
        HDF5ValidationError: lengths or shapes disagree.
    """
    intensity = _curve(loc, TEMPORAL, "scattering_1d")
    q, phi = _static_q_phi(loc, intensity.size)
    return Saxs1DData.unchecked(
        q=q,
        intensity=intensity,
        intensity_segments=_segments(loc, TEMPORAL, "scattering_1d_segments", intensity.size),
        q_unit="A^-1",
        intensity_unit=_unit(loc, TEMPORAL, "scattering_1d"),
        phi=phi,
    )


def nexus_seconds_per_frame(loc: Locator) -> float:
    """frame_time x stride_frame x avg_frame (counts absent count as 1).

    Raises:
        KeyError: ``/entry/instrument/detector_1/frame_time`` is missing.
    """
    per_frame = quantity(loc, DETECTOR, "frame_time", TO_SECONDS, 1.0)
    config = "/xpcs/multitau/config"
    for name in ("stride_frame", "avg_frame"):
        if exists(loc, config, name):
            per_frame *= scalar(loc, config, name)
    return per_frame


def _intensity_row(loc: Locator, group: str, name: str) -> Array:
    checked_size(loc, group, name)
    data: Array = np.asarray(loc.read(group, name))
    if data.ndim == 1:
        return data
    if data.ndim == 2 and data.shape[0] in (1, 2):
        row: Array = data[-1]
        return row
    why = f"expected (N,) or (2, N) (frame, intensity), found shape {data.shape}"
    raise invalid(loc, group, name, why)


def _times(n: int, per_frame: float) -> Array:
    return np.arange(n, dtype=np.float64) * per_frame


def nexus_intensity_time(loc: Locator) -> IntensityTimeData:
    """``/xpcs/spatial_mean/intensity_vs_time`` against time in seconds (unchecked).

    Raises:
        KeyError: the dataset or the frame time is missing.
        HDF5ValidationError: an unexpected shape.
    """
    intensity = _intensity_row(loc, SPATIAL, "intensity_vs_time")
    return IntensityTimeData.unchecked(
        time=_times(intensity.size, nexus_seconds_per_frame(loc)),
        intensity=intensity,
        unit=_unit(loc, SPATIAL, "intensity_vs_time"),
    )


def legacy_saxs_2d(loc: Locator) -> Saxs2DData:
    """``<result>/pixelSum`` as (H, W), transposed when stored (W, H) (unchecked).

    Raises:
        KeyError: ``pixelSum`` is missing.
        HDF5ValidationError: not a 2-D image of the detector's shape.
    """
    group = legacy8idi.result_group(loc)
    image = _image(loc, group, "pixelSum")
    if exists(loc, legacy8idi.XPCS, "dqmap"):
        shape, _ = legacy8idi.detector_shape(loc)
        if image.shape == shape[::-1] and shape[0] != shape[1]:
            image = np.ascontiguousarray(image.T)
        elif image.shape != shape:
            why = f"expected shape {shape} (H, W) as /xpcs/dqmap, found {image.shape}"
            raise invalid(loc, group, "pixelSum", why)
    return Saxs2DData.unchecked(image=image, unit=_unit(loc, group, "pixelSum"))


def legacy_seconds_per_frame(loc: Locator) -> float:
    """exposure_period x avg_frames x stride_frames (counts absent count as 1).

    Raises:
        KeyError: ``/measurement/instrument/detector/exposure_period`` is missing.
    """
    per_frame = quantity(loc, LEGACY_DETECTOR, "exposure_period", TO_SECONDS, 1.0)
    for name in ("avg_frames", "stride_frames"):
        if exists(loc, legacy8idi.XPCS, name):
            per_frame *= scalar(loc, legacy8idi.XPCS, name)
    return per_frame


def legacy_saxs_1d(loc: Locator) -> Saxs1DData:
    """``partition-mean-total`` with the q (and phi) of ``/xpcs/sqlist`` / ``sphilist`` and
    ``partition-mean-partial`` as segments (unchecked).

    Raises:
        KeyError: ``partition-mean-total`` or ``/xpcs/sqlist`` is missing.
        HDF5ValidationError: the lengths match neither the grid nor its non-empty cells.
    """
    group = legacy8idi.result_group(loc)
    total = _curve(loc, group, "partition-mean-total")
    sq = vector(loc, legacy8idi.XPCS, "sqlist").astype(np.float64)
    sphi = (
        vector(loc, legacy8idi.XPCS, "sphilist").astype(np.float64)
        if exists(loc, legacy8idi.XPCS, "sphilist")
        else np.full(sq.shape, np.nan)
    )
    if sphi.size != sq.size:
        why = f"expected {sq.size} entries (as sqlist), found {sphi.size}"
        raise invalid(loc, legacy8idi.XPCS, "sphilist", why)
    keep = ~np.isnan(sq)
    segments = _segments(loc, group, "partition-mean-partial", total.size)
    if total.size == sq.size:
        total, segments = total[keep], segments[:, keep]
    elif total.size != int(keep.sum()):
        why = f"has {total.size} values for {sq.size} static cells ({int(keep.sum())} non-empty)"
        raise invalid(loc, group, "partition-mean-total", why)
    n_phi = (
        int(scalar(loc, legacy8idi.XPCS, "snophi")) if exists(loc, legacy8idi.XPCS, "snophi") else 1
    )
    phi = sphi[keep] if n_phi > 1 and not np.isnan(sphi[keep]).any() else None
    return Saxs1DData.unchecked(
        q=sq[keep],
        intensity=total,
        intensity_segments=segments,
        q_unit="A^-1",
        intensity_unit=_unit(loc, group, "partition-mean-total"),
        phi=phi,
    )


def legacy_intensity_time(loc: Locator) -> IntensityTimeData:
    """Row 1 of ``<result>/frameSum`` against time in seconds (unchecked).

    Raises:
        KeyError: ``frameSum`` or ``exposure_period`` is missing.
        HDF5ValidationError: ``frameSum`` is not (2, N).
    """
    group = legacy8idi.result_group(loc)
    intensity = _intensity_row(loc, group, "frameSum")
    return IntensityTimeData.unchecked(
        time=_times(intensity.size, legacy_seconds_per_frame(loc)),
        intensity=intensity,
        unit=_unit(loc, group, "frameSum"),
    )
