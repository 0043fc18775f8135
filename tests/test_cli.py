"""The ``xpcs-io`` command line, run as users run it (a subprocess)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from xpcs_io.demo import DemoSpec, write_native_file
from xpcs_io.facade import HDF5Facade
from xpcs_io.pool import HDF5ConnectionPool
from xpcs_io.schemas import MaskSchema


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xpcs_io.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_help_lists_commands() -> None:
    r = run("--help")
    assert r.returncode == 0
    for command in ("serve", "demo", "validate", "inspect"):
        assert command in r.stdout


def test_validate_reports_each_group(tmp_path: Path) -> None:
    path = write_native_file(tmp_path / "ok.hdf5", DemoSpec(shape=(16, 12), n_delay=6, n_q=3))
    facade = HDF5Facade(pool=HDF5ConnectionPool(2))
    geo = facade.read_geometry_metadata(path)
    facade.write_mask(path, MaskSchema(mask=np.ones(geo.shape, np.uint8), metadata=geo))
    facade.pool.shutdown()
    r = run("validate", str(path))
    assert r.returncode == 0, r.stdout
    for group in ("/xpcs/qmap", "/xpcs/g2", "/xpcs/metadata", "/simplemask/mask v1"):
        assert f"OK    {group}" in r.stdout
    with h5py.File(path, "a") as f:
        f["/xpcs/g2/delay_times"][2] = 0.0
    r = run("validate", str(path))
    assert r.returncode == 1
    assert "FAIL  /xpcs/g2" in r.stdout
    assert "delay_times" in r.stdout


def test_validate_unreadable_and_empty(tmp_path: Path) -> None:
    text = tmp_path / "x.hdf5"
    text.write_text("nope")
    assert run("validate", str(text)).returncode == 2
    empty = tmp_path / "empty.hdf5"
    with h5py.File(empty, "w"):
        pass
    r = run("validate", str(empty))
    assert r.returncode == 1
    assert "no group" in r.stdout


def test_inspect_shows_datasets_and_versions(tmp_path: Path) -> None:
    path = write_native_file(tmp_path / "i.hdf5", DemoSpec(shape=(16, 12), n_delay=6, n_q=3))
    facade = HDF5Facade(pool=HDF5ConnectionPool(2))
    geo = facade.read_geometry_metadata(path)
    facade.write_mask(
        path, MaskSchema(mask=np.ones(geo.shape, np.uint8), metadata=geo), writer="ann"
    )
    facade.pool.shutdown()
    r = run("inspect", str(path))
    assert r.returncode == 0
    assert "sqmap  float32 16x12" in r.stdout
    assert "g2  float32 6x3" in r.stdout
    assert "v1" in r.stdout
    assert "by ann" in r.stdout


def test_demo_writes_files(tmp_path: Path) -> None:
    r = run("demo", str(tmp_path / "d"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "d" / "small.hdf5").exists()
    assert (tmp_path / "d" / "eiger4m.hdf5").stat().st_size > 50e6
    assert (tmp_path / "d" / ".complete").exists()


def test_serve_refuses_public_bind_without_keys(tmp_path: Path) -> None:
    r = run("serve", "--root", str(tmp_path), "--host", "0.0.0.0", "--port", "1")
    assert r.returncode == 2
    assert "allow-anonymous" in r.stderr


def test_serve_refuses_missing_root(tmp_path: Path) -> None:
    r = run("serve", "--root", str(tmp_path / "missing"), "--port", "1")
    assert r.returncode == 2
    assert "not a directory" in r.stderr
