"""A flat, JSON-safe dict of what a result file says about the instrument, the sample and
the analysis, for a viewer's metadata panel.

Keys are the HDF5 paths of small datasets (without the leading slash) under the groups each
layout keeps its configuration in; values are numbers, strings, booleans or short lists of
them (NaN/Inf become None). A dataset's unit attribute goes alongside as ``"<key>@unit"``.
A few summary keys come first, named with their unit: ``layout``, ``analysis_type``,
``energy_keV``, ``frame_time_s``, ``detector_distance_mm``, ``sample_name``,
``start_time`` (those the file holds); ``c2_q_idx`` lists the dynamic bins with a two-time
map. Datasets of more than ``MAX_ELEMENTS`` values (maps,
results) are left out, as are more than ``MAX_KEYS`` keys.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import h5py
import numpy as np

from xpcs_io.h5access import Locator, decode_str
from xpcs_io.layouts import legacy8idi
from xpcs_io.layouts.common import exists

__all__ = ["MAX_ELEMENTS", "MAX_KEYS", "read_metadata"]

MAX_ELEMENTS = 16
MAX_KEYS = 2000

_GROUPS = {
    "aps8idi": ("/entry", "/xpcs/multitau/config", "/xpcs/twotime/config", "/xpcs/qmap"),
    "aps8idi-legacy": ("/measurement", "/xpcs"),
    "native": ("/xpcs/metadata",),
    "pysimplemask": ("/qmap",),
}
# (summary key, layout, HDF5 path) in the order they are looked for.
_SUMMARY = (
    ("energy_keV", "aps8idi", "/entry/instrument/incident_beam/incident_energy"),
    ("energy_keV", "aps8idi", "/xpcs/qmap/energy"),
    ("frame_time_s", "aps8idi", "/entry/instrument/detector_1/frame_time"),
    ("detector_distance_mm", "aps8idi", "/xpcs/qmap/detector_distance"),
    ("sample_name", "aps8idi", "/entry/sample/name"),
    ("start_time", "aps8idi", "/entry/start_time"),
    ("energy_keV", "aps8idi-legacy", "/measurement/instrument/source_begin/energy"),
    ("frame_time_s", "aps8idi-legacy", "/measurement/instrument/detector/exposure_period"),
    ("detector_distance_mm", "aps8idi-legacy", "/measurement/instrument/detector/distance"),
    ("sample_name", "aps8idi-legacy", "/measurement/sample/name"),
    ("start_time", "aps8idi-legacy", "/measurement/instrument/source_begin/datetime"),
)


def _plain(value: Any) -> Any:
    """A JSON-safe form of a small dataset's value, or ``...`` when it has none."""
    if isinstance(value, bytes | np.bytes_ | str):
        return decode_str(value).rstrip(" \x00")
    arr = np.asarray(value)
    if arr.dtype.kind in "SUO":
        items = [_plain(v) for v in arr.reshape(-1).tolist()]
        return items[0] if arr.size == 1 else items
    if arr.dtype.kind not in "biuf":
        return ...
    items = [
        None if isinstance(v, float) and not math.isfinite(v) else v
        for v in arr.reshape(-1).tolist()
    ]
    return items[0] if arr.size == 1 else items


def _walk(loc: Locator, group: str, out: dict[str, Any]) -> None:
    try:
        root = loc.group(group)
    except KeyError:
        return
    found: list[tuple[str, h5py.Dataset]] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            found.append((f"{group.rstrip('/')}/{name}", obj))

    # visititems follows hard links only; soft and external links are not walked here.
    root.visititems(visit)
    for path, ds in sorted(found, key=lambda item: item[0]):
        if len(out) >= MAX_KEYS:
            return
        if ds.size > MAX_ELEMENTS or ds.dtype.kind not in "biufSUO":
            continue
        try:
            value = _plain(ds[()])
        except (OSError, TypeError, ValueError, RuntimeError):
            continue
        if value is ...:
            continue
        key = path.lstrip("/")
        out[key] = value
        for attr in ("unit", "units"):
            if attr in ds.attrs:
                with contextlib.suppress(TypeError):
                    out[f"{key}@unit"] = decode_str(ds.attrs[attr]).strip()
                break


def read_metadata(loc: Locator, layout: str) -> dict[str, Any]:
    """The flat metadata dict of ``loc``'s file read as ``layout`` (see the module
    docstring).

    Raises:
        PermissionError: a link on the way leads outside the data root.
    """
    out: dict[str, Any] = {"layout": layout}
    if layout == "aps8idi":
        kinds = [k for k in ("multitau", "twotime") if exists(loc, "/xpcs", k)]
        out["analysis_type"] = "+".join(k.capitalize() for k in kinds) or None
    elif layout == "aps8idi-legacy":
        out["analysis_type"] = legacy8idi.analysis_type(loc)
    details: dict[str, Any] = {}
    for group in _GROUPS.get(layout, ()):
        _walk(loc, group, details)
    for key, where, path in _SUMMARY:
        if where == layout and key not in out and path.lstrip("/") in details:
            out[key] = details[path.lstrip("/")]
    if layout == "aps8idi" and isinstance(out.get("detector_distance_mm"), float):
        out["detector_distance_mm"] *= 1e3  # stored in metres without a unit attribute
    out.update(details)
    return out
