"""``xpcs_io.paths.inside_root``: the one "inside the data root" check, and every module
that needs one uses it."""

from __future__ import annotations

import re
from pathlib import Path

from xpcs_io.paths import inside_root

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
