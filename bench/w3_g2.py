"""w3: G2 (n_delay x n_q), whole and one q bin, local vs remote vs h5grove."""

from __future__ import annotations

import itertools

import h5py
import numpy as np

from bench.common import Case, Result, interleave, nbytes
from bench.data import G2
from bench.env import Env, checked
from xpcs_io.client import RemoteHDF5Facade

NAME = "w3"
NEEDS = {"ours", "h5grove"}


def run(env: Env) -> Result:
    cfg, files = env.cfg, env.files
    res = Result(
        NAME,
        f"G2 {cfg.n_delay} delays x {cfg.n_q} q bins: whole and one q_idx",
        "Ours (local facade and remote) returns G2Data: g2, g2_err, delay_times, q_values; "
        "h5grove returns only the g2 dataset (one request, format=bin; selection=:,k for one "
        "bin), so it moves fewer bytes. q_idx cycles over bins so no two reads in a row match.",
    )
    path = files.abs(files.main)
    h5 = h5py.File(path, "r")
    api = RemoteHDF5Facade(env.url("ours"), timeout=300)
    ks = itertools.cycle(range(0, cfg.n_q, 37))
    g2 = f"{G2}/g2"

    def h5py_whole() -> int:
        return sum(
            int(h5[f"{G2}/{n}"][()].nbytes) for n in ("g2", "g2_err", "delay_times", "q_values")
        )

    def h5py_col() -> int:
        k = next(ks)
        return int(h5[g2][:, k].nbytes + h5[f"{G2}/g2_err"][:, k].nbytes)

    cases: list[Case] = [
        ("h5py_whole", h5py_whole),
        ("facade_whole", lambda: nbytes(env.facade.read_g2_data(path))),
        ("remote_whole", lambda: nbytes(api.read_g2_data(files.main))),
        ("h5py_q", h5py_col),
        ("facade_q", lambda: nbytes(env.facade.read_g2_data(path, q_idx=next(ks)))),
        ("remote_q", lambda: nbytes(api.read_g2_data(files.main, q_idx=next(ks)))),
    ]
    labels = {
        "h5py_whole": ("local h5py", "g2, g2_err, delay_times, q_values"),
        "facade_whole": ("local HDF5Facade", "read_g2_data()"),
        "remote_whole": ("ours: RemoteHDF5Facade", "read_g2_data()"),
        "h5py_q": ("local h5py", "g2[:, k], g2_err[:, k]"),
        "facade_q": ("local HDF5Facade", "read_g2_data(q_idx=k)"),
        "remote_q": ("ours: RemoteHDF5Facade", "read_g2_data(q_idx=k)"),
    }
    if env.has("h5grove"):
        grove = env.http("h5grove")

        def grove_read(selection: str | None) -> int:
            params = {"file": files.main, "path": g2, "format": "bin"}
            if selection:
                params["selection"] = selection
            body = checked(grove.get("/data", params=params)).content
            return int(np.frombuffer(body, dtype="<f4").nbytes)

        cases += [
            ("h5grove_whole", lambda: grove_read(None)),
            ("h5grove_q", lambda: grove_read(f":,{next(ks)}")),
        ]
        labels["h5grove_whole"] = ("h5grove + httpx", "GET /data g2 (one dataset)")
        labels["h5grove_q"] = ("h5grove + httpx", "GET /data g2 selection=:,k")
    servers = {k: env.pid("ours") for k in ("remote_whole", "remote_q")}
    if env.has("h5grove"):
        servers |= {k: env.pid("h5grove") for k in ("h5grove_whole", "h5grove_q")}
    timing = interleave(cases, cfg.small_repeats, warmup=2, servers=servers)
    order = ["h5py_whole", "facade_whole", "remote_whole", "h5grove_whole"]
    order += ["h5py_q", "facade_q", "remote_q", "h5grove_q"]
    for key in order:
        if key in timing.times:
            res.rows.append(timing.row(key, *labels[key]))
    api.close()
    h5.close()
    return res
