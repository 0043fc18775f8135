"""``xpcs-io validate`` and ``xpcs-io inspect``: reports on one HDF5 file for people."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import h5py
import numpy as np

from xpcs_io.errors import HDF5ValidationError
from xpcs_io.facade import HDF5Facade
from xpcs_io.filters import FILTERS
from xpcs_io.h5access import Locator
from xpcs_io.layouts import registry
from xpcs_io.pool import HDF5ConnectionPool, open_hdf5

__all__ = ["inspect_file", "validate_file"]


# What each read is called in the report when the file is not in the native layout (the
# native layout's groups are named by their path, as before).
_KINDS = (("qmap", "q-map"), ("g2", "G2"), ("geometry", "geometry"))
# Two-time maps are checked block-averaged to this size: the whole stored triangle is still
# read (in strips), but memory stays small whatever N is.
_C2_CHECK_SIZE = 256


def _layouts(f: h5py.File, display: str) -> tuple[dict[str, str], str | None, list[int]]:
    """The layout detected for each read kind, the no-layout message if any, the C2 bins."""
    loc = Locator(f, display)
    found: dict[str, str] = {}
    unknown: str | None = None
    for kind, group in registry.DEFAULT_GROUPS.items():
        try:
            found[kind] = registry.detect(loc, kind, group)[0]
        except KeyError as exc:
            unknown = exc.args[0] if exc.args else str(exc)
    return found, unknown, registry.c2_bins(loc)


def _checks(facade: HDF5Facade, path: Path, out: TextIO) -> list[tuple[str, Callable[[], Any]]]:
    with open_hdf5(os.fspath(path)) as f:
        layouts, unknown, c2_bins = _layouts(f, os.fspath(path))
        versions = {
            group: sorted(f[group]["versions"])
            for group in ("/simplemask/mask", "/simplemask/partition")
            if group in f and "versions" in f[group]
        }
    if layouts:
        names = sorted(set(layouts.values()))
        print(f"layout {' + '.join(names)} (detected)", file=out)
    elif unknown:
        print(f"layout none: {unknown}", file=out)
    checks: list[tuple[str, Callable[[], Any]]] = []
    readers: dict[str, Callable[..., Any]] = {
        "qmap": facade.read_qmap,
        "g2": facade.read_g2_data,
        "geometry": facade.read_geometry_metadata,
    }
    for kind, label in _KINDS:
        layout = layouts.get(kind)
        if layout is None:
            continue  # no known layout: said once above
        name = registry.DEFAULT_GROUPS[kind] if layout == "native" else f"{label} ({layout})"
        checks.append((name, functools.partial(readers[kind], path)))
    for k in c2_bins:
        checks.append(
            (f"two-time q_idx {k}", functools.partial(facade.read_c2, path, k, _C2_CHECK_SIZE))
        )
    read_versioned = {
        "/simplemask/mask": facade.read_mask,
        "/simplemask/partition": facade.read_partition,
    }
    for group, names in versions.items():
        for vname in names:
            number = int(vname.lstrip("v"))
            checks.append(
                (
                    f"{group} v{number}",
                    functools.partial(read_versioned[group], path, group, number),
                )
            )
    return checks


def _summary(result: Any) -> str:
    if isinstance(result, np.ndarray):
        return f"{result.dtype} array {result.shape}"
    return repr(result)


def validate_file(path: Path, out: TextIO) -> int:
    """Check every group xpcs-io knows in ``path`` (q-map, G2, geometry, every two-time map,
    every mask and partition version), first saying which layout was detected; print a
    report; return the exit status (0 all present groups valid, 1 a group failed or none
    was found, 2 unreadable file)."""
    facade = HDF5Facade(pool=HDF5ConnectionPool(max_size=1))
    try:
        checks = _checks(facade, path, out)
    except (OSError, HDF5ValidationError) as exc:
        print(f"FAIL  {path}: {exc}", file=out)
        facade.pool.shutdown()
        return 2
    failed = found = 0
    for name, check in checks:
        try:
            result = check()
        except KeyError as exc:
            print(f"--    {name:<28} not present ({exc.args[0] if exc.args else exc})", file=out)
            continue
        except (HDF5ValidationError, ValueError, TypeError, IndexError) as exc:
            found += 1
            failed += 1
            print(f"FAIL  {name:<28} {exc}", file=out)
            continue
        found += 1
        print(f"OK    {name:<28} {_summary(result)}", file=out)
    facade.pool.shutdown()
    if not found:
        print(f"FAIL  {path}: no group xpcs-io knows was found", file=out)
        return 1
    verdict = "valid" if not failed else f"{failed} of {found} groups invalid"
    print(f"{path}: {verdict}", file=out)
    return 1 if failed else 0


_FILTER_NAMES = {
    1: "gzip",
    2: "shuffle",
    3: "fletcher32",
    4: "szip",
    6: "scaleoffset",
    32000: "lzf",
    **{fid: name for name, fid in FILTERS.items()},
}


def _filters(ds: h5py.Dataset) -> list[str]:
    """The filters of ``ds`` by name (gzip, lzf, bshuf, blosc, zstd...; else their id)."""
    plist = ds.id.get_create_plist()
    ids = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    return [_FILTER_NAMES.get(fid, f"filter-{fid}") for fid in ids]


# Values shown inline: datasets of at most this many elements, and text up to this width.
_SMALL = 16
_WIDTH = 100


def _value(value: Any) -> str:
    """One line for an attribute's or a small dataset's value (bytes decoded, long text cut)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "SO":
            value = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
        else:
            value = np.array2string(value, threshold=_SMALL, separator=", ")
            text = " ".join(value.split())
            return text if len(text) <= _WIDTH else text[: _WIDTH - 3] + "..."
    text = repr(value) if isinstance(value, str) else str(value)
    text = " ".join(text.split())
    return text if len(text) <= _WIDTH else text[: _WIDTH - 3] + "..."


