"""``xpcs-io validate`` and ``xpcs-io inspect``: reports on one HDF5 file for people."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import h5py

from xpcs_io.errors import HDF5ValidationError
from xpcs_io.facade import HDF5Facade
from xpcs_io.pool import HDF5ConnectionPool, open_hdf5

__all__ = ["inspect_file", "validate_file"]


def _checks(facade: HDF5Facade, path: Path) -> list[tuple[str, Callable[[], Any]]]:
    checks: list[tuple[str, Callable[[], Any]]] = [
        ("/xpcs/qmap", lambda: facade.read_qmap(path)),
        ("/xpcs/g2", lambda: facade.read_g2_data(path)),
        ("/xpcs/metadata", lambda: facade.read_geometry_metadata(path)),
    ]
    with open_hdf5(os.fspath(path)) as f:
        for group, reader in (
            ("/simplemask/mask", facade.read_mask),
            ("/simplemask/partition", facade.read_partition),
        ):
            if group in f and "versions" in f[group]:
                for name in sorted(f[group]["versions"]):
                    number = int(name.lstrip("v"))
                    checks.append(
                        (f"{group} v{number}", functools.partial(reader, path, group, number))
                    )
    return checks


def validate_file(path: Path, out: TextIO) -> int:
    """Check every group xpcs-io knows in ``path``; print a report; return the exit status
    (0 all present groups valid, 1 a group failed or none was found, 2 unreadable file)."""
    facade = HDF5Facade(pool=HDF5ConnectionPool(max_size=1))
    try:
        checks = _checks(facade, path)
    except (OSError, HDF5ValidationError) as exc:
        print(f"FAIL  {path}: {exc}", file=out)
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
        print(f"OK    {name:<28} {result!r}", file=out)
    facade.pool.shutdown()
    if not found:
        print(f"FAIL  {path}: no group xpcs-io knows was found", file=out)
        return 1
    verdict = "valid" if not failed else f"{failed} of {found} groups invalid"
    print(f"{path}: {verdict}", file=out)
    return 1 if failed else 0


def _describe(name: str, obj: Any) -> str:
    if isinstance(obj, h5py.Dataset):
        shape = "x".join(map(str, obj.shape)) or "scalar"
        extra = f" {obj.compression}" if obj.compression else ""
        if obj.is_virtual:
            extra += " virtual"
        return f"{name}  {obj.dtype} {shape}{extra}"
    return f"{name}/"


def inspect_file(path: Path, out: TextIO) -> int:
    """Print the file's groups and datasets (dtype, shape, compression), external links and
    the versions of mask/partition groups; return the exit status."""
    try:
        f = open_hdf5(os.fspath(path))
    except (OSError, HDF5ValidationError) as exc:
        print(f"{path}: {exc}", file=out)
        return 2
    with f:
        print(f"{path}  ({path.stat().st_size / 1e6:.1f} MB)", file=out)

        def visit(name: str, link: Any) -> None:
            depth = name.count("/")
            indent = "  " * (depth + 1)
            base = name.rsplit("/", 1)[-1]
            if isinstance(link, h5py.ExternalLink):
                print(f"{indent}{base} -> external {link.filename}:{link.path}", file=out)
            elif isinstance(link, h5py.SoftLink):
                print(f"{indent}{base} -> {link.path}", file=out)
            else:
                print(f"{indent}{_describe(base, f[name])}", file=out)

        f.visititems_links(visit)
        facade = HDF5Facade(pool=HDF5ConnectionPool(max_size=1))
        for group in ("/simplemask/mask", "/simplemask/partition"):
            if group in f and "versions" in f[group]:
                print(f"versions of {group}:", file=out)
                for v in facade.list_mask_versions(path, group):
                    print(
                        f"  v{v['version']}  {v['created']}  by {v['writer']}  "
                        f"sha256 {v['sha256'][:12]}  {v['description'] or ''}",
                        file=out,
                    )
        facade.pool.shutdown()
    return 0
