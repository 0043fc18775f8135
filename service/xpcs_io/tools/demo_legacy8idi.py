"""Legacy APS 8-ID-I result files (before NeXus) as each producer wrote them, for tests and
demos of ``xpcs_io.layouts.legacy8idi``.

One writer per era: ``write_hadoop_file`` (Java correlator 2013-2017), ``write_matlab_file``
(XPCSGUI2 qmaps and results, 2016), ``write_eigen_file`` (xpcs-eigen, about 2017-2022) and
``write_boost_file`` (boost_corr's legacy mode, 2022-2024). They share one consistent
geometry: the stored beam centre plus the stage shift gives the real one, and labels,
``dqlist`` (the mean pixel q of each q-phi cell, NaN for empty cells) and the G2 decay all
follow from the pixel q. Shapes, dtypes and string forms follow the era (see
docs/layouts.md and the module docstring of the reader).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

__all__ = [
    "LegacyTruth",
    "write_boost_file",
    "write_eigen_file",
    "write_hadoop_file",
    "write_matlab_file",
]

Array = npt.NDArray[Any]

ENERGY_KEV = 10.0
DISTANCE_MM = 5000.0
PIXEL_MM = 0.075
EXPOSURE_PERIOD_S = 2e-3
EXPOSURE_TIME_S = 1.5e-3
STAGE_SHIFT_MM = (0.75, -0.3)  # stage_x - stage_zero_x, stage_z - stage_zero_z
DIFFUSION_A2_S = 2.0e5
BETA = 0.25
DET = "/measurement/instrument/detector"
ACQ = "/measurement/instrument/acquisition"


@dataclass
class LegacyTruth:
    """What a written file means: the values a correct reader returns."""

    shape: tuple[int, int]
    bcx: float  # effective beam centre (pixels), after the stage correction
    bcy: float
    labels: Array  # (H, W) dynamic labels 0..K
    mask: Array  # (H, W) 0/1
    q_bins: Array  # (K,) q of labels 1..K (A^-1)
    phi_bins: Array  # (K,) phi of labels 1..K (deg)
    tau: Array  # (n_tau,) delays in frames
    delay_s: Array  # (n_tau,) delays in seconds
    g2: Array  # (n_tau, K)
    g2_err: Array
    c2: dict[int, Array] = field(default_factory=dict)  # q_idx -> symmetric (N, N)


def _multitau(n: int, per_level: int = 4) -> Array:
    """1..2*per_level, then per_level steps per doubling: 1,2,...,8,10,12,14,16,20,..."""
    out: list[int] = list(range(1, 2 * per_level + 1))
    step = 2
    while len(out) < n:
        for _ in range(per_level):
            out.append(out[-1] + step)
        step *= 2
    return np.asarray(out[:n], dtype=np.int64)


def _truth(
    shape: tuple[int, int],
    dnoq: int,
    dnophi: int,
    q_fastest: bool,
    n_tau: int,
    n_frames: int,
    avg_stride: tuple[int, int],
    seed: int,
) -> tuple[LegacyTruth, Array, Array]:
    """The truth plus the stored dqlist/dphilist (full grid, NaN for the empty cell)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    bcx, bcy = 0.45 * w + 0.3, 0.55 * h - 0.2
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    r = PIXEL_MM * np.hypot(cols - bcx, rows - bcy)
    q = 4 * math.pi / (12.398 / ENERGY_KEV) * np.sin(np.arctan(r / DISTANCE_MM) / 2)
    phi = np.degrees(-np.arctan2(rows - bcy, cols - bcx))
    mask = (np.hypot(cols - bcx, rows - bcy) > 3).astype(np.uint8)
    mask[: max(1, h // 10)] = 0
    q_edges = np.linspace(q[mask > 0].min(), q[mask > 0].max() * (1 + 1e-9), dnoq + 1)
    p_edges = np.linspace(-180.0, 180.0 + 1e-9, dnophi + 1)
    iq = np.clip(np.searchsorted(q_edges, q, side="right") - 1, 0, dnoq - 1)
    ip = np.clip(np.searchsorted(p_edges, phi, side="right") - 1, 0, dnophi - 1)
    cell = iq + dnoq * ip if q_fastest else iq * dnophi + ip
    if dnoq > 2:  # one empty cell, as real partitions have (dqlist keeps NaN there)
        mask[cell == (1 if q_fastest else dnophi)] = 0  # the cell iq = 1, iphi = 0
    n_cells = dnoq * dnophi
    counts = np.bincount(cell[mask > 0], minlength=n_cells)
    full_q = np.bincount(cell[mask > 0], q[mask > 0], n_cells) / np.maximum(counts, 1)
    full_phi = np.bincount(cell[mask > 0], phi[mask > 0], n_cells) / np.maximum(counts, 1)
    full_q[counts == 0] = np.nan
    full_phi[counts == 0] = np.nan
    lut = np.zeros(n_cells, dtype=np.int64)
    lut[counts > 0] = np.arange(1, int((counts > 0).sum()) + 1)
    labels = np.where(mask > 0, lut[cell], 0)
    q_bins, phi_bins = full_q[counts > 0], full_phi[counts > 0]
    tau = _multitau(n_tau)
    delay_s = tau * EXPOSURE_PERIOD_S * avg_stride[0] * avg_stride[1]
    decay = np.exp(-2 * DIFFUSION_A2_S * np.outer(delay_s, q_bins**2))
    g2 = 1 + BETA * decay + rng.normal(0, 1e-3, decay.shape)
    g2_err = np.abs(rng.normal(2e-3, 5e-4, decay.shape))
    c2: dict[int, Array] = {}
    lag = np.abs(np.subtract.outer(np.arange(n_frames), np.arange(n_frames)))
    for k, qk in enumerate(q_bins.tolist()):
        rate = 2 * DIFFUSION_A2_S * qk**2 * EXPOSURE_PERIOD_S * avg_stride[0] * avg_stride[1]
        full = 1 + BETA * np.exp(-rate * lag) + rng.normal(0, 2e-3, lag.shape)
        c2[k] = (np.triu(full) + np.triu(full, 1).T).astype(np.float32)
    truth = LegacyTruth(
        shape, bcx, bcy, labels, mask, q_bins, phi_bins, tau, delay_s, g2, g2_err, c2
    )
    return truth, full_q, full_phi


def _fixed(text: str, pad: int = 0) -> np.bytes_:
    """A fixed-length string as Matlab writes it (optionally blank-padded)."""
    return np.bytes_((text + " " * pad).encode())


def _put(f: h5py.File | h5py.Group, path: str, value: Any, **kw: Any) -> None:
    f.create_dataset(path, data=value, **kw)


def _instrument(f: h5py.File, truth: LegacyTruth, one: Any) -> None:
    """``/measurement``: every number through ``one`` (the era's scalar form)."""
    h, w = truth.shape
    sx, sz = STAGE_SHIFT_MM
    _put(f, f"{DET}/exposure_period", one(EXPOSURE_PERIOD_S))
    _put(f, f"{DET}/exposure_time", one(EXPOSURE_TIME_S))
    _put(f, f"{DET}/distance", one(DISTANCE_MM))
    _put(f, f"{DET}/x_pixel_size", one(PIXEL_MM))
    _put(f, f"{DET}/y_pixel_size", one(PIXEL_MM))
    _put(f, f"{DET}/x_dimension", np.array([[w]], dtype=np.uint32))
    _put(f, f"{DET}/y_dimension", np.array([[h]], dtype=np.uint32))
    _put(f, "/measurement/instrument/source_begin/energy", one(ENERGY_KEV))
    _put(f, f"{ACQ}/beam_center_x", one(truth.bcx - sx / PIXEL_MM))
    _put(f, f"{ACQ}/beam_center_y", one(truth.bcy - sz / PIXEL_MM))
    _put(f, f"{ACQ}/stage_x", one(215.3 + sx))
    _put(f, f"{ACQ}/stage_zero_x", one(215.3))
    _put(f, f"{ACQ}/stage_z", one(37.1 + sz))
    _put(f, f"{ACQ}/stage_zero_z", one(37.1))


def _row(values: Array, dtype: Any = np.float64) -> Array:
    return np.asarray(values, dtype=dtype).reshape(1, -1)


def _mat(value: float) -> Array:
    return np.array([[value]], dtype=np.float64)


def _common_xpcs(
    f: h5py.File,
    xpcs: str,
    truth: LegacyTruth,
    full: tuple[Array, Array],
    grid: tuple[int, int],
    count: Any,
    transpose: bool = False,
) -> None:
    """The q-partition under ``xpcs``: maps, lists (full grid, NaN cells), grid sizes."""
    dnoq, dnophi = grid
    static = np.where(truth.labels > 0, 2 * truth.labels - (truth.labels % 2), 0)
    dqmap, sqmap = truth.labels.astype(np.uint32), static.astype(np.uint32)
    if transpose:
        dqmap, sqmap = dqmap.T, sqmap.T
    _put(f, f"{xpcs}/dqmap", dqmap, compression="gzip")
    _put(f, f"{xpcs}/sqmap", sqmap, compression="gzip")
    _put(f, f"{xpcs}/dqlist", _row(full[0]))
    _put(f, f"{xpcs}/dphilist", _row(full[1]))
    _put(f, f"{xpcs}/dqspan", _row(np.linspace(0, 1, dnoq + 1)))
    _put(f, f"{xpcs}/dphispan", _row(np.linspace(-180, 180, dnophi + 1)))
    for name, value in (("dnoq", dnoq), ("dnophi", dnophi), ("snoq", 2 * dnoq), ("snophi", 1)):
        _put(f, f"{xpcs}/{name}", count(value))


def _multitau_results(
    f: h5py.File, ex: str, truth: LegacyTruth, dtype: Any, tau_dtype: Any, pad_to: int = 0
) -> None:
    g2, err = truth.g2, truth.g2_err
    if pad_to > g2.shape[1]:  # boost_corr: one column per grid cell, unused ones zero
        extra = np.zeros((g2.shape[0], pad_to - g2.shape[1]))
        g2, err = np.hstack([g2, extra]), np.hstack([err, extra])
    _put(f, f"{ex}/norm-0-g2", g2.astype(dtype))
    _put(f, f"{ex}/norm-0-stderr", err.astype(dtype))
    _put(f, f"{ex}/tau", _row(truth.tau, tau_dtype))


def _images(
    f: h5py.File,
    ex: str,
    truth: LegacyTruth,
    dtype: Any,
    n_frames: int,
    *,
    compressed: bool = False,
    xpcs: str = "/xpcs",
) -> Array:
    """SAXS-2D (returned), ``frameSum`` (frame number, mean counts), and SAXS-1D: static
    label s = 2L - L % 2 lies in dynamic label L, so ``sqlist``/``sphilist`` (2K cells)
    leave every other cell empty (NaN); ``partition-mean-total`` and ``-partial`` hold the
    whole grid, or with ``compressed`` (boost_corr's GPU code) the non-empty cells only."""
    saxs = (1e2 / (1 + (np.arange(truth.shape[0] * truth.shape[1]) % 97))).reshape(truth.shape)
    counts = 0.5 + 0.01 * np.sin(np.arange(n_frames))
    frame_sum = np.vstack([np.arange(1, n_frames + 1), counts])
    _put(f, f"{ex}/frameSum", frame_sum.astype(dtype))
    k = len(truth.q_bins)
    labels = np.arange(1, k + 1)
    cells = 2 * labels - labels % 2 - 1
    sq, sphi = np.full(2 * k, np.nan), np.full(2 * k, np.nan)
    sq[cells], sphi[cells] = truth.q_bins, truth.phi_bins
    _put(f, f"{xpcs}/sqlist", _row(sq))
    _put(f, f"{xpcs}/sphilist", _row(sphi))
    curve = np.zeros(2 * k)
    curve[cells] = 1e2 / (1 + (truth.q_bins / truth.q_bins[0]) ** 4)
    partial = np.stack([curve * (1 - 0.02 * i) for i in range(3)])
    if compressed:
        curve, partial = curve[cells], partial[:, cells]
    _put(f, f"{ex}/partition-mean-total", _row(curve, dtype))
    _put(f, f"{ex}/partition-mean-partial", partial.astype(dtype))
    return np.asarray(saxs * truth.mask, dtype=dtype)


def write_hadoop_file(
    path: str | os.PathLike[str], *, version: str | None = "0.5", seed: int = 1
) -> tuple[Path, LegacyTruth]:
    """The Java/Hadoop correlator (2013-2017): float64 (n_tau, n_q, 1) G2, (1, 1) float64
    numbers, fixed-length strings, two-time maps ``/exchange/TwoTime/C_%04d`` (N, N, 1).
    ``version=None`` leaves out ``/xpcs/Version`` (the 0.4 format)."""
    truth, fq, fphi = _truth((40, 48), 5, 1, False, 16, 24, (1, 1), seed)
    with h5py.File(path, "w") as f:
        if version is not None:
            _put(f, "/xpcs/Version", _fixed(version))
        _put(f, "/xpcs/analysis_type", _fixed("Multitau"))
        _common_xpcs(f, "/xpcs", truth, (fq, fphi), (5, 1), _mat)
        _put(f, "/xpcs/mask", truth.mask.astype(np.uint8))
        _put(f, "/xpcs/avg_frames", np.array([[1]], dtype=np.uint64))
        _put(f, "/xpcs/stride_frames", np.array([[1]], dtype=np.uint64))
        _instrument(f, truth, _mat)
        g2 = truth.g2[:, :, None]
        _put(f, "/exchange/norm-0-g2", g2.astype(np.float64))
        _put(f, "/exchange/norm-0-stderr", truth.g2_err[:, :, None].astype(np.float64))
        _put(f, "/exchange/tau", _row(truth.tau, np.float64))
        _put(f, "/exchange/pixelSum", _images(f, "/exchange", truth, np.float64, 24))
        for k in (0, 2):
            _put(f, f"/exchange/TwoTime/C_{k + 1:04d}", np.triu(truth.c2[k])[:, :, None])
    return Path(path), truth


def write_matlab_file(
    path: str | os.PathLike[str], *, seed: int = 2, second_analysis: bool = False
) -> tuple[Path, LegacyTruth]:
    """Matlab XPCSGUI2 (2016): every number 2-D ((1, 1) and (1, N)) float64 (grid sizes
    too), blank-padded fixed-length strings, a q-fastest 2-phi grid with an empty cell
    (NaN in ``dqlist``), float64 results. ``second_analysis`` adds a re-run as ``/xpcs_1``
    with results in ``/exchange_1`` (the reader keeps to the first)."""
    truth, fq, fphi = _truth((48, 56), 4, 2, True, 18, 16, (2, 3), seed)
    with h5py.File(path, "w") as f:
        _put(f, "/xpcs/Version", _fixed("0.5", 3))
        _put(f, "/xpcs/analysis_type", _fixed("multitau", 2))
        _put(f, "/xpcs/output_data", _fixed("/exchange", 4))
        _common_xpcs(f, "/xpcs", truth, (fq, fphi), (4, 2), _mat)
        _put(f, "/xpcs/mask", truth.mask.astype(np.uint8))
        _put(f, "/xpcs/avg_frames", np.array([[2]], dtype=np.uint64))
        _put(f, "/xpcs/stride_frames", np.array([[3]], dtype=np.uint64))
        _instrument(f, truth, _mat)
        _multitau_results(f, "/exchange", truth, np.float64, np.float64)
        _put(f, "/exchange/pixelSum", _images(f, "/exchange", truth, np.float64, 16))
        if second_analysis:
            _put(f, "/xpcs_1/Version", _fixed("0.5"))
            _put(f, "/xpcs_1/output_data", _fixed("/exchange_1"))
            _put(f, "/exchange_1/norm-0-g2", np.full((3, 2), 9.0))
            _put(f, "/exchange_1/norm-0-stderr", np.full((3, 2), 9.0))
            _put(f, "/exchange_1/tau", _row(np.arange(1, 4)))
    return Path(path), truth


def write_eigen_file(
    path: str | os.PathLike[str],
    *,
    seed: int = 3,
    transposed: bool = False,
    single_q: bool = False,
) -> tuple[Path, LegacyTruth]:
    """xpcs-eigen (about 2017-2022): float32 results and ``tau`` (1, n), uint32 maps, uint8
    mask, uint64 (1, 1) counts, float64 (1, 1) grid sizes (from Matlab qmaps), bytes
    strings, ``C2T_all/g2_%05d`` named by label. ``transposed`` stores the label maps, the
    mask and ``pixelSum`` (W, H); ``single_q`` makes one q bin (``dqlist`` (1, 1))."""
    dnoq = 1 if single_q else 6
    truth, fq, fphi = _truth((36, 44), dnoq, 1, False, 20, 20, (1, 2), seed)
    with h5py.File(path, "w") as f:
        f["/xpcs/Version"] = "1.0"  # variable-length str
        _put(f, "/xpcs/analysis_type", np.bytes_(b"Multitau"))
        _put(f, "/xpcs/output_data", np.bytes_(b"/exchange"))
        _common_xpcs(f, "/xpcs", truth, (fq, fphi), (dnoq, 1), _mat, transposed)
        mask = truth.mask.astype(np.uint8)
        _put(f, "/xpcs/mask", mask.T if transposed else mask)
        _put(f, "/xpcs/avg_frames", np.array([[1]], dtype=np.uint64))
        _put(f, "/xpcs/stride_frames", np.array([[2]], dtype=np.uint64))
        _put(f, "/xpcs/qphi_bin_to_process", np.arange(1, dnoq + 1, dtype=np.uint64)[:, None])
        _instrument(f, truth, _mat)
        _multitau_results(f, "/exchange", truth, np.float32, np.float32)
        saxs = _images(f, "/exchange", truth, np.float32, 20)
        _put(f, "/exchange/pixelSum", saxs.T if transposed else saxs)
        for k, c2 in truth.c2.items():
            _put(f, f"/exchange/C2T_all/g2_{k + 1:05d}", np.triu(c2), compression="gzip")
    return Path(path), truth


def write_boost_file(
    path: str | os.PathLike[str], *, seed: int = 4, twotime: bool = False
) -> tuple[Path, LegacyTruth]:
    """boost_corr legacy mode (2022-2024): ``pixelSum`` (1, H, W), int64 ``tau``, 0-d int64
    counts, bool mask (pySimpleMask), int64 (1, 1) grid sizes, a phi-fastest 2-phi grid
    with an empty cell and G2 padded with zero columns to the grid size. ``twotime`` writes
    a Twotime result instead (``*_Twotime.hdf``): no multi-tau G2, ``C2T_all/g2_%05d``
    numbered 1..n over the processed labels in ``qphi_bin_to_process`` (1, n), ``g2full``."""
    truth, fq, fphi = _truth((40, 52), 4, 2, False, 22, 18, (3, 1), seed)
    n_cells = fq.size

    def count(v: int) -> Array:
        return np.array([[v]], dtype=np.int64)

    with h5py.File(path, "w") as f:
        _put(f, "/xpcs/Version", np.bytes_(b"1.0"))
        _put(f, "/xpcs/analysis_type", np.bytes_(b"Twotime" if twotime else b"Multitau"))
        _common_xpcs(f, "/xpcs", truth, (fq, fphi), (4, 2), count)
        _put(f, "/xpcs/mask", truth.mask.astype(bool))
        _put(f, "/xpcs/avg_frames", np.int64(3))
        _put(f, "/xpcs/stride_frames", np.int64(1))
        _instrument(f, truth, _mat)
        saxs = _images(f, "/exchange", truth, np.float32, 18, compressed=True)
        _put(f, "/exchange/pixelSum", saxs[None])
        if twotime:
            done = [2, 5]  # labels processed
            _put(f, "/xpcs/qphi_bin_to_process", np.asarray([done], dtype=np.int64))
            for i, label in enumerate(done, start=1):
                c2 = np.triu(truth.c2[label - 1])
                _put(f, f"/exchange/C2T_all/g2_{i:05d}", c2, compression="gzip")
            full = np.stack([np.diagonal(truth.c2[lb - 1]).copy() for lb in done], axis=1)
            _put(f, "/exchange/g2full", full.astype(np.float32))
        else:
            _multitau_results(f, "/exchange", truth, np.float32, np.int64, pad_to=n_cells)
    return Path(path), truth