def _describe(name: str, obj: Any) -> str:
    if isinstance(obj, h5py.Dataset):
        shape = "x".join(map(str, obj.shape)) or "scalar"
        extra = "".join(f" {name}" for name in _filters(obj))
        if obj.is_virtual:
            extra += " virtual"
        small = ""
        if obj.size <= _SMALL and obj.dtype.kind in "biufcSOU" and not obj.is_virtual:
            try:
                small = f" = {_value(obj[()])}"
            except (OSError, ValueError, TypeError):  # unreadable: listed without a value
                small = ""
        return f"{name}  {obj.dtype} {shape}{extra}{small}"
    return f"{name}/"


def _attributes(obj: Any, indent: str) -> list[str]:
    lines = []
    for key in sorted(obj.attrs):
        try:
            shown = _value(obj.attrs[key])
        except (OSError, ValueError, TypeError):  # a type h5py cannot read
            shown = "(unreadable)"
        lines.append(f"{indent}@{key} = {shown}")
    return lines


def inspect_file(path: Path, out: TextIO) -> int:
    """Print the file's groups and datasets (dtype, shape, compression, the value of small
    ones), their attributes, external links and the versions of mask/partition groups;
    return the exit status."""
    try:
        f = open_hdf5(os.fspath(path))
    except (OSError, HDF5ValidationError) as exc:
        print(f"{path}: {exc}", file=out)
        return 2
    with f:
        print(f"{path}  ({path.stat().st_size / 1e6:.1f} MB)", file=out)
        layouts, _, _ = _layouts(f, os.fspath(path))
        detected = " + ".join(sorted(set(layouts.values()))) or "none (no known layout)"
        print(f"layout {detected}", file=out)
        # Collected, then printed: an error raised inside h5py's visit (a closed pipe) would
        # come out as h5py's SystemError instead of itself.
        lines = _attributes(f, "  ")

        def visit(name: str, link: Any) -> None:
            depth = name.count("/")
            indent = "  " * (depth + 1)
            base = name.rsplit("/", 1)[-1]
            if isinstance(link, h5py.ExternalLink):
                lines.append(f"{indent}{base} -> external {link.filename}:{link.path}")
            elif isinstance(link, h5py.SoftLink):
                lines.append(f"{indent}{base} -> {link.path}")
            else:
                obj = f[name]
                lines.append(f"{indent}{_describe(base, obj)}")
                lines.extend(_attributes(obj, indent + "    "))

        f.visititems_links(visit)
        for line in lines:
            print(line, file=out)
        facade = HDF5Facade(pool=HDF5ConnectionPool(max_size=1))
        try:
            for group in ("/simplemask/mask", "/simplemask/partition"):
                if group in f and "versions" in f[group]:
                    print(f"versions of {group}:", file=out)
                    for v in facade.list_mask_versions(path, group):
                        print(
                            f"  v{v['version']}  {v['created']}  by {v['writer']}  "
                            f"sha256 {v['sha256'][:12]}  {v['description'] or ''}",
                            file=out,
                        )
        finally:
            facade.pool.shutdown()
    return 0
