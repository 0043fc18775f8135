"""Reader for the legacy APS 8-ID-I result layout (2013-2024, before NeXus): ``/xpcs`` holds
the q-partition and analysis settings, ``/exchange`` the results and ``/measurement`` the
instrument, as written by the Hadoop correlator (2013-2017), the Matlab XPCSGUI tools,
xpcs-eigen (about 2017-2022) and boost_corr's legacy mode (2022-2024).

Readers return schema objects built *unchecked*; the facade decides whether to validate.

Every era's way of storing a value is read alike: scalars as (), (1,) or (1, 1); vectors as
(n,), (1, n) or (n, 1); strings as fixed- or variable-length, str or bytes, with trailing
blanks stripped; counts as float64 or integers; maps as (H, W) or (1, H, W); a mask stored
(W, H) is transposed (as the beamline viewer does), and so is a label map whose shape is
(x_dimension, y_dimension); Hadoop's (n_tau, n_q, 1) G2 and (N, N, 1) two-time maps lose
the trailing axis. SAXS (``pixelSum``, ``partition-mean-*``) and intensity vs time are read
by ``xpcs_io.layouts.saxs``; the compound ``/exchange/norm`` of early Hadoop files is not.

Units (no unit attributes in these files; one, where present, is honoured):
``/measurement/instrument/detector/distance``, ``x_pixel_size``, ``y_pixel_size`` and the
stage positions in mm; ``source_begin/energy`` in keV; ``acquisition/beam_center_x`` and
``beam_center_y`` in 0-based pixels (column, row); ``exposure_period`` in s; ``/exchange/tau``
in frames after stride and averaging; ``dqlist`` in A^-1 and ``dphilist`` in degrees.

Beam centre: the stored one plus the detector's move since it was measured,
``bcx = beam_center_x + (stage_x - stage_zero_x) / x_pixel_size`` and
``bcy = beam_center_y + (stage_z - stage_zero_z) / y_pixel_size`` (both terms only when the
four stage datasets are present).

Bins: ``/xpcs/dqmap`` labels pixels 0 (unused) and 1..K; label L is G2 column L - 1 (a
float map of whole numbers is returned as uint32).
``dqlist``/``dphilist`` keep the full q-phi grid with NaN for empty cells, in the producer's
order (q fastest in Matlab qmaps, phi fastest in pySimpleMask's), so label L's q and phi are
the L-th non-NaN entries. Columns beyond the last label (boost_corr pads to the grid size)
belong to no bin and are not returned.
Delay [s] = tau x exposure_period x avg_frames x stride_frames (missing counts are 1).
Two-time maps: ``/exchange/C2T_all/g2_%05d`` upper triangles, named by label (xpcs-eigen),
or numbered 1..n over the labels in ``/xpcs/qphi_bin_to_process`` (boost_corr when only
some bins were processed); Hadoop's ``/exchange/TwoTime/C_%04d``.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import numpy.typing as npt

from xpcs_io.h5access import Locator, decode_str
from xpcs_io.layouts.aps8idi import rebuild_c2
from xpcs_io.layouts.common import (
    HC_KEV_ANGSTROM,
    TO_KEV,
    TO_MM,
    TO_SECONDS,
    check_index,
    exists,
    image,
    invalid,
    label_means,
    pixel_q_phi,
    quantity,
    scalar,
    vector,
)
from xpcs_io.layouts.twotime import check_max_size
from xpcs_io.schemas import G2Data, GeometryMetadata, QMapSchema

__all__ = [
    "analysis_type",
    "detector_shape",
    "dynamic_bins",
    "is_legacy",
    "list_c2_bins",
    "looks_legacy",
    "read_c2",
    "read_g2",
    "read_geometry",
    "read_qmap",
    "result_group",
]

XPCS = "/xpcs"
DETECTOR = "/measurement/instrument/detector"
ACQUISITION = "/measurement/instrument/acquisition"
SOURCE = "/measurement/instrument/source_begin"
_C2_NAME = re.compile(r"^g2_(\d+)$")
_HADOOP_C2_NAME = re.compile(r"^C_(\d+)$")


def is_legacy(loc: Locator) -> bool:
    """The beamline viewer's rule: ``/xpcs/Version`` exists."""
    return exists(loc, XPCS, "Version")


def looks_legacy(loc: Locator) -> bool:
    """A legacy file from before ``/xpcs/Version`` (the 0.4 format): ``/xpcs/dqmap`` and an
    ``/exchange`` group."""
    return exists(loc, XPCS, "dqmap") and exists(loc, "/", "exchange")


def _string(loc: Locator, group: str, name: str) -> str:
    try:
        text = decode_str(loc.read(group, name))
    except TypeError as exc:
        raise invalid(loc, group, name, f"expected a string ({exc})") from None
    return text.rstrip(" \x00")


