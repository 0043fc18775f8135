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
readers wait their turn, which finishes the same work with less memory and less switching,
and a free slot goes to the read that began first (``xpcs_io.decodeslots``), so reads finish
in the order they came instead of all together.

Only filter pipelines it can undo exactly are taken: deflate (gzip) and byte shuffle, in any
order HDF5 allows, on plain little- or big-endian integer and float data, every chunk
allocated. Anything else (lzf, szip, fletcher32, the hdf5plugin filters, missing chunks,
enums, strings, compound types) returns ``None`` and the caller reads through HDF5 as before,
so the result is always what h5py would return.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Iterator
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from xpcs_io.decodeslots import OrderedSlots
from xpcs_io.inflate import inflate

__all__ = ["DECODE_SLOTS", "MIN_BYTES", "read_whole"]

#: Smaller datasets are read through HDF5: the per-chunk Python overhead would not pay off.
MIN_BYTES = 1 << 20


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


#: Datasets decoded at once in this process: one per core it may run on, and one more.
#: Decoding is CPU work, so more at once finish no sooner in total; each would hold its
#: chunks and output in memory meanwhile. The one more is for the GIL: a decoder takes it
#: back after each chunk (thousands of times per map) and sometimes waits for it, leaving
#: its core idle. 8 q-map reads queued in one process on 2 cores kept 1.56-1.70 cores busy
#: with 2 decoders (528-626 MB/s) and 1.75-1.81 with 3 (650-675 MB/s); 4 did no better.
DECODE_SLOTS = _cores() + 1
_SLOTS = OrderedSlots(DECODE_SLOTS)  # to the read that began first: see decodeslots

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
    index: list[_Entry] = []
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
    inside = tuple(f * c for f, c in zip(full, chunks, strict=True))  # full chunks start below
    # The per-chunk steps hold the GIL that other readers wait for: kept to a few calls.
    deflate_only = codes == [_DEFLATE]
    for offset, raw, skipped in _stored(ds, index):
        if deflate_only and not skipped:
            data = inflate(raw, chunk_bytes)
        else:
            data = _decode(raw, codes, skipped, itemsize, chunk_bytes)
        if len(data) != chunk_bytes:  # a damaged chunk: said as HDF5 would say it
            raise OSError(f"{ds.name}: chunk at {offset} decodes to {len(data)} bytes")
        block = np.frombuffer(data, dt).reshape(chunks)
        if grid is not None and all(map(operator.lt, offset, inside)):
            grid[tuple(map(operator.floordiv, offset, chunks))] = block
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


#: Stored chunks next to each other in the file are read with one system call per run of
#: at most this many bytes, into one buffer reused run after run: each run is decoded while
#: it is still in the CPU's cache. Reading a map's 14 MB of chunks at once instead cost
#: 9 ms per 67 MB q-map alone and 27 ms with 8 reads in flight on 2 cores (the bytes went
#: out to memory and back), and a fresh 14 MB buffer per dataset; runs cost 6-11 ms.
_RUN_BYTES = 1 << 20
#: ... when the gaps between them add at most this fraction to the bytes read.
_SPAN_SLACK = 0.25

_Entry = tuple[tuple[int, ...], int, int, int]  # chunk offset, filter mask, address, size


def _stored(ds: h5py.Dataset, index: list[_Entry]) -> Iterator[tuple[tuple[int, ...], Any, int]]:
    """Each chunk's offset, stored bytes and filter mask, in file order.

    The stored bytes are valid only until the next item is asked for (they are a view into
    a buffer the next run of chunks is read into).

    Raises:
        OSError: the file ends before a chunk does, or HDF5 cannot read it.
    """
    fd = _plain_descriptor(ds)
    if fd is None or not index:
        for o, _, _, _ in index:
            mask, raw = ds.id.read_direct_chunk(o)
            yield o, raw, mask
        return
    index.sort(key=lambda entry: entry[2])
    view = memoryview(bytearray(max(_RUN_BYTES, max(n for _, _, _, n in index))))
    for run in _runs(index):
        start = run[0][2]
        span = max(a + n for _, _, a, n in run) - start  # chunks may overlap in a bad file
        if os.preadv(fd, [view[:span]], start) != span:
            raise OSError(f"{ds.name}: the file ends inside chunk {run[-1][0]} (truncated)")
        for o, m, a, n in run:
            yield o, view[a - start : a - start + n], m


def _runs(index: list[_Entry]) -> Iterator[list[_Entry]]:
    """``index`` (sorted by address) cut into runs read at once: each spans at most
    ``_RUN_BYTES`` (or is one chunk) with gaps of at most ``_SPAN_SLACK`` of its bytes."""
    run = [index[0]]
    stored = index[0][3]
    end = index[0][2] + index[0][3]
    for entry in index[1:]:
        span = max(end, entry[2] + entry[3]) - run[0][2]
        if span <= _RUN_BYTES and span <= (stored + entry[3]) * (1 + _SPAN_SLACK):
            run.append(entry)
            stored += entry[3]
            end = max(end, entry[2] + entry[3])
            continue
        yield run
        run = [entry]
        stored = entry[3]
        end = entry[2] + entry[3]
    yield run


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
