"""Cold reads sent from the file (file plans, sendfile) by a real server with its result cache
off: the bytes equal the HDF5 read's, the path is taken where it may be and not elsewhere,
and a file rewritten in place never yields a wrong answer."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blosc2
import h5py
import httpx
import msgpack
import numpy as np
import pytest

from tests.conftest import Server, start_server
from tests.nginxsupport import running_nginx, shipped_conf
from xpcs_io import arraycodec, wire
from xpcs_io.demo import DemoSpec, write_native_file
from xpcs_io.errors import FileBusyError, FileMarkedOpenError, RemoteConnectionError
from xpcs_io.extents import Provenance
from xpcs_io.facade import HDF5Facade
from xpcs_io.pool import HDF5ConnectionPool
from xpcs_io.server import fileplans
from xpcs_io.server.planresponse import TAIL

# Large enough that part of each answer goes out with sendfile (the last TAIL bytes never do).
SHAPE = (1024, max(1024, (TAIL // (4 * 1024) + 1024) // 3))
MAPS = ("sqmap", "dqmap", "phis", "mask", "partition_map")
NO_CACHE = {"XPCS_IO_CACHE_BYTES": "0"}
MSGPACK = {"accept": "application/msgpack"}


def _rechunk(src: Path, dst: Path, **kw: object) -> None:
    with h5py.File(src, "r") as fin, h5py.File(dst, "w") as fout:
        fin.copy("xpcs/g2", fout, "xpcs/g2")
        fin.copy("xpcs/metadata", fout, "xpcs/metadata")
        grp = fout.create_group("xpcs/qmap")
        for name, obj in fin["xpcs/qmap"].items():
            if name in MAPS:
                grp.create_dataset(name, data=obj[()], **kw)
            else:
                grp[name] = obj[()]


@pytest.fixture(scope="module")
def cold_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cold")
    write_native_file(root / "contiguous.h5", DemoSpec(shape=SHAPE, n_delay=8, n_q=16))
    _rechunk(root / "contiguous.h5", root / "rows.h5", chunks=(100, SHAPE[1]))
    _rechunk(root / "contiguous.h5", root / "gzip.h5", chunks=(100, SHAPE[1]), compression="gzip")
    return root


@pytest.fixture(scope="module")
def cold_server(cold_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(cold_root, tmp_path_factory.mktemp("logs") / "cold.log", env=NO_CACHE)
    yield srv
    srv.stop()


def _counters(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics").text
    found = re.findall(r"^xpcs_io_zero_copy_(\w+)_total ([0-9.e+]+)$", text, re.M)
    return {name: float(value) for name, value in found}


def _qmap_bytes_sent(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    found = re.search(r'^xpcs_io_response_bytes_total\{route="/v1/qmap"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def _qmap_done(url: str) -> float:
    """Requests to /v1/qmap the server finished with: the request duration's count, updated
    last (after the zero-copy and byte counters, which move after the client has the last
    byte)."""
    text = httpx.get(f"{url}/metrics").text
    pattern = r'^xpcs_io_request_duration_seconds_count\{[^}]*route="/v1/qmap"[^}]*\} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def _settle(url: str, done_before: float, n: int) -> None:
    """Wait (bounded) until the server has finished ``n`` more /v1/qmap requests than
    ``done_before``, so every counter of theirs is final."""
    for _ in range(200):
        if _qmap_done(url) >= done_before + n:
            return
        time.sleep(0.05)
    raise AssertionError(f"the server did not finish {n} /v1/qmap requests")


def _warm(url: str, name: str, headers: dict[str, str] = MSGPACK) -> None:
    """Read ``name`` until an answer is sent from its plan (learnt in the background after a
    read through HDF5), each read finished before the next, so the plan of the file as it
    is now exists and a baseline taken next includes these reads. (A count of plans learnt
    can grow for an older state of the file, learnt late on a busy machine.)"""
    for _ in range(400):  # bounded: a safety cap
        before = _counters(url)["responses"]
        done = _qmap_done(url)
        r = httpx.get(f"{url}/v1/qmap", params={"file_path": name}, headers=headers, timeout=60)
        assert r.status_code == 200
        _settle(url, done, 1)
        if _counters(url)["responses"] > before:
            return
        time.sleep(0.05)
    raise AssertionError(f"no answer for {name} was sent from a plan")


def _warm_client(api: Any, url: str, name: str) -> None:
    """``_warm`` through the client ``api`` itself: its requests name the group, so their
    plans are not the plain GET's (the plan key is the request as sent)."""
    for _ in range(400):  # bounded: a safety cap
        before = _counters(url)["responses"]
        done = _qmap_done(url)
        api.read_qmap(name)
        _settle(url, done, 1)
        if _counters(url)["responses"] > before:
            return
        time.sleep(0.05)
    raise AssertionError(f"no answer for {name} was sent from a plan")


