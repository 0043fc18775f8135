"""Where a dataset's bytes lie in its file, for reads that move them without HDF5.

A dataset whose stored bytes *are* its C-order array bytes (no filter, no type conversion,
fully allocated, in the file itself) can be sent from the file as it is: ``dataset_extents``
gives the file spans, in order, whose concatenation equals ``dataset[()]``'s bytes. That
holds for a contiguous dataset, and for a chunked one whose chunks each hold whole rows of
the array (chunk shape ``(k, *shape[1:])``): then chunk ``i`` stores rows ``i*k ...`` in C
order, and the last chunk is cut to the rows the array has. Anything else (filters such as
gzip or shuffle, external storage, virtual or compact layouts, chunks that split rows, a file
type that is not exactly the array's in-memory type, unallocated storage) gives ``None``:
those bytes must go through the HDF5 read.

``recording()`` notes, per thread, the datasets whole-array reads came from (the read path
calls ``note`` after each ``Locator.read``), so the server can tell which arrays of a result
are a file's bytes verbatim.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

__all__ = ["Extents", "Provenance", "dataset_extents", "note", "recording"]


@dataclass(frozen=True)
class Extents:
    """A dataset's bytes in its file: ``spans`` are ``(offset, nbytes)`` pairs in C order of
    the array ``dtype``/``shape``; their sizes add up to the array's ``nbytes``.
    ``filename`` is the file as HDF5 opened it."""

    filename: str
    dtype: str
    shape: tuple[int, ...]
    spans: tuple[tuple[int, int], ...]

    @property
    def nbytes(self) -> int:
        """The array's size in bytes (the sum of the span sizes)."""
        return sum(n for _, n in self.spans)


def _same_type(ds: h5py.Dataset, dtype: np.dtype[Any]) -> bool:
    """Whether HDF5 reads ``ds`` into ``dtype`` without converting a byte: the file type
    equals the memory type h5py makes for ``dtype`` (size, order, precision, padding)."""
    try:
        memory = h5py.h5t.py_create(dtype)
        return bool(ds.id.get_type() == memory) and memory.get_size() == dtype.itemsize
    except (TypeError, ValueError, KeyError):
        return False


def dataset_extents(ds: h5py.Dataset) -> Extents | None:
    """The file spans holding ``ds[()]``'s bytes in C order, or ``None`` when the bytes must
    go through HDF5 (see the module docstring for which datasets qualify)."""
    try:
        dcpl = ds.id.get_create_plist()
        if dcpl.get_nfilters() or dcpl.get_external_count():
            return None
        layout = dcpl.get_layout()
        dtype = ds.dtype
        if dtype.kind not in "biufc" or dtype.hasobject or not _same_type(ds, dtype):
            return None
        shape = tuple(int(n) for n in ds.shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if layout == h5py.h5d.CONTIGUOUS:
            offset = ds.id.get_offset()
            if offset is None or ds.id.get_storage_size() < nbytes:
                return None
            spans: tuple[tuple[int, int], ...] = ((int(offset), nbytes),) if nbytes else ()
        elif layout == h5py.h5d.CHUNKED:
            found = _chunk_spans(ds, shape, dtype.itemsize)
            if found is None:
                return None
            spans = found
        else:
            return None  # compact (bytes in the object header) or virtual
    except (RuntimeError, ValueError, TypeError, KeyError, OSError):
        return None
    if sum(n for _, n in spans) != nbytes:
        return None
    return Extents(ds.file.filename, dtype.str, shape, spans)


def _chunk_spans(
    ds: h5py.Dataset, shape: tuple[int, ...], itemsize: int
) -> tuple[tuple[int, int], ...] | None:
    chunks = ds.chunks
    if chunks is None or not shape or tuple(chunks[1:]) != shape[1:]:
        return None
    rows = chunks[0]
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * itemsize
    count = -(-shape[0] // rows) if shape[0] else 0
    if ds.id.get_num_chunks() != count:
        return None  # some chunk never written: HDF5 would fill it in
    spans = []
    for i in range(count):
        info = ds.id.get_chunk_info_by_coord((i * rows,) + (0,) * (len(shape) - 1))
        if info.byte_offset is None or info.filter_mask or info.size != rows * row_bytes:
            return None
        used = min(rows, shape[0] - i * rows) * row_bytes
        spans.append((int(info.byte_offset), used))
    merged: list[tuple[int, int]] = []
    for offset, n in spans:  # chunks written in order lie end to end: one span
        if merged and merged[-1][0] + merged[-1][1] == offset:
            merged[-1] = (merged[-1][0], merged[-1][1] + n)
        else:
            merged.append((offset, n))
    return tuple(merged)


class Provenance:
    """Arrays read whole from a dataset on this thread, with the dataset's extents."""

    def __init__(self) -> None:
        self.arrays: dict[int, tuple[np.ndarray[Any, Any], Extents]] = {}

    def extents_of(self, array: Any) -> Extents | None:
        """The extents ``array`` (the very object a read returned) was read from, or None."""
        found = self.arrays.get(id(array))
        if found is None or found[0] is not array:
            return None
        return found[1]


_LOCAL = threading.local()


@contextlib.contextmanager
def recording() -> Iterator[Provenance]:
    """Note, on this thread and inside the block, which dataset each whole read came from."""
    previous = getattr(_LOCAL, "provenance", None)
    _LOCAL.provenance = found = Provenance()
    try:
        yield found
    finally:
        _LOCAL.provenance = previous


def note(value: Any, ds: h5py.Dataset) -> None:
    """Record that ``value`` is ``ds[()]`` as read, when this thread is recording."""
    provenance: Provenance | None = getattr(_LOCAL, "provenance", None)
    if provenance is None or not isinstance(value, np.ndarray) or value.dtype != ds.dtype:
        return
    if value.shape != ds.shape or not value.flags.c_contiguous:
        return
    extents = dataset_extents(ds)
    if extents is not None:
        provenance.arrays[id(value)] = (value, extents)