def analysis_type(loc: Locator) -> str | None:
    """``/xpcs/analysis_type`` capitalised ("Multitau", "Twotime"), ``None`` if absent."""
    if not exists(loc, XPCS, "analysis_type"):
        return None
    return _string(loc, XPCS, "analysis_type").strip().capitalize()


def result_group(loc: Locator) -> str:
    """Where the results are: ``/xpcs/output_data`` (blanks stripped), else ``/exchange``.

    Raises:
        KeyError: ``output_data`` names a group that does not exist.
    """
    if exists(loc, XPCS, "output_data"):
        path = _string(loc, XPCS, "output_data").strip()
        if path:
            path = "/" + path.strip("/")
            loc.group(path)
            return path
    return "/exchange"


def _count(loc: Locator, name: str) -> float:
    return scalar(loc, XPCS, name) if exists(loc, XPCS, name) else 1.0


def _shape(loc: Locator) -> tuple[tuple[int, int], bool]:
    """(H, W) of the detector image and whether ``/xpcs/dqmap`` is stored transposed (its
    shape is (x_dimension, y_dimension) rather than (y_dimension, x_dimension))."""
    stored = tuple(int(n) for n in loc.dataset(XPCS, "dqmap").shape)
    if len(stored) < 2 or any(n != 1 for n in stored[:-2]):
        why = f"expected a 2-D (H, W) label map, found shape {stored}"
        raise invalid(loc, XPCS, "dqmap", why)
    h, w = stored[-2:]
    if h != w and exists(loc, DETECTOR, "x_dimension") and exists(loc, DETECTOR, "y_dimension"):
        width = scalar(loc, DETECTOR, "x_dimension")
        height = scalar(loc, DETECTOR, "y_dimension")
        if (h, w) == (width, height):
            return (w, h), True
    return (h, w), False


def detector_shape(loc: Locator) -> tuple[tuple[int, int], bool]:
    """(H, W) of the detector and whether ``/xpcs/dqmap`` is stored transposed.

    Raises:
        KeyError: ``/xpcs/dqmap`` is missing.
        HDF5ValidationError: it is not a 2-D map.
    """
    return _shape(loc)


def _labels(loc: Locator) -> npt.NDArray[Any]:
    shape, transposed = _shape(loc)
    stored = shape[::-1] if transposed else shape
    labels = image(loc, XPCS, "dqmap", stored)
    if labels.dtype.kind == "f":
        # Matlab writes doubles; whole non-negative numbers are labels all the same.
        whole = np.isfinite(labels).all() and (labels >= 0).all() and (labels % 1 == 0).all()
        if not whole or labels.max(initial=0) > np.iinfo(np.uint32).max:
            why = f"expected integer labels, found {labels.dtype} values that are not"
            raise invalid(loc, XPCS, "dqmap", why)
        labels = labels.astype(np.uint32)
    elif labels.dtype.kind not in "iu":
        raise invalid(loc, XPCS, "dqmap", f"expected integer labels, found dtype {labels.dtype}")
    return np.ascontiguousarray(labels.T) if transposed else labels


def read_geometry(loc: Locator) -> GeometryMetadata:
    """Geometry (unchecked): beam centre in pixels with the stage correction, ``det_dist``
    and ``pix_dim`` (``x_pixel_size``) in mm, ``lambda_`` = 12.398 / energy [keV] in A,
    ``shape`` that of ``/xpcs/dqmap`` (transposed back when stored (W, H)).

    Raises:
        KeyError: a required dataset is missing (the message names its HDF5 path).
        HDF5ValidationError: a value is not one number, or its unit is unknown.
    """
    shape, _ = _shape(loc)
    pix_x = quantity(loc, DETECTOR, "x_pixel_size", TO_MM, 1.0)
    pix_y = (
        quantity(loc, DETECTOR, "y_pixel_size", TO_MM, 1.0)
        if exists(loc, DETECTOR, "y_pixel_size")
        else pix_x
    )
    bcx = scalar(loc, ACQUISITION, "beam_center_x")
    bcy = scalar(loc, ACQUISITION, "beam_center_y")
    for stage, zero, size, axis in (
        ("stage_x", "stage_zero_x", pix_x, "x"),
        ("stage_z", "stage_zero_z", pix_y, "y"),
    ):
        if exists(loc, ACQUISITION, stage) and exists(loc, ACQUISITION, zero):
            shift = quantity(loc, ACQUISITION, stage, TO_MM, 1.0) - quantity(
                loc, ACQUISITION, zero, TO_MM, 1.0
            )
            if axis == "x":
                bcx += shift / size
            else:
                bcy += shift / size
    return GeometryMetadata.unchecked(
        bcx=bcx,
        bcy=bcy,
        det_dist=quantity(loc, DETECTOR, "distance", TO_MM, 1.0),
        lambda_=HC_KEV_ANGSTROM / quantity(loc, SOURCE, "energy", TO_KEV, 1.0),
        pix_dim=pix_x,
        shape=shape,
    )


