"""Compressed arrays on the wire: the documented bytes, decoding with only msgpack + blosc2,
negotiation by the client, and the server's answers equal to the file's bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import blosc2
import h5py
import httpx
import msgpack
import numpy as np
import pytest

from tests.conftest import Server
from xpcs_io import arraycodec, wire
from xpcs_io.client import RemoteHDF5Facade
from xpcs_io.client.compression import AutoCompression, array_compression
from xpcs_io.errors import SchemaError
from xpcs_io.tools.demo import DemoSpec, write_native_file

DOC = Path(__file__).resolve().parents[1] / "docs" / "wire-format.md"
MAPS = ("sqmap", "dqmap", "phis", "mask", "partition_map")


def _doc_example() -> bytes:
    text = DOC.read_text()
    block = text.split("<!-- compressed-example-hex")[1].split("```text\n")[1].split("```")[0]
    return bytes.fromhex(block)


def test_documented_bytes_are_what_pack_writes_and_decode_to_the_array() -> None:
    body = _doc_example()
    assert len(body) == 84
    chunk = bytes(msgpack.unpackb(body)["g2"]["data"])
    packed = wire.pack(
        {"g2": arraycodec.CompressedArray("<f4", (1, 2), np.frombuffer(chunk, np.uint8))}
    )
    assert packed == body
    got = wire.unpack(body, codecs=True)["g2"]
    assert got.dtype.str == "<f4"
    np.testing.assert_array_equal(got, [[1.5, 2.0]])
    # The chunk header says what the table in the doc says.
    assert chunk[3] == 4
    assert list(chunk[16:18]) == [1, 35]
    assert chunk[22] == 5
    assert blosc2.get_cbuffer_sizes(chunk) == (8, 40, 8)


def _doc_decoder() -> Any:
    """The documented ``to_array`` (plain msgpack + blosc2), run as the page shows it."""
    text = DOC.read_text().split("with only `msgpack`, `numpy` and `blosc2`:")[1]
    code = text.split("```python\n")[1].split("```")[0]
    scope: dict[str, Any] = {}
    exec(code, scope)
    return scope["to_array"]


def test_documented_bytes_decode_with_plain_msgpack_and_blosc2() -> None:
    m = msgpack.unpackb(_doc_example())["g2"]
    assert list(m) == ["dtype", "shape", "codec", "data"]
    assert m["codec"] == "blosc2"
    raw = blosc2.decompress2(m["data"])
    np.testing.assert_array_equal(np.frombuffer(raw, m["dtype"]).reshape(m["shape"]), [[1.5, 2]])
    to_array = _doc_decoder()
    np.testing.assert_array_equal(to_array(m), [[1.5, 2]])
    a = (np.arange(600_000) % 11).astype("<u2").reshape(600, 1000)  # in two pieces
    raw_bytes = a.reshape(-1).view(np.uint8).data
    pieces = [
        arraycodec.compress_piece(raw_bytes[i : i + 2**20], 2, "blosc2-lz4") for i in (0, 2**20)
    ]
    body = msgpack.packb(
        {"a": {"dtype": "<u2", "shape": [600, 1000], "codec": "blosc2", "data": pieces}}
    )
    np.testing.assert_array_equal(to_array(msgpack.unpackb(body)["a"]), a)


@pytest.mark.parametrize("preset", sorted(arraycodec.PRESETS))
@pytest.mark.parametrize("dtype", ["<f4", ">f8", "<u2", "|u1", "<i8"])
def test_round_trip_of_every_preset(preset: str, dtype: str) -> None:
    a = (np.arange(400 * 200).reshape(400, 200) % 97).astype(dtype)
    c = arraycodec.compress(a, preset)
    assert c is not None
    assert c.data.nbytes < a.nbytes
    got = wire.unpack(wire.pack({"a": c}), codecs=True)["a"]
    assert got.dtype.str == a.dtype.str
    np.testing.assert_array_equal(got, a)


def test_small_and_incompressible_arrays_stay_plain() -> None:
    assert arraycodec.compress(np.zeros(100, "<f4"), "blosc2-zstd") is None
    noise = np.random.default_rng(1).integers(0, 2**31, 100_000, dtype="<i4")
    assert arraycodec.compress(noise, "blosc2-zstd") is None


def test_bad_compressed_maps_are_schema_errors() -> None:
    a = (np.arange(100_000) % 7).astype("<f4")
    c = arraycodec.compress(a, "blosc2-lz4")
    assert c is not None
    good = {"dtype": "<f4", "shape": [100_000], "codec": "blosc2", "data": c.data.tobytes()}
    for change, words in (
        ({"codec": "gzip"}, "unknown array codec"),
        ({"shape": [99_999]}, "holds 400000 bytes"),
        ({"data": b"\x00" * 40}, "blosc2"),
    ):
        with pytest.raises(SchemaError, match=words):
            wire.unpack(msgpack.packb({"a": {**good, **change}}), codecs=True)


def test_an_array_compressed_in_pieces_decodes_and_is_checked() -> None:
    a = (np.arange(300_000) % 13).astype(">f8")  # 2.4 MB: three pieces of 1 MB and a rest
    raw = a.view(np.uint8).data
    pieces = [arraycodec.compress_piece(raw[i : i + 10**6], 8, "blosc2-zstd") for i in (0, 10**6)]
    pieces.append(arraycodec.compress_piece(raw[2 * 10**6 :], 8, "blosc2-lz4"))
    fast = arraycodec.compress_piece(raw[: 10**6], 8, "blosc2-zstd", fast=True)
    assert fast != pieces[0]
    assert blosc2.decompress2(fast) == bytes(raw[: 10**6])
    good = {"dtype": ">f8", "shape": [300_000], "codec": "blosc2", "data": pieces}
    got = wire.unpack(msgpack.packb({"a": good}), codecs=True)["a"]
    assert got.dtype.str == ">f8"
    np.testing.assert_array_equal(got, a)
    # Plain msgpack + blosc2: the pieces' bytes one after the other.
    m = msgpack.unpackb(msgpack.packb(good))
    joined = b"".join(blosc2.decompress2(p) for p in m["data"])
    np.testing.assert_array_equal(np.frombuffer(joined, m["dtype"]), a)
    for change, words in (
        ({"data": pieces[:2]}, "3 blosc2 chunks hold|2 blosc2 chunks hold 2000000 bytes"),
        ({"data": [*pieces, pieces[0]]}, "4 blosc2 chunks hold 3400000 bytes"),
        ({"data": [pieces[0], 7]}, "data pieces must be bytes"),
        ({"data": [pieces[0], b"\x00" * 40]}, "blosc2"),
    ):
        with pytest.raises(SchemaError, match=words):
            wire.unpack(msgpack.packb({"a": {**good, **change}}), codecs=True)
    with pytest.raises(SchemaError, match="must be bytes"):  # a plain map takes no pieces
        wire.unpack(msgpack.packb({"a": {"dtype": ">f8", "shape": [0], "data": []}}))


def test_compressed_arrays_are_refused_unless_asked_for() -> None:
    # 32 bytes of blosc2 can stand for 2 GB of zeros: a server never takes them in a body.
    zeros = blosc2.compress2(np.zeros(1 << 20, "<f4"), typesize=4)
    assert len(zeros) < 100
    body = msgpack.packb(
        {"mask": {"dtype": "<f4", "shape": [1 << 20], "codec": "blosc2", "data": zeros}}
    )
    with pytest.raises(SchemaError, match="compressed arrays are not accepted here"):
        wire.unpack(body)
    assert wire.unpack(body, codecs=True)["mask"].shape == (1 << 20,)
    with pytest.raises(SchemaError, match="more than the 4,194,303 this message may still hold"):
        wire.unpack(body, codecs=True, max_decoded=(4 << 20) - 1)


def test_the_client_asks_only_off_loopback_or_when_told() -> None:
    assert array_compression("auto", "http://127.0.0.1:8000") is None
    assert array_compression("auto", "http://localhost:8000") is None
    assert array_compression("auto", "http://[::1]:8000") is None
    assert array_compression("auto", "http://10.20.0.2:8000") == "blosc2-zstd"
    assert array_compression("auto", "https://xpcs.example.org") == "blosc2-zstd"
    assert array_compression("none", "http://10.20.0.2:8000") is None
    assert array_compression("blosc2-lz4", "http://127.0.0.1:8000") == "blosc2-lz4"
    with pytest.raises(ValueError, match="compression must be one of"):
        array_compression("gzip", "http://127.0.0.1:8000")


@pytest.fixture
def qmap_file(workdir: Path) -> Path:
    return write_native_file(workdir / "big.hdf5", DemoSpec(shape=(300, 260), n_delay=4, n_q=6))


def test_server_answer_decodes_with_plain_msgpack_and_blosc2(
    server: Server, qmap_file: Path
) -> None:
    rel = str(qmap_file.relative_to(server.root))
    url = f"{server.url}/v1/qmap"
    with httpx.Client() as http:
        plain = http.get(url, params={"file_path": rel}, headers={"accept": "application/msgpack"})
        packed = http.get(
            url,
            params={"file_path": rel},
            headers={"accept": "application/msgpack", "xpcs-array-codec": "blosc2-zstd"},
        )
    assert plain.status_code == packed.status_code == 200
    assert plain.headers["etag"] != packed.headers["etag"]
    assert "xpcs-array-codec" in packed.headers["vary"]
    assert len(packed.content) < len(plain.content)
    body = msgpack.unpackb(packed.content)
    compressed = 0
    with h5py.File(qmap_file, "r") as f:
        for name in MAPS:
            m = body[name]
            raw = blosc2.decompress2(m["data"]) if m.get("codec") == "blosc2" else m["data"]
            compressed += m.get("codec") == "blosc2"
            got = np.frombuffer(raw, np.dtype(m["dtype"])).reshape(m["shape"])
            want = f[f"/xpcs/qmap/{name}"][()]
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
    assert compressed >= 3


@pytest.mark.parametrize("compression", ["blosc2-lz4", "blosc2-zstd", "none"])
def test_client_reads_equal_with_each_compression(
    server: Server, qmap_file: Path, compression: str
) -> None:
    rel = str(qmap_file.relative_to(server.root))
    with RemoteHDF5Facade(server.url, compression=compression) as api:
        assert api.compression == (None if compression == "none" else compression)
        q = api.read_qmap(rel)
    with h5py.File(qmap_file, "r") as f:
        for name in MAPS:
            np.testing.assert_array_equal(getattr(q, name), f[f"/xpcs/qmap/{name}"][()])


def _reads(
    auto: AutoCompression,
    count: int,
    *,
    link: float,
    decode: float,
    ratio: float = 4.0,
    server: float | None = None,
    size: int = 64 << 20,
    told: bool = False,
    pieces: bool = False,
) -> list[tuple[bool, float]]:
    """``count`` large reads through ``auto`` over a modelled link: ``link`` bytes/s,
    decompression at ``decode`` array bytes/s, compressed answers ``ratio`` times smaller and,
    with ``server``, compressed by the server while sent at that many array bytes/s (which
    it says in its answers when ``told``, and its pieces' compressors show when ``pieces``:
    the faster one while its compression is slower than the link)."""
    done = []
    for _ in range(count):
        asked = auto.wanted()
        if asked:
            wire_bytes = size / ratio
            moving = wire_bytes / link if server is None else max(wire_bytes / link, size / server)
            seconds = moving + size / decode
            decoded = (int(wire_bytes), size / decode)
            streamed = server is not None
            rate = server if told else None
            paced = None
            if pieces and server is not None:
                paced = wire_bytes / link > size / server
            auto.observe(
                True,
                size,
                seconds,
                streamed=streamed,
                decoded=decoded,
                server_rate=rate,
                link_paced=paced,
            )
        else:
            seconds = size / link
            auto.observe(False, size, seconds, decoded=(0, 0.0))
        done.append((asked, seconds))
    return done


def test_auto_over_a_slow_link_never_pays_a_raw_answer_early() -> None:
    # 1 Gbit/s: a raw answer costs 3.5 compressed ones; probing stays within its share.
    reads = _reads(AutoCompression("blosc2-zstd"), 400, link=125e6, decode=2.5e9)
    assert all(asked for asked, _ in reads[:40])
    best = 64 * 2**20 / 4 / 125e6 + 64 * 2**20 / 2.5e9
    assert sum(s for _, s in reads) <= 400 * best * (1 + 2 * AutoCompression.PROBE_SHARE)
    # Same at 100 Mbit/s, where the server's compression might have set the pace.
    reads = _reads(AutoCompression("blosc2-zstd"), 40, link=12.5e6, decode=2.5e9, server=6e8)
    assert all(asked for asked, _ in reads)


def test_auto_goes_raw_when_decompressing_is_slower_than_the_link() -> None:
    reads = _reads(AutoCompression("blosc2-zstd"), 200, link=4e9, decode=1e9)
    assert reads[0][0]
    assert not any(asked for asked, _ in reads[1:20])
    raw = 64 * 2**20 / 4e9
    assert sum(s for _, s in reads[1:]) <= 199 * raw * (1 + 2 * AutoCompression.PROBE_SHARE)


def test_auto_measures_raw_once_when_the_server_may_set_the_pace() -> None:
    # 10 Gbit/s, server compressing at 800 MB/s while it sends: raw (sendfile) is faster.
    auto = AutoCompression("blosc2-zstd")
    reads = _reads(auto, 100, link=1.25e9, decode=2.5e9, server=8e8)
    assert [asked for asked, _ in reads[:2]] == [True, False]
    assert sum(asked for asked, _ in reads) <= 1 + 100 * AutoCompression.PROBE_SHARE
    # Also after a first answer compressed whole before it was sent (a slow estimate).
    auto = AutoCompression("blosc2-zstd")
    auto.observe(True, 64 << 20, 0.5, decoded=(16 << 20, 0.03))
    reads = _reads(auto, 100, link=1.25e9, decode=2.5e9, server=8e8)
    assert [asked for asked, _ in reads[:2]] == [True, False]
    assert sum(asked for asked, _ in reads) <= 1 + 100 * AutoCompression.PROBE_SHARE
    # 1 Gbit/s with that server: one raw answer tells, and compression stays.
    reads = _reads(AutoCompression("blosc2-zstd"), 100, link=125e6, decode=2.5e9, server=8e8)
    assert [asked for asked, _ in reads[:2]] == [True, False]
    assert sum(not asked for asked, _ in reads) <= 1 + 100 * AutoCompression.PROBE_SHARE / 3


def test_auto_trusts_the_link_when_the_server_says_it_compresses_faster() -> None:
    """A server that says its compression pace (``arraycodec.RATE_HEADER``): an answer that
    came in clearly below it was paced by the link, so no raw answer is measured over 1 Gbit/s;
    one that came in at that pace (10 Gbit/s) still has raw measured once, and raw wins."""
    reads = _reads(
        AutoCompression("blosc2-zstd"), 100, link=125e6, decode=2.5e9, server=8e8, told=True
    )
    assert all(asked for asked, _ in reads[:40])  # (told nothing: the second is raw)
    assert sum(not asked for asked, _ in reads) <= 2  # the probe credit's, 5% of the time
    reads = _reads(
        AutoCompression("blosc2-zstd"), 100, link=1.25e9, decode=2.5e9, server=8e8, told=True
    )
    assert [asked for asked, _ in reads[:2]] == [True, False]
    assert sum(asked for asked, _ in reads) <= 1 + 100 * AutoCompression.PROBE_SHARE


def test_auto_trusts_pieces_written_at_the_links_pace() -> None:
    """1 Gbit/s and a server compressing barely faster than the link: the pace it says
    cannot tell them apart (a raw answer is measured), the compressors of its pieces can
    (none is). At 10 Gbit/s its pieces say it held the answer back: raw is measured once."""

    def run(link: float, pieces: bool) -> list[tuple[bool, float]]:
        auto = AutoCompression("blosc2-zstd")
        return _reads(auto, 100, link=link, decode=2.5e9, server=5.5e8, told=True, pieces=pieces)

    assert [asked for asked, _ in run(125e6, pieces=False)[:2]] == [True, False]
    reads = run(125e6, pieces=True)
    assert all(asked for asked, _ in reads[:40])
    assert sum(not asked for asked, _ in reads) <= 2  # the probe credit's, 5% of the time
    reads = run(1.25e9, pieces=True)
    assert [asked for asked, _ in reads[:2]] == [True, False]
    assert sum(asked for asked, _ in reads) <= 1 + 100 * AutoCompression.PROBE_SHARE


def test_pieces_tell_who_paced_an_answer() -> None:
    a = np.random.default_rng(3).random(1 << 18, dtype=np.float32)
    own = arraycodec.compress_piece(a.data, 4, "blosc2-zstd")
    fast = arraycodec.compress_piece(a.data, 4, "blosc2-zstd", fast=True)
    codes = {arraycodec.chunk_compressor(own), arraycodec.chunk_compressor(fast)}
    assert codes == {4, 1}  # Zstd and LZ4, as the chunks' headers name them
    zstd, lz4 = arraycodec.chunk_compressor(own), arraycodec.chunk_compressor(fast)
    assert arraycodec.link_paced("blosc2-zstd", {zstd: 5})
    assert arraycodec.link_paced("blosc2-zstd", {zstd: 6, lz4: 2})
    assert arraycodec.link_paced("blosc2-zstd", {zstd: 4, lz4: 3}) is False  # a mix: no
    assert arraycodec.link_paced("blosc2-zstd", {lz4: 5}) is False
    assert arraycodec.link_paced("blosc2-zstd", {}) is None
    assert arraycodec.link_paced("blosc2-lz4", {1: 3}) is None  # one compressor: no telling


def test_auto_follows_a_link_that_changes() -> None:
    auto = AutoCompression("blosc2-zstd")
    _reads(auto, 20, link=125e6, decode=2.5e9)
    assert auto.wanted()
    after = _reads(auto, 20, link=8e9, decode=1e9)  # now decompression is the limit
    assert not any(asked for asked, _ in after[5:])
    back = _reads(auto, 200, link=50e6, decode=1e9)  # slow again: compression comes back
    assert sum(asked for asked, _ in back[-100:]) >= 100 * (1 - AutoCompression.PROBE_SHARE)


def test_auto_ignores_small_answers() -> None:
    auto = AutoCompression("blosc2-zstd")
    auto.observe(True, AutoCompression.MIN_BYTES - 1, 100.0, decoded=(10, 1.0))
    assert auto.wanted()
    assert auto.cost == {True: None, False: None}
