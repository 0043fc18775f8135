"""w5: the same q-map read again, unchanged: first read vs repeated reads.

Each trial uses a byte copy of the file that no server has read yet (cold pool and
validation cache) and a new client; the first read is timed, then ``cache_repeats`` more reads
of the same file by the same client. When the client has a response cache (``cache_bytes``)
it is measured both off (the default) and on; a cached read is revalidated with the server's
ETag and answered 304 when the file is unchanged.
"""

from __future__ import annotations

import inspect
import statistics
import time
from typing import Any

from bench.common import Config, Result, Row, nbytes
from bench.env import Env
from xpcs_io.client import RemoteHDF5Facade

NAME = "w5"
NEEDS = {"ours"}
CACHE_BYTES = 1 << 30


def modes() -> list[tuple[str, dict[str, Any]]]:
    """Client settings to measure: the default, and the response cache when it exists."""
    found: list[tuple[str, dict[str, Any]]] = [("default", {})]
    if "cache_bytes" in inspect.signature(RemoteHDF5Facade).parameters:
        found.append(("cache", {"cache_bytes": CACHE_BYTES}))
    return found


def copies_needed(cfg: Config) -> int:
    """Never-read copies of the main file this workload takes."""
    return cfg.cache_trials * len(modes())


def run(env: Env) -> Result:
    cfg, files = env.cfg, env.files
    res = Result(
        NAME,
        "The same read_qmap repeated on an unchanged file: first vs repeated",
        f"{cfg.cache_trials} trials per client mode, each on a never-read copy with a new "
        f"client: 1 first read then {cfg.cache_repeats} repeats; modes alternate per trial.",
    )
    ms = modes()
    first: dict[str, list[float]] = {m: [] for m, _ in ms}
    repeat: dict[str, list[float]] = {m: [] for m, _ in ms}
    payload = 0
    for t in range(cfg.cache_trials):
        for i in range(len(ms)):
            mode, kwargs = ms[(t + i) % len(ms)]
            rel = files.take_fresh()
            with RemoteHDF5Facade(env.url("ours"), timeout=300, **kwargs) as api:
                t0 = time.perf_counter()
                payload = nbytes(api.read_qmap(rel))
                first[mode].append(time.perf_counter() - t0)
                for _ in range(cfg.cache_repeats):
                    t0 = time.perf_counter()
                    api.read_qmap(rel)
                    repeat[mode].append(time.perf_counter() - t0)
    labels = {
        "default": "RemoteHDF5Facade() (no client cache)",
        "cache": f"RemoteHDF5Facade(cache_bytes={CACHE_BYTES >> 20} MiB)",
    }
    for mode, _ in ms:
        res.rows.append(
            Row(f"{mode}_first", labels[mode], "first read", first[mode], payload=payload)
        )
        res.rows.append(
            Row(f"{mode}_repeat", labels[mode], "repeated reads", repeat[mode], payload=payload)
        )
        ratio = statistics.median(first[mode]) / statistics.median(repeat[mode])
        res.notes.append(f"{labels[mode]}: first / repeated median = {ratio:.1f}x")
    if len(ms) == 1:
        res.notes.append("the client has no response cache (no cache_bytes parameter)")
    return res
