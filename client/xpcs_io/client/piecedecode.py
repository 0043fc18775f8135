"""Compressed arrays decoded while the rest of their answer is still arriving.

A compressed array map (``docs/wire-format.md``) is
``{"dtype": .., "shape": [..], "codec": "blosc2", "data": <bin> | [<bin>, ..]}``; a server
that compresses while it sends makes ``data`` a list of pieces, one blosc2 chunk per few
MiB of the array. Decoding them only once the whole body is in leaves the link idle while
the client decompresses tens of MB. ``PieceDecoder`` is shown the body as it grows
(``advance``): it walks the msgpack values (skipping payloads, building nothing), and each
blosc2 chunk of an array map in the form above is decompressed into that array as soon as
its bytes are in. ``wire.unpack(..., ready=decoder.ready)`` then takes those arrays as they
are instead of decoding their maps again.

It only ever declines: anything it does not recognise or cannot check (another key order,
a malformed or corrupt piece, pieces that do not add up to the shape, an array past the
decode budget, ext types) is left to ``wire.unpack``, which decodes or refuses it with its
precise error, so the result and the errors of a body are the same with or without it.
"""

from __future__ import annotations

import math
import time
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from xpcs_io import arraycodec
from xpcs_io.wire import MAX_DIMS, parse_dtype

__all__ = ["PieceDecoder"]

# Bytes after a type byte that give a value's length, and the value's own fixed bytes.
_SKIP: Final[dict[int, tuple[int, int]]] = {
    0xC0: (0, 0), 0xC2: (0, 0), 0xC3: (0, 0),
    0xCA: (0, 4), 0xCB: (0, 8), 0xCC: (0, 1), 0xCD: (0, 2), 0xCE: (0, 4), 0xCF: (0, 8),
    0xD0: (0, 1), 0xD1: (0, 2), 0xD2: (0, 4), 0xD3: (0, 8),
    0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0), 0xD9: (1, 0), 0xDA: (2, 0), 0xDB: (4, 0),
    0xDC: (2, -1), 0xDD: (4, -1), 0xDE: (2, -1), 0xDF: (4, -1),
}  # fmt: skip
_BIN: Final = {0xC4: 1, 0xC5: 2, 0xC6: 4}
_UINT: Final = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
_HEAD: Final = b"\x84\xa5dtype"
_SHAPE: Final = b"\xa5shape"
_CODEC: Final = b"\xa5codec\xa6blosc2\xa4data"


class _IncompleteError(Exception):
    """The bytes needed next have not arrived yet."""


def _byte(buf: memoryview, pos: int) -> int:
    if pos >= len(buf):
        raise _IncompleteError
    value: int = buf[pos]
    return value


def _has(buf: memoryview, pos: int, want: bytes) -> bool:
    """Whether ``want`` is at ``pos`` (as far as bytes have arrived: ``_IncompleteError`` when
    they match so far but some are still to come)."""
    got = bytes(buf[pos : pos + len(want)])
    if got != want[: len(got)]:
        return False
    if len(got) < len(want):
        raise _IncompleteError
    return True


class _Array:
    """An array map being filled: where its map starts, its output, bins still to come."""

    __slots__ = ("filled", "flat", "left", "out", "start")

    def __init__(self, start: int, out: npt.NDArray[Any], pieces: int) -> None:
        self.start, self.out, self.left = start, out, pieces
        self.flat = out.reshape(-1).view(np.uint8)
        self.filled = 0


