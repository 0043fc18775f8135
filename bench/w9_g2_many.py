"""w9: G2 of 100 repeat files: one read_g2_data_many call vs 100 calls vs h5grove."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from bench.common import Case, Result, interleave, nbytes
from bench.data import G2
from bench.env import Env, checked
from xpcs_io.client import RemoteHDF5Facade

NAME = "w9"
NEEDS = {"ours", "ours_nocache", "h5grove"}
REPEATS = 100
FOLDER = "repeats"
DATASETS = ("g2", "g2_err", "delay_times", "q_values")


def write_repeats(root: Path, n_delay: int, n_q: int, count: int = REPEATS) -> list[str]:
    """``count`` small result files holding only a G2 group (an averaging tool's repeats)."""
    (root / FOLDER).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(9)
    out = []
    for i in range(count):
        rel = f"{FOLDER}/rep_{i:03d}.hdf5"
        with h5py.File(root / rel, "w") as f:
            grp = f.create_group(G2)
            grp["g2"] = (1 + rng.random((n_delay, n_q))).astype(np.float32)
            grp["g2_err"] = (0.01 * rng.random((n_delay, n_q))).astype(np.float32)
            grp["delay_times"] = np.geomspace(1e-5, 10, n_delay)
            grp["q_values"] = np.linspace(0.001, 0.1, n_q)
        out.append(rel)
    return out


def run(env: Env) -> Result:
    cfg = env.cfg
    res = Result(
        NAME,
        f"G2 ({cfg.n_delay} x {cfg.n_q}) of {REPEATS} repeat files",
        "Ours: one RemoteHDF5Facade.read_g2_data_many call (one request, results streamed as "
        f"read) vs {REPEATS} read_g2_data calls, with the server's result cache on and off; "
        f"h5grove: the same four datasets of each file, one GET /data (format=bin) each "
        f"({4 * REPEATS} requests).",
    )
    paths = write_repeats(env.files.root, cfg.n_delay, cfg.n_q)
    clients = {
        "ours": RemoteHDF5Facade(env.url("ours"), timeout=300),
        "ours_nocache": RemoteHDF5Facade(env.url("ours_nocache"), timeout=300),
    }

    def many(name: str) -> int:
        items = clients[name].read_g2_data_many(paths)
        assert not any(isinstance(i, Exception) for i in items), items
        return sum(nbytes(i) for i in items)

    def sequential(name: str) -> int:
        return sum(nbytes(clients[name].read_g2_data(p)) for p in paths)

    cases: list[Case] = [
        ("many", lambda: many("ours")),
        ("sequential", lambda: sequential("ours")),
        ("many_nocache", lambda: many("ours_nocache")),
        ("sequential_nocache", lambda: sequential("ours_nocache")),
    ]
    labels = {
        "many": ("ours: read_g2_data_many", f"1 request, {REPEATS} files"),
        "sequential": ("ours: read_g2_data", f"{REPEATS} requests"),
        "many_nocache": ("ours, cache off: read_g2_data_many", f"1 request, {REPEATS} files"),
        "sequential_nocache": ("ours, cache off: read_g2_data", f"{REPEATS} requests"),
    }
    servers = {
        "many": env.pid("ours"),
        "sequential": env.pid("ours"),
        "many_nocache": env.pid("ours_nocache"),
        "sequential_nocache": env.pid("ours_nocache"),
    }
    if env.has("h5grove"):
        grove = env.http("h5grove")

        def grove_all() -> int:
            total = 0
            for p in paths:
                for name in DATASETS:
                    params = {"file": p, "path": f"{G2}/{name}", "format": "bin"}
                    total += len(checked(grove.get("/data", params=params)).content)
            return total

        cases.append(("h5grove", grove_all))
        labels["h5grove"] = ("h5grove + httpx", f"{4 * REPEATS} GET /data")
        servers["h5grove"] = env.pid("h5grove")
    timing = interleave(cases, max(3, cfg.small_repeats // 6), warmup=1, servers=servers)
    for key in ("many", "sequential", "many_nocache", "sequential_nocache", "h5grove"):
        if key in timing.times:
            res.rows.append(timing.row(key, *labels[key]))
    for client in clients.values():
        client.close()
    return res
