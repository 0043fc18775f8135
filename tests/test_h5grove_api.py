"""Generic browsing in h5grove's conventions (``/h5grove/meta``, ``attr``, ``data``), the
client's ``list_files``, ``read_tree`` and ``read_dataset``, and the exports of the typed
reads read back with numpy, Pillow and tifffile, against a real server."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import h5py
import httpx
import numpy as np
import pytest
import tifffile
from PIL import Image

from xpcs_io.client import RemoteHDF5Facade
from xpcs_io.errors import DatasetTooLargeError, PayloadTooLargeError
from xpcs_io.facade import HDF5Facade
from xpcs_io.h5browse import data
from xpcs_io.tools.demo_aps8idi import write_aps8idi_file

from .conftest import Server


@pytest.fixture
def nexus(workdir: Path) -> Path:
    path = write_aps8idi_file(workdir / "browse.hdf")
    with h5py.File(path, "a") as f:
        f["/extra/big_endian"] = np.arange(6, dtype=">f8").reshape(2, 3)
        f["/extra/title"] = "run 42"
        f["/extra/soft"] = h5py.SoftLink("/xpcs/qmap")
        f["/extra/outside"] = h5py.ExternalLink("/etc/hosts.h5", "/data")
        f["/extra/big_endian"].attrs["unit"] = "s"
    return path


def _get(server: Server, route: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{server.url}/h5grove/{route}/", params=params, timeout=30)


def test_meta_attr_data(server: Server, nexus: Path) -> None:
    rel = nexus.relative_to(server.root).as_posix()
    group = _get(server, "meta", file=rel, path="/extra").json()
    assert group["kind"] == "group"
    kinds = {c["name"]: c["kind"] for c in group["children"]}
    assert kinds == {
        "big_endian": "dataset",
        "title": "dataset",
        "soft": "soft_link",
        "outside": "external_link",
    }
    ds = _get(server, "meta", file=rel, path="/extra/big_endian").json()
    assert ds["shape"] == [2, 3]
    assert ds["type"]["dtype"] == ">f8"  # byte order explicit
    assert ds["attributes"][0]["name"] == "unit"
    mask = _get(server, "meta", file=rel, path="/xpcs/qmap/mask").json()
    assert mask["filters"] == [{"id": 32000, "name": "lzf"}]
    assert _get(server, "attr", file=rel, path="/extra/big_endian").json() == {"unit": "s"}

    with h5py.File(nexus, "r") as f:
        delays = f["/xpcs/multitau/delay_list"][()]
        mask_values = f["/xpcs/qmap/mask"][()]
    answer = _get(server, "data", file=rel, path="/xpcs/multitau/delay_list", selection="2:10:3")
    assert answer.json() == delays[2:10:3].tolist()
    npy = _get(server, "data", file=rel, path="/xpcs/qmap/mask", selection="0:5,::7", format="npy")
    np.testing.assert_array_equal(np.load(io.BytesIO(npy.content)), mask_values[0:5, ::7])
    raw = _get(server, "data", file=rel, path="/extra/big_endian", format="bin")
    np.testing.assert_array_equal(np.frombuffer(raw.content, ">f8"), np.arange(6.0))
    assert _get(server, "data", file=rel, path="/extra/title").json() == "run 42"


@pytest.mark.parametrize("selection", ["a:b", "1,2,3", "::0", "999", "0:1:2:3", "1.5", "", " , "])
def test_malformed_selection_is_422(server: Server, nexus: Path, selection: str) -> None:
    rel = nexus.relative_to(server.root).as_posix()
    answer = _get(server, "data", file=rel, path="/xpcs/qmap/mask", selection=selection)
    if selection == "":
        assert answer.status_code == 200  # no selection: the whole dataset
        return
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")


def test_sandbox(server: Server, nexus: Path) -> None:
    rel = nexus.relative_to(server.root).as_posix()
    assert _get(server, "meta", file="../etc/passwd", path="/").status_code == 403
    assert _get(server, "meta", file=rel, path="/extra/outside/data").status_code == 403
    assert _get(server, "data", file=rel, path="/nope").status_code == 404
    assert _get(server, "data", file=rel, path="/xpcs").status_code == 404  # a group
    link = nexus.parent / "escape.hdf"
    os.symlink("/etc/hostname", link)
    assert _get(server, "meta", file=link.relative_to(server.root).as_posix()).status_code == 403
    # The soft link is followed inside the file.
    soft = _get(server, "meta", file=rel, path="/extra/soft").json()
    assert soft == {"kind": "soft_link", "name": "soft", "target_path": "/xpcs/qmap"}


def test_client_browsing(server: Server, nexus: Path) -> None:
    rel = nexus.relative_to(server.root).as_posix()
    with RemoteHDF5Facade(server.url) as api:
        files = api.list_files(prefix=nexus.parent.name)
        assert [f["path"] for f in files] == [rel]
        tree = api.read_tree(rel)
        xpcs = next(c for c in tree["children"] if c["name"] == "xpcs")
        qmap = next(c for c in xpcs["children"] if c["name"] == "qmap")
        assert any(c["name"] == "dynamic_roi_map" for c in qmap["children"])
        with h5py.File(nexus, "r") as f:
            roi = f["/xpcs/qmap/dynamic_roi_map"][()]
        part = api.read_dataset(rel, "/xpcs/qmap/dynamic_roi_map", "10:20,::3")
        np.testing.assert_array_equal(part, roi[10:20, ::3])
        assert part.dtype == roi.dtype
        assert api.read_dataset(rel, "/extra/title") == ["run 42"]
        with pytest.raises(ValueError, match="selection"):
            api.read_dataset(rel, "/xpcs/qmap/mask", "0:2,x")
        with pytest.raises(KeyError):
            api.read_dataset(rel, "/nothing")


def test_size_limit(server: Server, workdir: Path) -> None:
    path = workdir / "limit.hdf"
    with h5py.File(path, "w") as f:
        # 149 GiB declared, chunked and never written: refused before anything is read.
        f.create_dataset("huge", shape=(200_000, 200_000), dtype="f4", chunks=(256, 256))
        f.create_dataset("big", shape=(4096, 4096), dtype="f4")  # 64 MiB
    facade = HDF5Facade(root=server.root)
    rel = path.relative_to(server.root).as_posix()
    with pytest.raises(DatasetTooLargeError, match="declares"):
        data(facade, rel, "/huge", None)
    assert data(facade, rel, "/huge", "0:2,0:2").shape == (2, 2)
    with pytest.raises(PayloadTooLargeError, match="JSON"):
        data(facade, rel, "/big", None, max_elements=1000)
    for fmt in ("json", "bin", "npy"):
        answer = _get(server, "data", file=rel, path="/huge", format=fmt)
        assert answer.status_code == 422, answer.text
        assert "read limit" in answer.json()["detail"]
    # JSON answers are bounded by the server's element limit, before any value is sent.
    assert _get(server, "data", file=rel, path="/big").status_code == 413
    part = _get(server, "data", file=rel, path="/huge", selection="5:7,1:4", format="npy")
    assert np.load(io.BytesIO(part.content)).shape == (2, 3)


def test_exports_read_back(server: Server, workdir: Path) -> None:
    path = write_aps8idi_file(workdir / "export.hdf")
    rel = path.relative_to(server.root).as_posix()
    with h5py.File(path, "r") as f:
        image = f["/xpcs/temporal_mean/scattering_2d"][0]
        saxs1d = f["/xpcs/temporal_mean/scattering_1d"][()].reshape(-1)
        intt = f["/xpcs/spatial_mean/intensity_vs_time"][1]

    def get(route: str, fmt: str | None = None, accept: str | None = None) -> httpx.Response:
        params = {"file_path": rel} | ({"format": fmt} if fmt else {})
        headers = {"accept": accept} if accept else {}
        answer = httpx.get(f"{server.url}/v1/{route}", params=params, headers=headers)
        assert answer.status_code == 200, answer.text
        return answer

    np.testing.assert_array_equal(np.load(io.BytesIO(get("saxs2d", "npy").content)), image)
    tiff = tifffile.imread(io.BytesIO(get("saxs2d", "tiff").content))
    np.testing.assert_array_equal(tiff, image)
    assert tiff.dtype == np.float32
    png = np.asarray(Image.open(io.BytesIO(get("saxs2d", accept="image/png").content)))
    assert png.shape == image.shape
    positive = image > 0
    assert (png[~positive] == 0).all()
    assert (png[positive] > 0).all()
    # log scale: brighter pixel, brighter grey
    order = np.argsort(image[positive])
    assert (np.diff(png[positive][order].astype(np.int64)) >= 0).all()
    csv = np.loadtxt(io.StringIO(get("saxs1d", "csv").text), delimiter=",", skiprows=1)
    np.testing.assert_allclose(csv[:, 1], saxs1d, rtol=1e-6)
    assert get("saxs1d", "csv").text.splitlines()[0].startswith("q_A^-1,intensity")
    rows = np.loadtxt(io.StringIO(get("saxs2d", "csv").text), delimiter=",")
    np.testing.assert_allclose(rows, image, rtol=1e-6)
    curve = np.load(io.BytesIO(get("intensity-time", accept="application/x-npy").content))
    np.testing.assert_array_equal(curve[1], intt)
    g2csv = np.loadtxt(io.StringIO(get("g2/twotime", "csv").text), delimiter=",", skiprows=1)
    with h5py.File(path, "r") as f:
        np.testing.assert_allclose(g2csv[:, 1:], f["/xpcs/twotime/normalized_g2"][()], rtol=1e-6)
    bad = httpx.get(f"{server.url}/v1/saxs1d", params={"file_path": rel, "format": "png"})
    assert bad.status_code == 422
    bad = httpx.get(f"{server.url}/v1/saxs1d", params={"file_path": rel, "format": "gif"})
    assert bad.status_code == 422
