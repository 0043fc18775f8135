"""Compressed arrays on the wire: one codec, ``"blosc2"``, with two negotiable presets.

A compressed array is the array map with a fourth key (see docs/wire-format.md)::

    {"dtype": "<f4", "shape": [2162, 2068], "codec": "blosc2", "data": <bin: one blosc2 chunk>}

``data`` is a single chunk in the C-Blosc2 format: it names its own filters (byte shuffle,
then byte delta) and compressor, so ``blosc2_decompress`` in C, ``blosc2.decompress2`` in
Python or any C-Blosc2 binding gives back the ``prod(shape) * itemsize`` raw C-order bytes.
A client asks for compression with the request header ``XPCS-Array-Codec`` naming a preset
(``blosc2-zstd``: better ratio, for links up to ~1 Gbit/s; ``blosc2-lz4``: faster); the
server compresses only arrays that shrink enough and sends the rest as plain array maps.

blosc2 is imported only when compression is used: a client without it never asks for it.
"""

from __future__ import annotations

import importlib.util
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "CODEC",
    "HEADER",
    "PIECE_CODECS",
    "PRESETS",
    "RATE_HEADER",
    "CompressedArray",
    "available",
    "chunk_compressor",
    "compress",
    "compress_piece",
    "compress_tree",
    "decompress",
    "link_paced",
    "negotiate",
    "take_decode_stats",
]

#: The codec id carried in a compressed array map.
CODEC: Final = "blosc2"
#: The request header a client names its accepted presets in (comma-separated, best first).
HEADER: Final = "xpcs-array-codec"
#: Response header of an answer compressed while it is sent: the raw bytes a second the
#: server reads and compresses at lately (an integer), so that a client can tell an answer
#: the link paced (it came in well below that) from one the server's compression paced.
RATE_HEADER: Final = "xpcs-compress-rate"
#: Preset name -> (compressor, clevel). Both use shuffle + bytedelta and 1 MiB blocks.
PRESETS: Final[dict[str, tuple[str, int]]] = {"blosc2-zstd": ("ZSTD", 1), "blosc2-lz4": ("LZ4", 5)}
#: Preset name -> clevel for a copy compressed once and sent many times (``keep=True``):
#: on the detector-sized q-map, Zstandard at blosc2 clevel 3 sends 12.4 MB where level 1
#: sends 16.1 MB (30 ms less at 1 Gbit/s on every later read), decodes as fast, and takes
#: about 0.25 s more to compress, once per file version.
KEEP_CLEVEL: Final[dict[str, int]] = {"blosc2-zstd": 3, "blosc2-lz4": 5}
#: Arrays smaller than this travel raw: compressing them saves nothing a link would notice.
MIN_BYTES: Final = 64 << 10
#: One blosc2 chunk holds at most 2 GiB; larger arrays travel raw.
MAX_BYTES: Final = 1 << 30
#: Compressed data must be at most this fraction of the raw bytes to be sent compressed.
MAX_RATIO: Final = 0.9


@dataclass(frozen=True)
class CompressedArray:
    """An array already compressed for the wire (``data``: one blosc2 chunk, read-only)."""

    dtype: str
    shape: tuple[int, ...]
    data: npt.NDArray[np.uint8]


def available() -> bool:
    """Whether blosc2 can be imported here."""
    return importlib.util.find_spec("blosc2") is not None


def negotiate(header: str | None) -> str | None:
    """The first preset named in a request's ``XPCS-Array-Codec`` header that this side can
    produce, or None (send raw)."""
    if not header:
        return None
    for part in header.split(","):
        name = part.strip().lower()
        if name in PRESETS:
            return name if available() else None
    return None


def compress(a: npt.NDArray[Any], preset: str, *, keep: bool = False) -> CompressedArray | None:
    """``a`` compressed with ``preset``, or None when it should travel raw (small, huge, of a
    kind the wire does not carry, or not shrinking below ``MAX_RATIO``). ``keep``: the copy
    will be sent many times (a cached result), so it is compressed harder (``KEEP_CLEVEL``);
    the receiver decodes either the same way.

    Raises:
        KeyError: ``preset`` is not one of ``PRESETS``.
    """
    codec, clevel = PRESETS[preset]
    if keep:
        clevel = KEEP_CLEVEL[preset]
    if a.nbytes < MIN_BYTES or a.nbytes > MAX_BYTES or a.dtype.kind not in "biufc":
        return None
    src = np.ascontiguousarray(a)
    packed = _chunk(src, src.dtype.itemsize, codec, clevel)
    if len(packed) > MAX_RATIO * a.nbytes:
        return None
    data = np.frombuffer(packed, np.uint8)
    return CompressedArray(src.dtype.str, tuple(src.shape), data)


