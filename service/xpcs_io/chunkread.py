"""Whole reads of compressed chunked datasets, decoded outside HDF5's lock.

h5py runs one HDF5 call at a time per process, and ``ds[()]`` on a gzip dataset decompresses
every chunk inside that one call: eight viewers of compressed maps take turns on one core.
``read_whole`` instead asks HDF5 only where each chunk is stored (one call for the whole
index), reads the stored bytes itself (one ``os.pread`` of the whole run of chunks on a plain
file, which releases the GIL; ``read_direct_chunk`` per chunk otherwise) and undoes the
filters with codecs that release the GIL (libdeflate when installed, else ``zlib``: see
``xpcs_io.inflate``; the shuffle is a numpy transpose), so concurrent reads in the server's
thread pool decode on every core, and each decodes about twice as fast with libdeflate.
What still holds the GIL per chunk is a few microseconds of bookkeeping: with hundreds of
chunks per map, every call into HDF5 and every Python step per chunk is time the other
readers wait. At most ``DECODE_SLOTS`` datasets (one per core) are decoded at once; more
readers wait their turn, which finishes the same work with less memory and less switching.

Only filter pipelines it can undo exactly are taken: deflate (gzip) and byte shuffle, in any
order HDF5 allows, on plain little- or big-endian integer and float data, every chunk
allocated. Anything else (lzf, szip, fletcher32, the hdf5plugin filters, missing chunks,
enums, strings, compound types) returns ``None`` and the caller reads through HDF5 as before,
so the result is always what h5py would return.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from xpcs_io.inflate import inflate

__all__ = ["DECODE_SLOTS", "MIN_BYTES", "read_whole"]

#: Smaller datasets are read through HDF5: the per-chunk Python overhead would not pay off.
MIN_BYTES = 1 << 20


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


#: Datasets decoded at once in this process: one per core it may run on. Decoding is CPU
#: work, so more at once finish no sooner in total; each would hold its chunks and output in
#: memory meanwhile, and many threads on few cores hand the GIL and the caches back and
#: forth, which costs every reader, and leaves less of the cores to send the answers.
DECODE_SLOTS = _cores()
_SLOTS = threading.BoundedSemaphore(DECODE_SLOTS)

_DEFLATE = h5py.h5z.FILTER_DEFLATE
_SHUFFLE = h5py.h5z.FILTER_SHUFFLE


def _pipeline(ds: h5py.Dataset) -> list[int] | None:
    """The dataset's filter ids in write order, or None when one is not ours to undo."""
    plist = ds.id.get_create_plist()
    codes = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    if not codes or any(c not in (_DEFLATE, _SHUFFLE) for c in codes):
        return None
    return codes


def _unshuffle(raw: Any, itemsize: int) -> Any:
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


def _decode(raw: Any, codes: list[int], skipped: int, itemsize: int, size: int) -> Any:
    """A chunk's stored bytes with its filters undone, last applied first; ``size`` is the
    chunk's decoded size in bytes (every filter we undo keeps it)."""
    data: Any = raw
    for i in reversed(range(len(codes))):
        if skipped & (1 << i):  # HDF5 left this filter out for this chunk
            continue
        data = inflate(data, size) if codes[i] == _DEFLATE else _unshuffle(data, itemsize)
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
    with _SLOTS:
        return _decoded(ds, chunks, codes)


