"""The files the workloads read and write, made fresh in the work directory.

Layout under the data root (what ``xpcs-io serve`` and h5grove serve; tiled serves ``read/``):

- ``read/eiger.hdf5``: the detector-sized file every read workload uses (uncompressed).
- ``read/small.hdf5``: a 128x96 file for the RSS growth check.
- ``gz/eiger_gz_<i>.hdf5``: gzip-4 chunked copies (one written, the rest byte copies).
- ``fresh/copy_<i>.hdf5``: byte copies never read before, for first-read timings.
- ``writes/w<MB>.hdf5``: the detector file padded to a target size, for ``write_mask``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from bench.common import MB, Config
from xpcs_io.tools.demo import DemoSpec, write_native_file

MAIN = "read/eiger.hdf5"
SMALL = "read/small.hdf5"
QMAP = "/xpcs/qmap"
G2 = "/xpcs/g2"
GEOMETRY = "/xpcs/metadata"
TILED_NODE = "eiger"  # read/eiger.hdf5 as tiled names it (served from read/)


@dataclass
class Files:
    """Paths relative to ``root`` (what the servers take); ``abs`` gives the local path."""

    root: Path
    main: str = MAIN
    small: str = SMALL
    gz: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    writes: dict[int, str] = field(default_factory=dict)

    def abs(self, rel: str) -> Path:
        return self.root / rel

    def take_fresh(self) -> str:
        """A byte copy of the main file that no server has read yet.

        Raises:
            RuntimeError: none left (``prepare`` made too few).
        """
        if not self.fresh:
            raise RuntimeError("no fresh copy of the main file left")
        return self.fresh.pop(0)

    @property
    def tiled_dir(self) -> Path:
        return self.root / "read"


def spec(cfg: Config, compression: str | None = None) -> DemoSpec:
    return DemoSpec(shape=cfg.shape, n_delay=cfg.n_delay, n_q=cfg.n_q, compression=compression)


def gzip_copy(src: Path, dst: Path) -> None:
    """Write ``dst`` as ``src`` with every q-map dataset gzip-4 chunked, in case ``DemoSpec``
    cannot compress (it can today: ``DemoSpec(compression="gzip")`` is used first)."""
    with h5py.File(src, "r") as fin, h5py.File(dst, "w") as fout:

        def copy(name: str, obj: h5py.Dataset | h5py.Group) -> None:
            if isinstance(obj, h5py.Group):
                grp = fout.require_group(name)
                grp.attrs.update(obj.attrs)
                return
            kw = {}
            if name.startswith(QMAP.strip("/")) and obj.ndim == 2:
                kw = {"compression": "gzip", "compression_opts": 4, "chunks": True}
            fout.create_dataset(name, data=obj[()], **kw)

        fin.visititems(copy)


def write_main(cfg: Config, root: Path) -> Files:
    """The read files every workload needs."""
    files = Files(root)
    for sub in ("read", "gz", "fresh", "writes"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    write_native_file(files.abs(MAIN), spec(cfg))
    write_native_file(files.abs(SMALL), DemoSpec())
    return files


def write_gzip(cfg: Config, files: Files, copies: int) -> None:
    first = files.abs("gz/eiger_gz_0.hdf5")
    if "compression" in DemoSpec.__dataclass_fields__:
        write_native_file(first, spec(cfg, "gzip"))
    else:
        gzip_copy(files.abs(MAIN), first)
    files.gz = ["gz/eiger_gz_0.hdf5"]
    for i in range(1, copies):
        rel = f"gz/eiger_gz_{i}.hdf5"
        shutil.copyfile(first, files.abs(rel))
        files.gz.append(rel)


def write_fresh(files: Files, copies: int) -> None:
    for i in range(copies):
        rel = f"fresh/copy_{i}.hdf5"
        shutil.copyfile(files.abs(MAIN), files.abs(rel))
        files.fresh.append(rel)


def write_padded(files: Files, size: int) -> None:
    """A copy of the main file grown to about ``size`` bytes by a ``/bench/padding`` dataset."""
    rel = f"writes/w{size // MB}.hdf5"
    path = files.abs(rel)
    shutil.copyfile(files.abs(MAIN), path)
    missing = max(0, size - path.stat().st_size)
    block = 64 * MB
    with h5py.File(path, "a") as f:
        ds = f.create_dataset("bench/padding", shape=(missing,), dtype=np.uint8)
        filler = np.random.default_rng(1).integers(0, 255, min(block, missing), dtype=np.uint8)
        for start in range(0, missing, block):
            stop = min(missing, start + block)
            ds[start:stop] = filler[: stop - start]
    files.writes[size] = rel
