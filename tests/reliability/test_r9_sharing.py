"""R9: sharing files with other programs, and races on the names under the data root.

* An h5py program writing one file in place ("a" mode, open-write-close in a loop, as a
  viewer saving fit results does) while the service writes masks into the same file and
  reads them back: no write of either side lost, no torn read, no lock left behind.
* A folder of the data root swapped for a symlink to a folder outside, over and over, while
  the service reads and writes files in it: nothing outside is ever served or changed.
* One flipped bit in real result files (native and APS 8-ID-I), read and written through
  the facade and the server: every failure a clear 4xx naming the file, never a 500.
* A full disk (a 1 MiB tmpfs in a user and mount namespace): the write answers 507 naming
  the cause, and the file is unchanged.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import h5py
import httpx
import numpy as np
import pytest

from xpcs_io.errors import FileBusyError, status_for
from xpcs_io.facade import HDF5Facade
from xpcs_io.locking import lock_path_for
from xpcs_io.pool import HDF5ConnectionPool
from xpcs_io.schemas import MaskSchema
from xpcs_io.tools.demo import DemoSpec, write_native_file
from xpcs_io.tools.demo_aps8idi import write_aps8idi_file

from ..conftest import free_port
from .support import Figure, geometry, mask_body, scale, server_5xx, serving

SPEC = DemoSpec(shape=(16, 16), n_delay=6, n_q=3)

# ---------------------------------------------------------------- in-place writer beside us

IN_PLACE = """
import h5py, os, sys, time
path, rounds = sys.argv[1], int(sys.argv[2])
refused = 0
for i in range(rounds):
    while True:
        try:
            with h5py.File(path, "a") as f:
                f.attrs[f"fit{i:05d}"] = i
                written_to = os.fstat(f.id.get_vfd_handle()).st_ino
            break
        except OSError as exc:
            if "unable to lock file" not in str(exc):
                raise
            refused += 1  # the service holds the file for a write: try again
            time.sleep(0.002)
    if os.stat(path).st_ino != written_to:
        print("stale", i, flush=True)  # it wrote into a file already replaced
    time.sleep(0.01)  # paced like a viewer saving fits, so the run spans the service's
    print(i, flush=True)
