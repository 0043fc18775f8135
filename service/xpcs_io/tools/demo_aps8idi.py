"""Realistic APS 8-ID-I NeXus result files, for tests and demos of ``xpcs_io.layouts.aps8idi``.

The file imitates what boost_corr writes after a pysimplemask q-partition: the acquisition's
NeXus metadata (``/entry/...``) with ``/xpcs`` added. ``/xpcs/qmap`` stores ROI label maps
built from the pixel q (A^-1) and azimuth (deg, ``-atan2(row - bcy, col - bcx)``), with empty
q-phi bins dropped and ``*_index_mapping`` giving each label's flat q-phi index;
``detector_distance`` and ``pixel_size`` are in metres and ``energy`` in keV, without unit
attributes. The default geometry leaves some q-phi bins empty (a dead band at the top and a
beamstop arm), so labels and flat indices differ. G2 follows a Brownian decay.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from xpcs_io.tools.demo import multitau_delays

__all__ = ["write_aps8idi_file", "write_pysimplemask_file"]

DET_DIST_M = 5.0
PIXEL_M = 75e-6
ENERGY_KEV = 10.0
FRAME_TIME_S = 1e-3
STRIDE_FRAME = 2
AVG_FRAME = 3
DIFFUSION_A2_S = 2.0e6  # Angstrom^2 / s
BETA = 0.2

Array = npt.NDArray[Any]


def _put(grp: h5py.Group, name: str, data: Any, unit: str | None = None) -> h5py.Dataset:
    """A dataset, lzf-compressed above 4 kB as in the beamline's files."""
    arr = np.asarray(data)
    kw: dict[str, Any] = {"compression": "lzf"} if arr.nbytes > 4096 else {}
    ds = grp.create_dataset(name, data=arr, **kw)
    if unit is not None:
        ds.attrs["unit"] = unit
    return ds


def _group(parent: h5py.Group, name: str, nx_class: str | None = None) -> h5py.Group:
    grp = parent.require_group(name)
    if nx_class is not None:
        grp.attrs["NX_class"] = nx_class
    return grp


def _narrow(labels: Array, smallest: type[np.unsignedinteger[Any]]) -> Array:
    top = int(labels.max(initial=0))
    for dtype in (np.uint8, np.uint16, np.uint32):
        if np.dtype(dtype).itemsize >= np.dtype(smallest).itemsize and top <= np.iinfo(dtype).max:
            return labels.astype(dtype)
    return labels.astype(np.uint64)


def _partition(
    q: Array, phi: Array, mask: Array, n_q: int, n_phi: int
) -> tuple[Array, Array, Array, Array]:
    """Labels (0 = excluded, 1..K), q centres, phi centres, flat index of each label."""
    q_edges = np.linspace(q[mask].min(), q[mask].max(), n_q + 1)
    p_edges = np.linspace(phi[mask].min(), phi[mask].max(), n_phi + 1)
    iq = np.clip(np.searchsorted(q_edges, q, side="right") - 1, 0, n_q - 1)
    ip = np.clip(np.searchsorted(p_edges, phi, side="right") - 1, 0, n_phi - 1)
    flat = iq * n_phi + ip
    mapping = np.flatnonzero(np.bincount(flat[mask], minlength=n_q * n_phi))
    lut = np.zeros(n_q * n_phi, dtype=np.int64)
    lut[mapping] = np.arange(1, mapping.size + 1)
    labels = np.where(mask, lut[flat], 0)
    centres = (q_edges[:-1] + q_edges[1:]) / 2, (p_edges[:-1] + p_edges[1:]) / 2
    return labels, centres[0], centres[1], mapping.astype(np.int64)


def _write_partition(
    qg: h5py.Group, kind: str, part: tuple[Array, Array, Array, Array], n_phi: int, dtype: Any
) -> Array:
    labels, q_centres, phi_centres, mapping = part
    _put(qg, f"{kind}_roi_map", _narrow(labels, dtype))
    _put(qg, f"{kind}_v_list_dim0", q_centres, unit="Å⁻¹")
    _put(qg, f"{kind}_v_list_dim1", phi_centres, unit="deg")
    _put(qg, f"{kind}_num_pts", np.array([q_centres.size, n_phi], dtype=np.int64))
    _put(qg, f"{kind}_index_mapping", mapping)
    return labels


