"""Many files in one call: ``read_g2_data_many`` / ``read_qmap_many`` on both sides, one item
per file in order, each the result or the exception that file alone raised."""

from __future__ import annotations

import asyncio
import gc
import os
import re
import time
from pathlib import Path
from typing import Any

import h5py
import httpx
import msgpack
import numpy as np
import pytest

from tests.conftest import Server, Side
from xpcs_io import wire
from xpcs_io.client import AsyncRemoteHDF5Facade, RemoteHDF5Facade
from xpcs_io.errors import HDF5ValidationError, ServerBusyError
from xpcs_io.facade import HDF5Facade
from xpcs_io.schemas import G2Data, QMapSchema
from xpcs_io.server import manysend
from xpcs_io.server.manysend import result_item, slices
from xpcs_io.tools.demo import DemoSpec, write_native_file


def _repeats(workdir: Path, n: int) -> list[Path]:
    return [
        write_native_file(workdir / f"rep{i:03d}.hdf5", DemoSpec(shape=(24, 20), n_delay=8, n_q=5))
        for i in range(n)
    ]


def _mixed(root: Path, workdir: Path) -> tuple[list[str], list[Path]]:
    good = _repeats(workdir, 3)
    corrupt = workdir / "corrupt.hdf5"
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)

    def rel(p: Path) -> str:
        return p.relative_to(root).as_posix()

    paths = [
        rel(good[0]),
        rel(workdir / "missing.hdf5"),
        rel(good[1]),
        rel(corrupt),
        "../outside.hdf5",
        rel(good[2]),
    ]
    return paths, good


def _facade(side: Side) -> Any:
    # Paths under a root on both sides, so an escape is refused the same way.
    return HDF5Facade(root=side.root) if side.name == "local" else side.api


def test_g2_many_items_in_order_with_per_file_errors(side: Side, workdir: Path) -> None:
    paths, good = _mixed(side.root, workdir)
    items = _facade(side).read_g2_data_many(paths)
    assert len(items) == 6
    assert isinstance(items[1], FileNotFoundError)
    assert isinstance(items[3], HDF5ValidationError)
    assert isinstance(items[4], PermissionError)
    for index, path in ((0, good[0]), (2, good[1]), (5, good[2])):
        item = items[index]
        assert isinstance(item, G2Data)
        with h5py.File(path, "r") as f:
            np.testing.assert_array_equal(item.g2, f["/xpcs/g2/g2"][()])
            np.testing.assert_array_equal(item.delay_times, f["/xpcs/g2/delay_times"][()])


def test_g2_many_one_q_bin_and_qmaps(side: Side, workdir: Path) -> None:
    good = _repeats(workdir, 4)
    items = side.api.read_g2_data_many([side.path(p) for p in good], q_idx=2)
    for item, path in zip(items, good, strict=True):
        assert isinstance(item, G2Data)
        with h5py.File(path, "r") as f:
            np.testing.assert_array_equal(item.g2[:, 0], f["/xpcs/g2/g2"][:, 2])
    maps = side.api.read_qmap_many([side.path(good[0]), side.path(workdir / "nope.hdf5")])
    assert isinstance(maps[0], QMapSchema)
    assert isinstance(maps[1], FileNotFoundError)
    with h5py.File(good[0], "r") as f:
        np.testing.assert_array_equal(maps[0].dqmap, f["/xpcs/qmap/dqmap"][()])


def test_many_argument_errors(side: Side, workdir: Path) -> None:
    with pytest.raises(TypeError):
        side.api.read_g2_data_many("one.hdf5")
    with pytest.raises(IndexError):
        side.api.read_g2_data_many([side.path(workdir / "x.hdf5")], q_idx=-1)
    with pytest.raises(ValueError, match="layout"):
        side.api.read_g2_data_many([side.path(workdir / "x.hdf5")], layout="nonsense")
    assert side.api.read_g2_data_many([]) == []
    bad_q = side.api.read_g2_data_many([side.path(p) for p in _repeats(workdir, 1)], q_idx=99)
    assert isinstance(bad_q[0], IndexError)


def test_async_many(server: Server, workdir: Path) -> None:
    good = _repeats(workdir, 3)
    rel = [p.relative_to(server.root).as_posix() for p in good] + ["../x.hdf5"]

    async def main() -> list[Any]:
        async with AsyncRemoteHDF5Facade(server.url) as client:
            return await client.read_g2_data_many(rel, q_idx=1)

    items = asyncio.run(main())
    assert [type(i).__name__ for i in items] == ["G2Data", "G2Data", "G2Data", "PermissionError"]


