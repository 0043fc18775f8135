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
import operator
import unicodedata
from typing import Any

import numpy as np
import numpy.typing as npt

from xpcs_io.errors import HDF5ValidationError
from xpcs_io.h5access import Locator, check_allocation, decode_str
from xpcs_io.schemas import G2Data, GeometryMetadata, QMapSchema

__all__ = [
    "HC_KEV_ANGSTROM",
    "is_aps8idi",
    "list_c2_bins",
    "read_c2",
    "read_g2",
    "read_geometry",
    "read_qmap",
]

HC_KEV_ANGSTROM = 12.398
QMAP = "/xpcs/qmap"
MULTITAU = "/xpcs/multitau"
TWOTIME = "/xpcs/twotime"
C2_GROUP = "/xpcs/twotime/correlation_map"
DETECTOR = "/entry/instrument/detector_1"
BEAM = "/entry/instrument/incident_beam"

# Bytes of stored two-time map read at once while decimating (a multiple of whole rows).
_C2_READ_BYTES = 64 << 20
# A block-averaged two-time map is read in strips; the whole map may be this many times the
# read limit (32 GiB with the default limit of 2 GiB, a 92,000-frame float32 map).
_C2_STREAM_FACTOR = 16
_C2_STREAM_WHAT = f"streamed for block means (counted 1/{_C2_STREAM_FACTOR})"
# Rows of the mirrored two-time map handled per step (keeps temporaries at block size).
_C2_BLOCK = 512


def _norm(unit: str) -> str:
    return unicodedata.normalize("NFKC", unit).strip().lower()


def _table(groups: dict[float, str]) -> dict[str, float]:
    return {_norm(name): factor for factor, names in groups.items() for name in names.split()}


_TO_MM = _table(
    {
        1e3: "m meter meters metre metres",
        10.0: "cm",
        1.0: "mm millimeter millimeters millimetre millimetres",
        1e-3: "um µm μm micron microns micrometer micrometre",
        1e-6: "nm nanometer nanometre",
    }
)
_TO_KEV = _table({1.0: "keV", 1e-3: "eV"})
_TO_ANGSTROM = _table({1.0: "A Å angstrom angstroms ångström", 10.0: "nm"})
_TO_SECONDS = _table({1.0: "s sec second seconds", 1e-3: "ms", 1e-6: "us µs", 1e-9: "ns"})
_TO_INV_ANGSTROM = _table(
    {1.0: "A^-1 1/A A-1 A⁻¹ Å^-1 1/Å Å⁻¹ 1/angstrom angstrom^-1", 0.1: "nm^-1 1/nm nm-1 nm⁻¹"}
)
_PIXEL_UNITS = frozenset({"pixel", "pixels", "px", "pix"})


def _invalid(loc: Locator, group: str, name: str, why: str) -> HDF5ValidationError:
    return HDF5ValidationError(
        f"{loc.display}: {group.rstrip('/')}/{name}: {why}",
        file=loc.display,
        group=group,
        field=name,
    )


def _exists(loc: Locator, group: str, name: str) -> bool:
    try:
        return loc.has(loc.group(group), name)
    except KeyError:
        return False


def _unit(loc: Locator, group: str, name: str) -> str | None:
    attrs = loc.dataset(group, name).attrs
    for key in ("unit", "units"):
        if key in attrs:
            try:
                return decode_str(attrs[key])
            except TypeError as exc:
                raise _invalid(loc, group, name, f"unreadable @{key} attribute ({exc})") from None
    return None


def _scalar(loc: Locator, group: str, name: str) -> float:
    value = np.asarray(loc.read(group, name))
    if value.size != 1 or value.dtype.kind not in "iuf":
        raise _invalid(loc, group, name, f"expected a number, got {value.dtype} {value.shape}")
    return float(value.reshape(()))


def _quantity(
    loc: Locator, group: str, name: str, table: dict[str, float], default: float
) -> float:
    """The scalar at ``group/name`` times its unit's factor (``default`` without a unit)."""
    value = _scalar(loc, group, name)
    unit = _unit(loc, group, name)
    if unit is None:
        return value * default
    factor = table.get(_norm(unit))
    if factor is None:
        raise _invalid(loc, group, name, f"unknown unit {unit!r} (known: {sorted(table)})")
    return value * factor