print("refused", refused, flush=True)
"""


def test_in_place_writer_and_service_writes(tmp_path: Path) -> None:
    rounds = scale(40, 200)
    fig = Figure("R9", "in-place-writer", "An h5py program writing in place beside the service")
    path = write_native_file(tmp_path / "shared.h5", SPEC)
    facade = HDF5Facade(pool=HDF5ConnectionPool(max_size=2), lock_timeout=30)
    shape = SPEC.shape
    other = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(IN_PLACE), str(path), str(rounds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    written: dict[int, str] = {}
    torn = busy_reads = busy_writes = reads = 0
    try:
        for i in range(rounds):
            mask = (np.arange(shape[0] * shape[1]).reshape(shape) + i) % 2
            schema = MaskSchema(
                mask=mask.astype(np.uint8), metadata=geometry(shape), description=f"m{i}"
            )
            try:
                record = facade.write_mask_version(path, schema, compression=None)
                written[int(record["version"])] = f"m{i}"
            except FileBusyError:
                busy_writes += 1
            try:
                got = facade.read_mask(path)
                reads += 1
                n = int(got.description[1:]) if got.description else -1
                expect = ((np.arange(shape[0] * shape[1]).reshape(shape) + n) % 2).astype(np.uint8)
                torn += int(not np.array_equal(got.mask, expect))
            except FileBusyError:
                busy_reads += 1
        out, err = other.communicate(timeout=300)
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
    assert other.returncode == 0, err[-2000:]
    refused = int(out.strip().splitlines()[-1].split()[1])
    stale = [line for line in out.splitlines() if line.startswith("stale")]
    fig["other_program_writes_into_a_replaced_file"] = len(stale)
    fig.target("writes of the other program into a replaced file", len(stale), "0", not stale)
    # This process's pool still holds the file: HDF5 would share that handle's view with
    # the check below (see README, "Limits"), so let it go first.
    facade.clear_pool()
    with h5py.File(path, "r") as f:
        fits = sorted(k for k in f.attrs if k.startswith("fit"))
        versions = f["simplemask/mask/versions"]
        kept = {int(name[1:]): versions[name].attrs["description"] for name in versions}
    lost_other = rounds - len(fits)
    lost_ours = sum(1 for v, d in written.items() if kept.get(v) != d)
    # Nothing left locked: an exclusive HDF5 lock and the service's lock can both be taken.
    stuck = 0
    for target in (path, lock_path_for(path)):
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                "import fcntl, sys\nf = open(sys.argv[1], 'rb+')\n"
                "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
                "fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)",
                str(target),
            ],
            capture_output=True,
        )
        stuck += int(done.returncode != 0)
    fig["rounds"] = rounds
    fig["service_writes_acknowledged"] = len(written)
    fig["service_writes_busy"] = busy_writes
    fig["reads"] = reads
    fig["reads_busy"] = busy_reads
    fig["other_program_opens_refused_then_retried"] = refused
    fig.target("writes of the other program lost", lost_other, "0", lost_other == 0)
    fig.target("acknowledged service writes lost", lost_ours, "0", lost_ours == 0)
    fig.target("torn reads", torn, "0", torn == 0)
    fig.target("locks left behind", stuck, "0", stuck == 0)
    fig.target(
        "service writes acknowledged",
        len(written),
        f">= {rounds // 2}",
        len(written) >= rounds // 2,
    )
    fig.check()


# ---------------------------------------------------------------- symlink swaps


def _tree(base: Path) -> tuple[Path, Path]:
    root, outside = base / "root", base / "outside"
    (root / "race").mkdir(parents=True)
    outside.mkdir()
    write_native_file(root / "race" / "x.h5", SPEC)
    write_native_file(outside / "x.h5", SPEC)
    with h5py.File(outside / "x.h5", "a") as f:
        del f["/xpcs/metadata/bcx"]
        f["/xpcs/metadata/bcx"] = 4242.0
    return root, outside


SWAPPER = """
import os, sys, time
race, real, outside = sys.argv[1:4]
swaps = 0
while swaps % 50 or not os.path.exists(os.environ["STOP_FILE"]):
    try:
        os.rename(race, real)
        os.symlink(outside, race)
        time.sleep(0.0005)
        os.unlink(race)
        os.rename(real, race)
        time.sleep(0.0005)
        swaps += 1
        if swaps == 1:
            print("swapping", flush=True)  # the readers and writers start from here
    except OSError:
        pass
