"""w2: the typed q-map (3 maps + mask + partition) locally and remotely."""

from __future__ import annotations

import h5py

from bench.common import Case, Result, interleave, nbytes
from bench.data import QMAP
from bench.env import Env
from xpcs_io.client import AsyncRemoteHDF5Facade, RemoteHDF5Facade
from xpcs_io.facade import HDF5Facade

NAME = "w2"
NEEDS = {"ours", "ours_nocache"}
DATASETS = ("sqmap", "dqmap", "phis", "mask", "partition_map")


async def _make_async(url: str) -> AsyncRemoteHDF5Facade:
    return AsyncRemoteHDF5Facade(url, timeout=300)


def run(env: Env) -> Result:
    res = Result(
        NAME,
        "Typed read_qmap (sqmap, dqmap, phis, mask, partition_map)",
        "Local h5py reads the same 5 datasets from a file kept open; the facades validate "
        "(on by default). 'cold validation' is a new HDF5Facade per call on the same warm pool, "
        "so its per-instance validation cache is empty and every read is checked. Remote "
        "reads run against the server as shipped (result cache warm after the warm-up) and "
        "against a second instance with the result cache off.",
    )
    files = env.files
    path = files.abs(files.main)
    h5 = h5py.File(path, "r")
    api = RemoteHDF5Facade(env.url("ours"), timeout=300)
    aapi = env.run(_make_async(env.url("ours")))

    def raw() -> int:
        # Hold all five arrays at once, as a read_qmap result does: reading and dropping one
        # at a time would let malloc hand the same freed pages back (no page faults), which
        # no caller that keeps the q-map gets.
        arrays = {name: h5[f"{QMAP}/{name}"][()] for name in DATASETS}
        return sum(int(a.nbytes) for a in arrays.values())

    cases: list[Case] = [
        ("h5py", raw),
        ("facade", lambda: nbytes(env.facade.read_qmap(path))),
        ("facade_cold", lambda: nbytes(HDF5Facade(pool=env.pool).read_qmap(path))),
        ("remote_sync", lambda: nbytes(api.read_qmap(files.main))),
        ("remote_async", lambda: nbytes(env.run(aapi.read_qmap(files.main)))),
    ]
    labels = {
        "h5py": ("local h5py", "the 5 datasets, [()] each, kept together like a result"),
        "facade": ("local HDF5Facade", "read_qmap, warm pool, validate=True"),
        "facade_cold": ("local HDF5Facade", "read_qmap, cold validation cache"),
        "remote_sync": ("ours: RemoteHDF5Facade", "read_qmap over HTTP"),
        "remote_async": ("ours: AsyncRemoteHDF5Facade", "await read_qmap over HTTP"),
    }
    ours = env.pid("ours")
    servers = {"remote_sync": ours, "remote_async": ours}
    cold = None
    if env.has("ours_nocache"):
        cold = RemoteHDF5Facade(env.url("ours_nocache"), timeout=300)
        cases.append(("remote_cold", lambda: nbytes(cold.read_qmap(files.main))))
        labels["remote_cold"] = ("ours: RemoteHDF5Facade", "read_qmap, server result cache off")
        servers["remote_cold"] = env.pid("ours_nocache")
    timing = interleave(cases, env.cfg.repeats, warmup=1, servers=servers)
    for key, _ in cases:
        res.rows.append(timing.row(key, *labels[key]))
    api.close()
    if cold is not None:
        cold.close()
    env.run(aapi.aclose())
    h5.close()
    return res