def test_wire_is_one_msgpack_array_readable_without_project_code(
    server: Server, workdir: Path
) -> None:
    good = _repeats(workdir, 2)
    rel = [p.relative_to(server.root).as_posix() for p in good] + ["missing.hdf5"]
    response = httpx.post(
        f"{server.url}/v1/g2/many",
        params={"q_idx": 0},
        content=msgpack.packb({"file_paths": rel}),
        headers={"content-type": "application/msgpack"},
        timeout=30,
    )
    assert response.status_code == 200
    items = msgpack.unpackb(response.content)
    assert sorted(i["index"] for i in items) == [0, 1, 2]
    by_index = {i["index"]: i for i in items}
    assert by_index[2]["error"]["error"] == "FileNotFoundError"
    assert by_index[2]["error"]["status"] == 404
    g2 = by_index[0]["result"]["g2"]
    array = np.frombuffer(g2["data"], dtype=g2["dtype"]).reshape(g2["shape"])
    with h5py.File(good[0], "r") as f:
        np.testing.assert_array_equal(array[:, 0], f["/xpcs/g2/g2"][:, 0])
    # JSON, in file order.
    as_json = httpx.post(
        f"{server.url}/v1/g2/many",
        json={"file_paths": rel},
        headers={"accept": "application/json"},
        timeout=30,
    ).json()
    assert [i["index"] for i in as_json] == [0, 1, 2]


@pytest.mark.parametrize(
    ("body", "ctype", "status"),
    [
        (b"{}", "application/json", 422),
        (b'{"file_paths": "a.hdf5"}', "application/json", 422),
        (b'{"file_paths": [1, 2]}', "application/json", 422),
        (b"{not json", "application/json", 400),
        # A server without keys refuses the types a web page may send cross-site (415).
        (b'{"file_paths": []}', "text/plain", 415),
    ],
)
def test_bad_bodies_are_client_errors(server: Server, body: bytes, ctype: str, status: int) -> None:
    response = httpx.post(
        f"{server.url}/v1/g2/many", content=body, headers={"content-type": ctype}, timeout=10
    )
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"


def test_too_many_files_is_refused(tmp_path: Path) -> None:
    from tests.conftest import start_server

    root = tmp_path / "root"
    root.mkdir()
    srv = start_server(root, tmp_path / "log", env={"XPCS_IO_BATCH_MAX_FILES": "3"})
    try:
        with RemoteHDF5Facade(srv.url) as client, pytest.raises(ValueError, match="at most 3"):
            client.read_g2_data_many(["a", "b", "c", "d"])
    finally:
        srv.stop()


def test_slices_keep_the_bytes_and_send_large_chunks_from_their_own_buffers() -> None:
    big = np.arange(300_000, dtype="<f4")
    chunks: list[bytes | memoryview] = [b"ab", b"", b"c" * 10, big.view(np.uint8).data, b"d"]
    pieces = slices(chunks, target=1 << 20, own=1 << 16)
    assert b"".join(pieces) == b"".join(chunks)
    assert all(len(p) > 0 for p in pieces)
    # small runs joined, the array (1.2 MB) cut into two views of its own memory
    assert [len(p) for p in pieces] == [12, 1 << 20, big.nbytes - (1 << 20), 1]
    assert all(isinstance(p, memoryview) and p.obj is not None for p in pieces[1:3])
    tiny = slices([b"x" * 40] * 10, target=100, own=1000)
    assert [len(p) for p in tiny] == [120, 120, 120, 40]


