"""w11: the SAXS 2-D image of an Eiger 4M result file (float32 (1, 2162, 2068), lzf, as
boost_corr writes ``/xpcs/temporal_mean/scattering_2d``): our typed ``read_saxs_2d`` next to
h5grove serving the same dataset, and our own h5grove-compatible ``/h5grove/data``."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from bench.common import Case, Result, interleave, nbytes
from bench.env import Env, checked
from xpcs_io.client import RemoteHDF5Facade

NAME = "w11"
NEEDS = {"ours", "ours_nocache", "h5grove"}
EIGER_4M = (2162, 2068)
REL = "saxs/eiger4m_saxs.hdf"
DATASET = "/xpcs/temporal_mean/scattering_2d"


def write_saxs_file(root: Path, shape: tuple[int, int] = EIGER_4M) -> str:
    """An 8-ID-I NeXus result holding a SAXS 2-D image of ``shape`` (the markers that make
    it an aps8idi file, and the image lzf-compressed in row chunks)."""
    path = root / REL
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = shape
    rows, cols = np.ogrid[0:h, 0:w]
    r = np.hypot(rows - 0.45 * h, cols - 0.55 * w)
    rng = np.random.default_rng(10)
    image = (1e3 / (1 + (r / 40.0) ** 2) ** 2 * rng.gamma(20, 0.05, (h, w))).astype(np.float32)
    with h5py.File(path, "w") as f:
        f.require_group("/entry/instrument/bluesky/metadata")
        f.require_group("/xpcs/multitau")
        f.create_dataset(DATASET, data=image[None], compression="lzf", chunks=(1, 64, w))
    return REL


def run(env: Env) -> Result:
    cfg = env.cfg
    shape = EIGER_4M if cfg.mode == "full" else (540, 516)
    res = Result(
        NAME,
        f"SAXS 2-D image {shape[0]} x {shape[1]} float32 (lzf) of an 8-ID-I result",
        "Ours: RemoteHDF5Facade.read_saxs_2d (validated Saxs2DData, msgpack), with the server's "
        "result cache on and off, and the same dataset from our h5grove-compatible "
        "/h5grove/data (format=bin); h5grove: GET /data?format=bin of the same dataset, "
        "np.frombuffer.",
    )
    rel = write_saxs_file(env.files.root, shape)
    api = RemoteHDF5Facade(env.url("ours"), timeout=300)
    cold = RemoteHDF5Facade(env.url("ours_nocache"), timeout=300)
    expected = int(np.prod(shape)) * 4
    # Start from empty pools: what earlier workloads left open must not change this one.
    api.clear_pool()
    cold.clear_pool()
    assert nbytes(api.read_saxs_2d(rel)) == expected
    ours_http = env.http("ours_nocache")
    params = {"file": rel, "path": DATASET, "format": "bin"}

    def ours_grove() -> int:
        body = checked(ours_http.get("/h5grove/data/", params=params)).content
        return int(np.frombuffer(body, dtype="<f4").nbytes)

    cases: list[Case] = [
        ("ours", lambda: nbytes(api.read_saxs_2d(rel))),
        ("ours_cold", lambda: nbytes(cold.read_saxs_2d(rel))),
        ("ours_h5grove_api", ours_grove),
    ]
    labels = {
        "ours": ("ours: RemoteHDF5Facade", "read_saxs_2d"),
        "ours_cold": ("ours: RemoteHDF5Facade", "read_saxs_2d, server result cache off"),
        "ours_h5grove_api": ("ours: /h5grove/data + httpx", "format=bin, cache off"),
    }
    servers = {
        "ours": env.pid("ours"),
        "ours_cold": env.pid("ours_nocache"),
        "ours_h5grove_api": env.pid("ours_nocache"),
    }
    if env.has("h5grove"):
        grove = env.http("h5grove")

        def h5grove_read() -> int:
            body = checked(grove.get("/data", params=params)).content
            return int(np.frombuffer(body, dtype="<f4").nbytes)

        assert h5grove_read() == expected
        cases.append(("h5grove", h5grove_read))
        labels["h5grove"] = ("h5grove + httpx", "GET /data?format=bin, np.frombuffer")
        servers["h5grove"] = env.pid("h5grove")
    timing = interleave(cases, cfg.repeats, warmup=1, servers=servers)
    for key, _ in cases:
        row = timing.row(key, *labels[key])
        row.extra["s_per_mb"] = row.median / (timing.payload[key] / 1e6)
        res.rows.append(row)
    res.notes.append(f"image = {expected / 1e6:.1f} MB float32")
    api.close()
    cold.close()
    return res
