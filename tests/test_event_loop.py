"""``XPCS_IO_EVENT_LOOP``: the event loop the server processes run (asyncio by default,
uvloop when asked), each answering the same bytes; an unknown value is refused at start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from tests.conftest import start_server
from xpcs_io.client import RemoteHDF5Facade
from xpcs_io.schemas import G2Data
from xpcs_io.server.protocol import serve_options
from xpcs_io.server.settings import Settings
from xpcs_io.tools.demo import DemoSpec, write_native_file

pytestmark = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")


def _loads_uvloop(pid: int) -> bool:
    return "uvloop" in Path(f"/proc/{pid}/maps").read_text()


def test_serve_options_name_the_loop(tmp_path: Path) -> None:
    for value, loop in (("auto", "asyncio"), ("asyncio", "asyncio"), ("uvloop", "uvloop")):
        assert serve_options(Settings(data_root=tmp_path, event_loop=value))["loop"] == loop


@pytest.mark.parametrize(("value", "uvloop"), [(None, False), ("asyncio", False), ("uvloop", True)])
def test_the_server_runs_the_loop_asked_for(
    tmp_path: Path, value: str | None, uvloop: bool
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    files = [
        write_native_file(root / f"f{i}.hdf5", DemoSpec(shape=(24, 20), n_delay=8, n_q=5))
        for i in range(3)
    ]
    env = {} if value is None else {"XPCS_IO_EVENT_LOOP": value}
    srv = start_server(root, tmp_path / "log", env=env)
    try:
        assert _loads_uvloop(srv.process.pid) is uvloop
        with RemoteHDF5Facade(srv.url) as client:
            items = client.read_g2_data_many([p.name for p in files] + ["missing.hdf5"])
        assert isinstance(items[3], FileNotFoundError)
        for item, path in zip(items[:3], files, strict=True):
            assert isinstance(item, G2Data)
            with h5py.File(path, "r") as f:
                assert item.g2.tobytes() == f["/xpcs/g2/g2"][()].tobytes()
    finally:
        srv.stop()


def test_an_unknown_loop_is_refused_at_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XPCS_IO_")}
    env["XPCS_IO_EVENT_LOOP"] = "tokio"
    cmd = [sys.executable, "-m", "xpcs_io.tools.cli", "serve", "--root", str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, timeout=60, check=False)
    assert done.returncode == 2
    assert b"event_loop" in done.stderr
