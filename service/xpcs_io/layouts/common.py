"""What the layout readers share: units, checked reads of scalars, vectors and 2-D maps, and
the per-pixel q and phi of a transmission geometry.

Every check that fails raises ``HDF5ValidationError`` naming the file, the dataset, what was
expected and what was found; a missing dataset raises ``KeyError`` naming its HDF5 path.
"""

from __future__ import annotations

import math
import operator
import unicodedata
from typing import Any

import numpy as np
import numpy.typing as npt

from xpcs_io.errors import HDF5ValidationError
from xpcs_io.h5access import Locator, decode_str

__all__ = [
    "HC_KEV_ANGSTROM",
    "PIXEL_UNITS",
    "TO_ANGSTROM",
    "TO_INV_ANGSTROM",
    "TO_KEV",
    "TO_MM",
    "TO_SECONDS",
    "check_index",
    "exists",
    "image",
    "invalid",
    "label_means",
    "map_shape",
    "norm_unit",
    "pixel_q_phi",
    "quantity",
    "scalar",
    "unit_of",
    "vector",
]

#: h c in keV Angstrom, as the beamline viewer uses it (lambda [A] = 12.398 / E [keV]).
HC_KEV_ANGSTROM = 12.398


def norm_unit(unit: str) -> str:
    """A unit string folded for lookup (NFKC, stripped, lower case)."""
    return unicodedata.normalize("NFKC", unit).strip().lower()


def _table(groups: dict[float, str]) -> dict[str, float]:
    return {norm_unit(name): factor for factor, names in groups.items() for name in names.split()}


TO_MM = _table(
    {
        1e3: "m meter meters metre metres",
        10.0: "cm",
        1.0: "mm millimeter millimeters millimetre millimetres",
        1e-3: "um µm μm micron microns micrometer micrometre",
        1e-6: "nm nanometer nanometre",
    }
)
TO_KEV = _table({1.0: "keV", 1e-3: "eV"})
TO_ANGSTROM = _table({1.0: "A Å angstrom angstroms ångström", 10.0: "nm"})
TO_SECONDS = _table({1.0: "s sec second seconds", 1e-3: "ms", 1e-6: "us µs", 1e-9: "ns"})
TO_INV_ANGSTROM = _table(
    {1.0: "A^-1 1/A A-1 A⁻¹ Å^-1 1/Å Å⁻¹ 1/angstrom angstrom^-1", 0.1: "nm^-1 1/nm nm-1 nm⁻¹"}
)
PIXEL_UNITS = frozenset({"pixel", "pixels", "px", "pix"})


def invalid(loc: Locator, group: str, name: str, why: str) -> HDF5ValidationError:
    """The error for dataset ``group/name`` of ``loc``'s file, saying ``why``."""
    return HDF5ValidationError(
        f"{loc.display}: {group.rstrip('/')}/{name}: {why}",
        file=loc.display,
        group=group,
        field=name,
    )


def exists(loc: Locator, group: str, name: str) -> bool:
    """Whether ``group`` exists and has a member ``name`` (links are not followed)."""
    try:
        return loc.has(loc.group(group), name)
    except KeyError:
        return False


def unit_of(loc: Locator, group: str, name: str) -> str | None:
    """The ``unit`` (or ``units``) attribute of ``group/name``; ``None`` without one."""
    attrs = loc.dataset(group, name).attrs
    for key in ("unit", "units"):
        if key in attrs:
            try:
                return decode_str(attrs[key]).strip()
            except TypeError as exc:
                raise invalid(loc, group, name, f"unreadable @{key} attribute ({exc})") from None
    return None


def _numeric(loc: Locator, group: str, name: str, what: str) -> npt.NDArray[Any]:
    value = np.asarray(loc.read(group, name))
    if value.dtype.kind not in "iuf":
        raise invalid(loc, group, name, f"expected {what}, found dtype {value.dtype}")
    return value


def scalar(loc: Locator, group: str, name: str) -> float:
    """A number stored as (), (1,) or (1, 1) (Matlab and xpcs-eigen write (1, 1)).

    Raises:
        KeyError: the dataset is missing.
        HDF5ValidationError: it holds more than one value, or not numbers.
    """
    value = _numeric(loc, group, name, "a number")
    if value.size != 1:
        why = f"expected one number (shape (), (1,) or (1, 1)), found shape {value.shape}"
        raise invalid(loc, group, name, why)
    return float(value.reshape(()))


def vector(loc: Locator, group: str, name: str) -> npt.NDArray[Any]:
    """A 1-D array from a vector stored as (n,), (1, n), (n, 1), (n, 1, 1)... or () for one.

    Raises:
        KeyError: the dataset is missing.
        HDF5ValidationError: more than one axis is longer than 1, or not numbers.
    """
    value = _numeric(loc, group, name, "numbers")
    if sum(1 for n in value.shape if n != 1) > 1:
        why = f"expected a vector ((n,), (1, n) or (n, 1)), found shape {value.shape}"
        raise invalid(loc, group, name, why)
    return value.reshape(-1)


