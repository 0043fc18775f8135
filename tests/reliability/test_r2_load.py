"""R2: 64 concurrent readers and 4 writers on one server for a fixed time (8 s bounded, 60 s
in the soak): no 5xx, no lost version, no read older than an acknowledged write.

Writers POST masks round-robin over four files and note each acknowledged version. Each
reader, before a request, snapshots the newest version acknowledged for its file; a
``list_mask_versions`` must then list that version or a newer one, and a ``read_mask`` must
return it or a newer one (checked afterwards, when every write's version is known, from the
description each write carries). Readers also read geometry and q-maps of the same files.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest

from xpcs_io import wire
from xpcs_io.client import RemoteHDF5Facade, RetryPolicy
from xpcs_io.errors import ServerError
from xpcs_io.tools.demo import DemoSpec, write_native_file

from .support import Figure, mask_body, percentile, scale, server_5xx, serving, sha256_of

READERS = 64
WRITERS = 4
N_FILES = 4
SHAPE = (128, 128)
DURATION = scale(8.0, 60.0)
#: Seconds the load may last at most while waiting for every writer's acknowledged writes.
ACK_CAP = scale(60.0, 120.0)


def _mask(writer: int, seq: int) -> npt.NDArray[np.uint8]:
    rng = np.random.default_rng(writer * 1_000_003 + seq)
    return (rng.random(SHAPE) < 0.9).astype(np.uint8)


@dataclass
class Shared:
    files: list[str]
    lock: threading.Lock = field(default_factory=threading.Lock)
    newest_acked: dict[str, int] = field(default_factory=dict)
    acked: dict[str, dict[int, str]] = field(default_factory=dict)  # file -> version -> sha
    acked_by: dict[int, int] = field(default_factory=dict)  # writer -> acknowledged writes
    token_version: dict[str, int] = field(default_factory=dict)
    token_sha: dict[str, str] = field(default_factory=dict)
    read_latency: list[float] = field(default_factory=list)
    write_latency: list[float] = field(default_factory=list)
    requests: int = 0
    server_errors: list[str] = field(default_factory=list)
    other_errors: list[str] = field(default_factory=list)
    stale_lists: list[str] = field(default_factory=list)
    mask_reads: list[tuple[str, int, str]] = field(default_factory=list)  # file, snapshot, token
    corrupt_reads: list[str] = field(default_factory=list)

    def snapshot(self, file: str) -> int:
        with self.lock:
            return self.newest_acked.get(file, 0)


def _writer(shared: Shared, url: str, w: int, stop: threading.Event) -> None:
    seq = 0
    with httpx.Client(base_url=url, timeout=60) as http:
        while not stop.is_set():
            file = shared.files[(w + seq) % len(shared.files)]
            token = f"w{w}-{seq}"
            mask = _mask(w, seq)
            digest = sha256_of(mask)
            with shared.lock:
                shared.token_sha[token] = digest
            t0 = time.perf_counter()
            try:
                r = http.post(
                    "/v1/mask",
                    params={"file_path": file, "compression": "lzf"},
                    content=mask_body(mask, description=token),
                    headers={"content-type": wire.MEDIA_TYPE},
                )
            except httpx.TransportError as exc:
                with shared.lock:
                    shared.other_errors.append(f"write {token}: {exc!r}")
                seq += 1
                continue
            elapsed = time.perf_counter() - t0
            with shared.lock:
                shared.requests += 1
                shared.write_latency.append(elapsed)
                if r.status_code >= 500:
                    shared.server_errors.append(f"write {token}: {r.status_code} {r.text[:200]}")
                elif r.status_code != 201:
                    shared.other_errors.append(f"write {token}: {r.status_code} {r.text[:200]}")
                else:
                    version = int(wire.unpack(r.content)["version"])
                    shared.acked.setdefault(file, {})[version] = digest
                    shared.acked_by[w] = shared.acked_by.get(w, 0) + 1
                    shared.token_version[token] = version
                    shared.newest_acked[file] = max(shared.newest_acked.get(file, 0), version)
            seq += 1


def _reader(shared: Shared, url: str, r_id: int, stop: threading.Event) -> None:
    rng = random.Random(r_id)
    # No retries: a 503 or a dropped connection must show up as an error, not be hidden.
    with RemoteHDF5Facade(url, timeout=60, retry=RetryPolicy(attempts=1)) as api:
        ops: list[tuple[str, Callable[[str], Any]]] = [
            ("mask", api.read_mask),
            ("versions", api.list_mask_versions),
            ("geometry", api.read_geometry_metadata),
            ("qmap", api.read_qmap),
        ]
        while not stop.is_set():
            file = rng.choice(shared.files)
            kind, call = ops[rng.randrange(len(ops))]
            snapshot = shared.snapshot(file)
            t0 = time.perf_counter()
            try:
                result = call(file)
            except KeyError:
                result = None  # no mask version yet: stale if one had been acknowledged
            except ServerError as exc:
                with shared.lock:
                    shared.requests += 1
                    shared.server_errors.append(f"{kind} {file}: {exc}")
                continue
            except Exception as exc:
                with shared.lock:
                    shared.requests += 1
                    shared.other_errors.append(f"{kind} {file}: {type(exc).__name__}: {exc}")
                continue
            elapsed = time.perf_counter() - t0
            with shared.lock:
                shared.requests += 1
                shared.read_latency.append(elapsed)
                if kind == "versions":
                    newest = max((int(v["version"]) for v in result or []), default=0)
                    if newest < snapshot:
                        shared.stale_lists.append(f"{file}: listed v{newest} after v{snapshot}")
                elif kind == "mask":
                    if result is None:
                        if snapshot:
                            shared.stale_lists.append(f"{file}: no mask after v{snapshot}")
                    else:
                        token = str(result.description)
                        shared.mask_reads.append((file, snapshot, token))
                        if sha256_of(result.mask) != shared.token_sha.get(token):
                            shared.corrupt_reads.append(f"{file}: {token} data differ")


@pytest.mark.slow
@pytest.mark.timeout(scale(180, 400))
def test_64_readers_4_writers(tmp_path: Path) -> None:
    fig = Figure("R2", "load-with-writers", "64 readers and 4 writers on one server")
    root = tmp_path / "root"
    root.mkdir()
    files = []
    for i in range(N_FILES):
        write_native_file(root / f"f{i}.hdf5", DemoSpec(shape=SHAPE, n_delay=16, n_q=8, seed=i))
        files.append(f"f{i}.hdf5")
    shared = Shared(files)
    with serving(root, tmp_path / "server.log") as srv:
        stop = threading.Event()
        with ThreadPoolExecutor(READERS + WRITERS) as pool:
            futures = [pool.submit(_writer, shared, srv.url, w, stop) for w in range(WRITERS)]
            futures += [pool.submit(_reader, shared, srv.url, r, stop) for r in range(READERS)]
            started = time.monotonic()
            time.sleep(DURATION)  # the load lasts at least this long...
            # ...and until every writer has two acknowledged writes (bounded: a safety cap).
            while time.monotonic() - started < ACK_CAP and any(
                shared.acked_by.get(w, 0) < 2 for w in range(WRITERS)
            ):
                time.sleep(0.1)
            stop.set()
            duration = time.monotonic() - started
            for f in futures:
                f.result(timeout=120)
        # Afterwards: every acknowledged version is listed with the checksum it was sent with.
        lost = []
        with RemoteHDF5Facade(srv.url, timeout=60) as api:
            for file in files:
                listed = {int(v["version"]): v["sha256"] for v in api.list_mask_versions(file)}
                for version, digest in shared.acked.get(file, {}).items():
                    if listed.get(version) != digest:
                        lost.append(f"{file} v{version}")
        server_side_5xx = server_5xx(srv.url)

    stale_masks = [
        f"{file}: read {token} (v{shared.token_version.get(token)}) after v{snap}"
        for file, snap, token in shared.mask_reads
        if shared.token_version.get(token, 10**9) < snap
    ]
    n_acked = sum(len(v) for v in shared.acked.values())
    all_latency = shared.read_latency + shared.write_latency
    fig["duration (s)"] = round(duration, 1)
    fig["readers / writers"] = f"{READERS} / {WRITERS}"
    fig["requests"] = shared.requests
    fig["requests per second"] = round(shared.requests / duration, 1)
    fig["acknowledged writes"] = n_acked
    fig["mask reads checked for staleness"] = len(shared.mask_reads)
    fig["p50 latency (ms)"] = round(1000 * percentile(all_latency, 50), 1)
    fig["p99 latency (ms)"] = round(1000 * percentile(all_latency, 99), 1)
    fig["p50 / p99 read latency (ms)"] = (
        f"{1000 * percentile(shared.read_latency, 50):.1f} / "
        f"{1000 * percentile(shared.read_latency, 99):.1f}"
    )
    fig["p50 / p99 write latency (ms)"] = (
        f"{1000 * percentile(shared.write_latency, 50):.1f} / "
        f"{1000 * percentile(shared.write_latency, 99):.1f}"
    )
    fig.notes += (shared.server_errors + shared.other_errors + lost + stale_masks)[:50]
    fig.notes += shared.stale_lists[:20] + shared.corrupt_reads[:20]
    n5xx = max(len(shared.server_errors), server_side_5xx)
    fig.target("5xx responses", n5xx, "0", n5xx == 0)
    fig.target("lost versions", len(lost), "0", not lost)
    stale = len(stale_masks) + len(shared.stale_lists)
    fig.target("reads older than an acknowledged write", stale, "0", stale == 0)
    fig.target(
        "reads with wrong mask data", len(shared.corrupt_reads), "0", not shared.corrupt_reads
    )
    fig.target("other errors", len(shared.other_errors), "0", not shared.other_errors)
    fewest = min(shared.acked_by.get(w, 0) for w in range(WRITERS))
    fig.target("acknowledged writes", n_acked, ">= 8", n_acked >= 8)
    fig.target("acknowledged writes of the slowest writer", fewest, ">= 2", fewest >= 2)
    fig.check()