def _pixels(loc: Locator, name: str) -> float:
    unit = _unit(loc, QMAP, name)
    if unit is not None and _norm(unit) not in _PIXEL_UNITS:
        raise _invalid(loc, QMAP, name, f"beam centre must be in pixels, unit is {unit!r}")
    return _scalar(loc, QMAP, name)


def _map_shape(loc: Locator, name: str) -> tuple[int, int]:
    shape = loc.dataset(QMAP, name).shape
    if len(shape) < 2 or any(n != 1 for n in shape[:-2]):
        raise _invalid(loc, QMAP, name, f"expected a 2-D (H, W) map, got shape {shape}")
    return int(shape[-2]), int(shape[-1])


def _read_map(loc: Locator, name: str) -> npt.NDArray[Any]:
    arr = np.asarray(loc.read(QMAP, name))
    return arr.reshape(arr.shape[-2:])


def is_aps8idi(loc: Locator) -> bool:
    """Whether the file is an 8-ID-I result: ``/xpcs/qmap`` holds ``dynamic_roi_map`` or
    ``static_roi_map`` and ``/xpcs/multitau`` or ``/xpcs/twotime`` exists.

    Raises:
        PermissionError: a link on the way leads outside the data root.
        HDF5ValidationError: the file's metadata cannot be read.
    """
    has_map = _exists(loc, QMAP, "dynamic_roi_map") or _exists(loc, QMAP, "static_roi_map")
    return has_map and (_exists(loc, "/xpcs", "multitau") or _exists(loc, "/xpcs", "twotime"))


def read_geometry(loc: Locator) -> GeometryMetadata:
    """Geometry from ``/xpcs/qmap`` (unchecked): beam centre in pixels, ``det_dist`` and
    ``pix_dim`` in mm, ``lambda_`` in Angstrom, ``shape`` from the ROI map.

    ``detector_distance`` and ``pixel_size`` without a unit attribute are metres, ``energy``
    keV (boost_corr/pysimplemask write them so). Fallbacks: pixel size from
    ``/entry/instrument/detector_1/x_pixel_size``; energy from
    ``/entry/instrument/incident_beam/incident_energy``, then ``incident_wavelength``
    (Angstrom when it carries no unit).

    Raises:
        KeyError: a required dataset is missing (the message names its HDF5 path).
        HDF5ValidationError: a value is not a number, or its unit is unknown.
    """
    name = "dynamic_roi_map" if _exists(loc, QMAP, "dynamic_roi_map") else "static_roi_map"
    shape = _map_shape(loc, name)
    if _exists(loc, QMAP, "pixel_size"):
        pix = _quantity(loc, QMAP, "pixel_size", _TO_MM, 1e3)
    elif _exists(loc, DETECTOR, "x_pixel_size"):
        pix = _quantity(loc, DETECTOR, "x_pixel_size", _TO_MM, 1e3)
    else:
        raise KeyError(
            f"{QMAP}/pixel_size not found in {loc.display} (nor {DETECTOR}/x_pixel_size)"
        )
    if _exists(loc, QMAP, "energy"):
        lam = HC_KEV_ANGSTROM / _quantity(loc, QMAP, "energy", _TO_KEV, 1.0)
    elif _exists(loc, BEAM, "incident_energy"):
        lam = HC_KEV_ANGSTROM / _quantity(loc, BEAM, "incident_energy", _TO_KEV, 1.0)
    elif _exists(loc, BEAM, "incident_wavelength"):
        lam = _quantity(loc, BEAM, "incident_wavelength", _TO_ANGSTROM, 1.0)
    else:
        raise KeyError(f"{QMAP}/energy not found in {loc.display} (nor {BEAM}/incident_energy)")
    return GeometryMetadata.unchecked(
        bcx=_pixels(loc, "beam_center_x"),
        bcy=_pixels(loc, "beam_center_y"),
        det_dist=_quantity(loc, QMAP, "detector_distance", _TO_MM, 1e3),
        lambda_=lam,
        pix_dim=pix,
        shape=shape,
    )