print(swaps, flush=True)
"""


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_symlink_swaps_during_reads_and_writes(tmp_path: Path) -> None:
    n_reads, n_writes = scale(2000, 40000), scale(100, 4000)
    fig = Figure("R9", "symlink-swaps", "A folder swapped for a symlink out of the root")
    root, outside = _tree(tmp_path)
    before = _digest(outside)
    race, real = root / "race", root / ".race_real"
    done_flag = tmp_path / "stop"
    # The attacker is another program (a separate process, as a user with write access to
    # the data root would be), swapping until told to stop.
    swapper = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SWAPPER), str(race), str(real), str(outside)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "STOP_FILE": str(done_flag)},
    )
    facade = HDF5Facade(pool=HDF5ConnectionPool(max_size=4), root=root, lock_timeout=10)
    answers: dict[str, int] = {}
    escapes = 0
    lock = threading.Lock()
    schema = MaskSchema(mask=np.ones(SPEC.shape, np.uint8), metadata=geometry(SPEC.shape))

    def count(key: str, escaped: bool = False) -> None:
        nonlocal escapes
        with lock:
            answers[key] = answers.get(key, 0) + 1
            escapes += int(escaped)

    def worker(n: int, write: bool) -> None:
        # Several threads at once, as a server's thread pool runs them: handles replaced
        # while others still read from them are part of what is raced.
        for _ in range(n):
            try:
                if write:
                    facade.write_mask("race/x.h5", schema, compression=None)
                    count("write ok")
                else:
                    bcx = facade.read_geometry_metadata("race/x.h5").bcx
                    count("read ok", bcx == 4242.0)
            except Exception as exc:  # every refusal must be a mapped, non-5xx error
                count(f"{type(exc).__name__} {status_for(exc)}")

    threads = [threading.Thread(target=worker, args=(n_reads // 4, False)) for _ in range(4)]
    threads.append(threading.Thread(target=worker, args=(n_writes, True)))
    try:
        # Swapping before anyone reads: the swapper then goes on until told to stop (and to
        # a multiple of 50 swaps), however slowly it started.
        assert swapper.stdout is not None
        assert swapper.stdout.readline().strip() == "swapping"
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
    finally:
        done_flag.touch()
        out, _ = swapper.communicate(timeout=60)
        if race.is_symlink():
            race.unlink()
        if real.exists():
            os.rename(real, race)
    swaps = int(out.strip() or 0)
    changed = int(_digest(outside) != before)
    unmapped = sum(n for k, n in answers.items() if k.endswith((" None", " 500")))
    fig["swaps"] = swaps
    fig["answers"] = answers
    fig.target("answers carrying the outside file", escapes, "0", escapes == 0)
    fig.target("files outside changed or created", changed, "0", changed == 0)
    fig.target("unmapped errors (500)", unmapped, "0", unmapped == 0)
    fig.target("swaps during the run", swaps, ">= 10", swaps >= 10)
    fig.check()


# ---------------------------------------------------------------- damaged files

SEED = 20261130
CALLS = ("read_qmap", "read_g2_data", "read_geometry_metadata", "write_mask")
# A flip that makes HDF5 2.0 loop forever (never an error): see test_damaged_global_heap.
HANG_AFTER = 20.0


def _flipped(source: bytes, i: int) -> tuple[bytes, int]:
    """Flip ``i`` of a run: one bit of ``source`` chosen by its own seeded generator, so a
    child process restarted at any flip makes the same files."""
    rng = random.Random(SEED + i)
    data = bytearray(source)
    pos = rng.randrange(len(data))
    data[pos] ^= 1 << rng.randrange(8)
    return bytes(data), pos


def fuzz_child(root: str, sources: list[str], start: int, stop: int) -> None:
    """Run flips ``start``..``stop - 1`` through the local facade, one JSON line per flip
    (run in a child process, so a flip that hangs HDF5 costs only that child)."""
    import json

    facade = HDF5Facade(pool=HDF5ConnectionPool(max_size=4), root=Path(root))
    schema = MaskSchema(mask=np.ones(SPEC.shape, np.uint8), metadata=geometry(SPEC.shape))
    blobs = [Path(s).read_bytes() for s in sources]
    for i in range(start, stop):
        data, pos = _flipped(blobs[i % 2], i)
        name = f"flip{i}.h5"
        (Path(root) / name).write_bytes(data)
        print(json.dumps({"i": i, "pos": pos, "started": True}), flush=True)
        out: dict[str, str] = {}
        for call in CALLS[: 4 if i % 2 == 0 else 3]:
            try:
                if call == "write_mask":
                    facade.write_mask(name, schema)
                else:
                    getattr(facade, call)(name)
                out[call] = "ok"
            except Exception as exc:
                status = status_for(exc)
                named = name in str(exc)
                out[call] = f"{type(exc).__name__} {status}{'' if named else ' unnamed'}"
        print(json.dumps({"i": i, "pos": pos, "out": out}), flush=True)
        (Path(root) / name).unlink()


def _run_children(
    root: Path, sources: list[Path], flips: int
) -> tuple[list[dict[str, Any]], list[int]]:
    import json
    import selectors

    results: list[dict[str, Any]] = []
    hangs: list[int] = []
    start = 0
    code = (
        "import sys, json\n"
        "from tests.reliability.test_r9_sharing import fuzz_child\n"
        "fuzz_child(sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))"
    )
    while start < flips:
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                code,
                str(root),
                json.dumps([str(s) for s in sources]),
                str(start),
                str(flips),
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert child.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(child.stdout, selectors.EVENT_READ)
        current = start
        try:
            while True:
                if not sel.select(timeout=HANG_AFTER):
                    hangs.append(current)  # HDF5 never returned: skip this flip
                    break
                line = child.stdout.readline()
                if not line:
                    current = flips
                    break
                doc = json.loads(line)
                current = doc["i"]
                if "out" in doc:
                    results.append(doc)
                    current += 1
        finally:
            sel.close()
            if child.poll() is None:
                child.kill()
            child.wait()
            child.stdout.close()
        start = current + 1 if hangs and hangs[-1] == current else current
    return results, hangs


def test_flipped_bits_are_clear_4xx(tmp_path: Path) -> None:
    flips = scale(300, 5000)
    remote_every = 6
    fig = Figure("R9", "bit-flips", "One flipped bit in real result files")
    root = tmp_path / "root"
    root.mkdir()
    sources = [
        write_native_file(tmp_path / "native.h5", SPEC),
        write_aps8idi_file(tmp_path / "aps8idi.h5"),
    ]
    results, hangs = _run_children(root, sources, flips)
    outcomes: dict[str, int] = {}
    bad: list[str] = []
    for doc in results:
        for call, said in doc["out"].items():
            outcomes[said] = outcomes.get(said, 0) + 1
            if said != "ok" and (said.endswith(("None", "unnamed")) or " 5" in said):
                bad.append(f"flip {doc['i']} byte {doc['pos']} {call}: {said}")
    body = mask_body(np.ones(SPEC.shape, np.uint8))
    remote = 0
    with serving(root, tmp_path / "server.log") as srv, httpx.Client(timeout=60) as http:
        blobs = [s.read_bytes() for s in sources]
        for doc in results[::remote_every]:  # flips known not to hang HDF5
            data, pos = _flipped(blobs[doc["i"] % 2], doc["i"])
            name = f"remote{doc['i']}.h5"
            (root / name).write_bytes(data)
            for route in ("qmap", "g2", "geometry"):
                r = http.get(f"{srv.url}/v1/{route}", params={"file_path": name})
                remote += 1
                if r.status_code >= 500:
                    bad.append(f"flip {doc['i']} byte {pos} remote {route}: {r.status_code}")
            r = http.post(
                f"{srv.url}/v1/mask",
                params={"file_path": name},
                content=body,
                headers={"content-type": "application/msgpack"},
            )
            remote += 1
            if r.status_code >= 500:
                bad.append(f"flip {doc['i']} byte {pos} remote write: {r.status_code}")
        fives = server_5xx(srv.url)
    fig["flips"] = flips
    fig["local calls"] = sum(outcomes.values())
    fig["remote requests"] = remote
    fig["outcomes"] = outcomes
    fig["flips that hang HDF5 (library bug, skipped)"] = len(hangs)
    fig.notes.extend(bad[:10])
    fig.target("answers that are 5xx, unmapped or do not name the file", len(bad), "0", not bad)
    fig.target("5xx counted by the server", fives, "0", fives == 0)
    fig.target("flips run to an answer", len(results), f">= {flips - 5}", len(results) >= flips - 5)
    fig.check()


@pytest.mark.xfail(strict=True, reason="HDF5 loops forever on a damaged global heap")
def test_damaged_global_heap(tmp_path: Path) -> None:
    """One bit flipped in an object size of a global heap collection (where h5py keeps
    variable-length strings) makes HDF5 2.0 parse a free-space object of size 0 and loop
    forever in H5HG__cache_heap_deserialize: the read never answers, and h5py's global lock
    stays held. Kept as a known bug of the HDF5 library the service cannot interrupt."""
    fig = Figure(
        "R9",
        "global-heap-hang",
        "A damaged global heap collection",
        bug="BUG (HDF5 library): a global heap object size off by one bit makes HDF5 loop "
        "forever instead of failing; the request never answers",
    )
    path = write_native_file(tmp_path / "heap.h5", SPEC)
    data = bytearray(path.read_bytes())
    gcol = data.find(b"GCOL")
    assert gcol > 0, "the file has no global heap collection"
    third = gcol + 16 + 24 + 24  # header, then two 5-byte strings (16 + 8 bytes each)
    data[third + 8] ^= 0x10  # the third object's size: 3 -> 19
    path.write_bytes(bytes(data))
    code = (
        "import sys\nfrom xpcs_io.facade import HDF5Facade\n"
        "from xpcs_io.pool import HDF5ConnectionPool\n"
        "f = HDF5Facade(pool=HDF5ConnectionPool(max_size=1))\n"
        "for call in ('read_qmap', 'read_g2_data', 'read_geometry_metadata'):\n"
        "    try:\n        getattr(f, call)(sys.argv[1])\n"
        "    except Exception as exc:\n        print(type(exc).__name__, flush=True)\n"
        "print('answered', flush=True)\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=10
        )
        answered = "answered" in done.stdout
    except subprocess.TimeoutExpired:
        answered = False
    fig["answered within 10 s"] = answered
    fig.target("reads of the damaged file answered", answered, "True", answered)
    fig.check()


# ---------------------------------------------------------------- full disk

FULL_DISK = """
import hashlib, os, sys, subprocess, time
import numpy as np
import httpx
from xpcs_io.tools.demo import DemoSpec, write_native_file
from xpcs_io.errors import InsufficientStorageError
from xpcs_io.facade import HDF5Facade
from xpcs_io.pool import HDF5ConnectionPool
from xpcs_io.schemas import GeometryMetadata, MaskSchema
mnt = sys.argv[1]
path = write_native_file(os.path.join(mnt, "run.h5"), DemoSpec(shape=(64, 64), n_delay=6, n_q=3))
with open(os.path.join(mnt, "filler"), "wb") as f:  # leave less room than a copy needs
    free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
    f.write(b"\\0" * max(0, free - os.path.getsize(path) // 2))
digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
geo = GeometryMetadata(bcx=1.0, bcy=1.0, det_dist=5000.0, lambda_=1.54, pix_dim=0.075, shape=(64, 64))
try:
    HDF5Facade(pool=HDF5ConnectionPool(max_size=1)).write_mask(path, MaskSchema(mask=np.ones((64, 64), np.uint8), metadata=geo))
    print("local ok")
except InsufficientStorageError as exc:
    print("local InsufficientStorageError", exc)
port = int(sys.argv[2])
srv = subprocess.Popen([sys.executable, "-m", "xpcs_io.tools.cli", "serve", "--root", mnt, "--port", str(port), "--log-level", "warning"])
try:
    for _ in range(300):
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            break
        except httpx.TransportError:
            time.sleep(0.05)
    import msgpack
    raw = msgpack.packb({"mask": {"dtype": "|u1", "shape": [64, 64], "data": np.ones(64 * 64, np.uint8).tobytes()}, "metadata": {"bcx": 1.0, "bcy": 1.0, "det_dist": 5000.0, "lambda_": 1.54, "pix_dim": 0.075, "shape": [64, 64]}}, use_bin_type=True)
    r = httpx.post(f"http://127.0.0.1:{port}/v1/mask", params={"file_path": "run.h5"}, content=raw, headers={"content-type": "application/msgpack"}, timeout=60)
    print("remote", r.status_code, r.json().get("error"), r.json().get("detail"))
finally:
    srv.terminate()
    srv.wait(30)
print("unchanged", hashlib.sha256(open(path, "rb").read()).hexdigest() == digest)
print("leftovers", len([n for n in os.listdir(mnt) if "xpcs-io-tmp" in n]))
"""


def test_full_disk_is_507_and_the_file_unchanged(tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if unshare is None:
        pytest.skip("unshare is needed to mount a small tmpfs")
    probe = subprocess.run(
        [unshare, "-rm", "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
        capture_output=True,
    )
    if probe.returncode != 0:
        pytest.skip("no user/mount namespaces here: cannot mount a small filesystem")
    fig = Figure("R9", "full-disk", "A write on a full disk")

    script = tmp_path / "full.py"
    script.write_text(FULL_DISK)
    cmd = (
        f"mount -t tmpfs -o size=1m tmpfs {mnt} && "
        f"exec {sys.executable} {script} {mnt} {free_port()}"
    )
    done = subprocess.run(
        [unshare, "-rm", "sh", "-c", cmd],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line.replace(str(mnt), "<tmpfs>") for line in done.stdout.splitlines()]
    fig.notes.extend(lines)
    local = next((line for line in lines if line.startswith("local")), "")
    remote = next((line for line in lines if line.startswith("remote")), "")
    fig.target(
        "local error", local[:60], "InsufficientStorageError", "InsufficientStorage" in local
    )
    fig.target("remote status", remote[:40], "507", remote.startswith("remote 507"))
    unchanged = "unchanged True" in lines
    left = next((line.split()[1] for line in lines if line.startswith("leftovers")), "?")
    fig.target("file unchanged", unchanged, "True", unchanged)
    fig.target("temporary copies left", left, "0", left == "0")
    assert done.returncode == 0, done.stderr[-2000:]
    fig.check()
