"""Decoding one chunk of HDF5's deflate (gzip) filter: a zlib stream of known decoded size.

HDF5 stores each gzip-filtered chunk as one zlib stream (header, deflate data, Adler-32)
that decodes to exactly the chunk's size in bytes. libdeflate (the ``deflate`` package, in
the ``server`` extra) decodes such a stream in one call about twice as fast as zlib, checks
its Adler-32 as zlib does, and releases the GIL while it works, as zlib does: concurrent
reads decode on every core either way. Without it the standard library's zlib is used.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Callable
from types import ModuleType
from typing import TypeAlias

__all__ = ["BACKEND", "Stored", "inflate", "inflate_libdeflate", "inflate_zlib"]

#: Stored chunk bytes as read from the file (a view into one read of many chunks, or a copy).
Stored: TypeAlias = bytes | bytearray | memoryview


def _load_libdeflate() -> ModuleType | None:
    try:
        return importlib.import_module("deflate")
    except ImportError:  # the server extra brings it; zlib decodes the same streams
        return None


_libdeflate = _load_libdeflate()


def inflate_zlib(data: Stored, size: int) -> bytes:
    """``data`` (a zlib stream) decoded with the standard library's zlib.

    ``size`` is the expected decoded size in bytes: the first output buffer is made that
    large, so no buffer is grown on the way. The result is not cut to ``size``: the caller
    checks its length.

    Raises:
        zlib.error: ``data`` is not a whole, valid zlib stream.
    """
    return zlib.decompress(data, zlib.MAX_WBITS, max(size, 1))


def inflate_libdeflate(data: Stored, size: int) -> bytearray:
    """``data`` (a zlib stream) decoded with libdeflate into a buffer of ``size`` bytes.

    A stream decoding to fewer bytes returns them (the caller checks the length).

    Raises:
        zlib.error: ``data`` is not a valid zlib stream, its checksum is wrong, or it
            decodes to more than ``size`` bytes (as zlib's errors, so callers map one type).
        RuntimeError: libdeflate is not installed (``BACKEND`` is ``"zlib"``).
    """
    if _libdeflate is None:
        raise RuntimeError("libdeflate (the 'deflate' package) is not installed")
    try:
        out: bytearray = _libdeflate.zlib_decompress(data, size)
    except _libdeflate.DeflateError as exc:
        raise zlib.error(f"invalid or oversized deflate stream: {exc}") from None
    return out


#: The decoder ``inflate`` uses: ``"libdeflate"`` when the ``deflate`` package is installed.
BACKEND = "zlib" if _libdeflate is None else "libdeflate"

#: Decode one zlib stream of expected decoded size ``size`` (see ``inflate_libdeflate`` and
#: ``inflate_zlib``): the fastest installed decoder.
inflate: Callable[[Stored, int], bytes | bytearray] = (
    inflate_zlib if _libdeflate is None else inflate_libdeflate
)
