"""Realistic demo and test files in the facade's layout.

Maps follow small-angle scattering geometry (q = 4 pi / lambda * sin(theta / 2) with
2 theta = atan(r / L)), G2 follows a Brownian decay g2 = 1 + beta * exp(-2 D q^2 t) on a
multi-tau delay grid, so the files look like what a beamline produces, at any detector size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

__all__ = ["DETECTORS", "DemoSpec", "multitau_delays", "write_demo_dir", "write_native_file"]

DETECTORS: dict[str, tuple[int, int]] = {
    "rigaku500k": (512, 1024),
    "lambda2m": (1813, 1558),
    "rigaku3m": (1676, 2100),
    "eiger4m": (2162, 2068),
}


@dataclass(frozen=True)
class DemoSpec:
    """What to write: detector shape, G2 size and dtype of the maps."""

    shape: tuple[int, int] = (128, 96)
    n_delay: int = 34
    n_q: int = 36
    dtype: str = "float32"
    det_dist: float = 5000.0  # mm
    lambda_: float = 1.54  # Angstrom
    pix_dim: float = 0.075  # mm
    seed: int = 0
    compression: str | None = None


def multitau_delays(n: int, frame_time: float = 1e-5, levels_per_octave: int = 8) -> np.ndarray:
    """``n`` strictly increasing multi-tau delays in seconds."""
    k = np.arange(1, n + 1, dtype=np.float64)
    octave = np.maximum(0, (k - 1) // levels_per_octave)
    steps = 2.0**octave
    delays = np.cumsum(steps)
    return delays * frame_time


def _maps(spec: DemoSpec) -> dict[str, np.ndarray]:
    h, w = spec.shape
    bcy, bcx = h * 0.45, w * 0.55
    rows, cols = np.mgrid[0:h, 0:w]
    r_mm = spec.pix_dim * np.hypot(cols - bcx, rows - bcy)
    two_theta = np.arctan(r_mm / spec.det_dist)
    q_nm = 4 * np.pi / (spec.lambda_ / 10.0) * np.sin(two_theta / 2)  # lambda in nm
    phi = np.arctan2(rows - bcy, cols - bcx)
    rng = np.random.default_rng(spec.seed)
    mask = np.ones(spec.shape, dtype=np.uint8)
    mask[: max(1, h // 40), :] = 0  # a dead module edge
    mask[rng.random(spec.shape) < 0.001] = 0  # hot pixels
    edges = np.linspace(q_nm.min(), q_nm.max() + 1e-9, spec.n_q + 1)
    labels = np.clip(np.digitize(q_nm, edges), 1, spec.n_q).astype(np.uint16) * mask
    return {
        "sqmap": q_nm.astype(spec.dtype),
        "dqmap": q_nm.astype(spec.dtype),
        "phis": phi.astype(spec.dtype),
        "mask": mask,
        "partition_map": labels.astype(np.uint16),
        "q_centres": ((edges[:-1] + edges[1:]) / 2).astype(np.float64),
        "bc": np.array([bcx, bcy]),
    }


def write_native_file(path: str | os.PathLike[str], spec: DemoSpec | None = None) -> Path:
    """Write one file in the facade's layout (``/xpcs/qmap``, ``/xpcs/g2``, ``/xpcs/metadata``)."""
    spec = spec or DemoSpec()
    maps = _maps(spec)
    rng = np.random.default_rng(spec.seed + 1)
    delays = multitau_delays(spec.n_delay)
    q = maps["q_centres"]
    # A diffusion constant that puts the decay of the middle q bin mid-way along the delays,
    # so every file shows the full g2 curve from plateau to baseline somewhere in q.
    diffusion = 1.0 / (2 * q[len(q) // 2] ** 2 * delays[len(delays) // 2])
    beta = 0.2
    decay = np.exp(-2 * diffusion * np.outer(delays, q**2))
    g2 = 1 + beta * decay + rng.normal(0, 0.002, decay.shape)
    g2_err = np.abs(rng.normal(0.002, 0.0005, decay.shape))
    kw = {"compression": spec.compression} if spec.compression else {}
    path = Path(path)
    with h5py.File(path, "w") as f:
        qg = f.create_group("xpcs/qmap")
        for name in ("sqmap", "dqmap", "phis", "mask", "partition_map"):
            chunks = {"chunks": True} if spec.compression else {}
            qg.create_dataset(name, data=maps[name], **kw, **chunks)
        qg["sqmap_unit"] = "nm^-1"
        qg["dqmap_unit"] = "nm^-1"
        qg["phis_unit"] = "rad"
        gg = f.create_group("xpcs/g2")
        gg["g2"] = g2.astype(np.float32)
        gg["g2_err"] = g2_err.astype(np.float32)
        gg["delay_times"] = delays
        gg["q_values"] = q
        mg = f.create_group("xpcs/metadata")
        mg["bcx"] = float(maps["bc"][0])
        mg["bcy"] = float(maps["bc"][1])
        mg["det_dist"] = spec.det_dist
        mg["lambda_"] = spec.lambda_
        mg["pix_dim"] = spec.pix_dim
        mg.attrs["shape"] = np.asarray(spec.shape, dtype=np.int64)
    return path


def write_demo_dir(root: str | os.PathLike[str]) -> list[Path]:
    """Write the demo data set: a small file and an Eiger-4M-sized one in the facade's layout,
    and an APS 8-ID-I NeXus result file; mark it complete."""
    from xpcs_io.tools.demo_aps8idi import write_aps8idi_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    written = [
        write_aps8idi_file(root / "aps8idi_result.hdf5", shape=(512, 640), n_q=24, n_phi=4),
        write_native_file(root / "small.hdf5", DemoSpec()),
        write_native_file(
            root / "eiger4m.hdf5", DemoSpec(shape=DETECTORS["eiger4m"], n_delay=74, n_q=360)
        ),
    ]
    (root / ".complete").write_text("xpcs-io demo data\n")
    return written