@pytest.mark.parametrize("whole_bytes", ["67108864", "1"])
def test_many_answer_whole_or_streamed_holds_the_same_items(
    tmp_path: Path, whole_bytes: str
) -> None:
    """Sent whole (Content-Length) or streamed (chunked): every file's bytes as h5py reads
    them, a missing, a corrupt and an outside file each their own error."""
    from tests.conftest import start_server

    root = tmp_path / "root"
    root.mkdir()
    paths, good = _mixed(root, root)
    srv = start_server(root, tmp_path / "log", env={"XPCS_IO_BATCH_WHOLE_BYTES": whole_bytes})
    try:
        response = httpx.post(
            f"{srv.url}/v1/g2/many",
            content=msgpack.packb({"file_paths": paths}),
            headers={"content-type": "application/msgpack"},
            timeout=30,
        )
        assert response.status_code == 200
        if whole_bytes == "1":
            assert response.headers["transfer-encoding"] == "chunked"
            assert "content-length" not in response.headers
        else:
            assert int(response.headers["content-length"]) == len(response.content)
        by_index = {i["index"]: i for i in msgpack.unpackb(response.content)}
        assert sorted(by_index) == list(range(6))
        errors = {i: by_index[i]["error"]["error"] for i in (1, 3, 4)}
        assert errors == {
            1: "FileNotFoundError",
            3: "HDF5ValidationError",
            4: "PermissionError",
        }
        for index, path in ((0, good[0]), (2, good[1]), (5, good[2])):
            result = by_index[index]["result"]
            with h5py.File(path, "r") as f:
                for name in ("g2", "g2_err", "delay_times"):
                    sent = result[name]
                    expected = f[f"/xpcs/g2/{name}"][()]
                    assert sent["dtype"] == expected.dtype.str
                    assert sent["data"] == expected.tobytes()
        with RemoteHDF5Facade(srv.url) as client:
            items = client.read_g2_data_many(paths)
            assert [type(i).__name__ for i in items] == [
                "G2Data",
                "FileNotFoundError",
                "G2Data",
                "HDF5ValidationError",
                "PermissionError",
                "G2Data",
            ]
            last = items[5]
            assert isinstance(last, G2Data)
            with h5py.File(good[2], "r") as f:
                np.testing.assert_array_equal(last.g2, f["/xpcs/g2/g2"][()])
    finally:
        srv.stop()


def test_resolve_identity_is_resolve_and_file_identity(workdir: Path, data_root: Path) -> None:
    """What a many-file read asks of each file, with the path resolved once, under a root
    (symlinks followed inside it) and without one."""
    target = _repeats(workdir, 1)[0]
    link = workdir / "link.hdf5"
    link.symlink_to(target.name)
    rooted = HDF5Facade(root=data_root)
    for path in (target, link):
        rel = path.relative_to(data_root).as_posix()
        assert rooted.resolve_identity(rel) == (rooted.resolve(rel), rooted.file_identity(rel))
        assert rooted.resolve_identity(rel)[0] == str(target.resolve())
    plain = HDF5Facade()
    assert plain.resolve_identity(link) == (str(target.resolve()), plain.file_identity(target))
    with pytest.raises(PermissionError):
        rooted.resolve_identity("../outside.hdf5")
    with pytest.raises(FileNotFoundError):
        rooted.resolve_identity(workdir.relative_to(data_root).as_posix() + "/missing.hdf5")


def test_open_identity_is_resolve_identity_and_the_file_it_checked(
    workdir: Path, data_root: Path
) -> None:
    """``open_identity`` gives what ``resolve_identity`` gives and a descriptor of that very
    file (its bytes, its inode), and refuses what ``resolve_identity`` refuses, leaving no
    descriptor open."""
    target = _repeats(workdir, 1)[0]
    (workdir / "link.hdf5").symlink_to(target.name)
    rooted = HDF5Facade(root=data_root)
    for name in (target.name, "link.hdf5"):
        rel = (workdir / name).relative_to(data_root).as_posix()
        real, identity, fd = rooted.open_identity(rel)
        try:
            assert (real, identity) == rooted.resolve_identity(rel)
            assert os.fstat(fd).st_ino == target.stat().st_ino
            assert os.pread(fd, 8, 0) == target.read_bytes()[:8]
        finally:
            os.close(fd)
    before = len(os.listdir("/proc/self/fd"))
    for bad, error in (("../outside.hdf5", PermissionError), ("missing.hdf5", FileNotFoundError)):
        with pytest.raises(error):
            rooted.open_identity(bad)
    (workdir / "notes.hdf5").write_bytes(b"not HDF5 at all, but long enough to hold a superblock")
    rel = (workdir / "notes.hdf5").relative_to(data_root).as_posix()
    real, identity, fd = rooted.open_identity(rel)  # the identity does not parse the file
    os.close(fd)
    assert len(os.listdir("/proc/self/fd")) == before


def test_result_item_is_the_item_packed_and_packs_a_result_once(workdir: Path) -> None:
    path = _repeats(workdir, 1)[0]
    value = HDF5Facade().read_g2_data(path)
    item = {"index": 7, "file_path": "a/b.hdf5", "result": value.to_dict()}
    first = result_item(7, "a/b.hdf5", value)
    assert b"".join(first) == b"".join(wire.pack_chunks(item))
    again = result_item(300, "ü/" + "x" * 40, value)
    assert b"".join(again) == wire.pack(
        {"index": 300, "file_path": "ü/" + "x" * 40, "result": value.to_dict()}
    )
    # the result's chunks are the same objects: packed once, array payloads not copied
    assert all(a is b for a, b in zip(first[1:], again[1:], strict=True))
    assert any(isinstance(c, memoryview) for c in first)
    # kept only as long as the result lives
    held = len(manysend._packed)
    del value, first, again
    gc.collect()
    assert len(manysend._packed) == held - 1