class PieceDecoder:
    """Decodes the blosc2 chunks of compressed array maps in a msgpack body as it arrives.

    ``ready`` maps the offset of each array map decoded in full to ``(offset just past the
    map, the array)``. ``nbytes``/``seconds``: the compressed bytes decoded and the time
    that took (what ``compression="auto"`` weighs). Arrays are allocated up to ``budget``
    decoded bytes in total (the client's bound on what a body may decode to). ``later``:
    how many pieces after the body's first were made with each compressor
    (``arraycodec.chunk_compressor`` code),
    which tell whether the link or the sender's compression paced the answer
    (``arraycodec.link_paced``).
    """

    def __init__(self, budget: int) -> None:
        self.ready: dict[int, tuple[int, npt.NDArray[Any]]] = {}
        self.nbytes = 0
        self.seconds = 0.0
        self.budget = budget
        self.later: dict[int, int] = {}
        self._pieces = 0
        self._pos = 0  # the next value's type byte
        self._array: _Array | None = None  # the array map whose bins come next
        self._stopped = False

    def advance(self, body: Any) -> None:
        """Look at the body received so far (a uint8 buffer, its first bytes unchanged
        since the last call) and decode every chunk now complete. Never raises: a body it
        cannot follow stops it (``wire.unpack`` then decodes what is left)."""
        if self._stopped:
            return
        buf = memoryview(body).cast("B") if not isinstance(body, memoryview) else body
        try:
            while not self._stopped and self._pos < len(buf):
                self._step(buf)
        except _IncompleteError:
            return
        except Exception:  # anything unexpected: decline, never break the transfer
            self._stopped = True

    def _step(self, buf: memoryview) -> None:
        pos, code = self._pos, buf[self._pos]
        if self._array is not None:
            self._piece(buf, pos, code)
            return
        if code == 0x84 and self._array_map(buf, pos):
            return
        if code < 0xC0 or code >= 0xE0:  # fixint, fixmap, fixarray, fixstr
            self._pos = pos + 1 + (code - 0xA0 if 0xA0 <= code < 0xC0 else 0)
            return
        if code not in _SKIP:  # ext types and 0xc1: wire.unpack refuses the body
            self._stopped = True
            return
        width, size = _SKIP[code]
        if size < 0:  # a container header: its values follow
            self._pos = pos + 1 + width
            return
        if pos + 1 + width > len(buf):
            raise _IncompleteError
        n = int.from_bytes(buf[pos + 1 : pos + 1 + width], "big") if width else size
        self._pos = pos + 1 + width + n  # a payload is skipped, received or not

    def _array_map(self, buf: memoryview, start: int) -> bool:
        """At a 4-entry map: if it begins as a compressed array map, set up its output and
        go to its first bin (True); False to read it as an ordinary map.

        Raises:
            _IncompleteError: its head has not all arrived.
        """
        if not _has(buf, start, _HEAD):
            return False
        pos = start + len(_HEAD)
        size = _byte(buf, pos) - 0xA0
        if not 0 < size < 32:
            return False
        if pos + 1 + size > len(buf):
            raise _IncompleteError
        try:
            dt = parse_dtype(str(buf[pos + 1 : pos + 1 + size], "ascii"))
        except (ValueError, UnicodeDecodeError):
            return False
        pos += 1 + size
        if not _has(buf, pos, _SHAPE):
            return False
        pos += len(_SHAPE)
        ndim = _byte(buf, pos) - 0x90
        if not 0 <= ndim <= min(15, MAX_DIMS):
            return False
        pos += 1
        dims = []
        for _ in range(ndim):
            code = _byte(buf, pos)
            if code < 0x80:
                dims.append(code)
                pos += 1
            elif code in _UINT:
                width = _UINT[code]
                if pos + 1 + width > len(buf):
                    raise _IncompleteError
                dims.append(int.from_bytes(buf[pos + 1 : pos + 1 + width], "big"))
                pos += 1 + width
            else:
                return False
        if not _has(buf, pos, _CODEC):
            return False
        pos += len(_CODEC)
        code = _byte(buf, pos)
        if code in _BIN:  # one chunk: the bin itself is the only piece
            pieces = 1
        elif 0x91 <= code <= 0x9F:
            pieces, pos = code - 0x90, pos + 1
        elif code in (0xDC, 0xDD):
            width = 2 if code == 0xDC else 4
            if pos + 1 + width > len(buf):
                raise _IncompleteError
            pieces = int.from_bytes(buf[pos + 1 : pos + 1 + width], "big")
            pos += 1 + width
        else:
            return False
        nbytes = math.prod(dims) * dt.itemsize
        if not pieces or nbytes > self.budget:
            return False
        self.budget -= nbytes
        self._array = _Array(start, np.empty(dims, dt), pieces)
        self._pos = pos
        return True

    def _piece(self, buf: memoryview, pos: int, code: int) -> None:
        """At the next bin of the array being filled: decode it once it is all in."""
        array = self._array
        assert array is not None
        width = _BIN.get(code)
        if width is None:  # not a bin: the map is not what it looked like
            self._array = None
            return
        if pos + 1 + width > len(buf):
            raise _IncompleteError
        n = int.from_bytes(buf[pos + 1 : pos + 1 + width], "big")
        stop = pos + 1 + width + n
        if stop > len(buf):
            raise _IncompleteError
        if not self._decode(array, buf[pos + 1 + width : stop]):
            self._array = None  # wire.unpack reports what is wrong with it
            self._pos = stop
            return
        self._pos = stop
        array.left -= 1
        if not array.left:
            self._array = None
            if array.filled == array.flat.nbytes:
                self.ready[array.start] = (stop, array.out)

    def _decode(self, array: _Array, chunk: memoryview) -> bool:
        """Decompress ``chunk`` into the next bytes of ``array``; False when it is not a
        blosc2 chunk that fits there."""
        import blosc2

        started = time.perf_counter()
        try:
            size = blosc2.get_cbuffer_sizes(chunk)[0]
        except Exception:  # blosc2 raises bare Exceptions on bad headers
            return False
        if array.filled + size > array.flat.nbytes:
            return False
        if size:
            try:
                blosc2.decompress2(chunk, dst=array.flat[array.filled : array.filled + size])
            except Exception:
                return False
        array.filled += size
        if self._pieces:
            code = arraycodec.chunk_compressor(chunk)
            self.later[code] = self.later.get(code, 0) + 1
        self._pieces += 1
        self.nbytes += len(chunk)
        self.seconds += time.perf_counter() - started
        return True
