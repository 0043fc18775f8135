"""HDF5 filter plugins registered in this process: import this module before opening files.

Real result files use compression filters that HDF5 does not build in: 8-ID-I detectors
write Bitshuffle/LZ4, other tools LZ4, Blosc, Blosc2, Zstd, BZip2, ZFP, SZ... HDF5 looks such
filters up at read time, and without them a read fails with "can't open directory
(/usr/local/lib/plugin)". Importing ``hdf5plugin`` registers every filter it ships with the
HDF5 library that h5py loaded, once per process; every module that opens HDF5 files
(the pool, atomic writes, external links, the CLI) imports this one, so server workers, the
CLI and a plain ``HDF5Facade`` all read the same files.
"""

from __future__ import annotations

import h5py
import hdf5plugin

__all__ = ["FILTERS", "available_filters"]

#: Filter name -> HDF5 filter id, for every filter hdf5plugin registers.
FILTERS: dict[str, int] = dict(sorted(hdf5plugin.FILTERS.items()))


def available_filters() -> dict[str, bool]:
    """Whether HDF5 in this process can use each filter of ``FILTERS`` (name -> bool)."""
    return {name: bool(h5py.h5z.filter_avail(fid)) for name, fid in FILTERS.items()}
