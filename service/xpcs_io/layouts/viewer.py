"""Dispatch of the viewer reads (SAXS 2-D and 1-D, intensity vs time, two-time G2,
metadata) to the layout that holds them, detected as for the q-map and G2 reads.

The native layout and pySimpleMask q-partitions hold none of these results: their reads
raise ``KeyError`` naming the layout (metadata excepted, which every layout has).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from xpcs_io.h5access import Locator
from xpcs_io.layouts import g2_views, metadata, registry, saxs
from xpcs_io.schemas import G2Data, IntensityTimeData, Saxs1DData, Saxs2DData

__all__ = [
    "read_intensity_time",
    "read_metadata",
    "read_saxs_1d",
    "read_saxs_2d",
    "read_twotime_g2",
    "two_time_hint",
]

T = TypeVar("T")
_EIGHT_ID = ("aps8idi", "aps8idi-legacy")


def _layout(loc: Locator, layout: str | None) -> str:
    name, _ = registry.resolve(loc, "c2", layout, "")
    return name


def _dispatch(
    loc: Locator,
    layout: str | None,
    what: str,
    readers: dict[str, Callable[[], T]],
) -> T:
    name = _layout(loc, layout)
    if name not in readers:
        raise KeyError(f"{loc.display}: a {name} file holds no {what} (layout {name})")
    try:
        return readers[name]()
    except KeyError as exc:
        detail = exc.args[0] if exc.args else str(exc)
        raise KeyError(f"{detail} (layout {name})") from None


def read_saxs_2d(loc: Locator, layout: str | None) -> Saxs2DData:
    """SAXS 2-D of an 8-ID-I file (unchecked). Raises as ``registry.detect`` and the
    readers in ``saxs``."""
    return _dispatch(
        loc,
        layout,
        "SAXS 2-D image",
        {
            "aps8idi": lambda: saxs.nexus_saxs_2d(loc),
            "aps8idi-legacy": lambda: saxs.legacy_saxs_2d(loc),
        },
    )


def read_saxs_1d(loc: Locator, layout: str | None) -> Saxs1DData:
    """SAXS 1-D of an 8-ID-I file (unchecked)."""
    return _dispatch(
        loc,
        layout,
        "SAXS 1-D curve",
        {
            "aps8idi": lambda: saxs.nexus_saxs_1d(loc),
            "aps8idi-legacy": lambda: saxs.legacy_saxs_1d(loc),
        },
    )


def read_intensity_time(loc: Locator, layout: str | None) -> IntensityTimeData:
    """Intensity vs time of an 8-ID-I file (unchecked)."""
    return _dispatch(
        loc,
        layout,
        "intensity vs time",
        {
            "aps8idi": lambda: saxs.nexus_intensity_time(loc),
            "aps8idi-legacy": lambda: saxs.legacy_intensity_time(loc),
        },
    )


def read_twotime_g2(loc: Locator, q_idx: int | None, layout: str | None) -> G2Data:
    """G2 of the two-time result of an 8-ID-I file (unchecked)."""
    return _dispatch(
        loc,
        layout,
        "two-time G2",
        {
            "aps8idi": lambda: g2_views.nexus_twotime_g2(loc, q_idx),
            "aps8idi-legacy": lambda: g2_views.legacy_twotime_g2(loc, q_idx),
        },
    )


def read_metadata(loc: Locator, layout: str | None) -> dict[str, Any]:
    """The flat metadata dict (see ``metadata``) in the detected or given layout."""
    try:
        name = _layout(loc, layout)
    except KeyError:
        name = registry.detect(loc, "geometry", registry.DEFAULT_GROUPS["geometry"])[0]
    out = metadata.read_metadata(loc, name)
    # Which dynamic bins have a two-time map (what a viewer offers for read_c2).
    out["c2_q_idx"] = registry.c2_bins(loc)
    return out


def two_time_hint(loc: Locator, layout: str | None) -> str | None:
    """For a G2 read of an 8-ID-I file holding two-time results only: the sentence saying
    so, else None."""
    try:
        name = _layout(loc, layout)
    except KeyError:
        return None
    if name in _EIGHT_ID and g2_views.two_time_only(loc, name):
        return (
            f"{loc.display} holds two-time results only (no multi-tau G2): read them with "
            "read_twotime_g2 (and the maps with read_c2)"
        )
    return None