def _pixel_q_phi(geo: GeometryMetadata) -> tuple[npt.NDArray[np.float32], ...]:
    """q (A^-1) and phi (deg) maps as float32, computed in float64 row blocks."""
    h, w = geo.shape
    q = np.empty((h, w), dtype=np.float32)
    phi = np.empty((h, w), dtype=np.float32)
    dx = np.arange(w, dtype=np.float64) - geo.bcx
    dx2 = dx * dx
    ratio = geo.pix_dim / geo.det_dist  # r / L per pixel of distance
    k4 = 4.0 * math.pi / geo.lambda_
    rows = max(1, (1 << 21) // (8 * w))  # ~2 MB float64 blocks, written straight to float32
    for r0 in range(0, h, rows):
        dy = np.arange(r0, min(r0 + rows, h), dtype=np.float64) - geo.bcy
        blk = np.add.outer(dy * dy, dx2)
        np.arctan(np.multiply(np.sqrt(blk, out=blk), ratio, out=blk), out=blk)
        np.sin(np.multiply(blk, 0.5, out=blk), out=blk)
        np.multiply(blk, k4, out=q[r0 : r0 + dy.size])
        np.negative(np.arctan2(dy[:, None], dx[None, :], out=blk), out=blk)
        np.degrees(blk, out=phi[r0 : r0 + dy.size])
    return q, phi


def read_qmap(loc: Locator) -> QMapSchema:
    """Per-pixel q and phi computed from the geometry (unchecked).

    ``sqmap`` and ``dqmap`` hold the same float32 pixel q (A^-1; two separate arrays);
    ``phis`` float32 in degrees (pysimplemask convention, see the module docstring);
    ``partition_map`` is the stored ``dynamic_roi_map`` with its dtype (``None`` if the file
    has only a static map); ``mask`` the stored mask unchanged (bool in these files; ``None``
    if absent).

    Raises:
        KeyError: a required geometry dataset is missing.
        HDF5ValidationError: the geometry is unreadable or not finite and positive.
    """
    geo = read_geometry(loc)
    for name, value, positive in (
        ("detector_distance", geo.det_dist, True),
        ("energy", geo.lambda_, True),
        ("pixel_size", geo.pix_dim, True),
        ("beam_center_x", geo.bcx, False),
        ("beam_center_y", geo.bcy, False),
    ):
        if not math.isfinite(value) or (positive and value <= 0):
            raise _invalid(loc, QMAP, name, f"gives {value}: not finite{' and > 0' * positive}")
    q, phi = _pixel_q_phi(geo)
    # Separate arrays: callers get writable maps, and changing one must not change the other.
    fields: dict[str, Any] = {"sqmap": q, "dqmap": q.copy(), "phis": phi}
    fields.update(sqmap_unit="A^-1", dqmap_unit="A^-1", phis_unit="deg")
    if _exists(loc, QMAP, "dynamic_roi_map"):
        fields["partition_map"] = _read_map(loc, "dynamic_roi_map")
    if _exists(loc, QMAP, "mask"):
        fields["mask"] = _read_map(loc, "mask")
    return QMapSchema.unchecked(**fields)


def _check_index(value: Any, what: str) -> int:
    if isinstance(value, bool | np.bool_):
        raise TypeError(f"{what} must be an integer, got {type(value).__name__}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {type(value).__name__}") from None


def _vector(loc: Locator, group: str, name: str) -> npt.NDArray[Any]:
    arr = np.asarray(loc.read(group, name))
    if arr.dtype.kind not in "iuf":
        raise _invalid(loc, group, name, f"expected numbers, got dtype {arr.dtype}")
    return arr.reshape(-1)


def _g2_q_values(loc: Locator, n_q: int, k: int | None) -> npt.NDArray[np.float64]:
    mapping = _vector(loc, QMAP, "dynamic_index_mapping")
    if mapping.size != n_q:
        why = f"has {mapping.size} entries, normalized_g2 has {n_q} columns"
        raise _invalid(loc, QMAP, "dynamic_index_mapping", why)
    num_pts = _vector(loc, QMAP, "dynamic_num_pts")
    n_phi = int(num_pts[1]) if num_pts.size > 1 else 1
    if n_phi < 1:
        raise _invalid(loc, QMAP, "dynamic_num_pts", f"n_phi must be >= 1, got {n_phi}")
    v0 = _vector(loc, QMAP, "dynamic_v_list_dim0").astype(np.float64)
    unit = _unit(loc, QMAP, "dynamic_v_list_dim0")
    factor = 1.0 if unit is None else _TO_INV_ANGSTROM.get(_norm(unit))
    if factor is None:
        raise _invalid(loc, QMAP, "dynamic_v_list_dim0", f"unknown q unit {unit!r}")
    flat = (mapping if k is None else mapping[k : k + 1]).astype(np.int64)
    iq = flat // n_phi
    if iq.size and (iq.min() < 0 or iq.max() >= v0.size):
        why = f"flat bin indices map to q bins [{iq.min()}, {iq.max()}] beyond {v0.size} bins"
        raise _invalid(loc, QMAP, "dynamic_index_mapping", why)
    return v0[iq] * factor


def read_g2(loc: Locator, q_idx: int | None) -> G2Data:
    """Multi-tau G2 (n_delay, n_q) float32 with delays in s and q in A^-1 (unchecked).

    ``q_idx=k`` reads only column k from disk (n_q becomes 1). ``stride_frame`` and
    ``avg_frame`` default to 1 when ``/xpcs/multitau/config`` lacks them.

    Raises:
        KeyError: a dataset is missing (the message names its HDF5 path).
        TypeError: ``q_idx`` is not an integer.
        IndexError: ``q_idx`` outside 0..n_q-1 (negative values are refused, not wrapped).
        HDF5ValidationError: shapes or units in the file are inconsistent.
    """
    g2_ds = loc.dataset(MULTITAU, "normalized_g2")
    err_ds = loc.dataset(MULTITAU, "normalized_g2_err")
    if g2_ds.ndim != 2:
        raise _invalid(loc, MULTITAU, "normalized_g2", f"expected 2-D, got shape {g2_ds.shape}")
    if err_ds.shape != g2_ds.shape:
        why = f"shape {err_ds.shape} differs from normalized_g2 {g2_ds.shape}"
        raise _invalid(loc, MULTITAU, "normalized_g2_err", why)
    n_delay, n_q = (int(n) for n in g2_ds.shape)
    k: int | None = None
    sel: Any = ()
    if q_idx is not None:
        k = _check_index(q_idx, "q_idx")
        if not 0 <= k < n_q:
            raise IndexError(f"q_idx {k} out of range: the file has {n_q} q bins (0..{n_q - 1})")
        sel = np.s_[:, k : k + 1]
    frames = _vector(loc, MULTITAU, "delay_list")
    if frames.size != n_delay:
        why = f"{frames.size} delays, normalized_g2 has {n_delay} rows"
        raise _invalid(loc, MULTITAU, "delay_list", why)
    per_frame = _quantity(loc, DETECTOR, "frame_time", _TO_SECONDS, 1.0)
    config = f"{MULTITAU}/config"
    for name in ("stride_frame", "avg_frame"):
        if _exists(loc, config, name):
            per_frame *= _scalar(loc, config, name)
    return G2Data.unchecked(
        g2=loc.read(MULTITAU, "normalized_g2", sel),
        g2_err=loc.read(MULTITAU, "normalized_g2_err", sel),
        delay_times=frames.astype(np.float64) * per_frame,
        q_values=_g2_q_values(loc, n_q, k),
    )


def _c2_maps(loc: Locator) -> dict[int, str]:
    """q_idx -> dataset name of each stored two-time map."""
    if not _exists(loc, "/xpcs", "twotime"):
        return {}
    grp = loc.group(C2_GROUP)
    labels = _vector(loc, TWOTIME, "processed_bins")
    if labels.size and (labels.min() < 1 or not np.all(labels == np.round(labels))):
        raise _invalid(loc, TWOTIME, "processed_bins", "must hold integer ROI labels >= 1")
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


def _mirror_upper(c: npt.NDArray[np.float32]) -> None:
    """Overwrite the strict lower triangle of square ``c`` with the transposed upper one."""
    n, b = c.shape[0], _C2_BLOCK
    for i0 in range(0, n, b):
        i1 = min(i0 + b, n)
        for j0 in range(0, i0, b):
            c[i0:i1, j0 : j0 + b] = c[j0 : j0 + b, i0:i1].T
        blk = c[i0:i1, i0:i1]
        np.copyto(blk, blk.T.copy(), where=np.tri(i1 - i0, k=-1, dtype=bool))


def _decimate(loc: Locator, name: str, n: int, f: int) -> npt.NDArray[np.float32]:
    """Block means (factor ``f``) of the symmetric map, read in row strips of the upper part.

    Edge blocks (when ``f`` does not divide ``n``) average the elements that exist.
    """
    m = -(-n // f)
    check_allocation(
        2 * m * m * 8, display=loc.display, path=f"{C2_GROUP}/{name}", what="block means"
    )
    sums = np.zeros((m, m), dtype=np.float64)
    rows = max(f, (_C2_READ_BYTES // (4 * n)) // f * f)
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        strip = np.asarray(loc.read(C2_GROUP, name, np.s_[r0:r1, r0:n]))
        for i in range(1, r1 - r0):  # local j < i is the (unreliable) lower triangle
            strip[i, :i] = 0
        starts = np.arange(0, r1 - r0, f)
        part = np.empty((starts.size, n - r0), dtype=np.float64)
        for p, s in enumerate(starts.tolist()):  # (reduceat with dtype= casts the whole strip)
            strip[s : s + f].sum(axis=0, dtype=np.float64, out=part[p])
        part = np.add.reduceat(part, np.arange(0, n - r0, f), axis=1)
        trace = np.add.reduceat(np.diagonal(strip), starts, dtype=np.float64)
        d = np.arange(starts.size)
        part[d, d] = 2 * part[d, d] - trace  # a diagonal block holds upper + its mirror
        a0 = r0 // f
        sums[a0 : a0 + starts.size, a0:] = part
        del strip, part  # free this strip before the next one is read
    sizes = np.full(m, f, dtype=np.float64)
    sizes[-1] = n - (m - 1) * f
    sums /= np.outer(sizes, sizes)
    return (np.triu(sums) + np.triu(sums, 1).T).astype(np.float32)


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
    k = _check_index(q_idx, "q_idx")
    limit = None if max_size is None else _check_index(max_size, "max_size")
    if limit is not None and limit < 1:
        raise ValueError(f"max_size must be >= 1, got {limit}")
    maps = _c2_maps(loc)
    if k not in maps:
        raise KeyError(
            f"{loc.display}: no two-time map for q_idx {k} (ROI label {k + 1}); "
            f"available q_idx: {sorted(maps)}"
        )
    name = maps[k]
    ds = loc.dataset(C2_GROUP, name)
    if ds.ndim != 2 or ds.shape[0] != ds.shape[1] or ds.dtype.kind not in "iuf":
        why = f"expected a square 2-D numeric map, got {ds.dtype} {ds.shape}"
        raise _invalid(loc, C2_GROUP, name, why)
    n = int(ds.shape[0])
    path = f"{C2_GROUP}/{name}"
    if limit is not None and n > limit:
        # Streamed in strips, so memory stays small; the time it takes does not: a map
        # declared far beyond anything measured is refused before the first strip is read.
        stored = n * n * ds.dtype.itemsize
        check_allocation(
            stored // _C2_STREAM_FACTOR, display=loc.display, path=path, what=_C2_STREAM_WHAT
        )
        return _decimate(loc, name, n, -(-n // limit))
    check_allocation(n * n * 4, display=loc.display, path=path, what="as float32")
    c = np.asarray(loc.read(C2_GROUP, name), dtype=np.float32)
    _mirror_upper(c)
    return c
