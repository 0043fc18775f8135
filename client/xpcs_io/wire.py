"""The msgpack wire format of xpcs-io (media type ``application/msgpack``).

A message is an ordinary msgpack value. Every numpy array in it is a plain map
``{"dtype": "<f4", "shape": [2, 3], "data": <bin: raw C-order bytes>}``; there are no ext
types and no pickle, so any msgpack library in any language can read it (see
``docs/wire-format.md``). ``pack``/``pack_chunks`` write messages, ``unpack`` reads them with a
small pure-Python parser that is strict about malformed input (``WireFormatError``, HTTP 400)
and about malformed arrays (``SchemaError``, HTTP 422), and never raises anything else.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping
from typing import Any, Final

import msgpack
import numpy as np
import numpy.typing as npt

from xpcs_io import arraycodec
from xpcs_io.errors import SchemaError, WireFormatError

__all__ = [
    "MAX_DIMS",
    "MEDIA_TYPE",
    "decode_array",
    "encode_array",
    "is_array_map",
    "pack",
    "pack_chunks",
    "parse_dtype",
    "unpack",
]

MEDIA_TYPE: Final = "application/msgpack"

_ARRAY_KEYS: Final = frozenset(("dtype", "shape", "data"))
_CODEC_KEYS: Final = frozenset(("dtype", "shape", "codec", "data"))
MAX_DIMS: Final = 32
# Same limit as msgpack.packb, so a self-referencing list fails cleanly instead of recursing.
_MAX_PACK_DEPTH: Final = 512
# bytes values at least this long get their own chunk instead of being copied into a header.
_OWN_CHUNK: Final = 4096
# float128/complex256 are left out on purpose: their layout is platform-specific padding of
# x87 extended precision, which no other language could read.
_ALLOWED: Final[dict[str, tuple[int, ...]]] = {
    "b": (1,), "i": (1, 2, 4, 8), "u": (1, 2, 4, 8), "f": (2, 4, 8), "c": (8, 16),
}  # fmt: skip
_KIND_NAMES: Final = {
    "O": "Python object", "U": "unicode string", "S": "byte string", "a": "byte string",
    "V": "void/structured", "M": "datetime", "m": "timedelta",
}  # fmt: skip
_PLAIN: Final = frozenset((int, float, bool, str, type(None)))

# msgpack type bytes -> (size, reader) for fixed-size scalars.
_FIXED: Final[dict[int, tuple[int, Callable[[memoryview, int], tuple[Any, ...]]]]] = {
    code: (struct.calcsize(fmt), struct.Struct(fmt).unpack_from)
    for code, fmt in (
        (0xCA, ">f"), (0xCB, ">d"), (0xCC, ">B"), (0xCD, ">H"), (0xCE, ">I"), (0xCF, ">Q"),
        (0xD0, ">b"), (0xD1, ">h"), (0xD2, ">i"), (0xD3, ">q"),
    )
}  # fmt: skip
_STR, _BIN, _ARR, _MAP = range(4)
# msgpack type bytes -> (kind, size of the length field) for variable-length values.
_SIZED: Final[dict[int, tuple[int, int]]] = {
    0xD9: (_STR, 1), 0xDA: (_STR, 2), 0xDB: (_STR, 4),
    0xC4: (_BIN, 1), 0xC5: (_BIN, 2), 0xC6: (_BIN, 4),
    0xDC: (_ARR, 2), 0xDD: (_ARR, 4), 0xDE: (_MAP, 2), 0xDF: (_MAP, 4),
}  # fmt: skip
_BIN_WIDTH: Final = {0xC4: 1, 0xC5: 2, 0xC6: 4}
_UINT_WIDTH: Final = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
# The packed keys of an array map, compared with slices of the message (memoryviews).
_KEY_DTYPE: Final = memoryview(b"\xa5dtype")
_KEY_SHAPE: Final = memoryview(b"\xa5shape")
_KEY_DATA: Final = memoryview(b"\xa4data")
_EXT: Final = frozenset((0xC7, 0xC8, 0xC9, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8))


def is_array_map(obj: object) -> bool:
    """Return whether ``obj`` is a dict whose key set is exactly ``{"dtype", "shape", "data"}``
    or, for a compressed array, ``{"dtype", "shape", "codec", "data"}``."""
    return isinstance(obj, dict) and (obj.keys() == _ARRAY_KEYS or obj.keys() == _CODEC_KEYS)


# Parsed dtype strings: only allowed ones are kept, so this holds a few dozen at most.
_DTYPES: dict[str, np.dtype[Any]] = {}


def parse_dtype(text: str) -> np.dtype[Any]:
    """Parse a dtype string of the allowed kinds (``"<f4"``, ``"|u1"``) without handing
    arbitrary text to numpy.

    Raises:
        ValueError: the string is not an allowed dtype.
    """
    known = _DTYPES.get(text)
    if known is not None:  # a many-file answer holds hundreds of arrays of a few dtypes
        return known
    dt = _parse_new_dtype(text)
    _DTYPES[text] = dt
    return dt


def _parse_new_dtype(text: str) -> np.dtype[Any]:
    order = text[:1] if text[:1] in ("<", ">", "|", "=") else ""
    kind, size = text[len(order) : len(order) + 1], text[len(order) + 1 :]
    if kind not in _ALLOWED:
        what = f" ({_KIND_NAMES[kind]})" if kind in _KIND_NAMES else ""
        raise ValueError(
            f"dtype {text!r} is not allowed: kind {kind!r}{what} is not one of b, i, u, f, c"
        )
    if size not in map(str, _ALLOWED[kind]):  # also refuses "04", "٤", "" and "4x"
        raise ValueError(
            f"dtype {text!r} is not allowed: item size {size!r} is not one of "
            f"{', '.join(map(str, _ALLOWED[kind]))} for kind {kind!r}"
        )
    if int(size) == 1:
        order = "|"
    elif order not in ("<", ">"):
        # '=' and '|' mean "whatever the reader's machine uses": meaningless on the wire.
        raise ValueError(f"dtype {text!r} must state its byte order with '<' or '>'")
    return np.dtype(order + kind + size)


def encode_array(a: npt.NDArray[Any]) -> dict[str, Any]:
    """Return the array map of ``a``: ``{"dtype": str, "shape": list, "data": memoryview}``.

    ``data`` is a byte view of the array's own buffer; a copy is made only when ``a`` is not
    C-contiguous. Byte order is kept as it is (``dtype`` says ``'>'`` for big-endian).

    Raises:
        TypeError: ``a`` is not an ndarray, or its dtype is not bool, int, uint, float16/32/64
            or complex64/128.
    """
    if not isinstance(a, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(a).__name__}")
    dt = a.dtype
    if dt.kind not in _ALLOWED or dt.itemsize not in _ALLOWED[dt.kind]:
        raise TypeError(f"dtype {dt.str!r} ({dt}) cannot be sent: allowed are b, i, u, f, c")
    shape = list(a.shape)
    base = np.asarray(a)
    if not base.flags.c_contiguous:
        base = np.ascontiguousarray(base)
    # reshape(-1) of a C-contiguous array is a view; uint8 gives a plain 'B' buffer.
    data = base.reshape(-1).view(np.uint8).data
    return {"dtype": dt.str, "shape": shape, "data": data}


def decode_array(
    obj: Mapping[str, Any],
    *,
    field: str = "array",
    codecs: bool = False,
    max_nbytes: int | None = None,
) -> npt.NDArray[Any]:
    """Turn an array map back into a writable numpy array of exactly the sent dtype and shape.

    The result is a view of ``data`` when that is a writable buffer (bytearray, writable
    memoryview) and a copy otherwise, so it is always writable. A compressed array map (with
    ``codec``) is decoded only when ``codecs`` is true: a few bytes of compressed data can
    claim gigabytes, so only a side that asked for compression (a client) accepts it, and
    only up to ``max_nbytes`` decoded bytes when given.

    Raises:
        SchemaError: (with ``.field = field``) a key is missing or unexpected, a compressed
            map is not accepted or does not decompress to its dtype and shape, ``dtype`` is
            not a str naming an allowed dtype, ``shape`` is not a list of at most 32
            non-negative ints, ``data`` is not bytes-like, or its length is not
            ``prod(shape) * itemsize``.
    """

    def bad(problem: str) -> SchemaError:
        return SchemaError(f"{field}: {problem}", field=field)

    if not isinstance(obj, Mapping):
        raise bad(f"expected an array map, got {type(obj).__name__}")
    for key in ("dtype", "shape", "data"):
        if key not in obj:
            raise bad(f"array map is missing key {key!r}")
    allowed = _CODEC_KEYS if "codec" in obj else _ARRAY_KEYS
    if extra := sorted(map(str, set(obj) - allowed)):
        raise bad(f"array map has unexpected keys {extra}")
    codec = obj.get("codec")
    if codec is not None and not codecs:
        raise bad("compressed arrays are not accepted here; send the raw array map")
    if codec is not None and codec != arraycodec.CODEC:
        raise bad(f"unknown array codec {codec!r:.40}; known: {arraycodec.CODEC!r}")
    text, shape, data = obj["dtype"], obj["shape"], obj["data"]
    if not isinstance(text, str):
        raise bad(f"dtype must be a str like '<f4', got {type(text).__name__}")
    try:
        dt = parse_dtype(text)
    except ValueError as exc:
        raise bad(str(exc)) from None
    if not isinstance(shape, list | tuple) or not all(
        isinstance(n, int | np.integer) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        raise bad(f"shape must be a list of non-negative ints, got {shape!r:.80}")
    if len(shape) > MAX_DIMS:
        raise bad(f"shape has {len(shape)} dimensions, at most {MAX_DIMS} are allowed")
    pieces = codec is not None and isinstance(data, list)  # compressed in pieces
    if pieces and not all(isinstance(p, bytes | bytearray | memoryview) for p in data):
        raise bad("data pieces must be bytes (msgpack bin)")
    if not pieces and not isinstance(data, bytes | bytearray | memoryview):
        raise bad(f"data must be bytes (msgpack bin), got {type(data).__name__}")
    dims = tuple(int(n) for n in shape)
    count = math.prod(dims)  # Python ints: a lying shape cannot overflow
    if codec is not None:
        if max_nbytes is not None and count * dt.itemsize > max_nbytes:
            raise too_large(field, count * dt.itemsize, max_nbytes)
        packed = [memoryview(p) for p in data] if pieces else memoryview(data)
        try:
            return arraycodec.decompress(dt, dims, packed)
        except ValueError as exc:
            raise bad(str(exc)) from None
    view = memoryview(data)
    if view.nbytes != count * dt.itemsize:
        raise bad(
            f"data has {view.nbytes} bytes but shape {list(dims)} of dtype {text!r} needs "
            f"{count * dt.itemsize} bytes ({count} elements x {dt.itemsize})"
        )
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    arr = np.frombuffer(view, dtype=dt)
    if view.readonly:
        arr = arr.copy()
    return arr.reshape(dims)


def too_large(field: str, nbytes: int, budget: int) -> SchemaError:
    """The error for a compressed array at ``field`` that decodes to more bytes than the
    ``budget`` its message has left."""
    problem = f"compressed array decodes to {nbytes:,} bytes, more than the {budget:,}"
    return SchemaError(f"{field}: {problem} this message may still hold", field=field)


def pack(obj: Any) -> bytes:
    """Encode ``obj`` as one msgpack message.

    ``np.ndarray`` values anywhere in dicts/lists become array maps, numpy scalars become
    Python scalars, tuples become lists. The result equals ``b"".join(pack_chunks(obj))``.

    Raises:
        TypeError: a value cannot be sent (unknown type, non-str dict key, bad array dtype,
            complex scalar).
        ValueError: nesting deeper than 512, or a str/bytes/container too long for msgpack.
    """
    return b"".join(pack_chunks(obj))


def pack_chunks(obj: Any) -> list[bytes | memoryview]:
    """Encode ``obj`` like ``pack`` but as chunks, without copying array payloads.

    Each array's payload is a memoryview of the array's own buffer (one copy only for a
    non-C-contiguous array); msgpack headers and small values between payloads are merged
    into one ``bytes`` chunk. No chunk is empty. Chunks can be written to a socket one by one.

    Raises:
        TypeError: as for ``pack``.
        ValueError: as for ``pack``.
    """
    writer = _Writer()
    writer.emit(obj, 0)
    writer.flush()
    return writer.chunks


def _head(n: int, fix: int, fix_limit: int, c8: int, c16: int, c32: int) -> bytes:
    """Smallest msgpack header for a str/bin/array/map of length ``n`` (c8 == 0: no 8-bit form)."""
    if n < fix_limit:
        return bytes((fix | n,))
    if c8 and n < 0x100:
        return bytes((c8, n))
    if n < 0x10000:
        return bytes((c16,)) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes((c32,)) + n.to_bytes(4, "big")
    raise ValueError(f"a msgpack str/bin/array/map holds at most 2**32 - 1 items, got {n}")


_STR_HEAD: Final = (0xA0, 32, 0xD9, 0xDA, 0xDB)
_BIN_HEAD: Final = (0x00, 0, 0xC4, 0xC5, 0xC6)
_ARR_HEAD: Final = (0x90, 16, 0, 0xDC, 0xDD)
_MAP_HEAD: Final = (0x80, 16, 0, 0xDE, 0xDF)


class _Writer:
    """Collects chunks: small pieces are buffered and joined before each large payload."""

    def __init__(self) -> None:
        self.chunks: list[bytes | memoryview] = []
        self.small: list[bytes] = []

    def flush(self) -> None:
        if self.small:
            self.chunks.append(b"".join(self.small))
            self.small = []

    def payload(self, data: bytes | memoryview) -> None:
        self.flush()
        self.chunks.append(data)

    def str_(self, text: str) -> None:
        raw = text.encode("utf-8")
        self.small += (_head(len(raw), *_STR_HEAD), raw)

    def bin_(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        nbytes = view.nbytes
        self.small.append(_head(nbytes, *_BIN_HEAD))
        if nbytes >= _OWN_CHUNK and view.format == "B" and view.ndim == 1:
            self.payload(view)
        elif nbytes:
            self.small.append(view.tobytes())

    def emit(self, obj: Any, depth: int) -> None:
        if depth > _MAX_PACK_DEPTH:
            raise ValueError(f"nesting deeper than {_MAX_PACK_DEPTH} (a reference cycle?)")
        if isinstance(obj, arraycodec.CompressedArray):
            self.small += (b"\x84\xa5dtype", msgpack.packb(obj.dtype), b"\xa5shape")
            self.small += (msgpack.packb(list(obj.shape)), b"\xa5codec\xa6blosc2\xa4data")
            self.bin_(obj.data.data)
        elif isinstance(obj, np.ndarray):
            amap = encode_array(obj)
            self.small += (b"\x83\xa5dtype", msgpack.packb(amap["dtype"]), b"\xa5shape")
            self.small += (msgpack.packb(amap["shape"]), b"\xa4data")
            self.small.append(_head(amap["data"].nbytes, *_BIN_HEAD))
            if amap["data"].nbytes:  # an empty chunk would end an HTTP chunked body
                self.payload(amap["data"])
        elif isinstance(obj, np.generic):
            item = obj.item()
            if isinstance(item, complex):
                raise TypeError("complex scalars cannot be sent; wrap them in np.asarray")
            self.emit(item, depth)
        elif isinstance(obj, str):
            self.str_(obj)
        elif obj is None or isinstance(obj, bool | int | float):
            self.small.append(msgpack.packb(obj))
        elif isinstance(obj, bytes | bytearray | memoryview):
            self.bin_(obj)
        elif isinstance(obj, Mapping):
            self.small.append(_head(len(obj), *_MAP_HEAD))
            for key, value in obj.items():
                if not isinstance(key, str):
                    raise TypeError(f"map keys must be str, got {type(key).__name__} {key!r:.40}")
                self.str_(key)
                self.emit(value, depth + 1)
        elif isinstance(obj, list | tuple):
            if all(type(x) in _PLAIN for x in obj):
                # Fast path: a list of plain scalars is packed in one C call (same bytes).
                self.small.append(msgpack.packb(obj, use_bin_type=True))
            else:
                self.small.append(_head(len(obj), *_ARR_HEAD))
                for item in obj:
                    self.emit(item, depth + 1)
        else:
            raise TypeError(f"cannot send a {type(obj).__name__} in a msgpack message")


def unpack(
    buf: bytes | bytearray | memoryview,
    *,
    max_depth: int = 32,
    decode_arrays: bool = True,
    codecs: bool = False,
    max_decoded: int | None = None,
    ready: Mapping[int, tuple[int, npt.NDArray[Any]]] | None = None,
) -> Any:
    """Decode one msgpack message; array maps become numpy arrays when ``decode_arrays``.

    Arrays are zero-copy views into ``buf`` when it is writable (bytearray, writable
    memoryview) and copies otherwise, so they are always writable. Other bins become
    ``bytes``. With ``decode_arrays=False`` array maps stay dicts whose ``data`` is a
    memoryview into ``buf``. A view keeps ``buf`` alive and a bytearray cannot be resized
    while one exists. Compressed array maps are decoded only with ``codecs=True`` (see
    ``decode_array``), to at most ``max_decoded`` bytes in total when given. ``ready``: the
    compressed array maps already decoded (as ``decode_array`` would), by the offset of
    their map in ``buf``, with the offset just past the map (see
    ``xpcs_io.client.piecedecode``); used only with ``codecs=True``.

    Raises:
        WireFormatError: the bytes are not exactly one valid msgpack value: truncated,
            trailing bytes, unknown or ext type byte, invalid utf-8, a length or count beyond
            the buffer, a non-str map key, or containers nested deeper than ``max_depth``.
        SchemaError: an array map is malformed; ``.field`` is its dotted key path.
        TypeError: ``buf`` is not a buffer (a programming error, not bad bytes).
    """
    view = memoryview(buf)
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    if view.format != "B" or view.ndim != 1:
        # np.frombuffer gives a flat uint8 view of any contiguous buffer and keeps writability.
        view = np.frombuffer(view, dtype=np.uint8).data
    reader = _Reader(view, max_depth, decode_arrays, codecs)
    reader.budget = max_decoded
    if codecs and decode_arrays and ready:
        reader.ready = ready
    try:
        value = reader.obj(0, "", "")
    except RecursionError:
        raise WireFormatError("message nested too deeply for this interpreter") from None
    if reader.pos != reader.end:
        raise WireFormatError(f"{reader.end - reader.pos} trailing bytes after the message")
    return value


def _path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else key


class _Reader:
    """Recursive-descent msgpack parser over a flat uint8 memoryview."""

    __slots__ = ("budget", "buf", "codecs", "decode_arrays", "end", "max_depth", "pos", "ready")

    def __init__(self, buf: memoryview, max_depth: int, decode_arrays: bool, codecs: bool) -> None:
        self.codecs = codecs
        self.budget: int | None = None
        self.ready: Mapping[int, tuple[int, npt.NDArray[Any]]] = {}
        self.buf, self.pos, self.end = buf, 0, len(buf)
        self.max_depth, self.decode_arrays = max_depth, decode_arrays

    def _short(self, what: str, n: int, pos: int) -> WireFormatError:
        return WireFormatError(
            f"truncated message: {what} of {n} at byte {pos} goes past the end ({self.end} bytes)"
        )

    def _scalar_run(self, pos: int, n: int) -> list[Any] | None:
        """Read a list of ``n`` positive fixints or ``n`` float64s with numpy, else None.

        Long lists of numbers are the one case where per-value Python dispatch is slow.
        """
        head = np.frombuffer(self.buf, np.uint8, n, pos)  # in range: the count was checked
        if head.max() < 0x80:
            self.pos = pos + n
            small: list[int] = head.tolist()
            return small
        if head[0] == 0xCB and pos + 9 * n <= self.end:
            rows = np.frombuffer(self.buf, np.uint8, 9 * n, pos).reshape(n, 9)
            if (rows[:, 0] == 0xCB).all():
                self.pos = pos + 9 * n
                floats: list[float] = rows[:, 1:].copy().view(">f8").ravel().tolist()
                return floats
        return None

    def _raw_array(self, pos: int) -> npt.NDArray[Any] | None:
        """The raw array map starting at ``pos`` (after its map header) as ``pack_chunks``
        writes it (keys dtype, shape, data in that order, small ints in the shape), read
        without building the map; None for anything else, which the general path then reads
        (and refuses with its precise errors). A many-file answer holds hundreds of these.
        """
        buf, end = self.buf, self.end
        try:
            if buf[pos : pos + 6] != _KEY_DTYPE:
                return None
            size = buf[pos + 6] - 0xA0
            if not 0 < size < 32:
                return None
            dt = _DTYPES.get(str(buf[pos + 7 : pos + 7 + size], "ascii"))
            pos += 7 + size
            if dt is None or buf[pos : pos + 6] != _KEY_SHAPE:
                return None
            ndim = buf[pos + 6] - 0x90
            if not 0 <= ndim < 16:
                return None
            pos += 7
            dims: list[int] = []
            for _ in range(ndim):
                code = buf[pos]
                if code < 0x80:
                    dims.append(code)
                    pos += 1
                elif (width := _UINT_WIDTH.get(code)) is not None:
                    dims.append(int.from_bytes(buf[pos + 1 : pos + 1 + width], "big"))
                    pos += 1 + width
                else:
                    return None
            if buf[pos : pos + 5] != _KEY_DATA:
                return None
            field = _BIN_WIDTH.get(buf[pos + 5])
            if field is None:
                return None
            pos += 6
            nbytes = int.from_bytes(buf[pos : pos + field], "big")
            pos += field
        except (IndexError, UnicodeDecodeError):
            return None
        count = math.prod(dims)
        if pos + nbytes > end or nbytes != count * dt.itemsize:
            return None
        arr = np.frombuffer(buf, dt, count, pos)
        if buf.readonly:
            arr = arr.copy()
        self.pos = pos + nbytes
        return arr.reshape(dims)

    def _spend(self, nbytes: int, field: str) -> None:
        """Count ``nbytes`` decoded from a compressed array against the budget.

        Raises:
            SchemaError: the budget does not hold them.
        """
        if self.budget is None:
            return
        if nbytes > self.budget:
            raise too_large(field, nbytes, self.budget)
        self.budget -= nbytes

    def obj(self, depth: int, parent: str, key: str | int) -> Any:
        """Read one value at ``self.pos``; ``parent``/``key`` locate it for error messages."""
        buf, pos = self.buf, self.pos
        start = pos
        if pos >= self.end:
            raise WireFormatError(f"truncated message: expected a value at byte {pos}")
        code = buf[pos]
        pos += 1
        if code < 0x80:  # the most frequent types are tested first
            self.pos = pos
            return code
        if 0xA0 <= code < 0xC0:
            kind, n = _STR, code & 0x1F
        elif code < 0x90:
            kind, n = _MAP, code & 0x0F
        elif code < 0xA0:
            kind, n = _ARR, code & 0x0F
        elif code >= 0xE0:
            self.pos = pos
            return code - 0x100
        elif code in _FIXED:
            size, read = _FIXED[code]
            if pos + size > self.end:
                raise self._short("scalar", size, pos)
            self.pos = pos + size
            return read(buf, pos)[0]
        elif code in _SIZED:
            kind, size = _SIZED[code]
            if pos + size > self.end:
                raise self._short("length field", size, pos)
            n = int.from_bytes(buf[pos : pos + size], "big")
            pos += size
        elif 0xC0 <= code <= 0xC3 and code != 0xC1:
            self.pos = pos
            return None if code == 0xC0 else code == 0xC3
        elif code in _EXT:
            raise WireFormatError(f"msgpack ext type (0x{code:02x}) at byte {pos - 1} is refused")
        else:
            raise WireFormatError(f"unknown msgpack type byte 0x{code:02x} at byte {pos - 1}")
        self.pos = pos
        if kind in (_STR, _BIN):
            stop = pos + n
            if stop > self.end:
                raise self._short("str/bin", n, pos)
            self.pos = stop
            if kind == _BIN:
                # Keep "data" as a view: it may be an array payload (decided in the map).
                return buf[pos:stop] if key == "data" else bytes(buf[pos:stop])
            try:
                return str(buf[pos:stop], "utf-8")
            except UnicodeDecodeError as exc:
                raise WireFormatError(f"invalid utf-8 in str at byte {pos}: {exc}") from None
        if depth >= self.max_depth:
            raise WireFormatError(f"containers nested deeper than max_depth={self.max_depth}")
        # Each element takes at least one byte (two per map entry): refuse impossible counts
        # before looping, so a short message cannot claim 2**32 elements.
        if n * (2 if kind == _MAP else 1) > self.end - pos:
            raise self._short("array/map count", n, pos)
        if (
            kind == _MAP
            and n == 3
            and self.decode_arrays
            and (arr := self._raw_array(pos)) is not None
        ):
            return arr
        path = _path(parent, key)
        if kind == _MAP and n == 4 and (done := self.ready.get(start)) is not None:
            end, arr = done
            self._spend(arr.nbytes, path or "array")
            self.pos = end
            return arr
        if kind == _ARR:
            if n >= 64 and (run := self._scalar_run(pos, n)) is not None:
                return run
            return [self.obj(depth + 1, path, i) for i in range(n)]
        out: dict[str, Any] = {}
        for _ in range(n):
            kpos = self.pos
            if kpos >= self.end:
                raise WireFormatError(f"truncated message: expected a map key at byte {kpos}")
            kcode = buf[kpos]
            if not (0xA0 <= kcode < 0xC0 or 0xD9 <= kcode <= 0xDB):
                raise WireFormatError(f"map key at byte {kpos} is not a str (0x{kcode:02x})")
            name: str = self.obj(depth + 1, path, 0)
            out[name] = self.obj(depth + 1, path, name)
        if is_array_map(out):
            if self.decode_arrays:
                arr = decode_array(
                    out, field=path or "array", codecs=self.codecs, max_nbytes=self.budget
                )
                if "codec" in out:
                    self._spend(arr.nbytes, path or "array")
                return arr
        elif isinstance(out.get("data"), memoryview):
            out["data"] = bytes(out["data"])  # not an array payload: an ordinary bin
        return out
