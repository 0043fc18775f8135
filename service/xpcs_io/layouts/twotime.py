"""Two-time correlation maps stored as upper triangles: the symmetric map rebuilt, or
block-averaged while reading in row strips, for both 8-ID-I layouts."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from xpcs_io.h5access import Locator, check_allocation
from xpcs_io.layouts.common import check_index, invalid

__all__ = ["check_max_size", "rebuild"]

#: Bytes of stored map read at once while decimating (a multiple of whole rows).
READ_BYTES = 64 << 20
#: Rows of the mirrored map handled per step (keeps temporaries at block size).
BLOCK = 512
#: A block-averaged map is read in strips, so memory stays small but time does not: the
#: whole map may be this many times the read limit (32 GiB with the default 2 GiB, a
#: 92,000-frame float32 map); one declared far beyond is refused before the first strip.
STREAM_FACTOR = 16


def _mirror_upper(c: npt.NDArray[np.float32], block: int) -> None:
    """Overwrite the strict lower triangle of square ``c`` with the transposed upper one."""
    n, b = c.shape[0], block
    for i0 in range(0, n, b):
        i1 = min(i0 + b, n)
        for j0 in range(0, i0, b):
            c[i0:i1, j0 : j0 + b] = c[j0 : j0 + b, i0:i1].T
        blk = c[i0:i1, i0:i1]
        np.copyto(blk, blk.T.copy(), where=np.tri(i1 - i0, k=-1, dtype=bool))


def _decimate(
    loc: Locator, group: str, name: str, n: int, f: int, tail: tuple[int, ...], read_bytes: int
) -> npt.NDArray[np.float32]:
    """Block means (factor ``f``) of the symmetric map, read in row strips of the upper part.

    Edge blocks (when ``f`` does not divide ``n``) average the elements that exist.
    ``tail`` indexes trailing length-1 axes ((N, N, 1) maps).
    """
    m = -(-n // f)
    path = f"{group.rstrip('/')}/{name}"
    check_allocation(2 * m * m * 8, display=loc.display, path=path, what="block means")
    sums = np.zeros((m, m), dtype=np.float64)
    rows = max(f, (read_bytes // (4 * n)) // f * f)
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        strip = np.asarray(loc.read(group, name, (slice(r0, r1), slice(r0, n), *tail)))
        for i in range(1, r1 - r0):  # local j < i is the (unreliable) lower triangle
            strip[i, :i] = 0
        starts = np.arange(0, r1 - r0, f)
        part = np.empty((starts.size, n - r0), dtype=np.float64)
        for p, s in enumerate(starts.tolist()):  # (reduceat with dtype= casts the whole strip)
            strip[s : s + f].sum(axis=0, dtype=np.float64, out=part[p])
        part = np.add.reduceat(part, np.arange(0, n - r0, f), axis=1)
        trace = np.add.reduceat(np.diagonal(strip), starts, dtype=np.float64)
        d = np.arange(starts.size)
        part[d, d] = 2 * part[d, d] - trace  # a diagonal block holds upper + its mirror
        a0 = r0 // f
        sums[a0 : a0 + starts.size, a0:] = part
        del strip, part  # free this strip before the next one is read
    sizes = np.full(m, f, dtype=np.float64)
    sizes[-1] = n - (m - 1) * f
    sums /= np.outer(sizes, sizes)
    return (np.triu(sums) + np.triu(sums, 1).T).astype(np.float32)


def rebuild(
    loc: Locator,
    group: str,
    name: str,
    limit: int | None,
    *,
    read_bytes: int = READ_BYTES,
    block: int = BLOCK,
) -> npt.NDArray[np.float32]:
    """The symmetric float32 map whose upper triangle (diagonal kept) is stored at
    ``group/name`` as (N, N) or (N, N, 1). With ``limit`` < N it is block-averaged by
    f = ceil(N / limit) to ceil(N / f) rows, read in strips of about ``read_bytes``.

    Raises:
        HDF5ValidationError: the stored map is not a square numeric (N, N) or (N, N, 1).
        DatasetTooLargeError: the map (or a strip of it) is larger than the read limit.
    """
    ds = loc.dataset(group, name)
    shape = tuple(int(n) for n in ds.shape)
    square = len(shape) >= 2 and shape[0] == shape[1] and all(n == 1 for n in shape[2:])
    if not square or ds.dtype.kind not in "iuf":
        why = f"expected a square numeric (N, N) map, found {ds.dtype} shape {shape}"
        raise invalid(loc, group, name, why)
    n = shape[0]
    tail = (0,) * (len(shape) - 2)
    path = f"{group.rstrip('/')}/{name}"
    if limit is not None and n > limit:
        stored = n * n * ds.dtype.itemsize
        what = f"streamed for block means (counted 1/{STREAM_FACTOR})"
        check_allocation(stored // STREAM_FACTOR, display=loc.display, path=path, what=what)
        return _decimate(loc, group, name, n, -(-n // limit), tail, read_bytes)
    check_allocation(n * n * 4, display=loc.display, path=path, what="as float32")
    c = np.asarray(loc.read(group, name, (slice(None), slice(None), *tail)), dtype=np.float32)
    _mirror_upper(c, block)
    return c


def check_max_size(max_size: Any) -> int | None:
    """``max_size`` checked: ``None`` or an integer >= 1.

    Raises:
        TypeError: not an integer.
        ValueError: < 1.
    """
    limit = None if max_size is None else check_index(max_size, "max_size")
    if limit is not None and limit < 1:
        raise ValueError(f"max_size must be >= 1, got {limit}")
    return limit