def _expected_body(root: Path, name: str) -> bytes:
    pool = HDF5ConnectionPool(max_size=2)
    try:
        return wire.pack(HDF5Facade(pool, root=root).read_qmap(name).to_dict())
    finally:
        pool.shutdown()


@pytest.mark.parametrize("name", ["contiguous.h5", "rows.h5"])
def test_cold_read_sends_the_file_bytes_with_sendfile(
    cold_server: Server, cold_root: Path, name: str
) -> None:
    expected = _expected_body(cold_root, name)
    _warm(cold_server.url, name)
    before = _counters(cold_server.url)
    counted = _qmap_bytes_sent(cold_server.url)
    done = _qmap_done(cold_server.url)
    params = {"file_path": name}
    bodies = [
        httpx.get(f"{cold_server.url}/v1/qmap", params=params, headers=MSGPACK, timeout=60)
        for _ in range(2)
    ]
    _settle(cold_server.url, done, 2)
    after = _counters(cold_server.url)
    for r in bodies:
        assert r.status_code == 200
        assert int(r.headers["content-length"]) == len(expected)
        assert r.content == expected
    # Both sent from the file, once the first read (through HDF5) taught the plan.
    assert after["responses"] - before["responses"] == 2
    # All but the msgpack headers before the private tail went out with sendfile.
    sent = after["sendfile_bytes"] - before["sendfile_bytes"]
    assert 2 * (len(expected) - TAIL - 1024) < sent <= 2 * (len(expected) - TAIL)
    assert after["aborts"] == before["aborts"]
    assert _qmap_bytes_sent(cold_server.url) - counted == 2 * len(expected)


