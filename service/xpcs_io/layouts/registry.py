"""The layouts the facade reads, how each file's layout is detected, and the dispatch of each
read to its layout's reader.

Layouts (``LAYOUTS``):

- ``native``: the facade's own groups ``/xpcs/qmap``, ``/xpcs/g2``, ``/xpcs/metadata``.
- ``aps8idi``: the APS 8-ID-I NeXus result (boost_corr, 2024-): ``/entry`` plus
  ``/xpcs/qmap``, ``/xpcs/multitau``, ``/xpcs/twotime``.
- ``aps8idi-legacy``: the legacy 8-ID-I result (2013-2024): ``/xpcs``, ``/exchange``,
  ``/measurement``.
- ``pysimplemask``: a stand-alone pySimpleMask q-partition file (group ``/qmap``, or any
  group holding ``dynamic_roi_map``): q-map and geometry only.

Detection, in this order (the beamline viewer checks the legacy marker first): an explicit
``group`` other than the default is read as that group says (pysimplemask if it holds a ROI
map, else native); ``/xpcs/Version`` means aps8idi-legacy; the default native group means
native; the NeXus markers mean aps8idi; ``/qmap`` with a ROI map means pysimplemask; the
legacy maps without ``/xpcs/Version`` (the 0.4 format) mean aps8idi-legacy; any other
native group means native (its reader names what is missing). Otherwise the file is of no
known layout: one ``KeyError`` names every layout tried and what each looked for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from xpcs_io.h5access import Locator
from xpcs_io.layouts import aps8idi, g2_views, legacy8idi, native, twotime
from xpcs_io.layouts.common import exists
from xpcs_io.schemas import G2Data, GeometryMetadata, QMapSchema

__all__ = [
    "DEFAULT_GROUPS",
    "LAYOUTS",
    "c2_bins",
    "check_layout",
    "detect",
    "looks_for",
    "read_c2",
    "read_g2",
    "read_geometry",
    "read_qmap",
    "resolve",
]

LAYOUTS = ("native", "aps8idi", "aps8idi-legacy", "pysimplemask")
#: The default group of each read (the seed's), which detection starts from.
DEFAULT_GROUPS = {"qmap": "/xpcs/qmap", "g2": "/xpcs/g2", "geometry": "/xpcs/metadata"}
_NATIVE_MARKERS = {"qmap": "sqmap", "g2": "g2", "geometry": None}
PYSIMPLEMASK_GROUP = "/qmap"

T = TypeVar("T")


def looks_for() -> dict[str, str]:
    """What detection looks for in each layout, in the order it looks (for messages)."""
    return {
        "aps8idi-legacy": "/xpcs/Version, or /xpcs/dqmap with /exchange",
        "native": "/xpcs/qmap/sqmap, /xpcs/g2 or /xpcs/metadata",
        "aps8idi": "/xpcs/qmap/dynamic_roi_map or static_roi_map, or /xpcs/multitau or "
        "/xpcs/twotime with /entry/instrument/bluesky/metadata",
        "pysimplemask": "/qmap/dynamic_roi_map or /qmap/static_roi_map",
    }


def _no_layout(loc: Locator) -> KeyError:
    tried = "; ".join(f"{name} (looked for {what})" for name, what in looks_for().items())
    return KeyError(f"{loc.display}: no known layout; tried {tried}")


def _native_here(loc: Locator, kind: str, group: str) -> bool:
    marker = _NATIVE_MARKERS.get(kind)
    if marker is not None:
        return exists(loc, group, marker)
    try:
        loc.group(group)
    except KeyError:
        return False
    return True


def detect(loc: Locator, kind: str, group: str) -> tuple[str, str]:
    """(layout, group to read) for a read of ``kind`` ("qmap", "g2", "geometry", "c2") of
    ``group``.

    Raises:
        KeyError: the file is of no known layout (the message lists what was looked for).
        PermissionError: a link on the way leads outside the data root.
    """
    default = DEFAULT_GROUPS.get(kind, "")
    if kind != "c2" and group.rstrip("/") != default:
        # An explicit group is read as what it holds.
        holds_roi_map = kind in ("qmap", "geometry") and aps8idi.has_qmap(loc, group)
        if holds_roi_map and not exists(loc, group, "sqmap"):
            return "pysimplemask", group
        return "native", group
    if legacy8idi.is_legacy(loc):
        return "aps8idi-legacy", group
    if kind != "c2" and _native_here(loc, kind, default):
        return "native", group
    if aps8idi.is_aps8idi(loc) or aps8idi.has_qmap(loc):
        return "aps8idi", group
    if kind != "c2" and aps8idi.has_qmap(loc, PYSIMPLEMASK_GROUP):
        return "pysimplemask", PYSIMPLEMASK_GROUP
    if legacy8idi.looks_legacy(loc):
        return "aps8idi-legacy", group
    if any(_native_here(loc, k, g) for k, g in DEFAULT_GROUPS.items()):
        return "native", group
    raise _no_layout(loc)


def check_layout(layout: str | None) -> str | None:
    """``layout`` if it is ``None`` or one of ``LAYOUTS``.

    Raises:
        ValueError: any other value.
    """
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)} or None, got {layout!r}")
    return layout


def resolve(loc: Locator, kind: str, layout: str | None, group: str) -> tuple[str, str]:
    """``detect``, or the forced ``layout`` (a pysimplemask read of the default group reads
    ``/qmap``).

    Raises:
        ValueError: ``layout`` is not one of ``LAYOUTS``.
        KeyError: detection found no known layout.
    """
    layout = check_layout(layout)
    if layout is None:
        return detect(loc, kind, group)
    if layout == "pysimplemask" and group.rstrip("/") == DEFAULT_GROUPS.get(kind):
        group = PYSIMPLEMASK_GROUP
    return layout, group


def _named(name: str, read: Callable[[], T]) -> T:
    """Run ``read``; a missing dataset's ``KeyError`` also names the layout."""
    try:
        return read()
    except KeyError as exc:
        detail = exc.args[0] if exc.args else str(exc)
        raise KeyError(f"{detail} (layout {name})") from None


