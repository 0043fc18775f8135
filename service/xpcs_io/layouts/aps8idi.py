"""Reader for the APS 8-ID-I NeXus result layout (``/entry/...`` plus ``/xpcs/qmap``,
``/xpcs/multitau``, ``/xpcs/twotime``), as written by boost_corr with a pysimplemask q-map.

Readers return schema objects built *unchecked*; the facade decides whether to validate.

Geometry and units (sources: AZjk/boost_corr, which copies the pysimplemask q-map file into
``/xpcs/qmap``; AdvancedPhotonSource/pySimpleMask; the reference reader pyXpcsViewer ``QMap``):

- ``beam_center_x`` / ``beam_center_y`` are 0-based pixel coordinates (column, row).
- ``detector_distance`` and ``pixel_size`` are stored in **metres** and ``energy`` in **keV**,
  with no unit attribute. A ``unit`` (or ``units``) attribute, where present, wins; lengths
  accept m, mm, um/µm/micron, nm; energy keV, eV; a stored wavelength A/Angstrom, nm; times
  s, ms, us, ns. An unknown unit raises ``HDF5ValidationError``: nothing is guessed.
- lambda [A] = 12.398 / E [keV] (the constant pyXpcsViewer uses; pysimplemask uses
  12.39841984, a 3.4e-5 relative difference).

Per-pixel q (A^-1), the small-angle formula pysimplemask uses for transmission geometry::

    r = pixel_size * hypot(col - bcx, row - bcy)
    q = 4 pi / lambda * sin(atan(r / L) / 2)

Azimuth (deg), pysimplemask's convention, which its phi bin centres (``dynamic_v_list_dim1``)
follow: ``phi = -atan2(row - bcy, col - bcx)``, in (-180, 180]; 0 deg points along +column,
+90 deg towards row 0 (counter-clockwise on an image drawn with row 0 at the top).

Bins: G2 column k is ROI label k + 1, whose flat q-phi index is ``m = dynamic_index_mapping[k]``;
its q is ``dynamic_v_list_dim0[m // n_phi]`` with ``n_phi = dynamic_num_pts[1]``.
Delay [s] = ``delay_list`` x ``frame_time`` x ``stride_frame`` x ``avg_frame``.
Two-time map i (``c2_00001`` is i = 1) belongs to ROI label ``processed_bins[i - 1]``, i.e.
``q_idx = processed_bins[i - 1] - 1``; maps hold the upper triangle (j >= i) only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from xpcs_io.h5access import Locator
from xpcs_io.layouts import twotime
from xpcs_io.layouts.common import (
    HC_KEV_ANGSTROM,
    PIXEL_UNITS,
    TO_ANGSTROM,
    TO_INV_ANGSTROM,
    TO_KEV,
    TO_MM,
    TO_SECONDS,
    check_index,
    exists,
    image,
    invalid,
    label_means,
    map_shape,
    norm_unit,
    pixel_q_phi,
    quantity,
    scalar,
    unit_of,
    vector,
)
from xpcs_io.schemas import G2Data, GeometryMetadata, QMapSchema

__all__ = [
    "HC_KEV_ANGSTROM",
    "is_aps8idi",
    "list_c2_bins",
    "read_c2",
    "read_g2",
    "read_geometry",
    "read_qmap",
    "rebuild_c2",
]

QMAP = "/xpcs/qmap"
MULTITAU = "/xpcs/multitau"
TWOTIME = "/xpcs/twotime"
C2_GROUP = "/xpcs/twotime/correlation_map"
DETECTOR = "/entry/instrument/detector_1"
BEAM = "/entry/instrument/incident_beam"
BLUESKY = "/entry/instrument/bluesky"

# Two-time strip and block sizes (see ``twotime``), module-level so tests can shrink them.
_C2_READ_BYTES = twotime.READ_BYTES
_C2_BLOCK = twotime.BLOCK

_ROI_MAPS = ("dynamic_roi_map", "static_roi_map", "mask")


def _pixels(loc: Locator, group: str, name: str) -> float:
    unit = unit_of(loc, group, name)
    if unit is not None and norm_unit(unit) not in PIXEL_UNITS:
        raise invalid(loc, group, name, f"beam centre must be in pixels, unit is {unit!r}")
    return scalar(loc, group, name)


def has_qmap(loc: Locator, group: str = QMAP) -> bool:
    """Whether ``group`` holds a pysimplemask q-partition (``dynamic_roi_map`` or
    ``static_roi_map``)."""
    return exists(loc, group, "dynamic_roi_map") or exists(loc, group, "static_roi_map")


def is_aps8idi(loc: Locator) -> bool:
    """Whether the file is an 8-ID-I NeXus result: results (``/xpcs/multitau`` or
    ``/xpcs/twotime``) plus a ROI map in ``/xpcs/qmap`` or the bluesky metadata group the
    beamline viewer looks for.

    Raises:
        PermissionError: a link on the way leads outside the data root.
        HDF5ValidationError: the file's metadata cannot be read.
    """
    results = exists(loc, "/xpcs", "multitau") or exists(loc, "/xpcs", "twotime")
    return results and (has_qmap(loc) or exists(loc, BLUESKY, "metadata"))


def _shape(loc: Locator, group: str) -> tuple[int, int]:
    for name in _ROI_MAPS:
        if exists(loc, group, name):
            return map_shape(loc, group, name)
    raise KeyError(
        f"{group}/dynamic_roi_map not found in {loc.display} (nor static_roi_map or mask, "
        "which give the detector shape)"
    )


def read_geometry(loc: Locator, group: str = QMAP) -> GeometryMetadata:
    """Geometry from the q-map ``group`` (unchecked): beam centre in pixels, ``det_dist`` and
    ``pix_dim`` in mm, ``lambda_`` in Angstrom, ``shape`` from the ROI map (or the mask).

    ``detector_distance`` and ``pixel_size`` without a unit attribute are metres, ``energy``
    keV (boost_corr/pysimplemask write them so). Fallbacks: pixel size from
    ``/entry/instrument/detector_1/x_pixel_size``; energy from
    ``/entry/instrument/incident_beam/incident_energy``, then ``incident_wavelength``
    (Angstrom when it carries no unit).

    Raises:
        KeyError: a required dataset is missing (the message names its HDF5 path).
        HDF5ValidationError: a value is not a number, or its unit is unknown.
    """
    shape = _shape(loc, group)
    if exists(loc, group, "pixel_size"):
        pix = quantity(loc, group, "pixel_size", TO_MM, 1e3)
    elif exists(loc, DETECTOR, "x_pixel_size"):
        pix = quantity(loc, DETECTOR, "x_pixel_size", TO_MM, 1e3)
    else:
        raise KeyError(
            f"{group}/pixel_size not found in {loc.display} (nor {DETECTOR}/x_pixel_size)"
        )
    if exists(loc, group, "energy"):
        lam = HC_KEV_ANGSTROM / quantity(loc, group, "energy", TO_KEV, 1.0)
    elif exists(loc, BEAM, "incident_energy"):
        lam = HC_KEV_ANGSTROM / quantity(loc, BEAM, "incident_energy", TO_KEV, 1.0)
    elif exists(loc, BEAM, "incident_wavelength"):
        lam = quantity(loc, BEAM, "incident_wavelength", TO_ANGSTROM, 1.0)
    else:
        raise KeyError(f"{group}/energy not found in {loc.display} (nor {BEAM}/incident_energy)")
    return GeometryMetadata.unchecked(
        bcx=_pixels(loc, group, "beam_center_x"),
        bcy=_pixels(loc, group, "beam_center_y"),
        det_dist=quantity(loc, group, "detector_distance", TO_MM, 1e3),
        lambda_=lam,
        pix_dim=pix,
        shape=shape,
    )


def _checked_q_phi(loc: Locator, group: str, geo: GeometryMetadata) -> tuple[Any, Any]:
    for name, value, positive in (
        ("detector_distance", geo.det_dist, True),
        ("energy", geo.lambda_, True),
        ("pixel_size", geo.pix_dim, True),
        ("beam_center_x", geo.bcx, False),
        ("beam_center_y", geo.bcy, False),
    ):
        if not math.isfinite(value) or (positive and value <= 0):
            raise invalid(loc, group, name, f"gives {value}: not finite{' and > 0' * positive}")
    return pixel_q_phi(geo.shape, geo.bcx, geo.bcy, geo.det_dist, geo.lambda_, geo.pix_dim)


def read_qmap(loc: Locator, group: str = QMAP) -> QMapSchema:
    """Per-pixel q and phi computed from the geometry (unchecked).

    ``sqmap`` and ``dqmap`` hold the same float32 pixel q (A^-1; two separate arrays);
    ``phis`` float32 in degrees (pysimplemask convention, see the module docstring);
    ``partition_map`` is the stored ``dynamic_roi_map`` with its dtype (``None`` if the file
    has only a static map); ``mask`` the stored mask unchanged (bool in these files; ``None``
    if absent). ``group`` is ``/qmap`` for a stand-alone pysimplemask q-partition file.

    Raises:
        KeyError: a required geometry dataset is missing.
        HDF5ValidationError: the geometry is unreadable or not finite and positive, or a
            stored map is not of the detector's (H, W) shape.
    """
    geo = read_geometry(loc, group)
    q, phi = _checked_q_phi(loc, group, geo)
    # Separate arrays: callers get writable maps, and changing one must not change the other.
    fields: dict[str, Any] = {"sqmap": q, "dqmap": q.copy(), "phis": phi}
    fields.update(sqmap_unit="A^-1", dqmap_unit="A^-1", phis_unit="deg")
    if exists(loc, group, "dynamic_roi_map"):
        fields["partition_map"] = image(loc, group, "dynamic_roi_map", geo.shape)
    if exists(loc, group, "mask"):
        fields["mask"] = image(loc, group, "mask", geo.shape)
    return QMapSchema.unchecked(**fields)


def _n_phi(loc: Locator) -> int:
    """phi bins per q ring: ``dynamic_num_pts[1]``, else the length of
    ``dynamic_v_list_dim1``, else 1."""
    if exists(loc, QMAP, "dynamic_num_pts"):
        num_pts = vector(loc, QMAP, "dynamic_num_pts")
        n_phi = int(num_pts[1]) if num_pts.size > 1 else 1
        if n_phi < 1:
            raise invalid(loc, QMAP, "dynamic_num_pts", f"n_phi must be >= 1, got {n_phi}")
        return n_phi
    if exists(loc, QMAP, "dynamic_v_list_dim1"):
        return max(1, int(vector(loc, QMAP, "dynamic_v_list_dim1").size))
    return 1


def _label_q(loc: Locator, n_q: int) -> npt.NDArray[np.float64]:
    """Mean pixel q (A^-1) of each ROI label 1..n_q, from the geometry and the ROI map."""
    geo = read_geometry(loc)
    q, _ = _checked_q_phi(loc, QMAP, geo)
    labels = image(loc, QMAP, "dynamic_roi_map", geo.shape)
    return label_means(q, labels, n_q)


def _flat_indices(loc: Locator, n_q: int, n_phi: int, v0: npt.NDArray[Any]) -> Any:
    """Each G2 column's flat q-phi index: ``dynamic_index_mapping``, or what the other
    datasets determine without it (labels in grid order when every bin is a column, else
    the q bin whose centre is nearest each label's mean pixel q)."""
    if exists(loc, QMAP, "dynamic_index_mapping"):
        mapping = vector(loc, QMAP, "dynamic_index_mapping")
        if mapping.size != n_q:
            why = f"has {mapping.size} entries, normalized_g2 has {n_q} columns"
            raise invalid(loc, QMAP, "dynamic_index_mapping", why)
        return mapping.astype(np.int64)
    if v0.size * n_phi == n_q:
        return np.arange(n_q, dtype=np.int64)
    if not exists(loc, QMAP, "dynamic_roi_map"):
        raise KeyError(
            f"{QMAP}/dynamic_index_mapping not found in {loc.display}: G2 has {n_q} columns "
            f"for {v0.size * n_phi} q-phi bins, and without the mapping or "
            f"{QMAP}/dynamic_roi_map the q of each column is unknown"
        )
    means = _label_q(loc, n_q)
    iq = np.abs(means[:, None] - v0[None, :]).argmin(axis=1)
    return iq.astype(np.int64) * n_phi


def _g2_q_values(loc: Locator, n_q: int, k: int | None) -> npt.NDArray[np.float64]:
    if not exists(loc, QMAP, "dynamic_v_list_dim0"):
        if not exists(loc, QMAP, "dynamic_roi_map"):
            raise KeyError(
                f"{QMAP}/dynamic_v_list_dim0 not found in {loc.display} (nor "
                f"{QMAP}/dynamic_roi_map, from which the q of each G2 column could be derived)"
            )
        means = _label_q(loc, n_q)
        return means if k is None else means[k : k + 1]
    v0 = vector(loc, QMAP, "dynamic_v_list_dim0").astype(np.float64)
    unit = unit_of(loc, QMAP, "dynamic_v_list_dim0")
    factor = 1.0 if unit is None else TO_INV_ANGSTROM.get(norm_unit(unit))
    if factor is None:
        raise invalid(loc, QMAP, "dynamic_v_list_dim0", f"unknown q unit {unit!r}")
    n_phi = _n_phi(loc)
    mapping = _flat_indices(loc, n_q, n_phi, v0)
    flat = mapping if k is None else mapping[k : k + 1]
    iq = flat // n_phi
    if iq.size and (iq.min() < 0 or iq.max() >= v0.size):
        why = f"flat bin indices map to q bins [{iq.min()}, {iq.max()}] beyond {v0.size} bins"
        raise invalid(loc, QMAP, "dynamic_index_mapping", why)
    return np.asarray(v0[iq] * factor, dtype=np.float64)


def read_g2(loc: Locator, q_idx: int | None) -> G2Data:
    """Multi-tau G2 (n_delay, n_q) float32 with delays in s and q in A^-1 (unchecked).

    ``q_idx=k`` reads only column k from disk (n_q becomes 1). Optional pieces are derived
    when absent: ``stride_frame`` and ``avg_frame`` (``/xpcs/multitau/config``) count as 1;
    without ``dynamic_num_pts`` n_phi is the length of ``dynamic_v_list_dim1`` (else 1);
    without ``dynamic_index_mapping`` labels are in grid order when every q-phi bin is a
    column, else each label takes the q bin nearest its mean pixel q; without
    ``dynamic_v_list_dim0`` the q of a column is its label's mean pixel q; q without a unit
    attribute is A^-1, ``frame_time`` without one is seconds.

    Raises:
        KeyError: an essential dataset is missing (the message names its HDF5 path).
        TypeError: ``q_idx`` is not an integer.
        IndexError: ``q_idx`` outside 0..n_q-1 (negative values are refused, not wrapped).
        HDF5ValidationError: shapes or units in the file are inconsistent.
    """
    g2_ds = loc.dataset(MULTITAU, "normalized_g2")
    err_ds = loc.dataset(MULTITAU, "normalized_g2_err")
    if g2_ds.ndim != 2:
        why = f"expected shape (n_delay, n_q), found shape {g2_ds.shape}"
        raise invalid(loc, MULTITAU, "normalized_g2", why)
    if err_ds.shape != g2_ds.shape:
        why = f"expected shape {g2_ds.shape} (as normalized_g2), found shape {err_ds.shape}"
        raise invalid(loc, MULTITAU, "normalized_g2_err", why)
    n_delay, n_q = (int(n) for n in g2_ds.shape)
    k: int | None = None
    sel: Any = ()
    if q_idx is not None:
        k = check_index(q_idx, "q_idx")
        if not 0 <= k < n_q:
            raise IndexError(f"q_idx {k} out of range: the file has {n_q} q bins (0..{n_q - 1})")
        sel = np.s_[:, k : k + 1]
    frames = vector(loc, MULTITAU, "delay_list")
    if frames.size != n_delay:
        why = f"expected {n_delay} delays (the rows of normalized_g2), found {frames.size}"
        raise invalid(loc, MULTITAU, "delay_list", why)
    per_frame = quantity(loc, DETECTOR, "frame_time", TO_SECONDS, 1.0)
    config = f"{MULTITAU}/config"
    for name in ("stride_frame", "avg_frame"):
        if exists(loc, config, name):
            per_frame *= scalar(loc, config, name)
    return G2Data.unchecked(
        g2=loc.read(MULTITAU, "normalized_g2", sel),
        g2_err=loc.read(MULTITAU, "normalized_g2_err", sel),
        delay_times=frames.astype(np.float64) * per_frame,
        q_values=_g2_q_values(loc, n_q, k),
    )


def _c2_maps(loc: Locator) -> dict[int, str]:
    """q_idx -> dataset name of each stored two-time map."""
    if not exists(loc, "/xpcs", "twotime"):
        return {}
    grp = loc.group(C2_GROUP)
    labels = vector(loc, TWOTIME, "processed_bins")
    if labels.size and (labels.min() < 1 or not np.all(labels == np.round(labels))):
        raise invalid(loc, TWOTIME, "processed_bins", "must hold integer ROI labels >= 1")
    out: dict[int, str] = {}
    for i, label in enumerate(labels.tolist(), start=1):
        name = f"c2_{i:05d}"
        if loc.has(grp, name):
            out.setdefault(int(label) - 1, name)
    return out


def list_c2_bins(loc: Locator) -> list[int]:
    """Sorted 0-based dynamic bin indices (ROI label - 1) that have a two-time map;
    ``[]`` when the file has no ``/xpcs/twotime``.

    Raises:
        KeyError: ``/xpcs/twotime`` exists without ``correlation_map`` or ``processed_bins``.
        HDF5ValidationError: ``processed_bins`` does not hold labels >= 1.
    """
    return sorted(_c2_maps(loc))


def rebuild_c2(loc: Locator, group: str, name: str, limit: int | None) -> npt.NDArray[np.float32]:
    """``twotime.rebuild`` with this module's strip and block sizes (see there).

    Raises:
        HDF5ValidationError: the stored map is not a square numeric (N, N) or (N, N, 1).
    """
    return twotime.rebuild(loc, group, name, limit, read_bytes=_C2_READ_BYTES, block=_C2_BLOCK)


def read_c2(loc: Locator, q_idx: int, max_size: int | None = None) -> npt.NDArray[np.float32]:
    """The symmetric (N, N) float32 two-time map of dynamic bin ``q_idx`` (0-based; ROI
    label q_idx + 1), rebuilt from the stored upper triangle (diagonal kept).

    With ``max_size`` and N > max_size the map is block-averaged by the integer factor
    ceil(N / max_size), giving ceil(N / factor) <= max_size rows; it is read in row strips
    of its upper part, so memory stays at one strip plus the output.

    Raises:
        TypeError: ``q_idx`` or ``max_size`` is not an integer.
        ValueError: ``max_size`` < 1.
        KeyError: no map is stored for ``q_idx`` (the message lists the available ones).
        HDF5ValidationError: the stored map is not a square 2-D numeric array.
    """
    k = check_index(q_idx, "q_idx")
    limit = twotime.check_max_size(max_size)
    maps = _c2_maps(loc)
    if k not in maps:
        raise KeyError(
            f"{loc.display}: no two-time map for q_idx {k} (ROI label {k + 1}); "
            f"available q_idx: {sorted(maps)}"
        )
    return rebuild_c2(loc, C2_GROUP, maps[k], limit)
