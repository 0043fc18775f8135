"""R1: a server killed with SIGKILL at random moments while it writes masks loses nothing it
acknowledged and never leaves a damaged file.

One client writes Eiger-sized masks (1000 x 1000 uint8 bounded, 2000 x 2000 in the soak) into
two files through a real ``xpcs-io serve``; timers SIGKILL the server at random moments of the
writes (within 1.5x the measured write time, so most land inside the atomic edit). A write
that fails with a connection error is "unacknowledged" and the client carries on against a
server restarted on the same root. After every kill each file must open with h5py with every
version matching its recorded sha256; at the end every acknowledged version must read back
bit-identical over HTTP, versions must be contiguous, and every stored version must be one
that was sent (no torn or mixed version).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import httpx
import numpy as np
import numpy.typing as npt
import pytest

from xpcs_io import wire
from xpcs_io.atomic import TMP_MARK
from xpcs_io.client import RemoteHDF5Facade
from xpcs_io.tools.demo import DemoSpec, write_native_file

from ..conftest import Server, start_server
from .support import SOAK, Figure, mask_body, scale, sha256_of, stop

GROUP = "/simplemask/mask"
SHAPE = scale((1000, 1000), (2000, 2000))
WRITES = scale(30, 100)
KILLS = 10  # bounded: exactly this many; soak: each write is a candidate with KILL_CHANCE
KILL_CHANCE = 0.35
FILES = ("run-a.hdf5", "run-b.hdf5")


def _mask(i: int) -> npt.NDArray[np.uint8]:
    # Random 0/1 pixels compress poorly, so each write costs real gzip and fsync time.
    rng = np.random.default_rng(1000 + i)
    return (rng.random(SHAPE) < 0.93).astype(np.uint8)


@dataclass
class Ledger:
    sent: dict[str, set[str]] = field(default_factory=lambda: {f: set() for f in FILES})
    acked: list[tuple[str, int, str]] = field(default_factory=list)  # file, version, sha
    unacked: int = 0
    other_failures: list[str] = field(default_factory=list)


def _post(url: str, file: str, body: bytes) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/mask",
        params={"file_path": file},
        content=body,
        headers={"content-type": wire.MEDIA_TYPE, "accept": wire.MEDIA_TYPE},
        timeout=120,
    )


def _write(url: str, file: str, i: int, ledger: Ledger) -> None:
    mask = _mask(i)
    digest = sha256_of(mask)
    ledger.sent[file].add(digest)
    try:
        r = _post(url, file, mask_body(mask, description=f"write {i}"))
    except httpx.TransportError:
        ledger.unacked += 1
        return
    if r.status_code != 201:
        ledger.other_failures.append(f"{r.status_code} {r.text[:200]}")
        return
    record: dict[str, Any] = wire.unpack(r.content)
    assert record["sha256"] == digest, "the server recorded another checksum than was sent"
    ledger.acked.append((file, int(record["version"]), digest))


def _file_intact(path: Path, sent: set[str]) -> tuple[bool, str]:
    """Open with h5py and check every version against its sha256 and what was sent."""
    if not path.exists():
        return True, "not created yet"
    try:
        with h5py.File(path, "r", locking=False) as f:
            if GROUP not in f:
                return True, "no versions yet"
            grp = f[GROUP]
            numbers = sorted(int(n[1:]) for n in grp["versions"])
            if numbers != list(range(1, len(numbers) + 1)):
                return False, f"versions not contiguous: {numbers}"
            if int(grp.attrs["current_version"]) != numbers[-1]:
                return False, "current_version is not the newest version"
            for n in numbers:
                vgrp = grp[f"versions/v{n:06d}"]
                digest = sha256_of(vgrp["mask"][()])
                if digest != vgrp.attrs["sha256"]:
                    return False, f"v{n}: data do not match the recorded sha256"
                if digest not in sent:
                    return False, f"v{n}: holds a mask that was never sent"
            if sha256_of(grp["mask"][()]) != grp[f"versions/v{numbers[-1]:06d}"].attrs["sha256"]:
                return False, "the current mask is not the newest version"
    except Exception as exc:  # anything h5py cannot read is damage
        return False, f"{type(exc).__name__}: {exc}"
    return True, "ok"


@pytest.mark.slow
@pytest.mark.timeout(scale(240, 1500))
def test_sigkill_during_writes_loses_nothing_acknowledged(tmp_path: Path) -> None:
    fig = Figure("R1", "crash-during-writes", "SIGKILL at random moments during mask writes")
    root = tmp_path / "root"
    root.mkdir()
    for name in FILES:
        write_native_file(root / name, DemoSpec(shape=(64, 64), n_delay=8, n_q=4))
    log = tmp_path / "server.log"
    rng = random.Random(20240611)
    ledger = Ledger()

    srv: Server = start_server(root, log)
    try:
        # Warm up (one acknowledged write per file) and time a write, to aim the kills.
        durations = []
        for j, name in enumerate(FILES):
            t0 = time.perf_counter()
            _write(srv.url, name, -1 - j, ledger)
            durations.append(time.perf_counter() - t0)
        t_write = max(durations)
        schedule = set() if SOAK else set(rng.sample(range(WRITES), KILLS))

        kills = in_flight_kills = tmp_left = intact_after_kill = unexpected_exits = 0
        damage: list[str] = []
        for i in range(WRITES):
            name = FILES[i % len(FILES)]
            kill = rng.random() < KILL_CHANCE if SOAK else i in schedule
            timer = None
            if kill:
                timer = threading.Timer(rng.uniform(0.0, 1.5 * t_write), srv.process.kill)
                timer.start()
            before = ledger.unacked
            _write(srv.url, name, i, ledger)
            if timer is None:
                if srv.process.poll() is not None:  # died without being killed
                    unexpected_exits += 1
                    srv = start_server(root, log)
                continue
            timer.join()
            srv.process.wait(timeout=30)
            kills += 1
            in_flight_kills += ledger.unacked > before
            tmp_left += any(TMP_MARK in p.name for p in root.iterdir())
            results = [_file_intact(root / f, ledger.sent[f]) for f in FILES]
            if all(ok for ok, _ in results):
                intact_after_kill += 1
            else:
                damage += [f"after kill {kills}: {why}" for ok, why in results if not ok]
            srv = start_server(root, log)

        # Every file is written once more, which also removes any leftover temporary copy.
        for j, name in enumerate(FILES):
            _write(srv.url, name, WRITES + j, ledger)
        leftovers = [p.name for p in root.iterdir() if TMP_MARK in p.name]

        acked_ok = 0
        bad_versions: list[str] = []
        contiguous = True
        listed_total = 0
        with RemoteHDF5Facade(srv.url, timeout=120) as api:
            listed = {name: api.list_mask_versions(name) for name in FILES}
            for name, records in listed.items():
                numbers = [int(r["version"]) for r in records]
                listed_total += len(numbers)
                contiguous &= numbers == list(range(1, len(numbers) + 1))
                for r in records:
                    if r["sha256"] not in ledger.sent[name]:
                        bad_versions.append(f"{name} v{r['version']}: never sent")
            for name, version, digest in ledger.acked:
                got = api.read_mask(name, version=version)
                record = listed[name][version - 1] if version <= len(listed[name]) else None
                if (
                    sha256_of(got.mask) == digest
                    and record is not None
                    and record["sha256"] == digest
                ):
                    acked_ok += 1
                else:
                    bad_versions.append(f"{name} v{version}: acknowledged data changed or lost")
        final = [_file_intact(root / f, ledger.sent[f]) for f in FILES]
    finally:
        stop(srv)

    n_acked = len(ledger.acked)
    fig["mask shape"] = list(SHAPE)
    fig["writes sent"] = WRITES + 2 * len(FILES)
    fig["write time (s, measured)"] = round(t_write, 3)
    fig["acknowledged"] = n_acked
    fig["unacknowledged (connection error)"] = ledger.unacked
    fig["kills"] = kills
    fig["kills during an in-flight write"] = in_flight_kills
    fig["kills that left a temporary copy"] = tmp_left
    fig["versions stored"] = listed_total
    fig.notes += damage + bad_versions + ledger.other_failures
    fig.target(
        "files intact / kills", f"{intact_after_kill}/{kills}", "all", intact_after_kill == kills
    )
    fig.target(
        "acknowledged versions intact / acknowledged",
        f"{acked_ok}/{n_acked}",
        "all",
        acked_ok == n_acked,
    )
    fig.target("versions contiguous", contiguous, "True", contiguous)
    fig.target("torn or foreign versions", len(bad_versions), "0", not bad_versions)
    fig.target(
        "files intact at the end", all(ok for ok, _ in final), "True", all(ok for ok, _ in final)
    )
    fig.target("temporary copies left after the next write", len(leftovers), "0", not leftovers)
    fig.target(
        "non-connection write failures", len(ledger.other_failures), "0", not ledger.other_failures
    )
    fig.target("server exits nobody caused", unexpected_exits, "0", unexpected_exits == 0)
    fig.target("kills", kills, f">= {scale(KILLS, 1)}", kills >= scale(KILLS, 1))
    fig.check()
