"""Both deflate decoders give HDF5's chunk bytes, fail as zlib fails, release the GIL, and
``read_whole`` decoding with either equals h5py's read, with shuffle and without."""

from __future__ import annotations

import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from xpcs_io import chunkread, inflate

SHAPE = (760, 730)  # > chunkread.MIN_BYTES for every dtype below; edge chunks are partial
CHUNKS = (128, 100)

Decoder = Callable[[Any, int], Any]
DECODERS: dict[str, Decoder] = {"zlib": inflate.inflate_zlib}
if inflate.BACKEND == "libdeflate":
    DECODERS["libdeflate"] = inflate.inflate_libdeflate


def _maps() -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(11)
    q = (rng.random(SHAPE) * 0.1).astype("<f4")  # like a q-map: smooth-ish floats
    return {
        "sqmap": q,
        "partition": (q * 3600).astype("<u2"),
        "counts_be": (rng.poisson(3.0, SHAPE)).astype(">i8"),
    }


def _write(path: Path, shuffle: bool) -> Path:
    with h5py.File(path, "w") as f:
        for name, data in _maps().items():
            f.create_dataset(
                name, data=data, chunks=CHUNKS, compression="gzip", compression_opts=4,
                shuffle=shuffle,
            )  # fmt: skip
    return path


def test_the_installed_decoder_is_libdeflate_when_deflate_is_installed() -> None:
    try:
        import deflate  # noqa: F401
    except ImportError:
        assert inflate.BACKEND == "zlib"
        assert inflate.inflate is inflate.inflate_zlib
    else:
        assert inflate.BACKEND == "libdeflate"
        assert inflate.inflate is inflate.inflate_libdeflate


@pytest.mark.parametrize("decoder", sorted(DECODERS))
def test_every_stored_chunk_decodes_to_zlibs_bytes(tmp_path: Path, decoder: str) -> None:
    path = _write(tmp_path / "f.h5", shuffle=False)
    decode = DECODERS[decoder]
    with h5py.File(path, "r") as f:
        for name in _maps():
            ds = f[name]
            size = int(np.prod(CHUNKS)) * ds.dtype.itemsize
            n = 0
            for i in range(0, SHAPE[0], CHUNKS[0]):
                for j in range(0, SHAPE[1], CHUNKS[1]):
                    mask, raw = ds.id.read_direct_chunk((i, j))
                    assert mask == 0
                    got = decode(memoryview(raw), size)
                    assert bytes(got) == zlib.decompress(raw)
                    assert len(got) == size
                    # The chunk's top-left block is the array's values (edges are padded).
                    rows, cols = min(CHUNKS[0], SHAPE[0] - i), min(CHUNKS[1], SHAPE[1] - j)
                    block = np.frombuffer(got, ds.dtype).reshape(CHUNKS)[:rows, :cols]
                    np.testing.assert_array_equal(block, ds[i : i + rows, j : j + cols])
                    n += 1
            assert n == ds.id.get_num_chunks()


@pytest.mark.parametrize("decoder", sorted(DECODERS))
def test_bad_streams_are_zlib_errors(decoder: str) -> None:
    decode = DECODERS[decoder]
    data = np.arange(10_000, dtype="<f4").tobytes()
    stream = zlib.compress(data, 4)
    with pytest.raises(zlib.error):
        decode(b"not a zlib stream at all", len(data))
    with pytest.raises(zlib.error):
        decode(stream[: len(stream) // 2], len(data))  # cut short
    broken = bytearray(stream)
    broken[-1] ^= 0xFF  # the Adler-32 no longer matches
    with pytest.raises(zlib.error):
        decode(bytes(broken), len(data))
    assert bytes(decode(stream, len(data))) == data
    assert bytes(decode(zlib.compress(data[:400]), len(data))) == data[:400]  # short: as is


def test_libdeflate_refuses_a_stream_larger_than_the_chunk() -> None:
    if "libdeflate" not in DECODERS:
        pytest.skip("the deflate package is not installed")
    data = bytes(range(256)) * 100
    with pytest.raises(zlib.error):
        inflate.inflate_libdeflate(zlib.compress(data), len(data) - 1)


@pytest.mark.parametrize("shuffle", [False, True], ids=["gzip", "shuffle+gzip"])
@pytest.mark.parametrize("decoder", sorted(DECODERS))
def test_read_whole_with_each_decoder_equals_h5py(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, decoder: str, shuffle: bool
) -> None:
    path = _write(tmp_path / "f.h5", shuffle=shuffle)
    used: list[int] = []
    decode = DECODERS[decoder]

    def counted(data: Any, size: int) -> Any:
        used.append(size)
        return decode(data, size)

    monkeypatch.setattr(chunkread, "inflate", counted)
    with h5py.File(path, "r") as f:
        for name in _maps():
            ds = f[name]
            assert ds.shuffle == shuffle
            got = chunkread.read_whole(ds)
            assert got is not None
            want = ds[()]
            assert got.dtype.str == want.dtype.str
            np.testing.assert_array_equal(got, want)
    assert len(used) == len(_maps()) * _n_chunks()  # every chunk went through this decoder


def _n_chunks() -> int:
    return -(-SHAPE[0] // CHUNKS[0]) * -(-SHAPE[1] // CHUNKS[1])


def _turns_beside(call: Callable[[], object]) -> int:
    """How many turns this thread took while ``call`` ran in another thread, counted between
    two flags the other thread sets right before and right after the call, whatever the
    machine's speed or load. The GIL changes hands only when its holder lets it go (the
    switch interval is raised for the probe, so no forced switch lands between a flag and the
    call): a call that keeps the GIL leaves exactly no turn, one that releases it leaves
    this thread free to turn until it returns."""
    inside: list[bool] = []
    done: list[bool] = []

    def work() -> None:
        inside.append(True)  # plain lists: setting a flag never lets the GIL go
        call()
        done.append(True)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(60.0)
    try:
        t = threading.Thread(target=work)
        t.start()
        turns = 0
        while not done:
            if inside:
                turns += 1
            time.sleep(0)  # lets the GIL go: the other thread runs whenever it wants it
        t.join()
    finally:
        sys.setswitchinterval(interval)
    return turns


@pytest.mark.parametrize("decoder", sorted(DECODERS))
def test_decoding_releases_the_gil(decoder: str) -> None:
    decode = DECODERS[decoder]
    data = np.random.default_rng(3).normal(size=6_000_000).astype("<f4").tobytes()
    stream = zlib.compress(data, 4)
    # A few tries: a busy machine may not give this thread a core during one decode.
    turns = [_turns_beside(lambda: decode(stream, len(data)))]
    while max(turns) <= 10 and len(turns) < 6:
        turns.append(_turns_beside(lambda: decode(stream, len(data))))
    print(f"turns beside {decoder} decodes: {turns}")
    assert max(turns) > 10, turns


def test_the_gil_probe_sees_a_call_that_keeps_the_gil() -> None:
    held = b"a" * 100_000_000  # bytes.count keeps the GIL while it scans
    assert [_turns_beside(lambda: held.count(b"ab")) for _ in range(3)] == [0, 0, 0]
