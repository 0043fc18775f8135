"""The ``xpcs-io`` command line, run as users run it (a subprocess)."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import h5py
import numpy as np
import pytest

from xpcs_io.facade import HDF5Facade
from xpcs_io.pool import HDF5ConnectionPool
from xpcs_io.schemas import MaskSchema
from xpcs_io.tools.demo import DemoSpec, write_native_file

from .conftest import start_server


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xpcs_io.tools.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_help_lists_commands() -> None:
    r = run("--help")
    assert r.returncode == 0
    for command in ("serve", "demo", "validate", "inspect"):
        assert command in r.stdout


@pytest.mark.parametrize("module", ["xpcs_io.tools.cli", "xpcs_io.cli"])
def test_old_and_new_module_paths_run_the_command(module: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("xpcs-io ")


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


def test_version() -> None:
    r = run("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"xpcs-io {metadata.version('xpcs-io')}"


@pytest.mark.parametrize("port", ["70000", "-1", "http"])
def test_serve_names_a_bad_port_without_traceback(tmp_path: Path, port: str) -> None:
    r = run("serve", "--root", str(tmp_path), "--port", port)
    assert r.returncode == 2
    assert "--port" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_client_only_install_is_told_what_to_install(tmp_path: Path) -> None:
    # A client-only installation: the server's packages cannot be imported.
    code = (
        "import sys; sys.modules['fastapi'] = sys.modules['h5py'] = None\n"
        "from xpcs_io.tools.cli import main\n"
        f"sys.exit(main(['serve', '--root', {str(tmp_path)!r}]))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "pip install 'xpcs-io[server]'" in r.stderr
    assert "Traceback" not in r.stderr


def test_inspect_into_a_closed_pipe_stops_quietly(tmp_path: Path) -> None:
    path = tmp_path / "many.hdf5"
    with h5py.File(path, "w") as f:
        for i in range(3000):  # far more output than a pipe buffers
            f.create_dataset(f"group/d{i:05d}", data=np.arange(4))
    with subprocess.Popen(
        [sys.executable, "-m", "xpcs_io.tools.cli", "inspect", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        first = proc.stdout.readline()
        proc.stdout.close()  # what `| head -1` does
        err = proc.stderr.read().decode()
        status = proc.wait(timeout=60)
    assert status == 141
    assert str(path).encode() in first
    assert err == ""


def test_inspect_shows_attributes_and_small_values(tmp_path: Path) -> None:
    path = tmp_path / "attrs.hdf5"
    with h5py.File(path, "w") as f:
        f.attrs["beamline"] = "8-ID-I"
        ds = f.create_dataset("entry/energy", data=7.35)
        ds.attrs["units"] = "keV"
        f.create_dataset("entry/roi", data=np.array([3, 4, 5], dtype=np.int32))
        f.create_dataset("entry/frames", data=np.zeros((100, 100), np.float32))
        f["entry"].attrs["n"] = np.arange(40)
    r = run("inspect", str(path))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "  @beamline = '8-ID-I'" in lines
    assert "    energy  float64 scalar = 7.35" in lines
    assert "        @units = 'keV'" in lines
    assert "    roi  int32 3 = [3, 4, 5]" in lines
    assert "    frames  float32 100x100" in lines  # large: no value
    n_line = next(line for line in lines if "@n = " in line)
    assert "..." in n_line  # long values are cut
    assert len(n_line) < 120


def test_serve_prints_a_banner(tmp_path: Path) -> None:
    srv = start_server(tmp_path, tmp_path / "serve.log")
    try:
        shown = (tmp_path / "serve.log").read_text()
    finally:
        srv.stop()
    assert f"quick look  {srv.url}/" in shown
    assert f"API docs    {srv.url}/docs" in shown
    assert f"{srv.url}/redoc" in shown
    assert f"data root   {tmp_path.resolve()}" in shown
    assert "auth        none (loopback only)" in shown
