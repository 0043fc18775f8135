"""w1: one full detector map (sqmap, float32) from every system.

Our API has no single-map endpoint: its cheapest read of a map is ``read_qmap`` (sqmap,
dqmap, phis, mask, partition_map, about 3.75 maps of bytes). So ours is reported as the full
``read_qmap`` next to the single-map peers, and the comparison (P1) is per MB moved. The raw
socket is timed at both sizes (one map, and exactly the ``read_qmap`` payload).
"""

from __future__ import annotations

from collections.abc import Callable

import h5py
import numpy as np

from bench.common import Case, Result, interleave, nbytes
from bench.data import QMAP, TILED_NODE
from bench.env import Env, checked
from bench.servers import TILED_API_KEY
from bench.sockserver import SocketClient
from xpcs_io.client import RemoteHDF5Facade

NAME = "w1"
NEEDS = {"ours", "ours_nocache", "socket", "h5grove", "tiled"}
MAP = f"{QMAP}/sqmap"


def _tiled_client_read(env: Env) -> Callable[[], int]:
    from tiled.client import from_uri

    node = from_uri(env.url("tiled"), api_key=TILED_API_KEY)[TILED_NODE]["xpcs"]["qmap"]["sqmap"]
    return lambda: int(np.asarray(node.read()).nbytes)


def run(env: Env) -> Result:
    res = Result(
        NAME,
        "One full detector map (sqmap float32) vs our typed read_qmap",
        "Peers read one map; ours reads the whole q-map (no single-map endpoint), so compare "
        "MB/s or time per MB. 'per map' = median time scaled to one map's bytes. Ours runs "
        "twice: as shipped (its result cache, if any, serves the repeats of this unchanged "
        "file after the warm-up) and with that cache off (every read goes to HDF5, like the "
        "peers).",
    )
    files = env.files
    h5 = h5py.File(files.abs(files.main), "r")
    api = RemoteHDF5Facade(env.url("ours"), timeout=300)
    map_bytes = int(h5[MAP].nbytes)
    qmap_bytes = nbytes(api.read_qmap(files.main))
    cases: list[Case] = []
    labels: dict[str, tuple[str, str]] = {}
    sock = None
    if env.has("socket"):
        sock = SocketClient(env.servers["socket"].port, max(map_bytes, qmap_bytes))
        cases += [("socket", lambda: sock.fetch(map_bytes))]
        cases += [("socket_qmap", lambda: sock.fetch(qmap_bytes))]
        labels["socket"] = ("raw TCP socket", "one map's bytes into a preallocated buffer")
        labels["socket_qmap"] = ("raw TCP socket", "read_qmap's bytes into a preallocated buffer")
    cases.append(("h5py", lambda: int(h5[MAP][()].nbytes)))
    labels["h5py"] = ("local h5py", "f[sqmap][()] (file kept open)")
    if env.has("h5grove"):
        grove = env.http("h5grove")
        params = {"file": files.main, "path": MAP, "format": "bin"}

        def h5grove_read() -> int:
            body = checked(grove.get("/data", params=params)).content
            return int(np.frombuffer(body, dtype="<f4").nbytes)

        cases.append(("h5grove", h5grove_read))
        labels["h5grove"] = ("h5grove + httpx", "GET /data?format=bin, np.frombuffer")

        def h5grove_maps() -> int:
            total = 0
            for name in ("sqmap", "dqmap", "phis"):
                p = {"file": files.main, "path": f"{QMAP}/{name}", "format": "bin"}
                total += np.frombuffer(checked(grove.get("/data", params=p)).content, "<f4").nbytes
            return total

        cases.append(("h5grove_maps", h5grove_maps))
        labels["h5grove_maps"] = ("h5grove + httpx", "the 3 float maps (sqmap, dqmap, phis)")
    if env.has("tiled"):
        tiled = env.http("tiled")
        url = f"/api/v1/array/full/{TILED_NODE}{MAP}"

        def tiled_raw() -> int:
            r = checked(tiled.get(url, params={"format": "application/octet-stream"}))
            return int(np.frombuffer(r.content, dtype="<f4").nbytes)

        cases.append(("tiled_raw", tiled_raw))
        labels["tiled_raw"] = ("tiled raw + httpx", f"GET {url}?format=octet-stream, identity")
        cases.append(("tiled_client", _tiled_client_read(env)))
        labels["tiled_client"] = ("tiled Python client", "node.read() (node looked up once)")
    cases.append(("ours", lambda: nbytes(api.read_qmap(files.main))))
    labels["ours"] = ("ours: RemoteHDF5Facade", "read_qmap: 3 maps + mask + partition")
    cold = None
    if env.has("ours_nocache"):
        cold = RemoteHDF5Facade(env.url("ours_nocache"), timeout=300)
        cases.append(("ours_cold", lambda: nbytes(cold.read_qmap(files.main))))
        labels["ours_cold"] = ("ours: RemoteHDF5Facade", "read_qmap, server result cache off")
    ours_http = env.http("ours")
    ours_params = {"file_path": files.main}
    msgpack = {"accept": "application/msgpack"}

    def ours_raw() -> int:
        return len(checked(ours_http.get("/v1/qmap", params=ours_params, headers=msgpack)).content)

    cases.append(("ours_raw", ours_raw))
    labels["ours_raw"] = ("ours: raw httpx (no decode)", "GET /v1/qmap msgpack body, .content")

    pids = {"socket": "socket", "socket_qmap": "socket", "h5grove": "h5grove"}
    pids["h5grove_maps"] = "h5grove"
    pids |= {"tiled_raw": "tiled", "tiled_client": "tiled", "ours": "ours", "ours_raw": "ours"}
    pids["ours_cold"] = "ours_nocache"
    servers = {k: env.pid(v) for k, v in pids.items() if env.has(v)}
    timing = interleave(cases, env.cfg.repeats, warmup=1, servers=servers)
    for key, _ in cases:
        row = timing.row(key, *labels[key])
        size = timing.payload[key]
        row.extra["per_map_s"] = row.median * map_bytes / size
        row.extra["s_per_mb"] = row.median / (size / 1e6)
        row.note = f"per map {row.extra['per_map_s'] * 1e3:.3g} ms; {row.note}".rstrip("; ")
        res.rows.append(row)
    res.notes.append(
        f"one map = {map_bytes / 1e6:.1f} MB; read_qmap payload = {qmap_bytes / 1e6:.1f} MB "
        f"({qmap_bytes / map_bytes:.2f} maps)"
    )
    if sock is not None:
        sock.close()
    api.close()
    if cold is not None:
        cold.close()
    h5.close()
    return res
