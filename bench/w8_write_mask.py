"""w8: ``write_mask`` of a detector-sized mask into large files, local facade vs remote.

Every write adds a version and replaces the whole file atomically (copy, fsync, rename), so
the time grows with the file size; local and remote writes alternate on the same file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.common import MB, Case, Result, interleave
from bench.env import Env
from xpcs_io.client import RemoteHDF5Facade
from xpcs_io.schemas import MaskSchema

NAME = "w8"
NEEDS = {"ours"}


def run(env: Env) -> Result:
    cfg, files = env.cfg, env.files
    res = Result(
        NAME,
        "write_mask into ~100 MB" + (" and ~1 GB files" if len(cfg.write_sizes) > 1 else " files"),
        f"{cfg.write_repeats} writes per side and size (1 untimed warm-up write per side for "
        "files up to 200 MB), local and remote interleaved; gzip-4 mask, writer='bench'.",
    )
    api = RemoteHDF5Facade(env.url("ours"), timeout=600)
    pid = env.pid("ours")
    for size in cfg.write_sizes:
        rel = files.writes[size]
        path = files.abs(rel)
        geometry = env.facade.read_geometry_metadata(path)
        mask = np.ones(geometry.shape, dtype=np.uint8)
        mask[:: max(1, geometry.shape[0] // 40), :] = 0
        schema = MaskSchema(mask=mask, metadata=geometry, description="bench")
        real = path.stat().st_size

        def local(path: Path = path, schema: MaskSchema = schema) -> int:
            env.facade.write_mask(path, schema, writer="bench")
            return int(schema.mask.nbytes)

        def remote(rel: str = rel, schema: MaskSchema = schema) -> int:
            api.write_mask(rel, schema, writer="bench")
            return int(schema.mask.nbytes)

        cases: list[Case] = [("local", local), ("remote", remote)]
        warm = 1 if size <= 200 * MB else 0
        timing = interleave(cases, cfg.write_repeats, warmup=warm, servers={"remote": pid})
        label = f"{real / MB:.0f} MB file"
        for key, system in (("local", "local HDF5Facade"), ("remote", "ours: RemoteHDF5Facade")):
            row = timing.row(key, system, f"write_mask, {label}")
            row.key = f"{key}_{size // MB}"
            res.rows.append(row)
        versions = env.facade.list_mask_versions(path)
        res.notes.append(f"{label}: {len(versions)} versions after the run")
    api.close()
    return res