def compress_tree(value: Any, preset: str, *, keep: bool = False) -> Any:
    """``value`` (dicts, lists, arrays, scalars) with every worthwhile array compressed
    (``keep`` as for ``compress``)."""
    if isinstance(value, np.ndarray):
        return compress(value, preset, keep=keep) or value
    if isinstance(value, dict):
        return {k: compress_tree(v, preset, keep=keep) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [compress_tree(v, preset, keep=keep) for v in value]
    return value


_decoded = threading.local()


def take_decode_stats() -> tuple[int, float]:
    """Compressed bytes ``decompress`` took and seconds it spent on this thread since the
    last call (what ``compression="auto"`` weighs against the link)."""
    got = (getattr(_decoded, "nbytes", 0), getattr(_decoded, "seconds", 0.0))
    _decoded.nbytes, _decoded.seconds = 0, 0.0
    return got


#: Preset name -> the compressors a piece may be made with (``compress_piece`` ``fast``):
#: the preset's own, and one a sender that compresses while it sends uses for pieces while
#: its compression, not the link, holds the answer back (LZ4 compresses twice as fast as
#: Zstandard level 1; the receiver decodes either the same way).
PIECE_CODECS: Final[dict[str, tuple[tuple[str, int], tuple[str, int]]]] = {
    "blosc2-zstd": (("ZSTD", 1), ("LZ4", 5)),
    "blosc2-lz4": (("LZ4", 5), ("LZ4", 5)),
}


# A chunk's compressor as its header names it (bits 5-7 of the flags byte, the third byte of
# every C-Blosc2 chunk; see the C-Blosc2 chunk format).
_HEADER_CODES: Final = {"BLOSCLZ": 0, "LZ4": 1, "LZ4HC": 1, "ZLIB": 3, "ZSTD": 4}


def chunk_compressor(chunk: bytes | memoryview) -> int:
    """The compressor code a blosc2 chunk's header names (0 BloscLZ, 1 LZ4, 3 Zlib,
    4 Zstd); -1 for fewer than 3 bytes."""
    return (chunk[2] >> 5) & 7 if len(chunk) >= 3 else -1


def link_paced(preset: str, later: Mapping[int, int]) -> bool | None:
    """Whether an answer compressed while it was sent was paced by the link, judged by the
    compressors of its pieces after the first (``later``: ``chunk_compressor`` code -> how
    many pieces): a sender uses the preset's faster compressor while its compression holds
    the answer back (``PIECE_CODECS``), so pieces in the preset's own compressor were
    written while the link was the slower. True when at least 3/4 of them are (a sender
    that keeps pieces compressed ahead also writes some of those while it is the slower);
    None when the pieces cannot tell: no later piece, or a preset whose two compressors are
    the same.
    """
    (own, _), (fast, _) = PIECE_CODECS[preset]
    total = sum(later.values())
    if own == fast or not total:
        return None
    return later.get(_HEADER_CODES[own], 0) >= 0.75 * total


def compress_piece(piece: memoryview, typesize: int, preset: str, fast: bool = False) -> bytes:
    """One piece of an array's raw bytes (``typesize`` bytes an element) as one blosc2
    chunk, as ``compress`` makes it, or with the preset's faster compressor (``fast``,
    ``PIECE_CODECS``). An incompressible piece is stored as it is, with a header of a few
    dozen bytes.

    Raises:
        KeyError: ``preset`` is not one of ``PRESETS``.
    """
    codec, clevel = PIECE_CODECS[preset][fast]
    return _chunk(piece, typesize, codec, clevel)


def _chunk(data: Any, typesize: int, codec: str, clevel: int) -> bytes:
    """``data`` as one blosc2 chunk: byte shuffle + byte delta (for items over one byte),
    ``codec`` at ``clevel``, 1 MiB blocks."""
    import blosc2

    filters = [blosc2.Filter.SHUFFLE, blosc2.Filter.BYTEDELTA] if typesize > 1 else []
    packed: bytes = blosc2.compress2(
        data,
        typesize=typesize,
        clevel=clevel,
        codec=getattr(blosc2.Codec, codec),
        filters=filters,
        filters_meta=[0] * len(filters),
        blocksize=1 << 20,
    )
    return packed


def decompress(
    dtype: np.dtype[Any],
    shape: tuple[int, ...],
    data: bytes | memoryview | Sequence[bytes | memoryview],
) -> npt.NDArray[Any]:
    """The array blosc2 data holds, checked against ``dtype`` and ``shape``: one chunk, or
    pieces (a sequence of chunks whose decompressed bytes follow each other).

    Raises:
        ValueError: blosc2 is not installed, a chunk is corrupt, or they do not hold
            ``prod(shape) * itemsize`` bytes.
    """
    try:
        import blosc2
    except ImportError:
        raise ValueError("a blosc2-compressed array needs the blosc2 package") from None
    want = math.prod(shape) * dtype.itemsize
    chunks = [data] if isinstance(data, bytes | memoryview) else list(data)
    sizes = []
    for chunk in chunks:
        try:
            sizes.append(blosc2.get_cbuffer_sizes(chunk)[0])
        except Exception as exc:  # blosc2 raises bare Exceptions on bad headers
            raise ValueError(f"not a blosc2 chunk ({exc})") from None
    if sum(sizes) != want:
        what = "blosc2 chunk holds" if len(chunks) == 1 else f"{len(chunks)} blosc2 chunks hold"
        raise ValueError(f"{what} {sum(sizes)} bytes, shape and dtype need {want}")
    out = np.empty(shape, dtype)
    flat = out.reshape(-1).view(np.uint8)
    started = time.perf_counter()
    pos = 0
    for chunk, size in zip(chunks, sizes, strict=True):
        if not size:
            continue
        try:
            blosc2.decompress2(chunk, dst=flat[pos : pos + size])
        except Exception as exc:
            raise ValueError(f"corrupt blosc2 chunk ({exc})") from None
        pos += size
    _decoded.nbytes = getattr(_decoded, "nbytes", 0) + sum(len(c) for c in chunks)
    _decoded.seconds = getattr(_decoded, "seconds", 0.0) + time.perf_counter() - started
    return out