def _nexus_skeleton(f: h5py.File, shape: tuple[int, int], bc: tuple[float, float]) -> None:
    f.attrs["default"] = "entry"
    entry = _group(f, "entry", "NXentry")
    inst = _group(entry, "instrument", "NXinstrument")
    det = _group(inst, "detector_1", "NXdetector")
    _put(det, "frame_time", FRAME_TIME_S, unit="s")
    _put(det, "count_time", 0.9 * FRAME_TIME_S, unit="s")
    _put(det, "x_pixel_size", PIXEL_M, unit="m")
    _put(det, "y_pixel_size", PIXEL_M, unit="m")
    # Pixels although tagged metres, as in the beamline's files; /xpcs/qmap is authoritative.
    _put(det, "beam_center_x", float(round(bc[0])), unit="m")
    _put(det, "beam_center_y", float(round(bc[1])), unit="m")
    beam = _group(inst, "incident_beam", "NXbeam")
    _put(beam, "incident_energy", ENERGY_KEV, unit="keV")
    meta = _group(_group(inst, "bluesky", "NXnote"), "metadata", "NXcollection")
    meta["plan_name"] = "count"
    meta["detector_shape"] = np.asarray(shape, dtype=np.int64)


def _c2_map(n: int, rate: float, rng: np.random.Generator) -> Array:
    """Upper triangle (j >= i) of a two-time map; the strict lower triangle is zero."""
    lag = np.abs(np.subtract.outer(np.arange(n), np.arange(n))) * FRAME_TIME_S
    c2 = 1 + BETA * np.exp(-2 * rate * lag) + rng.normal(0, 0.005, (n, n))
    return np.triu(c2).astype(np.float32)