@pytest.mark.parametrize("name", ["contiguous.h5", "rows.h5"])
@pytest.mark.parametrize("preset", ["blosc2-zstd", "blosc2-lz4"])
def test_cold_compressed_read_is_read_and_compressed_from_the_file(
    cold_server: Server, cold_root: Path, preset: str, name: str
) -> None:
    headers = {**MSGPACK, "xpcs-array-codec": preset}
    _warm(cold_server.url, name, headers)
    before = _counters(cold_server.url)
    done = _qmap_done(cold_server.url)
    params = {"file_path": name}
    answers = [
        httpx.get(f"{cold_server.url}/v1/qmap", params=params, headers=headers, timeout=60)
        for _ in range(2)
    ]
    _settle(cold_server.url, done, 2)
    assert _counters(cold_server.url)["responses"] == before["responses"] + 2
    # Compressed while sent; once pieces were compressed, answers say the server's pace.
    assert all("content-length" not in r.headers for r in answers)
    assert int(answers[-1].headers[arraycodec.RATE_HEADER]) > 1e6  # raw bytes/s
    with h5py.File(cold_root / name, "r") as f:
        for r in answers:
            assert r.status_code == 200
            got = wire.unpack(r.content, codecs=True)
            for field in MAPS:
                np.testing.assert_array_equal(got[field], f[f"xpcs/qmap/{field}"][()])
            assert got["sqmap_unit"] == "nm^-1"
        # Decoded with plain msgpack + blosc2: the big maps came in pieces, one chunk each.
        body = msgpack.unpackb(answers[0].content)
        for field in MAPS:
            m, want = body[field], f[f"xpcs/qmap/{field}"][()]
            if field in ("sqmap", "dqmap", "phis"):
                assert m["codec"] == "blosc2"
                assert len(m["data"]) == -(-want.nbytes // (4 << 20))
            if m.get("codec") == "blosc2":
                raw = b"".join(blosc2.decompress2(piece) for piece in m["data"])
            else:
                raw = m["data"]
            got = np.frombuffer(raw, np.dtype(m["dtype"])).reshape(m["shape"])
            np.testing.assert_array_equal(got, want)


def test_filtered_datasets_go_through_hdf5(cold_server: Server, cold_root: Path) -> None:
    before = _counters(cold_server.url)
    done = _qmap_done(cold_server.url)
    params = {"file_path": "gzip.h5"}
    for _ in range(2):
        r = httpx.get(f"{cold_server.url}/v1/qmap", params=params, headers=MSGPACK, timeout=60)
        assert r.content == _expected_body(cold_root, "gzip.h5")
    _settle(cold_server.url, done, 2)
    assert _counters(cold_server.url)["responses"] == before["responses"]


WRITER = textwrap.dedent(
    """
    import sys, time
    import h5py
    import numpy as np
    path, rounds, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    first = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    for i in range(first, first + rounds):
        while True:
            try:
                f = h5py.File(path, "r+")
                break
            except OSError:  # the server's reader holds HDF5's lock for a moment
                time.sleep(0.001)
        with f:
            for name in ("sqmap", "dqmap", "phis"):
                ds = f["xpcs/qmap/" + name]
                ds[...] = np.full(ds.shape, float(i % 7 + 1), ds.dtype)
        time.sleep(pause)
    print("done", flush=True)
    """
)


def _writer(path: Path, rounds: int, pause: float, first: int = 0) -> subprocess.Popen[str]:
    """Rewrites the three float maps of ``path`` in place ``rounds`` times; round ``i``
    (counted from ``first``) fills them with ``i % 7 + 1``."""
    cmd = [sys.executable, "-c", WRITER, str(path), str(rounds), str(pause), str(first)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


def _one_value(api: Any, name: str) -> float:
    """The single value the three float maps of ``name`` hold (fails on a mixed answer)."""
    q = api.read_qmap(name)
    values = {float(q.sqmap.flat[0])}
    for field in ("sqmap", "dqmap", "phis"):
        arr = getattr(q, field)
        values |= {float(arr.min()), float(arr.max())}
    # One write's state: every pixel of the three maps holds the same value.
    assert len(values) == 1, f"mixed answer: {sorted(values)[:5]}"
    return values.pop()


def test_a_rewrite_in_place_never_gives_a_mixed_answer(
    cold_server: Server, cold_root: Path
) -> None:
    from xpcs_io.client import RemoteHDF5Facade

    path = cold_root / "rewritten.h5"
    _rechunk(cold_root / "contiguous.h5", path)
    with h5py.File(path, "r+") as f:
        for field in ("sqmap", "dqmap", "phis"):
            f[f"xpcs/qmap/{field}"][...] = 0.0
    with RemoteHDF5Facade(cold_server.url, timeout=60, compression="none") as api:
        # Reads racing a writer: whichever path each read takes, never a mixed answer.
        writer = _writer(path, 12, 0.5)
        good = 0
        while writer.poll() is None or good < 3:
            try:
                _one_value(api, "rewritten.h5")
            except (RemoteConnectionError, FileBusyError, FileMarkedOpenError):
                continue
            good += 1
        assert writer.wait(60) == 0
        writer.communicate()
        # Then step by step: each version is sent from its plan once learnt, and never once
        # the file was rewritten (no stale answer).
        for _ in range(3):
            _warm_client(api, cold_server.url, "rewritten.h5")
            before = _counters(cold_server.url)["responses"]
            done = _qmap_done(cold_server.url)
            value = _one_value(api, "rewritten.h5")
            _settle(cold_server.url, done, 1)
            assert _counters(cold_server.url)["responses"] == before + 1
            rewrite = _writer(path, 1, 0, first=int(value))  # writes value % 7 + 1
            assert rewrite.wait(60) == 0
            rewrite.communicate()
            before = _counters(cold_server.url)["responses"]
            done = _qmap_done(cold_server.url)
            assert _one_value(api, "rewritten.h5") == float(int(value) % 7 + 1)
            _settle(cold_server.url, done, 1)
            assert _counters(cold_server.url)["responses"] == before


def test_a_change_while_sending_resets_the_connection(cold_server: Server, cold_root: Path) -> None:
    path = cold_root / "changed.h5"
    _rechunk(cold_root / "contiguous.h5", path)
    _warm(cold_server.url, "changed.h5")
    before = _counters(cold_server.url)
    host, port = cold_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        sock.sendall(
            f"GET /v1/qmap?file_path=changed.h5 HTTP/1.1\r\nHost: {host}\r\n"
            "Accept: application/msgpack\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
        received = len(head.split(b"\r\n\r\n", 1)[1])
        # The server is stuck sending into a full connection; the file changes meanwhile.
        rewrite = _writer(path, 1, 0)
        assert rewrite.wait(60) == 0
        rewrite.communicate()
        try:
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            pass
    assert received < length
    after = _counters(cold_server.url)
    assert after["aborts"] == before["aborts"] + 1


def test_two_workers_send_from_the_file(cold_root: Path, tmp_path: Path) -> None:
    srv = start_server(cold_root, tmp_path / "w.log", env=NO_CACHE, args=("--workers", "2"))
    try:
        expected = _expected_body(cold_root, "contiguous.h5")
        params = {"file_path": "contiguous.h5"}
        with httpx.Client(timeout=60) as http:
            for _ in range(6):
                r = http.get(f"{srv.url}/v1/qmap", params=params, headers=MSGPACK)
                assert r.content == expected
                with httpx.Client(timeout=60) as fresh:  # a new connection: maybe the other worker
                    r = fresh.get(f"{srv.url}/v1/qmap", params=params, headers=MSGPACK)
                    assert r.content == expected
        # Both workers' counters, merged: the other worker's arrive through files it
        # publishes every 0.2 s, and plans are learnt in the background, so poll (bounded).
        for _ in range(600):
            counts = _counters(srv.url)
            if counts["responses"] >= 1 and counts["sendfile_bytes"] > 0:
                break
            time.sleep(0.05)
        assert counts["responses"] >= 1, counts
        assert counts["sendfile_bytes"] > 0, counts
    finally:
        srv.stop()


def test_without_the_extension_the_file_bytes_are_read_and_sent(cold_root: Path) -> None:
    """In process (no uvicorn, so no sendfile): the plan's bytes go out as body messages."""
    from xpcs_io.server.app import create_app
    from xpcs_io.server.settings import Settings

    app = create_app(Settings(data_root=cold_root, allowed_hosts="app", cache_bytes=0))
    expected = _expected_body(cold_root, "rows.h5")

    async def run() -> tuple[list[bytes], dict[str, int]]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
                bodies = [
                    (
                        await http.get("/v1/qmap", params={"file_path": "rows.h5"}, headers=MSGPACK)
                    ).content
                    for _ in range(2)
                ]
            return bodies, app.state.plans.stats()

    bodies, stats = asyncio.run(run())
    assert bodies == [expected, expected]
    assert stats["zero_copy_responses"] == 1
    assert stats["zero_copy_sendfile_bytes"] == 0
    assert stats["zero_copy_copied_bytes"] > 0.9 * len(expected)


def test_cold_reads_through_nginx(cold_root: Path, cold_server: Server, tmp_path: Path) -> None:
    upstream = cold_server.url.removeprefix("http://")
    conf = shipped_conf().replace("set $replicas replica:8000;", "set $replicas cold;")
    conf = conf.replace("server {", f"upstream cold {{ server {upstream}; }}\n    server {{", 1)
    with running_nginx(tmp_path, conf) as nginx:
        _warm(cold_server.url, "contiguous.h5")
        before = _counters(cold_server.url)
        done = _qmap_done(cold_server.url)
        expected = _expected_body(cold_root, "contiguous.h5")
        params = {"file_path": "contiguous.h5"}
        for _ in range(2):
            r = httpx.get(f"{nginx.url}/v1/qmap", params=params, headers=MSGPACK, timeout=60)
            assert r.content == expected
        _settle(cold_server.url, done, 2)
        assert _counters(cold_server.url)["sendfile_bytes"] > before["sendfile_bytes"]


def test_learning_copies_no_array_once_the_plan_cannot_be_kept() -> None:
    """A result whose arrays are not the file's bytes (a gzip map) has no plan to learn:
    the learning pass keeps small arrays as read-only copies up to ``MAX_KEPT_BYTES``, and
    past that copies nothing (the plan is given up), so a large answer is not copied."""
    small = np.arange(1000, dtype="<f4")
    big = np.zeros(fileplans.MAX_KEPT_BYTES // 4 + 1, "<f4")
    kept = [0]
    skeleton = fileplans._replace({"a": small, "b": big}, Provenance(), "/nowhere", kept)
    assert kept[0] == small.nbytes + big.nbytes > fileplans.MAX_KEPT_BYTES
    assert skeleton["a"] is not small
    assert not skeleton["a"].flags.writeable
    np.testing.assert_array_equal(skeleton["a"], small)
    assert skeleton["b"] is big  # not copied: ``learn`` keeps no plan past the budget


def test_cold_compressed_read_sends_an_incompressible_map_plain(
    cold_server: Server, cold_root: Path
) -> None:
    path = cold_root / "noise.h5"
    _rechunk(cold_root / "contiguous.h5", path)
    bits = np.random.default_rng(7).integers(0, 2**32, SHAPE, dtype="<u4") & 0xBFFFFFFF
    noise = bits.view("<f4")  # finite (the exponent below 0xff) and incompressible
    with h5py.File(path, "r+") as f:
        f["xpcs/qmap/sqmap"][...] = noise
    headers = {**MSGPACK, "xpcs-array-codec": "blosc2-zstd"}
    _warm(cold_server.url, "noise.h5", headers)
    r = httpx.get(
        f"{cold_server.url}/v1/qmap", params={"file_path": "noise.h5"}, headers=headers, timeout=60
    )
    assert r.status_code == 200
    body = msgpack.unpackb(r.content)
    assert list(body["sqmap"]) == ["dtype", "shape", "data"]
    assert body["dqmap"]["codec"] == "blosc2"
    got = wire.unpack(r.content, codecs=True)
    np.testing.assert_array_equal(got["sqmap"].view("<u4"), noise.view("<u4"))
