"""The facade's own layout (the seed's default groups): ``/xpcs/qmap``, ``/xpcs/g2``,
``/xpcs/metadata``.

Readers build schema objects *unchecked*; the facade decides whether to validate. Values whose
type cannot even be coerced (a string where a map belongs) raise ``HDF5ValidationError``.
"""

from __future__ import annotations

import operator
from typing import Any

import h5py
import numpy as np

from xpcs_io.errors import HDF5ValidationError
from xpcs_io.h5access import Locator, decode_str
from xpcs_io.schemas import G2Data, GeometryMetadata, QMapSchema

__all__ = [
    "GEOMETRY_FIELDS",
    "read_g2",
    "read_geometry",
    "read_qmap",
    "write_geometry",
]

GEOMETRY_FIELDS = ("bcx", "bcy", "det_dist", "lambda_", "pix_dim")
OPTIONAL_GEOMETRY = ("det_rotation", "incident_angle")
QMAP_UNITS = {"sqmap_unit": "nm^-1", "dqmap_unit": "nm^-1", "phis_unit": "rad"}


def _invalid(loc: Locator, group: str, field: str, why: str) -> HDF5ValidationError:
    return HDF5ValidationError(
        f"{loc.display}:{group}: {field}: {why}", file=loc.display, group=group, field=field
    )


def _read_str(loc: Locator, group: str, name: str) -> str:
    value = loc.read(group, name)
    try:
        return decode_str(value)
    except TypeError as exc:
        raise _invalid(loc, group, name, str(exc)) from None


def _read_scalar(loc: Locator, group: str, name: str) -> Any:
    value = loc.read(group, name)
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise _invalid(loc, group, name, f"expected a scalar, got shape {value.shape}")
        value = value.reshape(()).item()
    elif isinstance(value, np.generic):
        value = value.item()
    return value


def read_qmap(loc: Locator, group: str) -> QMapSchema:
    """Read the q-map group (maps, unit strings, optional mask and label map), unchecked.

    Raises:
        KeyError: the group or one of ``sqmap``, ``dqmap``, ``phis`` is missing.
    """
    grp = loc.group(group)
    fields: dict[str, Any] = {name: loc.read(group, name) for name in ("sqmap", "dqmap", "phis")}
    for name, default in QMAP_UNITS.items():
        fields[name] = _read_str(loc, group, name) if loc.has(grp, name) else default
    for name in ("mask", "partition_map"):
        if loc.has(grp, name):
            fields[name] = loc.read(group, name)
    return QMapSchema.unchecked(**fields)


def _q_index(q_idx: Any, n_q: int) -> int:
    if isinstance(q_idx, bool | np.bool_):
        raise TypeError(f"q_idx must be an integer, got {type(q_idx).__name__}")
    try:
        k = operator.index(q_idx)
    except TypeError:
        raise TypeError(f"q_idx must be an integer, got {type(q_idx).__name__}") from None
    # Negative indices are refused rather than wrapped: q_idx=-1 is almost always a bug.
    if not 0 <= k < n_q:
        raise IndexError(f"q_idx {k} out of range: the file has {n_q} q bins (0..{n_q - 1})")
    return k


def read_g2(loc: Locator, group: str, q_idx: int | None) -> G2Data:
    """Read G2 (n_delay, n_q), unchecked; with ``q_idx`` only that column is read from disk.

    Raises:
        KeyError: the group or a dataset is missing.
        IndexError: ``q_idx`` outside 0..n_q-1.
        TypeError: ``q_idx`` is not an integer.
    """
    grp = loc.group(group)
    g2_ds = loc.dataset(group, "g2")
    q_name = "q_values" if loc.has(grp, "q_values") else "q_list"
    if not loc.has(grp, q_name):
        raise KeyError(f"{group.rstrip('/')}/q_values not found in {loc.display}")
    if g2_ds.ndim != 2:
        raise _invalid(loc, group, "g2", f"expected (n_delay, n_q), got shape {g2_ds.shape}")
    if q_idx is None:
        col: Any = ()
        q_sel: Any = ()
    else:
        k = _q_index(q_idx, g2_ds.shape[1])
        col = np.s_[:, k : k + 1]
        q_sel = np.s_[k : k + 1]
    return G2Data.unchecked(
        g2=loc.read(group, "g2", col),
        g2_err=loc.read(group, "g2_err", col),
        delay_times=loc.read(group, "delay_times"),
        q_values=loc.read(group, q_name, q_sel),
    )


def read_geometry(loc: Locator, group: str) -> GeometryMetadata:
    """Read geometry from scalar datasets; ``shape`` from the group attribute or
    ``height``/``width`` datasets. Unchecked.

    Raises:
        KeyError: the group, a required field or the shape is missing.
    """
    grp = loc.group(group)
    fields: dict[str, Any] = {name: _read_scalar(loc, group, name) for name in GEOMETRY_FIELDS}
    for name in OPTIONAL_GEOMETRY:
        if loc.has(grp, name):
            fields[name] = _read_scalar(loc, group, name)
    if "shape" in grp.attrs:
        shape = np.asarray(grp.attrs["shape"])
        if shape.shape != (2,) or shape.dtype.kind not in "iu":
            raise _invalid(loc, group, "shape", f"attribute must be two integers, got {shape!r}")
        fields["shape"] = tuple(int(v) for v in shape)
    elif loc.has(grp, "height") and loc.has(grp, "width"):
        fields["shape"] = (_read_scalar(loc, group, "height"), _read_scalar(loc, group, "width"))
    else:
        raise KeyError(
            f"{group.rstrip('/')}: neither a 'shape' attribute nor 'height'/'width' datasets "
            f"in {loc.display}"
        )
    return GeometryMetadata.unchecked(**fields)


def write_geometry(grp: h5py.Group, geometry: GeometryMetadata) -> None:
    """Write ``geometry`` into ``grp`` twice: as scalar datasets (what ``read_geometry`` and
    the reference facade's ``read_geometry_metadata`` read) and as attributes of the group
    (where the reference facade's ``write_mask`` puts them, so its readers find them);
    ``shape`` is an int64 (H, W) attribute."""
    for name in (*GEOMETRY_FIELDS, *OPTIONAL_GEOMETRY):
        value = getattr(geometry, name)
        if value is not None:
            grp.create_dataset(name, data=np.float64(value))
            grp.attrs[name] = np.float64(value)
    grp.attrs["shape"] = np.asarray(geometry.shape, dtype=np.int64)
