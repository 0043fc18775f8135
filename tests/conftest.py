"""Shared fixtures: real HDF5 files in a per-test folder under one session data root, and
the facade under test on each side (local ``HDF5Facade``; remote client against a real
uvicorn server on 127.0.0.1)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from xpcs_io.api import FacadeAPI
from xpcs_io.demo import DemoSpec, write_native_file
from xpcs_io.facade import HDF5Facade
from xpcs_io.pool import HDF5ConnectionPool


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The data root every side sees (the remote server serves this folder)."""
    return tmp_path_factory.mktemp("data-root")


@pytest.fixture
def workdir(data_root: Path) -> Path:
    """A fresh folder under the data root for one test."""
    d = data_root / uuid.uuid4().hex[:12]
    d.mkdir()
    return d


@pytest.fixture
def native_file(workdir: Path) -> Path:
    """A small real file in the facade's layout."""
    return write_native_file(workdir / "result.hdf5", DemoSpec(shape=(48, 40), n_delay=20, n_q=12))


@dataclass
class Side:
    """One way of reaching the facade: ``path()`` maps a file to what this side takes."""

    name: str
    api: FacadeAPI
    root: Path
    make: Callable[..., FacadeAPI]  # another facade on this side, e.g. make(validate=False)

    def path(self, p: Path) -> Any:
        if self.name == "local":
            return p
        return p.relative_to(self.root).as_posix()


SIDES = ["local"]


@pytest.fixture(params=SIDES)
def side(request: pytest.FixtureRequest, data_root: Path) -> Iterator[Side]:
    """The facade API on each side: the same assertions must hold on both."""
    if request.param == "local":
        pool = HDF5ConnectionPool(max_size=8)

        def make(**kwargs: Any) -> FacadeAPI:
            return HDF5Facade(pool=pool, **kwargs)

        yield Side("local", make(), data_root, make)
        pool.shutdown()
    else:  # pragma: no cover - filled in by the remote fixtures
        raise AssertionError(request.param)
