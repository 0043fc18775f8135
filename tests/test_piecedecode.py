"""Compressed arrays decoded while their answer arrives (``PieceDecoder``): the same result
and the same errors as decoding the whole body, whatever pieces the bytes arrive in; and on
a real server's answers compressed while sent, through both kinds of driver."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import h5py
import httpx
import msgpack
import numpy as np
import pytest

from tests.conftest import Server
from xpcs_io import arraycodec, wire
from xpcs_io.client import core
from xpcs_io.client.piecedecode import PieceDecoder
from xpcs_io.errors import SchemaError, WireFormatError

BUDGET = 4 << 30
SHAPE = [256, 1500]
PIECE = 1 << 19


def _pieces(a: np.ndarray[Any, Any], *, fast: bool = False) -> list[bytes]:
    raw = a.reshape(-1).view(np.uint8).data
    return [
        arraycodec.compress_piece(raw[i : i + PIECE], a.itemsize, "blosc2-zstd", fast)
        for i in range(0, a.nbytes, PIECE)
    ]


def _arrays() -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(7)
    return {
        "sqmap": rng.random(SHAPE, dtype=np.float32),
        "dqmap": np.arange(SHAPE[0] * SHAPE[1], dtype="<i8").reshape(SHAPE),
        "mask": (rng.random(SHAPE) > 0.1).astype(np.uint8),
    }


def _map(a: np.ndarray[Any, Any], data: Any) -> dict[str, Any]:
    return {"dtype": a.dtype.str, "shape": list(a.shape), "codec": "blosc2", "data": data}


def _body(message: dict[str, Any]) -> np.ndarray[Any, Any]:
    return np.frombuffer(bytearray(msgpack.packb(message)), np.uint8)


def _message() -> dict[str, Any]:
    """An answer as a server writes it: arrays in pieces, one in a single chunk, a raw array
    map and the other msgpack types around them."""
    a = _arrays()
    return {
        "sqmap": _map(a["sqmap"], _pieces(a["sqmap"])),
        "sqmap_unit": "nm^-1",
        "meta": {"floats": [0.5] * 70, "ints": [-1, -40, 300, 70000, 2**40], "none": None},
        "note": "x" * 300,
        "blob": b"\x84\xa5dtype" * 50,  # a bin whose bytes look like an array map's head
        "dqmap": _map(a["dqmap"], arraycodec.compress_piece(a["dqmap"].data, 8, "blosc2-lz4")),
        "mask": _map(a["mask"], _pieces(a["mask"], fast=True)),
        "partition": {"dtype": "<i4", "shape": [3], "data": np.arange(3, dtype="<i4").tobytes()},
        "flags": [True, False, 1.25],
    }


def _fed(body: np.ndarray[Any, Any], steps: list[int], budget: int = BUDGET) -> PieceDecoder:
    """A decoder shown ``body`` growing by ``steps`` bytes at a time (cycled)."""
    decoder = PieceDecoder(budget)
    pos = i = 0
    while pos < len(body):
        pos = min(len(body), pos + steps[i % len(steps)])
        decoder.advance(body[:pos])
        i += 1
    return decoder


def _same(got: Any, want: Any) -> None:
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray)
        assert got.dtype == want.dtype
        assert got.flags.writeable
        np.testing.assert_array_equal(got, want)
    elif isinstance(want, dict):
        assert got.keys() == want.keys()
        for key in want:
            _same(got[key], want[key])
    else:
        assert got == want


@pytest.mark.parametrize(
    "steps", [[1], [7, 1, 3], [4096], [65536, 13], [1 << 20], [10**9]], ids=str
)
def test_any_arrival_decodes_as_the_whole_body(steps: list[int]) -> None:
    body = _body(_message())
    decoder = _fed(body, steps)
    assert len(decoder.ready) == 3  # sqmap, dqmap and mask were decoded on the way
    want = wire.unpack(body.data, codecs=True)
    got = wire.unpack(body.data, codecs=True, ready=decoder.ready)
    _same(got, want)
    a = _arrays()
    for name in a:
        np.testing.assert_array_equal(got[name], a[name])
    assert decoder.nbytes == sum(len(piece) for piece in _pieces(a["sqmap"])) + sum(
        len(piece) for piece in _pieces(a["mask"], fast=True)
    ) + len(arraycodec.compress_piece(a["dqmap"].data, 8, "blosc2-lz4"))


def test_the_pieces_after_the_first_say_their_compressors() -> None:
    a = _arrays()["sqmap"]
    own = {"x": _map(a, _pieces(a))}
    n = len(_pieces(a))
    assert _fed(_body(own), [1 << 16]).later == {4: n - 1}
    mixed = {"x": _map(a, _pieces(a)[:1] + _pieces(a, fast=True)[1:])}
    assert _fed(_body(mixed), [1 << 16]).later == {1: n - 1}


def _broken() -> list[tuple[str, dict[str, Any]]]:
    a = _arrays()["sqmap"]
    good = _pieces(a)
    wrong_order = {"dtype": "<f4", "codec": "blosc2", "shape": SHAPE, "data": good}
    return [
        ("a piece cut short", _map(a, [good[0], good[1][:-100], *good[2:]])),
        ("a piece missing", _map(a, good[:-1])),
        ("a piece too many", _map(a, [*good, good[0]])),
        ("a piece that is not a bin", _map(a, [good[0], "text", *good[2:]])),
        ("not blosc2", _map(a, [b"\x00" * 64, *good[1:]])),
        ("another codec", {**_map(a, good), "codec": "lz5"}),
        ("a shape that does not match", {**_map(a, good), "shape": [SHAPE[0], SHAPE[1] + 1]}),
        ("a dtype not allowed", {**_map(a, good), "dtype": "<f16"}),
        ("no pieces", _map(a, [])),
        ("keys in another order", wrong_order),  # valid, just not followed early
    ]


@pytest.mark.parametrize(("what", "array"), _broken(), ids=[w for w, _ in _broken()])
def test_a_body_it_cannot_follow_decodes_or_fails_as_the_whole_body(
    what: str, array: dict[str, Any]
) -> None:
    body = _body({"before": _map(_arrays()["mask"], _pieces(_arrays()["mask"])), "x": array})
    decoder = _fed(body, [5000, 3])
    assert len(decoder.ready) == 1  # the good array before it
    outcomes = []
    for ready in (None, decoder.ready):
        try:
            outcomes.append(("ok", wire.unpack(body.data, codecs=True, ready=ready)))
        except (SchemaError, WireFormatError) as exc:
            outcomes.append((type(exc).__name__, str(exc)))
    (kind, first), (kind_early, second) = outcomes
    assert kind == kind_early
    if kind == "ok":
        assert what == "keys in another order"
        _same(second, first)
    else:
        assert second == first


def test_the_decode_budget_holds_for_arrays_decoded_early() -> None:
    message = _message()
    body = _body(message)
    decoder = _fed(body, [1 << 16])
    budget = _arrays()["sqmap"].nbytes + 10
    errors = []
    for ready in (None, decoder.ready):
        with pytest.raises(SchemaError) as caught:
            wire.unpack(body.data, codecs=True, max_decoded=budget, ready=ready)
        errors.append((str(caught.value), caught.value.field))
    assert errors[0] == errors[1]
    assert "more than the" in errors[0][0]
    # Its own budget: nothing is allocated beyond it, the body still decodes whole.
    small = _fed(body, [1 << 16], budget=_arrays()["sqmap"].nbytes)
    assert len(small.ready) == 1
    _same(
        wire.unpack(body.data, codecs=True, ready=small.ready), wire.unpack(body.data, codecs=True)
    )


def test_garbage_never_raises_and_decodes_nothing() -> None:
    rng = np.random.default_rng(11)
    for _ in range(200):
        body = rng.integers(0, 256, int(rng.integers(1, 2000)), dtype=np.uint8)
        decoder = _fed(body, [int(rng.integers(1, 300))])
        assert decoder.ready == {}
    # Ext types stop it; what follows is not decoded early.
    body = _body({"a": msgpack.ExtType(1, b"xyz"), "b": _map(_arrays()["mask"], [b"1"])})
    assert _fed(body, [1]).ready == {}


# ------------------------------------------------------------------ on a real server


@pytest.fixture(scope="module")
def cold(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.conftest import start_server
    from xpcs_io.demo import DemoSpec, write_native_file

    root = tmp_path_factory.mktemp("early")
    write_native_file(root / "q.h5", DemoSpec(shape=(1024, 3000), n_delay=4, n_q=6))
    srv = start_server(
        root, tmp_path_factory.mktemp("logs") / "early.log", env={"XPCS_IO_CACHE_BYTES": "0"}
    )
    yield srv
    srv.stop()


@pytest.mark.parametrize("driver", ["sockets", "httpx", "async"])
def test_answers_compressed_while_sent_are_decoded_as_they_arrive(
    cold: Server, driver: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from xpcs_io.client import AsyncRemoteHDF5Facade, RemoteHDF5Facade

    made: list[PieceDecoder] = []
    make = core.early_decoder

    def early(status: int, headers: dict[str, str]) -> PieceDecoder | None:
        decoder = make(status, headers)
        if decoder is not None:
            made.append(decoder)
        return decoder

    monkeypatch.setattr(core, "early_decoder", early)
    if driver == "async":

        async def read_twice() -> Any:
            async with AsyncRemoteHDF5Facade(cold.url, compression="blosc2-zstd") as api:
                await api.read_qmap("q.h5")  # learns the file's plan; the second is sent from it
                return await api.read_qmap("q.h5")

        q = asyncio.run(read_twice())
    else:
        http = httpx.Client(timeout=60) if driver == "httpx" else None
        with RemoteHDF5Facade(cold.url, compression="blosc2-zstd", http=http) as api:
            for _ in range(2):  # the first read learns the file's plan; the second uses it
                q = api.read_qmap("q.h5")
        if http is not None:
            http.close()
    last = made[-1]
    assert len(last.ready) >= 3  # the three float maps, at least
    assert last.nbytes > 0
    with h5py.File(Path(cold.root) / "q.h5", "r") as f:
        for name in ("sqmap", "dqmap", "phis", "mask", "partition_map"):
            np.testing.assert_array_equal(getattr(q, name), f[f"xpcs/qmap/{name}"][()])