def _pixel_q_phi(loc: Locator, geo: GeometryMetadata) -> tuple[Any, Any]:
    pix_y = (
        quantity(loc, DETECTOR, "y_pixel_size", TO_MM, 1.0)
        if exists(loc, DETECTOR, "y_pixel_size")
        else geo.pix_dim
    )
    for name, group, value in (
        ("distance", DETECTOR, geo.det_dist),
        ("energy", SOURCE, geo.lambda_),
        ("x_pixel_size", DETECTOR, geo.pix_dim),
        ("y_pixel_size", DETECTOR, pix_y),
    ):
        if not np.isfinite(value) or value <= 0:
            raise invalid(loc, group, name, f"gives {value}: not finite and > 0")
    for name, value in (("beam_center_x", geo.bcx), ("beam_center_y", geo.bcy)):
        if not np.isfinite(value):
            raise invalid(loc, ACQUISITION, name, f"gives {value}: not finite")
    return pixel_q_phi(geo.shape, geo.bcx, geo.bcy, geo.det_dist, geo.lambda_, geo.pix_dim, pix_y)


def read_qmap(loc: Locator) -> QMapSchema:
    """Per-pixel q (A^-1) and phi (deg) computed from the geometry as for NeXus files
    (unchecked); ``partition_map`` is ``/xpcs/dqmap`` (dtype kept), ``mask`` is
    ``/xpcs/mask`` (dtype kept; transposed when stored (W, H); ``None`` if absent).

    Raises:
        KeyError: a required dataset is missing.
        HDF5ValidationError: the geometry is not finite and positive, or a map does not
            have the detector's shape.
    """
    geo = read_geometry(loc)
    q, phi = _pixel_q_phi(loc, geo)
    fields: dict[str, Any] = {"sqmap": q, "dqmap": q.copy(), "phis": phi}
    fields.update(sqmap_unit="A^-1", dqmap_unit="A^-1", phis_unit="deg")
    fields["partition_map"] = _labels(loc)
    if exists(loc, XPCS, "mask"):
        fields["mask"] = image(loc, XPCS, "mask", geo.shape, transposed_ok=True)
    return QMapSchema.unchecked(**fields)


def dynamic_bins(loc: Locator) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """q (A^-1) and phi (deg) of labels 1..K: the non-NaN entries of ``dqlist`` and
    ``dphilist`` in order. Without ``dqlist`` (configuration-only files) q is each label's
    mean pixel q and phi its mean pixel phi (this reader's convention).

    Raises:
        KeyError: neither ``dqlist`` nor the geometry and ``dqmap`` are there.
        HDF5ValidationError: ``dphilist`` does not match ``dqlist`` in length.
    """
    if exists(loc, XPCS, "dqlist"):
        dq = vector(loc, XPCS, "dqlist").astype(np.float64)
        keep = ~np.isnan(dq)
        dphi = np.full(dq.shape, np.nan)
        if exists(loc, XPCS, "dphilist"):
            dphi = vector(loc, XPCS, "dphilist").astype(np.float64)
            if dphi.size != dq.size:
                why = f"expected {dq.size} entries (as dqlist), found {dphi.size}"
                raise invalid(loc, XPCS, "dphilist", why)
        return dq[keep], dphi[keep]
    geo = read_geometry(loc)
    q, phi = _pixel_q_phi(loc, geo)
    labels = _labels(loc)
    n = int(labels.max(initial=0))
    return label_means(q, labels, n), label_means(phi, labels, n)


def _g2_dataset(loc: Locator, group: str, name: str) -> tuple[int, int, int]:
    """(n_tau, n_columns, ndim) of a stored G2 of shape (n_tau, n) or (n_tau, n, 1)."""
    shape = tuple(int(n) for n in loc.dataset(group, name).shape)
    if len(shape) == 2 or (len(shape) == 3 and shape[2] == 1):
        return shape[0], shape[1], len(shape)
    why = f"expected shape (n_tau, n_q) or (n_tau, n_q, 1), found shape {shape}"
    raise invalid(loc, group, name, why)


