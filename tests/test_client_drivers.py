"""``xpcs_io.client.drivers``: both clients' own sockets against real servers on 127.0.0.1:
keep-alive reuse, a kept-alive connection the server closed meanwhile, chunked answers,
large bodies received into one buffer, large request bodies, and the same results as
through an httpx client."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import msgpack
import numpy as np
import pytest

from xpcs_io.client import AsyncRemoteHDF5Facade, RemoteHDF5Facade, RetryPolicy
from xpcs_io.schemas import MaskSchema
from xpcs_io.tools.demo import DemoSpec, write_native_file

from .clientsupport import CLIENTS, RawServer, answer, run
from .conftest import Server

FILES = msgpack.packb([{"path": "a.hdf5", "size": 1, "mtime": 0.0}])
LISTING = answer(FILES, headers=b"Content-Type: application/msgpack\r\n")


def _many(api: Any, n: int) -> list[Any]:
    return [api.list_files() for _ in range(n)]


@pytest.mark.parametrize("client", CLIENTS)
def test_keep_alive_reuses_one_connection(raw: list[RawServer], client: str) -> None:
    srv = RawServer(LISTING, keep_alive=True)
    raw.append(srv)
    got = run(client, srv.url, lambda api: _many(api, 5))
    assert all(files[0]["path"] == "a.hdf5" for files in got)
    assert len(srv.requests) == 5
    assert srv.connections == 1


@pytest.mark.parametrize("client", CLIENTS)
def test_a_closed_keep_alive_connection_is_resent_once(raw: list[RawServer], client: str) -> None:
    # The second request arrives on the kept-alive connection, which the server then
    # closes without answering (an idle timeout racing the request).
    srv = RawServer(lambda n: None if n == 1 else LISTING, keep_alive=True)
    raw.append(srv)
    got = run(client, srv.url, lambda api: _many(api, 2), retry=RetryPolicy(attempts=1))
    assert [files[0]["path"] for files in got] == ["a.hdf5", "a.hdf5"]
    assert len(srv.requests) == 3
    assert srv.connections == 2


@pytest.mark.parametrize("client", CLIENTS)
def test_chunked_and_close_delimited_answers(raw: list[RawServer], client: str) -> None:
    body = FILES
    chunked = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/msgpack\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(
            b"%x\r\n" % len(body[i : i + 7]) + body[i : i + 7] + b"\r\n"
            for i in range(0, len(body), 7)
        )
        + b"0\r\n\r\n"
    )
    to_close = b"HTTP/1.0 200 OK\r\nContent-Type: application/msgpack\r\n\r\n" + body
    srv = RawServer(lambda n: chunked if n % 2 == 0 else to_close)
    raw.append(srv)
    got = run(client, srv.url, lambda api: _many(api, 2))
    assert got[0] == got[1] == msgpack.unpackb(FILES)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_large_body_lands_in_one_buffer(server: Server, workdir: Path, client: str) -> None:
    path = write_native_file(workdir / "big.hdf5", DemoSpec(shape=(700, 600), n_delay=4, n_q=2))
    q = run(client, server.url, lambda api: api.read_qmap(path.relative_to(server.root).as_posix()))
    arrays = [a for a in (q.sqmap, q.dqmap, q.phis, q.mask, q.partition_map) if a is not None]
    starts = [a.__array_interface__["data"][0] for a in arrays]
    ends = [a.__array_interface__["data"][0] + a.nbytes for a in arrays]
    # Views into the one body buffer: laid out back to back, a few header bytes apart.
    assert max(ends) - min(starts) < sum(a.nbytes for a in arrays) + 4096
    assert all(a.flags.writeable for a in arrays)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_large_write_body_is_sent_whole(server: Server, workdir: Path, client: str) -> None:
    path = write_native_file(workdir / "w.hdf5", DemoSpec(shape=(700, 600), n_delay=4, n_q=2))
    rel = path.relative_to(server.root).as_posix()
    mask = np.random.default_rng(1).integers(0, 2, (700, 600), dtype=np.uint8)
    schema = MaskSchema(mask=mask, metadata=_geometry(server, rel))
    record = run(client, server.url, lambda api: api.write_mask(rel, schema))
    assert record["version"] >= 1
    with RemoteHDF5Facade(server.url) as api:
        np.testing.assert_array_equal(api.read_mask(rel).mask, mask)


def _geometry(server: Server, rel: str) -> Any:
    with RemoteHDF5Facade(server.url) as api:
        return api.read_geometry_metadata(rel)


@pytest.mark.parametrize("client", CLIENTS)
def test_same_results_through_httpx(server: Server, native_file: Path, client: str) -> None:
    rel = native_file.relative_to(server.root).as_posix()
    own = run(client, server.url, lambda api: [api.read_qmap(rel), api.read_g2_data(rel, 2)])
    if client == "sync":
        with httpx.Client() as http:
            via = RemoteHDF5Facade(server.url, http=http)
            other = [via.read_qmap(rel), via.read_g2_data(rel, 2)]
    else:

        async def go() -> list[Any]:
            async with httpx.AsyncClient() as http:
                via = AsyncRemoteHDF5Facade(server.url, http=http)
                return [await via.read_qmap(rel), await via.read_g2_data(rel, 2)]

        other = asyncio.run(go())
    assert own == other