def quantity(loc: Locator, group: str, name: str, table: dict[str, float], default: float) -> float:
    """The scalar at ``group/name`` times its unit's factor (``default`` without a unit).

    Raises:
        KeyError: the dataset is missing.
        HDF5ValidationError: not one number, or a unit outside ``table``.
    """
    value = scalar(loc, group, name)
    unit = unit_of(loc, group, name)
    if unit is None:
        return value * default
    factor = table.get(norm_unit(unit))
    if factor is None:
        raise invalid(loc, group, name, f"unknown unit {unit!r} (known: {sorted(table)})")
    return value * factor


def map_shape(loc: Locator, group: str, name: str) -> tuple[int, int]:
    """The (H, W) of a 2-D map stored as (H, W) or with leading length-1 axes.

    Raises:
        KeyError: the dataset is missing.
        HDF5ValidationError: any other shape.
    """
    shape = loc.dataset(group, name).shape
    if len(shape) < 2 or any(n != 1 for n in shape[:-2]):
        why = f"expected a 2-D (H, W) map (or (1, H, W)), found shape {shape}"
        raise invalid(loc, group, name, why)
    return int(shape[-2]), int(shape[-1])


def image(
    loc: Locator, group: str, name: str, shape: tuple[int, int], *, transposed_ok: bool = False
) -> npt.NDArray[Any]:
    """The 2-D map at ``group/name``, checked to be ``shape`` (H, W).

    Leading length-1 axes are dropped ((1, H, W) as boost_corr writes it). With
    ``transposed_ok`` a (W, H) map is transposed, as the beamline viewer does for legacy
    files whose maps were written in the other order.

    Raises:
        KeyError: the dataset is missing.
        HDF5ValidationError: any other shape (the message gives expected and found shape).
    """
    stored = loc.dataset(group, name).shape
    lead = stored[:-2] if len(stored) >= 2 else ()
    found = tuple(int(n) for n in stored[-2:]) if len(stored) >= 2 else ()
    if found == shape and all(n == 1 for n in lead):
        arr = np.asarray(loc.read(group, name))
        return arr.reshape(shape)
    if transposed_ok and found == shape[::-1] and all(n == 1 for n in lead):
        arr = np.asarray(loc.read(group, name))
        return np.ascontiguousarray(arr.reshape(found).T)
    why = f"expected shape {shape} (H, W), found shape {tuple(stored)}"
    raise invalid(loc, group, name, why)


def check_index(value: Any, what: str) -> int:
    """``value`` as an int; bools and non-integers raise ``TypeError``."""
    if isinstance(value, bool | np.bool_):
        raise TypeError(f"{what} must be an integer, got {type(value).__name__}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {type(value).__name__}") from None


def pixel_q_phi(
    shape: tuple[int, int],
    bcx: float,
    bcy: float,
    det_dist: float,
    lambda_: float,
    pix_x: float,
    pix_y: float | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Per-pixel q (A^-1) and phi (deg) as float32, computed in float64 row blocks.

    ``r = hypot((col - bcx) * pix_x, (row - bcy) * pix_y)``, ``q = 4 pi / lambda *
    sin(atan(r / det_dist) / 2)`` and ``phi = -atan2(row - bcy, col - bcx)`` in (-180, 180]
    (0 deg along +column, +90 deg towards row 0). Lengths in one unit (mm), lambda in A.
    """
    h, w = shape
    pix_y = pix_x if pix_y is None else pix_y
    q = np.empty((h, w), dtype=np.float32)
    phi = np.empty((h, w), dtype=np.float32)
    dx = np.arange(w, dtype=np.float64) - bcx
    dx2 = (dx * (pix_x / det_dist)) ** 2
    k4 = 4.0 * math.pi / lambda_
    rows = max(1, (1 << 21) // (8 * w))  # ~2 MB float64 blocks, written straight to float32
    for r0 in range(0, h, rows):
        dy = np.arange(r0, min(r0 + rows, h), dtype=np.float64) - bcy
        blk = np.add.outer((dy * (pix_y / det_dist)) ** 2, dx2)
        np.arctan(np.sqrt(blk, out=blk), out=blk)
        np.sin(np.multiply(blk, 0.5, out=blk), out=blk)
        np.multiply(blk, k4, out=q[r0 : r0 + dy.size])
        np.negative(np.arctan2(dy[:, None], dx[None, :], out=blk), out=blk)
        np.degrees(blk, out=phi[r0 : r0 + dy.size])
    return q, phi


def label_means(
    values: npt.NDArray[Any], labels: npt.NDArray[Any], n: int
) -> npt.NDArray[np.float64]:
    """The mean of ``values`` over the pixels of each label 1..n (NaN for an empty label)."""
    flat = labels.reshape(-1).astype(np.int64)
    keep = (flat >= 1) & (flat <= n)
    sums = np.bincount(flat[keep], weights=values.reshape(-1)[keep], minlength=n + 1)[1:]
    counts = np.bincount(flat[keep], minlength=n + 1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
