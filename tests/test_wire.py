"""Tests of the msgpack wire format (client/xpcs_io/wire.py): round trips, interoperability
with the reference msgpack library, zero-copy behaviour, and every refusal."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from xpcs_io import wire
from xpcs_io.errors import SchemaError, WireFormatError
from xpcs_io.wire import (
    MEDIA_TYPE,
    decode_array,
    encode_array,
    is_array_map,
    pack,
    pack_chunks,
    unpack,
)

ALLOWED_DTYPES = [
    "<f2", ">f2", "<f4", ">f4", "<f8", ">f8", "<c8", ">c8", "<c16", ">c16",
    "|i1", "<i2", ">i2", "<i4", ">i4", "<i8", ">i8",
    "|u1", "<u2", ">u2", "<u4", ">u4", "<u8", ">u8", "|b1",
]  # fmt: skip


def sample(dtype: str, shape: tuple[int, ...] = (2, 3)) -> npt.NDArray[Any]:
    """An array of ``dtype`` with distinct, non-trivial values (negatives where possible)."""
    dt = np.dtype(dtype)
    n = int(np.prod(shape))
    if dt.kind == "b":
        values: npt.NDArray[Any] = np.arange(n) % 3 == 1
    elif dt.kind == "u":
        values = np.arange(n) * 37 + 200
    elif dt.kind == "c":
        values = np.arange(n) * 1.25 - 1j * np.arange(n)
    else:
        values = np.arange(n) * 3 - 2.5 * (dt.kind == "f") - 1
    return values.astype(dt).reshape(shape)


def plain(a: npt.NDArray[Any]) -> dict[str, Any]:
    """The structure any msgpack library sees for an array."""
    return {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes(order="C")}


def assert_same(got: Any, want: npt.NDArray[Any]) -> None:
    assert isinstance(got, np.ndarray)
    assert got.dtype.str == want.dtype.str
    assert got.shape == want.shape
    assert got.tobytes() == np.ascontiguousarray(want).tobytes()  # bit-exact, NaN included
    assert got.flags.writeable


def both_ways(obj: Any) -> list[Any]:
    """Decode ``obj`` packed by ``pack`` and by ``pack_chunks``, from bytes and bytearray."""
    packed = pack(obj)
    joined = b"".join(pack_chunks(obj))
    assert joined == packed
    return [unpack(packed), unpack(bytearray(joined))]


def test_media_type() -> None:
    assert MEDIA_TYPE == "application/msgpack"


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ALLOWED_DTYPES)
def test_round_trip_every_dtype(dtype: str) -> None:
    a = sample(dtype)
    for got in both_ways({"a": a}):
        assert_same(got["a"], a)
        assert got["a"].dtype.byteorder == a.dtype.byteorder  # big-endian stays big-endian


@pytest.mark.parametrize(
    "a",
    [
        np.array(3.25, dtype="<f8"),
        np.array(7, dtype=">i4"),
        np.zeros((0,), dtype="<f4"),
        np.zeros((3, 0), dtype=">c16"),
        np.zeros((0, 0, 5), dtype="|b1"),
        sample("<f4", (10,))[::2],
        sample(">i8", (3, 4)).T,
        sample("<c8", (4, 5))[1:, ::-2],
    ],
    ids=["0d", "0d-be", "empty", "3x0", "0x0x5", "stride2", "transposed", "negstride"],
)
def test_round_trip_shapes_and_layouts(a: npt.NDArray[Any]) -> None:
    for got in both_ways(a):  # an array alone is a valid message too
        assert_same(got, a)
    for got in both_ways([a, {"x": a}]):
        assert_same(got[0], a)
        assert_same(got[1]["x"], a)


def test_round_trip_nested_structure() -> None:
    g2 = sample("<f4", (4, 8))
    msg: dict[str, Any] = {
        "name": "échantillon ☃ 試料",
        "none": None,
        "flags": [True, False],
        "ints": [0, -1, 127, 128, -33, 2**40, -(2**63), 2**64 - 1],
        "floats": [0.5, -1e300, float("inf")],
        "numpy": [np.float32(1.5), np.int16(-3), np.uint64(2**64 - 1), np.bool_(True)],
        "tuple": (1, "two", (3.0,)),
        "blob": b"\x00\xff raw",
        "results": {"g2": g2, "stats": {"q": np.arange(3, dtype=">f8"), "n": 4}},
        "list_of_arrays": [g2[0], g2[1]],
        "empty": {},
        "empty_list": [],
    }
    for got in both_ways(msg):
        assert got["name"] == msg["name"]
        assert got["none"] is None
        assert got["flags"] == [True, False]
        assert got["ints"] == msg["ints"]
        assert got["floats"] == msg["floats"]
        assert got["numpy"] == [1.5, -3, 2**64 - 1, True]
        assert type(got["numpy"][3]) is bool
        assert got["tuple"] == [1, "two", [3.0]]
        assert got["blob"] == b"\x00\xff raw"
        assert type(got["blob"]) is bytes
        assert_same(got["results"]["g2"], g2)
        assert_same(got["results"]["stats"]["q"], msg["results"]["stats"]["q"])
        assert got["results"]["stats"]["n"] == 4
        assert_same(got["list_of_arrays"][1], g2[1])
        assert got["empty"] == {}
        assert got["empty_list"] == []


def test_unpack_reads_float32_and_every_int_width() -> None:
    values = [1.5, -7, 2**7, 2**15, 2**31, 2**63, -(2**7), -(2**15), -(2**31), -(2**63)]
    assert unpack(msgpack.packb(values, use_single_float=True)) == values


# --- interoperability: exactly what the reference library writes and reads ----------------


def test_reference_library_reads_plain_structure() -> None:
    a, b = sample(">f8", (2, 2)), sample("<u2", (3,))[::-1]
    msg = {"a": a, "meta": {"b": b, "label": "x", "k": [1, 2.5, None]}, "s": np.float64(2.0)}
    meta = {"b": plain(b), "label": "x", "k": [1, 2.5, None]}
    expected = {"a": plain(a), "meta": meta, "s": 2.0}
    raw = pack(msg)
    # strict_map_key/ext_hook defaults: an ext type would come back as msgpack.ExtType.
    assert msgpack.unpackb(raw) == expected
    assert raw == msgpack.packb(expected, use_bin_type=True)
    assert list(msgpack.unpackb(raw)["a"]) == ["dtype", "shape", "data"]  # key order


@pytest.mark.parametrize("n", [0, 1, 15, 16, 31, 32, 255, 256, 65535, 65536])
def test_headers_match_reference_at_every_size_boundary(n: int) -> None:
    # numpy scalars defeat the plain-list fast path, so our own headers are used.
    structures: list[Any] = [
        "é" * (n // 2) + "x" * (n % 2),
        b"b" * n,
        [np.int8(1)] * n,
        {f"k{i}": np.int8(i % 100) for i in range(n)},
        np.zeros(n, dtype="|u1"),
    ]
    for obj in structures:
        reference = obj
        if isinstance(obj, list):
            reference = [1] * n
        elif isinstance(obj, dict):
            reference = {k: int(v) for k, v in obj.items()}
        elif isinstance(obj, np.ndarray):
            reference = plain(obj)
        assert pack(obj) == msgpack.packb(reference, use_bin_type=True)
        assert msgpack.unpackb(pack(obj)) == msgpack.unpackb(msgpack.packb(reference))
        got = unpack(pack(obj))
        if isinstance(obj, np.ndarray):
            assert_same(got, obj)
        else:
            assert got == reference


@pytest.mark.parametrize(
    "value",
    [0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1, -1, -32, -33, -128,
     -129, -32768, -32769, -(2**31), -(2**31) - 1, -(2**63), 0.1, True, False, None],
)  # fmt: skip
def test_scalars_match_reference(value: Any) -> None:
    assert pack(value) == msgpack.packb(value, use_bin_type=True)
    assert pack([value, np.int8(0)]) == msgpack.packb([value, 0], use_bin_type=True)
    assert unpack(pack(value)) == value


@pytest.mark.parametrize(
    "values",
    [
        list(range(128)) * 2,
        [float(i) / 3 for i in range(200)],
        [*range(100), 128],  # a long fixint run ending in a uint8
        [*(0.5 * i for i in range(70)), 1],  # float64 run broken by an int
        [1.5] * 64 + [None],
        [[1.5] * 64, list(range(64))],
    ],
    ids=["fixints", "floats", "broken-ints", "broken-floats", "floats-none", "nested"],
)
def test_long_number_lists(values: list[Any]) -> None:
    raw = msgpack.packb(values)
    assert pack(values) == raw
    assert unpack(raw) == msgpack.unpackb(raw) == values
    for cut in (len(raw) - 1, len(raw) // 2):
        with pytest.raises(WireFormatError):
            unpack(raw[:cut])


PLAIN_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.binary(max_size=300)
    | st.lists(st.integers(0, 127), min_size=64, max_size=70)
    | st.lists(st.floats(allow_nan=False), min_size=64, max_size=70),
    lambda inner: (
        st.lists(inner, max_size=8) | st.dictionaries(st.text(max_size=8), inner, max_size=8)
    ),
    max_leaves=20,
)


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(PLAIN_VALUES)
def test_plain_values_agree_with_reference(value: Any) -> None:
    raw = msgpack.packb(value, use_bin_type=True)
    assert pack(value) == raw
    assert b"".join(pack_chunks(value)) == raw
    assert unpack(raw, max_depth=64) == msgpack.unpackb(raw, strict_map_key=False)


def test_documented_example_bytes() -> None:
    doc = (Path(__file__).parents[1] / "docs" / "wire-format.md").read_text(encoding="utf-8")
    block = doc.split("<!-- example-hex")[1].split("```text\n")[1].split("```")[0]
    message = {"g2": np.array([[1.5, 2.0]], dtype="<f4"), "q": 0.5}
    assert bytes.fromhex(block) == pack(message)
    assert len(pack(message)) == 50


# --- zero copy ------------------------------------------------------------------------------


def test_pack_chunks_does_not_copy_arrays() -> None:
    a = sample("<f8", (100, 10))
    b = sample(">i4", (7,))
    c = sample("|b1", (3, 3))
    chunks = pack_chunks({"a": a, "meta": {"n": 3, "name": "x"}, "b": b, "c": c})
    assert len(chunks) <= 7
    assert all(len(chunk) > 0 for chunk in chunks)
    views = [chunk for chunk in chunks if isinstance(chunk, memoryview)]
    assert len(views) == 3
    for view, arr in zip(views, (a, b, c), strict=True):
        assert np.shares_memory(np.frombuffer(view, dtype=arr.dtype), arr)
    a[0, 0] = 123.0  # the chunk is the array's own memory
    assert np.frombuffer(views[0], dtype=a.dtype)[0] == 123.0


def test_pack_chunks_copies_non_contiguous_once_and_skips_empty_payloads() -> None:
    a = sample("<f4", (6, 6))[:, ::2]
    chunks = pack_chunks([a, np.zeros((0, 3))])
    views = [chunk for chunk in chunks if isinstance(chunk, memoryview)]
    assert len(views) == 1
    assert not np.shares_memory(np.frombuffer(views[0], dtype=a.dtype), a)
    assert all(len(chunk) > 0 for chunk in chunks)


def test_big_bytes_value_gets_its_own_chunk_without_copy() -> None:
    blob = bytearray(b"z" * 10_000)
    chunks = pack_chunks({"blob": blob, "n": 1})
    assert any(isinstance(c, memoryview) and c.obj is blob for c in chunks)
    assert unpack(b"".join(chunks)) == {"blob": bytes(blob), "n": 1}


def test_encode_array_is_zero_copy_for_contiguous() -> None:
    a = sample(">f8", (3, 4))
    amap = encode_array(a)
    assert list(amap) == ["dtype", "shape", "data"]
    assert amap["dtype"] == ">f8"
    assert amap["shape"] == [3, 4]
    assert np.shares_memory(np.frombuffer(amap["data"], dtype=a.dtype), a)
    assert is_array_map(amap)
    assert_same(decode_array(amap), a)


def test_arrays_from_bytearray_are_views_and_from_bytes_are_writable_copies() -> None:
    a = sample("<f8", (4,))
    buf = bytearray(pack({"a": a}))
    got = unpack(buf)["a"]
    assert np.shares_memory(got, np.frombuffer(buf, dtype=np.uint8))
    got[0] = 42.0  # writes through into the message buffer
    assert 42.0 in np.frombuffer(buf[-32:], dtype="<f8")
    writable_view = unpack(memoryview(buf))["a"]
    assert np.shares_memory(writable_view, np.frombuffer(buf, dtype=np.uint8))
    numpy_buffer = np.frombuffer(bytearray(pack({"a": a})), dtype=np.uint8)
    assert np.shares_memory(unpack(numpy_buffer.data)["a"], numpy_buffer)

    raw = pack({"a": a})
    copy = unpack(raw)["a"]
    assert copy.flags.writeable
    copy[0] = 1.0
    assert raw == pack({"a": a})
    readonly = unpack(memoryview(raw))["a"]
    readonly[1] = 5.0  # still writable: it is a copy
    assert readonly.flags.writeable


def test_decode_arrays_false_keeps_maps() -> None:
    a = sample("<i2", (2,))
    got = unpack(pack({"a": a, "blob": b"xy", "data": b"q"}), decode_arrays=False)
    assert got["a"]["dtype"] == "<i2"
    assert got["a"]["shape"] == [2]
    assert bytes(got["a"]["data"]) == a.tobytes()
    assert got["blob"] == b"xy"
    assert type(got["data"]) is bytes  # "data" of a non-array map is an ordinary bin


def test_is_array_map() -> None:
    assert is_array_map({"data": b"", "shape": [0], "dtype": "<f4"})
    assert not is_array_map({"dtype": "<f4", "shape": [0]})
    assert not is_array_map({"dtype": "<f4", "shape": [0], "data": b"", "x": 1})
    assert not is_array_map([("dtype", 1)])
    assert not is_array_map(None)


# --- pack refusals --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a",
    [
        np.array([object()], dtype=object),
        np.array(["ab"]),
        np.array([b"ab"]),
        np.zeros(2, dtype="V8"),
        np.zeros(2, dtype="M8[ns]"),
        np.zeros(2, dtype="m8[s]"),
        np.zeros(2, dtype=[("x", "<f4")]),
        np.zeros(2, dtype=np.longdouble),
    ],
    ids=["O", "U", "S", "V", "M", "m", "struct", "longdouble"],
)
def test_encode_refuses_dtypes(a: npt.NDArray[Any]) -> None:
    if a.dtype.itemsize == 8 and a.dtype.kind == "f":
        pytest.skip("longdouble is float64 on this platform")
    with pytest.raises(TypeError, match="cannot be sent"):
        encode_array(a)
    with pytest.raises(TypeError):
        pack({"a": a})
    with pytest.raises(TypeError):
        pack_chunks([a])


def test_pack_refuses_what_cannot_be_sent() -> None:
    with pytest.raises(TypeError, match="keys must be str"):
        pack({1: 2})
    with pytest.raises(TypeError, match="complex"):
        pack(np.complex64(1j))
    with pytest.raises(TypeError, match="cannot send a set"):
        pack({"a": {1, 2}})
    with pytest.raises(TypeError):
        encode_array([1, 2])  # type: ignore[arg-type]
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="nesting deeper"):
        pack(loop)


# --- decode_array: every malformed array map -> SchemaError naming field and problem --------

GOOD = {"dtype": "<f4", "shape": [2], "data": b"\x00" * 8}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dtype": None}, "missing key 'dtype'"),
        ({"shape": None}, "missing key 'shape'"),
        ({"data": None}, "missing key 'data'"),
        ({"extra": 1}, "unexpected keys"),
        ({"dtype": 4}, "dtype must be a str"),
        ({"dtype": "float32"}, "kind 'f'"),
        ({"dtype": "<x4"}, "kind 'x'"),
        ({"dtype": ""}, "kind ''"),
        ({"dtype": "O"}, "Python object"),
        ({"dtype": "|O"}, "Python object"),
        ({"dtype": "<U4"}, "unicode string"),
        ({"dtype": "|S4"}, "byte string"),
        ({"dtype": "V8"}, "void"),
        ({"dtype": "|V8"}, "void"),
        ({"dtype": "M8[ns]"}, "datetime"),
        ({"dtype": "<M8[ns]"}, "datetime"),
        ({"dtype": "<m8"}, "timedelta"),
        ({"dtype": "<f16"}, "item size '16'"),
        ({"dtype": "<c32"}, "item size '32'"),
        ({"dtype": "<b2"}, "item size '2'"),
        ({"dtype": "<f4x"}, "item size '4x'"),
        ({"dtype": "<f"}, "item size ''"),
        ({"dtype": "<f٤"}, "item size"),
        ({"dtype": "f4"}, "byte order"),
        ({"dtype": "=f4"}, "byte order"),
        ({"dtype": "|f4"}, "byte order"),
        ({"shape": 2}, "shape must be a list"),
        ({"shape": [2.0]}, "shape must be a list"),
        ({"shape": [-1]}, "shape must be a list"),
        ({"shape": [True]}, "shape must be a list"),
        ({"shape": ["2"]}, "shape must be a list"),
        ({"shape": [1] * 33}, "33 dimensions"),
        ({"data": "text"}, "data must be bytes"),
        ({"data": [0, 0]}, "data must be bytes"),
        ({"data": b"\x00" * 7}, "data has 7 bytes but shape [2] of dtype '<f4' needs 8 bytes"),
        ({"data": b"\x00" * 9}, "data has 9 bytes but shape [2] of dtype '<f4' needs 8 bytes"),
        ({"shape": [2**40, 2**40]}, "needs 4835703278458516698824704 bytes"),
    ],
)
def test_decode_array_errors(change: dict[str, Any], message: str) -> None:
    bad = {**GOOD, **change}
    bad = {k: v for k, v in bad.items() if v is not None}
    with pytest.raises(SchemaError, match="^meta.g2: .*" + re.escape(message)) as info:
        decode_array(bad, field="meta.g2")
    assert info.value.field == "meta.g2"
    assert isinstance(info.value, ValueError)


def test_decode_array_refuses_non_mapping() -> None:
    with pytest.raises(SchemaError, match="expected an array map") as info:
        decode_array([1, 2], field="x")  # type: ignore[arg-type]
    assert info.value.field == "x"


def test_decode_array_accepts_single_byte_orders_and_tuples() -> None:
    for order in ("", "|", "<", ">", "="):
        got = decode_array({"dtype": order + "u1", "shape": (3,), "data": b"abc"})
        assert got.dtype.str == "|u1"
        assert got.tolist() == [97, 98, 99]
        assert got.flags.writeable
    got = decode_array({"dtype": ">f8", "shape": [], "data": np.array(2.5, ">f8").tobytes()})
    assert got.shape == ()
    assert got.dtype.str == ">f8"
    assert got == 2.5


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"metadata": {"shape": {"dtype": "O", "shape": [], "data": b""}}}, "metadata.shape"),
        ({"sqmap": {"dtype": "<f4", "shape": [3], "data": b"1234"}}, "sqmap"),
        ({"frames": [1, {"dtype": "<f4", "shape": [-1], "data": b""}]}, "frames[1]"),
        ([{"dtype": 1, "shape": [], "data": b""}], "[0]"),
        ({"dtype": "<f4", "shape": [1], "data": "abcd"}, "array"),
    ],
)
def test_unpack_schema_errors_name_the_key_path(message: Any, field: str) -> None:
    raw = msgpack.packb(message, use_bin_type=True)
    with pytest.raises(SchemaError) as info:
        unpack(raw)
    assert info.value.field == field
    assert str(info.value).startswith(field + ": ")
    unpack(raw, decode_arrays=False)  # not looked at: no error


def test_shape_lies_mention_both_counts() -> None:
    a = sample("<f8", (2, 3))
    for nbytes in (8, 40, 56, 480):
        msg = {"g2": {"dtype": "<f8", "shape": [2, 3], "data": b"\x01" * nbytes}}
        with pytest.raises(SchemaError, match=f"data has {nbytes} bytes .* needs 48 bytes"):
            unpack(bytearray(msgpack.packb(msg, use_bin_type=True)))
    assert_same(unpack(pack({"g2": a}))["g2"], a)


# --- unpack: malformed bytes -> WireFormatError ---------------------------------------------

VALID = pack({"g2": sample("<f4", (2, 2)), "q": [0.5, -3, "été", None, True], "b": b"xy"})


def test_every_truncation_is_refused() -> None:
    for end in range(len(VALID)):
        with pytest.raises(WireFormatError):
            unpack(VALID[:end])
        with pytest.raises(WireFormatError):
            unpack(bytearray(VALID[:end]))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "truncated"),
        (VALID + b"\x00", "1 trailing bytes"),
        (b"\xc0\xc0\xc0", "2 trailing bytes"),
        (b"\xc1", "unknown msgpack type byte 0xc1"),
        (b"\x81\xa1a\xc1", "unknown msgpack type byte 0xc1"),
        (b"\xd4\x01\x00", "ext type"),
        (b"\xd5\x01\x00\x00", "ext type"),
        (b"\xd6\x01" + b"\x00" * 4, "ext type"),
        (b"\xd7\xff" + b"\x00" * 8, "ext type"),  # timestamp
        (b"\xd8\x01" + b"\x00" * 16, "ext type"),
        (b"\xc7\x01\x01\x00", "ext type"),
        (b"\xc8\x00\x01\x01\x00", "ext type"),
        (b"\xc9\x00\x00\x00\x01\x01\x00", "ext type"),
        (b"\x91" * 10_000 + b"\xc0", "max_depth=32"),
        (b"\x81\xa1a" * 10_000 + b"\xc0", "max_depth=32"),
        (b"\xdf\xff\xff\xff\xff\xa1a\xc0\xa1b", "count of 4294967295"),
        (b"\xdd\xff\xff\xff\xff\xc0\xc0\xc0\xc0\xc0", "count of 4294967295"),
        (b"\xdb\xff\xff\xff\xffabc", "str/bin of 4294967295"),
        (b"\xc6\xff\xff\xff\xffabc", "str/bin of 4294967295"),
        (b"\xc5\x01", "length field"),
        (b"\xcb\x00\x00", "scalar of 8"),
        (b"\x81\x01\x02", "map key at byte 1 is not a str"),
        (b"\x81\xc0\x02", "not a str"),
        (b"\x81\xc4\x01a\x02", "not a str"),
        (b"\x81\x91\xa1a\x02", "not a str"),
        (b"\x82\xa1a\xa3abc", "expected a map key"),
        (b"\xa2\xc3\x28", "invalid utf-8"),
        (b"\xa3\xed\xa0\x80", "invalid utf-8"),  # a lone surrogate
        (b"\x81\xa2\xff\xfe\x01", "invalid utf-8"),
        (b"this is not msgpack", "trailing bytes"),
        (b"\xff\xfe\xfd", "trailing bytes"),
    ],
)
def test_malformed_bytes(raw: bytes, message: str) -> None:
    with pytest.raises(WireFormatError, match=re.escape(message)):
        unpack(raw)
    with pytest.raises(WireFormatError):
        unpack(bytearray(raw))


def test_max_depth() -> None:
    nested = b"\x91" * 5 + b"\xc0"
    assert unpack(nested, max_depth=5) == [[[[[None]]]]]
    with pytest.raises(WireFormatError, match="max_depth=4"):
        unpack(nested, max_depth=4)
    # A max_depth beyond what the interpreter can recurse still gives a WireFormatError.
    with pytest.raises(WireFormatError):
        unpack(b"\x91" * 200_000 + b"\xc0", max_depth=10**6)


def test_unpack_rejects_non_buffers() -> None:
    with pytest.raises(TypeError):
        unpack("text")  # type: ignore[arg-type]


def test_non_contiguous_and_typed_buffers() -> None:
    a = sample("<i4", (3,))
    raw = pack({"a": a})
    spread = bytearray(2 * len(raw))
    spread[::2] = raw
    got = unpack(memoryview(spread)[::2])["a"]  # not contiguous: decoded from a copy
    assert_same(got, a)
    assert not np.shares_memory(got, np.frombuffer(spread, dtype=np.uint8))

    raw = next(r for n in range(4) if len(r := pack({"a": a, "s": "x" * n})) % 4 == 0)
    words = np.frombuffer(bytearray(raw), dtype="<u4")  # a buffer of format 'I', not 'B'
    got = unpack(words.data)["a"]
    assert_same(got, a)
    assert np.shares_memory(got, words)


# --- property tests -------------------------------------------------------------------------


@st.composite
def mutations(draw: st.DrawFn) -> bytes:
    """Valid messages with a few bytes changed, cut or inserted: they reach deep code paths."""
    raw = bytearray(VALID)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(raw) - 1))
        op = draw(st.sampled_from(["set", "cut", "insert"]))
        if op == "set":
            raw[i] = draw(st.integers(0, 255))
        elif op == "cut":
            del raw[i]
        else:
            raw.insert(i, draw(st.integers(0, 255)))
    return bytes(raw)


@pytest.mark.slow
@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=200), mutations()), st.booleans())
def test_arbitrary_bytes_only_raise_wire_or_schema_errors(raw: bytes, writable: bool) -> None:
    try:
        result = unpack(bytearray(raw) if writable else raw)
    except (WireFormatError, SchemaError):
        return
    if isinstance(result, np.ndarray):
        assert result.flags.writeable


def allowed_dtypes() -> st.SearchStrategy[np.dtype[Any]]:
    return st.one_of(
        hnp.boolean_dtypes(),
        hnp.integer_dtypes(endianness="?"),
        hnp.unsigned_integer_dtypes(endianness="?"),
        hnp.floating_dtypes(endianness="?", sizes=(16, 32, 64)),
        hnp.complex_number_dtypes(endianness="?", sizes=(64, 128)),
    )


@settings(max_examples=500, deadline=None)
@given(
    hnp.arrays(
        dtype=allowed_dtypes(),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6),
    ),
    st.sampled_from(["as is", "reversed", "transposed"]),
)
def test_round_trip_generated_arrays(a: npt.NDArray[Any], layout: str) -> None:
    if layout == "reversed" and a.ndim:
        a = a[::-1]
    elif layout == "transposed":
        a = a.T
    msg = {"a": a, "nested": [{"a": a}]}
    for got in both_ways(msg):
        assert_same(got["a"], a)
        assert_same(got["nested"][0]["a"], a)
    assert msgpack.unpackb(pack(a)) == plain(a)


def test_parsed_dtypes_are_remembered_only_when_allowed() -> None:
    for _ in range(2):  # refused every time, never remembered
        for text in ("<f3", "=f8", "O", "<U4", "|f8"):
            with pytest.raises(ValueError, match=r"not allowed|byte order"):
                wire.parse_dtype(text)
            assert text not in wire._DTYPES
    arrays = [np.arange(6, dtype=d).reshape(2, 3) for d in ("<f4", ">f8", "<i2", "|u1")] * 50
    for a in arrays:
        back = wire.decode_array(wire.encode_array(a))
        assert back.dtype == a.dtype
        assert back.tobytes() == a.tobytes()
    assert {"<f4", ">f8", "<i2", "|u1"} <= set(wire._DTYPES)
    assert len(wire._DTYPES) <= 30


@pytest.mark.parametrize("dims", [(), (127,), (200, 1), (300, 2), (70_000,), (0, 129)])
def test_array_maps_of_every_shape_width_decode_alike_in_any_key_order(
    dims: tuple[int, ...],
) -> None:
    """Array maps as ``pack`` writes them (dtype, shape, data; the read without building a
    map) and in another key order (read as a map) give the same writable array."""
    a = np.arange(math.prod(dims), dtype="<u1").reshape(dims)
    ours = bytearray(pack({"a": a, "n": 1}))
    other = bytearray(
        msgpack.packb(
            {"a": {"data": a.tobytes(), "shape": list(dims), "dtype": "|u1"}, "n": 1},
            use_bin_type=True,
        )
    )
    for raw in (ours, other, bytes(ours)):
        got = unpack(raw)
        assert got["n"] == 1
        assert got["a"].shape == dims
        assert got["a"].dtype == a.dtype
        assert got["a"].tobytes() == a.tobytes()
        assert got["a"].flags.writeable
    # The same key order with a shape that lies about the data: refused as before.
    lie = {"dtype": "|u1", "shape": [math.prod(dims) + 1], "data": a.tobytes()}
    with pytest.raises(SchemaError, match="needs"):
        unpack(bytearray(msgpack.packb({"a": lie}, use_bin_type=True)))