def test_many_answer_from_the_result_cache_sees_files_rewritten_in_place(tmp_path: Path) -> None:
    """Cached results are answered only while their files are unchanged: a file rewritten
    in place (same inode) between two calls is read again, in the same answer as cached
    ones, and the same bytes as h5py reads."""
    from tests.conftest import start_server

    root = tmp_path / "root"
    root.mkdir()
    paths, good = _mixed(root, root)
    srv = start_server(root, tmp_path / "log")
    try:
        with RemoteHDF5Facade(srv.url) as client:
            for _ in range(2):  # the second call is answered from the result cache
                first = client.read_g2_data_many(paths)
            inode = good[1].stat().st_ino
            with h5py.File(good[1], "r+") as f:
                f["/xpcs/g2/g2"][...] = f["/xpcs/g2/g2"][()] + 5.0
            assert good[1].stat().st_ino == inode
            second = client.read_g2_data_many(paths)
            assert [type(i).__name__ for i in second] == [type(i).__name__ for i in first]
            for index, path in ((0, good[0]), (2, good[1]), (5, good[2])):
                item = second[index]
                assert isinstance(item, G2Data)
                with h5py.File(path, "r") as f:
                    expected = f["/xpcs/g2/g2"][()]
                    assert item.g2.dtype == expected.dtype
                    assert item.g2.tobytes() == expected.tobytes()
            changed = second[2]
            before = first[2]
            assert isinstance(changed, G2Data)
            assert isinstance(before, G2Data)
            np.testing.assert_array_equal(changed.g2, before.g2 + 5.0)
    finally:
        srv.stop()