def _none(loc: Locator, name: str, what: str) -> KeyError:
    return KeyError(f"{loc.display}: a {name} file holds no {what} (layout {name})")


def read_qmap(loc: Locator, layout: str | None, group: str) -> QMapSchema:
    """The q-map in ``loc``'s layout (unchecked). Raises as ``detect`` and the readers."""
    name, grp = resolve(loc, "qmap", layout, group)
    readers: dict[str, Callable[[], QMapSchema]] = {
        "native": lambda: native.read_qmap(loc, grp),
        "aps8idi": lambda: aps8idi.read_qmap(loc),
        "aps8idi-legacy": lambda: legacy8idi.read_qmap(loc),
        "pysimplemask": lambda: aps8idi.read_qmap(loc, grp),
    }
    return _named(name, readers[name])


def read_g2(loc: Locator, layout: str | None, group: str, q_idx: int | None) -> G2Data:
    """G2 in ``loc``'s layout (unchecked). Raises as ``detect`` and the readers."""
    name, grp = resolve(loc, "g2", layout, group)
    if name == "pysimplemask":
        raise _none(loc, name, "G2 (it is a q-partition)")
    if name in _TWO_TIME_SOURCES and g2_views.two_time_only(loc, name):
        raise KeyError(
            f"{loc.display} holds two-time (Twotime) results only: no multi-tau G2 "
            f"({_TWO_TIME_SOURCES[name]} not found); read them with read_twotime_g2 (and "
            f"the maps with read_c2) (layout {name})"
        )
    readers: dict[str, Callable[[], G2Data]] = {
        "native": lambda: native.read_g2(loc, grp, q_idx),
        "aps8idi": lambda: g2_views.with_phi(aps8idi.read_g2(loc, q_idx), _phi(loc, name, q_idx)),
        "aps8idi-legacy": lambda: g2_views.with_phi(
            legacy8idi.read_g2(loc, q_idx), _phi(loc, name, q_idx)
        ),
    }
    return _named(name, readers[name])


_TWO_TIME_SOURCES = {
    "aps8idi": "/xpcs/multitau/normalized_g2",
    "aps8idi-legacy": "norm-0-g2 in the result group",
}


def _phi(loc: Locator, name: str, q_idx: int | None) -> npt.NDArray[np.float64] | None:
    """phi (deg) of the G2 columns of an 8-ID-I file with several phi sectors."""
    if name == "aps8idi":
        n_q = int(loc.dataset("/xpcs/multitau", "normalized_g2").shape[1])
        return g2_views.nexus_g2_phi(loc, n_q, q_idx)
    q_bins, _ = legacy8idi.dynamic_bins(loc)
    return g2_views.legacy_g2_phi(loc, int(q_bins.size), q_idx)


def read_geometry(loc: Locator, layout: str | None, group: str) -> GeometryMetadata:
    """Geometry in ``loc``'s layout (unchecked). Raises as ``detect`` and the readers."""
    name, grp = resolve(loc, "geometry", layout, group)
    readers: dict[str, Callable[[], GeometryMetadata]] = {
        "native": lambda: native.read_geometry(loc, grp),
        "aps8idi": lambda: aps8idi.read_geometry(loc),
        "aps8idi-legacy": lambda: legacy8idi.read_geometry(loc),
        "pysimplemask": lambda: aps8idi.read_geometry(loc, grp),
    }
    return _named(name, readers[name])


def read_c2(loc: Locator, q_idx: int, max_size: int | None) -> npt.NDArray[np.float32]:
    """A two-time map (see ``aps8idi.read_c2``) from an 8-ID-I file of either layout.

    Raises:
        KeyError: no map for ``q_idx``, or the file's layout holds no two-time maps.
        TypeError, ValueError: bad ``q_idx`` or ``max_size``.
    """
    twotime.check_max_size(max_size)
    name, _ = detect(loc, "c2", "")
    if name == "aps8idi-legacy":
        return _named(name, lambda: legacy8idi.read_c2(loc, q_idx, max_size))
    if name == "aps8idi":
        return _named(name, lambda: aps8idi.read_c2(loc, q_idx, max_size))
    raise _none(loc, name, "two-time maps")


def c2_bins(loc: Locator) -> list[int]:
    """The q_idx values with a two-time map, whatever the 8-ID-I layout (``[]`` for a file
    of another layout or without two-time results).

    Raises:
        HDF5ValidationError: the two-time bookkeeping is unreadable.
    """
    try:
        name, _ = detect(loc, "c2", "")
    except KeyError:
        return []
    if name == "aps8idi-legacy":
        return legacy8idi.list_c2_bins(loc)
    if name == "aps8idi":
        try:
            return aps8idi.list_c2_bins(loc)
        except KeyError:
            return []
    return []