def read_g2(loc: Locator, q_idx: int | None) -> G2Data:
    """Multi-tau G2 (n_delay, n_q) from ``norm-0-g2`` / ``norm-0-stderr`` of the result
    group (dtype kept), delays in s, the q of each label in A^-1 (unchecked).

    Raises:
        KeyError: an essential dataset is missing (a Twotime result has no multi-tau G2).
        TypeError: ``q_idx`` is not an integer.
        IndexError: ``q_idx`` outside 0..n_q-1.
        HDF5ValidationError: shapes in the file are inconsistent.
    """
    group = result_group(loc)
    if not exists(loc, group, "norm-0-g2"):
        kind = analysis_type(loc)
        extra = f" (the file holds a {kind} result)" if kind and kind != "Multitau" else ""
        if exists(loc, group, "norm"):
            extra += f" ({group}/norm, the compound G2 of early Hadoop files, is not read)"
        raise KeyError(f"{group}/norm-0-g2 not found in {loc.display}{extra}")
    n_tau, n_cols, ndim = _g2_dataset(loc, group, "norm-0-g2")
    err = _g2_dataset(loc, group, "norm-0-stderr")
    if err[:2] != (n_tau, n_cols):
        why = f"expected shape ({n_tau}, {n_cols}) as norm-0-g2, found {err[:2]}"
        raise invalid(loc, group, "norm-0-stderr", why)
    q_bins, _ = dynamic_bins(loc)
    # Columns past the last label (boost_corr pads G2 to the grid size) are no bin's.
    n_q = min(n_cols, int(q_bins.size))
    cols = slice(0, n_q)
    if q_idx is not None:
        k = check_index(q_idx, "q_idx")
        if not 0 <= k < n_q:
            raise IndexError(f"q_idx {k} out of range: the file has {n_q} q bins (0..{n_q - 1})")
        cols = slice(k, k + 1)
    tau = vector(loc, group, "tau")
    if tau.size != n_tau:
        why = f"expected {n_tau} delays (the rows of norm-0-g2), found {tau.size}"
        raise invalid(loc, group, "tau", why)
    per_frame = quantity(loc, DETECTOR, "exposure_period", TO_SECONDS, 1.0)
    per_frame *= _count(loc, "avg_frames") * _count(loc, "stride_frames")
    sel = (slice(None), cols) if ndim == 2 else (slice(None), cols, 0)
    return G2Data.unchecked(
        g2=loc.read(group, "norm-0-g2", sel),
        g2_err=loc.read(group, "norm-0-stderr", sel),
        delay_times=tau.astype(np.float64) * per_frame,
        q_values=q_bins[cols].astype(np.float64),
    )


def _c2_maps(loc: Locator) -> dict[int, tuple[str, str]]:
    """q_idx -> (group, dataset) of each stored two-time map."""
    group = result_group(loc)
    out: dict[int, tuple[str, str]] = {}
    if exists(loc, group, "C2T_all"):
        grp_path = f"{group}/C2T_all"
        numbered = {
            int(m.group(1)): name
            for name in loc.group(grp_path)
            if (m := _C2_NAME.match(name)) is not None
        }
        labels = {n: n for n in numbered}
        if exists(loc, XPCS, "qphi_bin_to_process"):
            todo = [int(v) for v in vector(loc, XPCS, "qphi_bin_to_process").tolist()]
            # boost_corr numbers the maps 1..n over the processed labels; xpcs-eigen names
            # them by label. The two agree when every label was processed.
            if set(numbered) != set(todo) and sorted(numbered) == list(range(1, len(todo) + 1)):
                labels = {i: todo[i - 1] for i in numbered}
        for number, name in numbered.items():
            out.setdefault(labels[number] - 1, (grp_path, name))
    if exists(loc, group, "TwoTime"):
        grp_path = f"{group}/TwoTime"
        for name in loc.group(grp_path):
            if (m := _HADOOP_C2_NAME.match(name)) is not None:
                out.setdefault(int(m.group(1)) - 1, (grp_path, name))
    return out


def list_c2_bins(loc: Locator) -> list[int]:
    """Sorted 0-based dynamic bin indices (label - 1) that have a two-time map."""
    return sorted(k for k in _c2_maps(loc) if k >= 0)


def read_c2(loc: Locator, q_idx: int, max_size: int | None = None) -> npt.NDArray[np.float32]:
    """The symmetric (N, N) float32 two-time map of dynamic bin ``q_idx`` (label q_idx + 1),
    rebuilt from the stored upper triangle; ``max_size`` block-averages it (see
    ``aps8idi.read_c2``).

    Raises:
        TypeError: ``q_idx`` or ``max_size`` is not an integer.
        ValueError: ``max_size`` < 1.
        KeyError: no map is stored for ``q_idx`` (the message lists the available ones).
        HDF5ValidationError: the stored map is not square.
    """
    k = check_index(q_idx, "q_idx")
    limit = check_max_size(max_size)
    maps = _c2_maps(loc)
    if k not in maps:
        raise KeyError(
            f"{loc.display}: no two-time map for q_idx {k} (label {k + 1}); "
            f"available q_idx: {sorted(maps)}"
        )
    group, name = maps[k]
    return rebuild_c2(loc, group, name, limit)