def _plan_counters(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics").text
    found = re.findall(r"^xpcs_io_zero_copy_(\w+)_total ([0-9.e+]+)$", text, re.M)
    return {name: float(value) for name, value in found}


def _g2_file(path: Path, seed: int) -> Path:
    """A result file holding only G2, its two large arrays contiguous and unfiltered (the
    bytes in the file are the bytes of the answer) and over the plans' 64 KiB minimum."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        grp = f.create_group("xpcs/g2")
        grp["g2"] = (1 + rng.random((50, 400))).astype(np.float32)
        grp["g2_err"] = (0.01 * rng.random((50, 400))).astype(np.float32)
        grp["delay_times"] = np.geomspace(1e-5, 1, 50)
        grp["q_values"] = np.linspace(0.001, 0.1, 400)
    return path


def test_many_answer_with_the_cache_off_reads_planned_files_without_hdf5(tmp_path: Path) -> None:
    """With the result cache off, a file whose G2 answer has a plan (learnt by the first
    call) is answered from its bytes with pread: the same values as h5py reads, beside the
    missing and corrupt files' errors; a file rewritten in place is read anew."""
    from tests.conftest import start_server

    root = tmp_path / "root"
    root.mkdir()
    files = [_g2_file(root / f"g2_{i}.hdf5", i) for i in range(5)]
    (root / "corrupt.hdf5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    paths = [f.name for f in files[:3]] + ["missing.hdf5", "corrupt.hdf5"]
    paths += [f.name for f in files[3:]]
    srv = start_server(root, tmp_path / "log", env={"XPCS_IO_CACHE_BYTES": "0"})

    def check(items: list[Any]) -> None:
        assert isinstance(items[3], FileNotFoundError)
        assert isinstance(items[4], HDF5ValidationError)
        for item, name in zip(items[:3] + items[5:], paths[:3] + paths[5:], strict=True):
            assert isinstance(item, G2Data), item
            with h5py.File(root / name, "r") as f:
                for field in ("g2", "g2_err", "delay_times", "q_values"):
                    expected = f[f"xpcs/g2/{field}"][()]
                    got = getattr(item, field)
                    assert got.dtype == expected.dtype
                    assert got.tobytes() == expected.tobytes()

    try:
        with RemoteHDF5Facade(srv.url) as client:
            check(client.read_g2_data_many(paths))  # read through HDF5, plans learnt after
            for _ in range(200):  # learning runs once the answer is out
                if _plan_counters(srv.url).get("plans", 0) >= len(files):
                    break
                time.sleep(0.05)
            before = _plan_counters(srv.url)
            assert before["plans"] >= len(files)
            check(client.read_g2_data_many(paths))
            after = _plan_counters(srv.url)
            assert after["responses"] - before["responses"] == len(files)

            inode = files[1].stat().st_ino
            with h5py.File(files[1], "r+") as f:
                f["xpcs/g2/g2"][...] = f["xpcs/g2/g2"][()] + 5.0
            assert files[1].stat().st_ino == inode
            items = client.read_g2_data_many(paths)
            check(items)
            changed = items[1]
            assert isinstance(changed, G2Data)
            with h5py.File(files[1], "r") as f:
                assert changed.g2[0, 0] == f["xpcs/g2/g2"][0, 0] > 5.0
            # the rewritten file was read through HDF5 again, the others from their plans
            assert _plan_counters(srv.url)["responses"] - after["responses"] == len(files) - 1
    finally:
        srv.stop()


def test_many_answer_beyond_the_memory_budget_names_the_files_it_cannot_hold(
    tmp_path: Path,
) -> None:
    """With the result cache off, answers held for readers are bounded: the files a
    many-file answer cannot hold get ``ServerBusyError`` (retry), the others their values,
    whether read through HDF5 or from their plans."""
    from tests.conftest import start_server

    root = tmp_path / "root"
    root.mkdir()
    files = [_g2_file(root / f"g2_{i}.hdf5", i) for i in range(6)]
    env = {"XPCS_IO_CACHE_BYTES": "0", "XPCS_IO_MAX_UNSHARED_RESULT_BYTES": str(400_000)}
    srv = start_server(root, tmp_path / "log", env=env)
    try:
        with RemoteHDF5Facade(srv.url) as client:

            def check() -> None:
                items = client.read_g2_data_many([f.name for f in files])
                busy = [i for i in items if isinstance(i, ServerBusyError)]
                assert 0 < len(busy) < len(files)
                for item, path in zip(items, files, strict=True):
                    if isinstance(item, ServerBusyError):
                        continue
                    assert isinstance(item, G2Data), item
                    with h5py.File(path, "r") as f:
                        assert item.g2.tobytes() == f["xpcs/g2/g2"][()].tobytes()

            check()  # through HDF5; the files that got through have plans learnt after
            for _ in range(200):
                if _plan_counters(srv.url).get("plans", 0) >= 1:
                    break
                time.sleep(0.05)
            before = _plan_counters(srv.url)
            check()
            assert _plan_counters(srv.url)["responses"] > before["responses"]
            assert httpx.get(f"{srv.url}/health").status_code == 200
    finally:
        srv.stop()


def test_identities_of_many_files_equal_one_by_one_and_leak_nothing(
    workdir: Path, data_root: Path
) -> None:
    """``resolve_identities`` / ``open_identities`` (each folder walked once) answer what
    ``resolve_identity`` answers, file by file: plain files in two folders, a symlinked file
    and a file in a symlinked folder, and the same error for a missing file, a path out of
    the root, a folder, a FIFO and an empty path."""
    sub = workdir / "sub"
    sub.mkdir()
    plain = _repeats(workdir, 2) + _repeats(sub, 1)
    (workdir / "alias.hdf5").symlink_to(plain[0].name)
    (workdir / "via").symlink_to("sub")
    os.mkfifo(workdir / "fifo.hdf5")
    base = workdir.relative_to(data_root).as_posix()
    names = [p.relative_to(data_root).as_posix() for p in plain]
    names += [f"{base}/alias.hdf5", f"{base}/via/{plain[2].name}", f"{base}/missing.hdf5"]
    names += ["../outside.hdf5", f"{base}/sub", f"{base}/fifo.hdf5", "", f"{base}/./sub//"]
    facade = HDF5Facade(root=data_root)
    before = len(os.listdir("/proc/self/fd"))
    one_by_one: list[Any] = []
    for name in names:
        try:
            one_by_one.append(facade.resolve_identity(name))
        except Exception as exc:
            one_by_one.append(exc)
    assert sum(isinstance(x, Exception) for x in one_by_one) == 6
    for found in (facade.resolve_identities(names), facade.open_identities(names)):
        for got, want in zip(found, one_by_one, strict=True):
            if isinstance(want, Exception):
                assert type(got) is type(want)
                assert str(got) == str(want)
            else:
                assert not isinstance(got, Exception)
                assert got[:2] == want
                if len(got) == 3:  # open_identities: the descriptor of that very file
                    assert os.fstat(got[2]).st_ino == os.stat(want[0]).st_ino
                    os.close(got[2])
    assert len(os.listdir("/proc/self/fd")) == before