def write_aps8idi_file(
    path: str | os.PathLike[str],
    *,
    shape: tuple[int, int] = (128, 160),
    n_q: int = 12,
    n_phi: int = 2,
    n_delay: int = 34,
    n_frames: int = 64,
    twotime_bins: Sequence[int] = (0, 3),
    seed: int = 0,
) -> Path:
    """Write one 8-ID-I-style result file and return its path.

    ``n_delay=0`` leaves out ``/xpcs/multitau`` and empty ``twotime_bins`` leaves out
    ``/xpcs/twotime``. ``twotime_bins`` are 0-based dynamic bin indices (ROI label - 1).

    Raises:
        ValueError: a size is not positive, or a two-time bin does not exist.
    """
    h, w = shape
    if min(h, w, n_q, n_phi, n_frames) < 1 or n_delay < 0:
        raise ValueError("shape, n_q, n_phi and n_frames must be >= 1 and n_delay >= 0")
    rng = np.random.default_rng(seed)
    bcx, bcy = 0.55 * w + 0.3, 0.45 * h + 0.2
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    dy, dx = rows - bcy, cols - bcx
    lam = 12.398 / ENERGY_KEV
    q = 4 * math.pi / lam * np.sin(np.arctan(PIXEL_M * np.hypot(dx, dy) / DET_DIST_M) / 2)
    phi = np.degrees(-np.arctan2(dy, dx))

    mask = np.ones(shape, dtype=bool)
    mask[: max(1, h // 8), :] = False  # a dead module band at the top
    mask[np.hypot(dx, dy) < 0.05 * min(h, w)] = False  # beamstop
    mask[(dy < 0) & (np.abs(dx) < 0.12 * w)] = False  # beamstop arm (empties low-q bins)
    mask[rng.random(shape) < 0.002] = False  # hot pixels

    dyn = _partition(q, phi, mask, n_q, n_phi)
    n_bins = int(dyn[3].size)
    bins = [int(b) for b in twotime_bins]
    if any(not 0 <= b < n_bins for b in bins):
        raise ValueError(f"twotime_bins {bins} outside the {n_bins} non-empty dynamic bins")
    bin_q = dyn[1][dyn[3] // n_phi]
    path = Path(path)
    with h5py.File(path, "w") as f:
        _nexus_skeleton(f, shape, (bcx, bcy))
        qg = _group(f, "xpcs/qmap")
        _put(qg, "mask", mask)
        labels = _write_partition(qg, "dynamic", dyn, n_phi, np.uint8)
        static = _write_partition(
            qg, "static", _partition(q, phi, mask, 3 * n_q, n_phi), n_phi, np.uint16
        )
        for name, value in (
            ("beam_center_x", bcx),
            ("beam_center_y", bcy),
            ("detector_distance", DET_DIST_M),
            ("pixel_size", PIXEL_M),
            ("energy", ENERGY_KEV),
        ):
            qg[name] = np.float64(value)
        qg["map_names"] = np.array(["q", "phi"], dtype=h5py.string_dtype())
        qg["map_units"] = np.array(["Å⁻¹", "deg"], dtype=h5py.string_dtype())
        qg.attrs["hash"] = hashlib.sha256(labels.tobytes() + static.tobytes()).hexdigest()

        if n_delay:
            frames = np.rint(multitau_delays(n_delay, frame_time=1.0)).astype(np.int64)
            tau = frames * FRAME_TIME_S * STRIDE_FRAME * AVG_FRAME
            decay = np.exp(-2 * DIFFUSION_A2_S * np.outer(tau, bin_q**2))
            mt = _group(f, "xpcs/multitau")
            g2 = (1 + BETA * decay + rng.normal(0, 0.002, decay.shape)).astype(np.float32)
            _put(mt, "normalized_g2", g2)
            _put(mt, "normalized_g2_err", np.abs(rng.normal(0.002, 5e-4, g2.shape)).astype("f4"))
            _put(mt, "delay_list", frames)
            cfg = _group(mt, "config")
            cfg["stride_frame"] = np.int64(STRIDE_FRAME)
            cfg["avg_frame"] = np.int64(AVG_FRAME)

        if bins:
            corr = _group(f, "xpcs/twotime/correlation_map")
            tt_g2 = np.empty((n_frames - 1, len(bins)), dtype=np.float32)
            for i, b in enumerate(bins, start=1):
                c2 = _c2_map(n_frames, DIFFUSION_A2_S * float(bin_q[b]) ** 2, rng)
                _put(corr, f"c2_{i:05d}", c2)
                tt_g2[:, i - 1] = [np.diagonal(c2, d).mean() for d in range(1, n_frames)]
            tt = f["xpcs/twotime"]
            _put(tt, "processed_bins", np.array([b + 1 for b in bins], dtype=np.int64))
            _put(tt, "normalized_g2", tt_g2)

        saxs = 1e3 / (1 + (q * 300.0) ** 2) ** 2 * rng.normal(1, 0.05, shape) * mask
        _put(_group(f, "xpcs/temporal_mean"), "scattering_2d", saxs[None].astype(np.float32))
        sums = np.bincount(static.ravel(), weights=saxs.ravel())[1:]
        saxs1d = sums / np.maximum(np.bincount(static.ravel())[1:], 1)
        _put(f["xpcs/temporal_mean"], "scattering_1d", saxs1d[None].astype(np.float32))
        segments = saxs1d[None] * (1 - 0.01 * np.arange(5))[:, None]
        _put(f["xpcs/temporal_mean"], "scattering_1d_segments", segments.astype(np.float32))
        # (frame index, mean intensity) per frame
        intensity = saxs.sum() / mask.sum() * rng.normal(1, 0.01, n_frames)
        intt = np.stack([np.arange(n_frames, dtype=np.float64), intensity])
        _put(_group(f, "xpcs/spatial_mean"), "intensity_vs_time", intt)
        sample = _group(f["entry"], "sample", "NXsample")
        sample["name"] = "silica-50nm"
        f["entry"]["start_time"] = "2024-06-01T12:00:00Z"
    return path


def write_pysimplemask_file(path: str | os.PathLike[str], **kwargs: Any) -> Path:
    """A stand-alone pySimpleMask q-partition file: the same q-map datasets in a ``/qmap``
    group (``save_partition``'s layout: ``unit``, ``name`` and ``size`` attributes on the
    ``*_v_list_dim*`` vectors, ``hash`` and ``version`` on the group, ``blemish`` and
    ``source_file``), with no ``/entry`` and no results. ``kwargs`` go to
    ``write_aps8idi_file``.
    """
    path = write_aps8idi_file(path, n_delay=0, twotime_bins=(), **kwargs)
    with h5py.File(path, "a") as f:
        f.move("/xpcs/qmap", "/qmap")
        for name in ("xpcs", "entry"):
            del f[name]
        f.attrs.pop("default", None)
        qg = f["/qmap"]
        for kind in ("dynamic", "static"):
            for dim, label in ((0, "q"), (1, "phi")):
                ds = qg[f"{kind}_v_list_dim{dim}"]
                ds.attrs["name"] = label
                ds.attrs["size"] = ds.size
        qg["blemish"] = qg["mask"][()]
        qg["source_file"] = "/data/2024-1/A001_00001.h5"
        qg.attrs["version"] = "0.5.1"
    return path
