"""Whole reads of compressed chunked datasets, decoded outside HDF5's lock.

h5py runs one HDF5 call at a time per process, and ``ds[()]`` on a gzip dataset decompresses
every chunk inside that one call: eight viewers of compressed maps take turns on one core.
``read_whole`` instead fetches each chunk's stored bytes (``read_direct_chunk``, a short HDF5
call) and undoes the filters itself with codecs that release the GIL (``zlib``; the shuffle
is a numpy transpose), so concurrent reads in the server's thread pool decode on every core.

Only filter pipelines it can undo exactly are taken: deflate (gzip) and byte shuffle, in any
order HDF5 allows, on plain little- or big-endian integer and float data, every chunk
allocated. Anything else (lzf, szip, fletcher32, the hdf5plugin filters, missing chunks,
enums, strings, compound types) returns ``None`` and the caller reads through HDF5 as before,
so the result is always what h5py would return.
"""

from __future__ import annotations

import zlib
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

__all__ = ["MIN_BYTES", "read_whole"]

#: Smaller datasets are read through HDF5: the per-chunk Python overhead would not pay off.
MIN_BYTES = 1 << 20

_DEFLATE = h5py.h5z.FILTER_DEFLATE
_SHUFFLE = h5py.h5z.FILTER_SHUFFLE


def _pipeline(ds: h5py.Dataset) -> list[int] | None:
    """The dataset's filter ids in write order, or None when one is not ours to undo."""
    plist = ds.id.get_create_plist()
    codes = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    if not codes or any(c not in (_DEFLATE, _SHUFFLE) for c in codes):
        return None
    return codes


def _unshuffle(raw: bytes, itemsize: int) -> bytes | npt.NDArray[np.uint8]:
    """Undo HDF5's byte shuffle: ``itemsize`` planes of byte k of each element, then any
    leftover bytes (a chunk not a whole number of elements) copied as they are."""
    if itemsize == 1:
        return raw
    n = len(raw) // itemsize
    src = np.frombuffer(raw, np.uint8)
    out = np.empty(len(raw), np.uint8)
    out[: n * itemsize].reshape(n, itemsize)[...] = src[: n * itemsize].reshape(itemsize, n).T
    out[n * itemsize :] = src[n * itemsize :]
    return out


def _decode(raw: bytes, codes: list[int], skipped: int, itemsize: int) -> Any:
    data: Any = raw
    for i in reversed(range(len(codes))):
        if skipped & (1 << i):  # HDF5 left this filter out for this chunk
            continue
        if codes[i] == _DEFLATE:
            data = zlib.decompress(data)
        else:
            data = _unshuffle(bytes(data) if not isinstance(data, bytes) else data, itemsize)
    return data


def read_whole(ds: h5py.Dataset) -> npt.NDArray[Any] | None:
    """The whole of ``ds`` decoded from its raw chunks, or None when HDF5 must read it.

    The array equals ``ds[()]`` (same dtype, byte order included, and values).

    Raises:
        OSError: HDF5 cannot read a chunk (the caller maps it as for any read).
        zlib.error: a chunk's deflate stream is corrupt.
    """
    dt = ds.dtype
    chunks = ds.chunks
    if (
        chunks is None
        or dt.kind not in "iuf"
        or dt.metadata  # h5py's enum/vlen/ref markers
        or ds.size * dt.itemsize < MIN_BYTES
        or ds.is_virtual
        or ds.external
    ):
        return None
    codes = _pipeline(ds)
    if codes is None:
        return None
    dsid = ds.id
    shape = ds.shape
    n_expected = 1
    for n, c in zip(shape, chunks, strict=True):
        n_expected *= -(-n // c)
    if dsid.get_num_chunks() != n_expected:
        return None  # unwritten chunks hold the fill value: HDF5 knows it, we read through it
    offsets: list[tuple[int, ...]] = []
    dsid.chunk_iter(lambda info: offsets.append(info.chunk_offset))
    out = np.empty(shape, dt)
    chunk_bytes = int(np.prod(chunks)) * dt.itemsize
    for offset in offsets:
        skipped, raw = dsid.read_direct_chunk(offset)
        data = _decode(raw, codes, skipped, dt.itemsize)
        if len(data) != chunk_bytes:  # a damaged chunk: said as HDF5 would say it
            raise OSError(f"{ds.name}: chunk at {offset} decodes to {len(data)} bytes")
        block = np.frombuffer(data, dt).reshape(chunks)
        bounds = zip(offset, chunks, shape, strict=True)
        where = tuple(slice(o, min(o + c, n)) for o, c, n in bounds)
        out[where] = block[tuple(slice(0, s.stop - s.start) for s in where)]
    return out