def _decoded(
    ds: h5py.Dataset, chunks: tuple[int, ...], codes: list[int]
) -> npt.NDArray[Any] | None:
    """``read_whole`` once ``ds`` is known to be ours to decode (None: a chunk is missing)."""
    dt = ds.dtype
    dsid = ds.id
    shape = ds.shape
    n_expected = 1
    for n, c in zip(shape, chunks, strict=True):
        n_expected *= -(-n // c)
    if dsid.get_num_chunks() != n_expected:
        return None  # unwritten chunks hold the fill value: HDF5 knows it, we read through it
    index: list[tuple[tuple[int, ...], int, int, int]] = []
    dsid.chunk_iter(
        lambda info: index.append(
            (info.chunk_offset, info.filter_mask, info.byte_offset, info.size)
        )
    )
    out = np.empty(shape, dt)
    chunk_bytes = int(np.prod(chunks)) * dt.itemsize
    itemsize = dt.itemsize
    # Chunks that lie whole inside the dataset (most of them) are written through a view of
    # ``out`` cut into a grid of chunk-shaped blocks: one numpy copy per chunk, no slicing.
    full = tuple(n // c for n, c in zip(shape, chunks, strict=True))
    grid = _block_grid(out, chunks, full)
    for offset, raw, skipped in _stored(ds, index):
        data = _decode(raw, codes, skipped, itemsize, chunk_bytes)
        if len(data) != chunk_bytes:  # a damaged chunk: said as HDF5 would say it
            raise OSError(f"{ds.name}: chunk at {offset} decodes to {len(data)} bytes")
        block = np.frombuffer(data, dt).reshape(chunks)
        at = tuple(o // c for o, c in zip(offset, chunks, strict=True))
        if grid is not None and all(a < f for a, f in zip(at, full, strict=True)):
            grid[at] = block
            continue
        bounds = zip(offset, chunks, shape, strict=True)
        where = tuple(slice(o, min(o + c, n)) for o, c, n in bounds)
        out[where] = block[tuple(slice(0, s.stop - s.start) for s in where)]
    return out


def _block_grid(
    out: npt.NDArray[Any], chunks: tuple[int, ...], full: tuple[int, ...]
) -> npt.NDArray[Any] | None:
    """A view of ``out`` indexed ``[chunk index..., element in chunk...]`` over the chunks
    that lie whole inside it, or None when there are none."""
    if not all(full):
        return None
    strides = out.strides
    return np.lib.stride_tricks.as_strided(
        out,
        shape=(*full, *chunks),
        strides=tuple(s * c for s, c in zip(strides, chunks, strict=True)) + strides,
        writeable=True,
    )


#: A run of stored chunks is read with one system call when the gaps between them add at
#: most this fraction to the bytes read.
_SPAN_SLACK = 0.25
#: ... and it is at most this long (Linux reads at most 2 GiB - 4 KiB at once).
_SPAN_MAX = 256 << 20


def _stored(
    ds: h5py.Dataset, index: list[tuple[tuple[int, ...], int, int, int]]
) -> list[tuple[tuple[int, ...], Any, int]]:
    """Each chunk's offset, stored bytes and filter mask, in file order.

    Raises:
        OSError: the file ends before a chunk does, or HDF5 cannot read it.
    """
    fd = _plain_descriptor(ds)
    if fd is None or not index:
        out = []
        for o, _, _, _ in index:
            mask, raw = ds.id.read_direct_chunk(o)
            out.append((o, raw, mask))
        return out
    index.sort(key=lambda entry: entry[2])
    start = index[0][2]
    end = max(addr + size for _, _, addr, size in index)
    stored = sum(size for _, _, _, size in index)
    if end - start <= min(stored * (1 + _SPAN_SLACK), _SPAN_MAX):
        span = os.pread(fd, end - start, start)
        if len(span) != end - start:
            raise OSError(f"{ds.name}: the file ends inside its chunks (truncated)")
        view = memoryview(span)
        return [(o, view[a - start : a - start + n], m) for o, m, a, n in index]
    out = []
    for o, m, a, n in index:
        raw = os.pread(fd, n, a)
        if len(raw) != n:
            raise OSError(f"{ds.name}: the file ends inside chunk {o} (truncated)")
        out.append((o, raw, m))
    return out


def _plain_descriptor(ds: h5py.Dataset) -> int | None:
    """The descriptor HDF5 reads ``ds``'s file through, when chunk addresses are plain
    offsets in it: the default (sec2) driver, no user block (whose offset some HDF5
    versions leave out of chunk addresses)."""
    fid = ds.file.id
    try:
        if ds.file.driver != "sec2" or fid.get_create_plist().get_userblock() != 0:
            return None
        fd = fid.get_vfd_handle()
    except (OSError, ValueError, TypeError, RuntimeError):
        return None
    return fd if isinstance(fd, int) else None
