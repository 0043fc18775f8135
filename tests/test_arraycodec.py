"""Compressed arrays on the wire: the documented bytes, decoding with only msgpack + blosc2,
negotiation by the client, and the server's answers equal to the file's bytes."""

from __future__ import annotations

from pathlib import Path

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


def test_documented_bytes_decode_with_plain_msgpack_and_blosc2() -> None:
    m = msgpack.unpackb(_doc_example())["g2"]
    assert list(m) == ["dtype", "shape", "codec", "data"]
    assert m["codec"] == "blosc2"
    raw = blosc2.decompress2(m["data"])
    np.testing.assert_array_equal(np.frombuffer(raw, m["dtype"]).reshape(m["shape"]), [[1.5, 2]])


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


def test_auto_compression_follows_what_is_faster_and_keeps_probing() -> None:
    auto = AutoCompression("blosc2-zstd")
    big = 4 * AutoCompression.MIN_BYTES
    assert auto.wanted()  # starts compressed
    auto.observe(True, big, 1.0)
    assert not auto.wanted()  # then one raw answer to compare with
    auto.observe(False, big, 0.25)  # raw was faster (a fast link)
    choices = []
    for _ in range(3 * AutoCompression.PROBE_EVERY):
        asked = auto.wanted()
        choices.append(asked)
        auto.observe(asked, big, 1.0 if asked else 0.25)
    assert choices.count(True) == 3  # only the probes
    auto.observe(False, big, 5.0)  # the link got slow: raw answers now take long
    auto.observe(False, big, 5.0)
    assert auto.wanted()
    auto.observe(True, AutoCompression.MIN_BYTES - 1, 100.0)  # small answers say nothing
    assert auto.wanted()
