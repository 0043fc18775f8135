"""``xpcs_io.paths.inside_root``: the one "inside the data root" check, and every module
that needs one uses it; ``resolve_under_root`` refuses every way out of the root."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from xpcs_io.paths import inside_root, resolve_under_root

SERVICE = Path(__file__).resolve().parent.parent / "service" / "xpcs_io"


def test_inside_root_compares_whole_components() -> None:
    root = Path("/data/run")
    assert inside_root(root, root)
    assert inside_root(root, Path("/data/run/a/b.hdf5"))
    assert not inside_root(root, Path("/data/run2/b.hdf5"))  # a prefix is not a parent
    assert not inside_root(root, Path("/data"))
    assert not inside_root(root, Path("/elsewhere/run/b.hdf5"))


def test_no_module_checks_the_root_its_own_way() -> None:
    own = re.compile(r"(not )?in \w+\.parents\b")
    offenders = []
    for path in SERVICE.rglob("*.py"):
        if path.name == "paths.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if own.search(line) and "inside_root" not in line:
                offenders.append(f"{path.relative_to(SERVICE)}:{number}: {line.strip()}")
    assert offenders == []


def test_resolve_under_root_refuses_every_way_out(tmp_path: Path) -> None:
    root = tmp_path / "run"
    (root / "a").mkdir(parents=True)
    (root / "a" / "b.hdf5").write_bytes(b"x")
    sibling = tmp_path / "run2"  # shares the root's name as a string prefix
    sibling.mkdir()
    (sibling / "c.hdf5").write_bytes(b"y")
    (root / "to_sibling").symlink_to(sibling)
    (root / "inner").symlink_to(root / "a")
    real_root = Path(os.path.realpath(root))

    for given in ("a/b.hdf5", "./a//b.hdf5", "a/./b.hdf5/", "inner/b.hdf5"):
        real, shown = resolve_under_root(real_root, given)
        assert shown == "a/b.hdf5" or given.startswith("inner")
        assert real == real_root / "a" / "b.hdf5"
        assert isinstance(real, Path)
    assert resolve_under_root(real_root, "./a//b.hdf5")[1] == "a/b.hdf5"
    refused = ["/etc/passwd", "../run2/c.hdf5", "a/../../run2/c.hdf5", "to_sibling/c.hdf5"]
    refused += ["", " ", ".", "./", "a\\b.hdf5", "a\x00b", "x" * 300, "a/" * 2100]
    for given in refused:
        with pytest.raises(PermissionError):
            resolve_under_root(real_root, given)
    # The root "/" holds every path.
    assert resolve_under_root(Path("/"), str(real_root / "a" / "b.hdf5")[1:])[0] == (
        real_root / "a" / "b.hdf5"
    )
