"""The client side of w10, run inside the clients' network namespace by the bench:
``python -m bench.linkclient '<json spec>'`` waits until every server answers, times the
cases interleaved and prints ``{"times": ..., "payload": ..., "client_cpu": ...}`` as JSON.

Spec keys: ``urls`` (system -> base URL), ``main`` (the file, relative to the root),
``tiled_node``, ``qmap`` (group), ``maps`` (the three map names), ``repeats``, ``api_key``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np

from bench.common import Case, interleave, nbytes
from xpcs_io.client import RemoteHDF5Facade

IDENTITY = {"accept-encoding": "identity"}


def _wait(url: str, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url}{path} did not answer in {timeout:.0f} s")


def _cases(spec: dict[str, Any]) -> tuple[list[Case], list[Callable[[], None]]]:
    urls, main, maps, qmap = spec["urls"], spec["main"], spec["maps"], spec["qmap"]
    cases: list[Case] = []
    closers: list[Callable[[], None]] = []
    for key, server in (("ours", "ours"), ("ours_cold", "ours_nocache")):
        if server not in urls:
            continue
        _wait(urls[server], "/health", 60)
        for mode in ("auto", "none", "blosc2-lz4"):
            api = RemoteHDF5Facade(urls[server], timeout=600, compression=mode)
            closers.append(api.close)
            cases.append((f"{key}_{mode}", lambda api=api: nbytes(api.read_qmap(main))))
    if "h5grove" in urls:
        _wait(urls["h5grove"], "/", 60)
        grove = httpx.Client(base_url=urls["h5grove"], headers=IDENTITY, timeout=600)
        closers.append(grove.close)

        def h5grove_maps() -> int:
            total = 0
            for name in maps:
                params = {"file": main, "path": f"{qmap}/{name}", "format": "bin"}
                r = grove.get("/data", params=params)
                r.raise_for_status()
                total += np.frombuffer(r.content, dtype="<f4").nbytes
            return total

        cases.append(("h5grove", h5grove_maps))
    if "tiled" in urls:
        from tiled.client import from_uri

        node = spec["tiled_node"]
        _wait(urls["tiled"], f"/api/v1/metadata/{node}{qmap}/{maps[0]}", 180)
        group = from_uri(urls["tiled"], api_key=spec["api_key"])[node]
        for part in qmap.strip("/").split("/"):
            group = group[part]
        nodes = [group[name] for name in maps]

        def tiled_maps() -> int:
            return sum(int(np.asarray(n.read()).nbytes) for n in nodes)

        cases.append(("tiled", tiled_maps))
    return cases, closers


def main() -> None:
    spec = json.loads(sys.argv[1])
    cases, closers = _cases(spec)
    timing = interleave(cases, spec["repeats"], warmup=1)
    for close in closers:
        close()
    print(json.dumps({"times": timing.times, "payload": timing.payload, "cpu": timing.client_cpu}))


if __name__ == "__main__":
    main()
