"""Client comforts: an opt-in progress bar for large downloads and short reprs."""

from __future__ import annotations

from pathlib import Path

import pytest

from xpcs_io.client import RemoteHDF5Facade
from xpcs_io.facade import HDF5Facade
from xpcs_io.tools.demo import DemoSpec, write_native_file

from .conftest import Server


def test_progress_bar_for_large_downloads(
    server: Server, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_native_file(workdir / "big.hdf5", DemoSpec(shape=(1300, 1300), n_delay=4, n_q=2))
    rel = path.relative_to(server.root).as_posix()
    with RemoteHDF5Facade(server.url, progress=True) as api:
        qmap = api.read_qmap(rel)
        api.read_geometry_metadata(rel)  # small: no bar
    err = capsys.readouterr().err
    assert "/v1/qmap" in err
    assert "/v1/geometry" not in err
    assert qmap.sqmap.shape == (1300, 1300)
    with RemoteHDF5Facade(server.url) as api:
        api.read_qmap(rel)
    assert "/v1/qmap" not in capsys.readouterr().err


def test_reprs_summarise_instead_of_dumping(native_file: Path) -> None:
    facade = HDF5Facade()
    qmap = facade.read_qmap(native_file)
    text = repr(qmap)
    assert "sqmap=<float32 48x40>" in text
    assert "sqmap_unit='nm^-1'" in text
    assert len(text) < 400
    g2 = facade.read_g2_data(native_file)
    assert "g2=<float32 20x12>" in repr(g2)
    geo = repr(facade.read_geometry_metadata(native_file))
    assert "det_dist=5000.0" in geo
    assert "shape=(48, 40)" in geo
