"""The phi of each G2 column, and G2 from two-time results, for both 8-ID-I layouts.

Phi: in NeXus files column k's flat q-phi index is ``m = dynamic_index_mapping[k]`` and its
phi ``dynamic_v_list_dim1[m % n_phi]`` (deg); in legacy files label L's phi is the L-th
non-NaN entry of ``/xpcs/dphilist`` (``legacy8idi.dynamic_bins``). Files with one phi
sector give no phi.

Two-time G2: NeXus ``/xpcs/twotime/normalized_g2`` (n_lag, n_processed), column i of
dynamic label ``processed_bins[i]``, row r at lag r + 1 frames (the correlator leaves out
lag 0); legacy ``<result>/g2full`` (N, n_processed), columns over the labels of
``/xpcs/qphi_bin_to_process`` (all labels when absent), row r at lag r (row 0 = lag 0).
Lags in seconds use the frame time x stride x averaging of the layout (as multi-tau delays).
No error is stored: ``g2_err`` is NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from xpcs_io.h5access import Locator
from xpcs_io.layouts import aps8idi, legacy8idi
from xpcs_io.layouts.common import check_index, exists, invalid, scalar, vector
from xpcs_io.layouts.saxs import (
    checked_size,
    legacy_seconds_per_frame,
    nexus_seconds_per_frame,
)
from xpcs_io.schemas import G2Data

__all__ = [
    "legacy_g2_phi",
    "legacy_twotime_g2",
    "nexus_g2_phi",
    "nexus_twotime_g2",
    "two_time_only",
    "with_phi",
]

Array = npt.NDArray[Any]
TWOTIME = "/xpcs/twotime"


def nexus_g2_phi(loc: Locator, n_q: int, k: int | None) -> Array | None:
    """phi (deg) of the multi-tau G2 columns (column ``k`` only when given), or None when
    the partition has one phi sector or the file does not say."""
    n_phi = aps8idi._n_phi(loc)
    if n_phi < 2 or not exists(loc, aps8idi.QMAP, "dynamic_v_list_dim1"):
        return None
    v1 = vector(loc, aps8idi.QMAP, "dynamic_v_list_dim1").astype(np.float64)
    v0 = (
        vector(loc, aps8idi.QMAP, "dynamic_v_list_dim0")
        if exists(loc, aps8idi.QMAP, "dynamic_v_list_dim0")
        else np.zeros(0)
    )
    flat = np.asarray(aps8idi._flat_indices(loc, n_q, n_phi, v0), dtype=np.int64)
    flat = flat if k is None else flat[k : k + 1]
    ip = flat % n_phi
    if ip.size and ip.max() >= v1.size:
        raise invalid(loc, aps8idi.QMAP, "dynamic_v_list_dim1", f"has {v1.size} phi bins")
    return v1[ip]


def with_phi(g2: G2Data, phi: Array | None) -> G2Data:
    """``g2`` with ``phi_values`` set (unchecked, as readers return)."""
    if phi is None:
        return g2
    fields = {**g2.to_dict(), "phi_values": phi}
    return G2Data.unchecked(**fields)


def legacy_g2_phi(loc: Locator, n_q: int, k: int | None) -> Array | None:
    """phi (deg) of the legacy G2 columns; None with one phi sector (``/xpcs/dnophi``) or
    without ``dphilist``."""
    xpcs = legacy8idi.XPCS
    if not exists(loc, xpcs, "dphilist") or not exists(loc, xpcs, "dnophi"):
        return None
    if scalar(loc, xpcs, "dnophi") < 2:
        return None
    _, phi = legacy8idi.dynamic_bins(loc)
    phi = phi[:n_q] if k is None else phi[k : k + 1]
    return None if np.isnan(phi).any() else phi


def two_time_only(loc: Locator, layout: str) -> bool:
    """Whether an 8-ID-I file holds two-time results and no multi-tau ones."""
    if layout == "aps8idi":
        return exists(loc, "/xpcs", "twotime") and not exists(loc, "/xpcs", "multitau")
    if layout == "aps8idi-legacy":
        group = legacy8idi.result_group(loc)
        twotime = exists(loc, group, "C2T_all") or exists(loc, group, "g2full")
        return twotime and not exists(loc, group, "norm-0-g2")
    return False


def _pick(loc: Locator, labels: list[int], q_idx: int | None, group: str, name: str) -> list[int]:
    """Column indices to read: all, or the one of dynamic bin ``q_idx`` (label q_idx + 1)."""
    if q_idx is None:
        return list(range(len(labels)))
    k = check_index(q_idx, "q_idx")
    if k + 1 not in labels:
        raise KeyError(
            f"{loc.display}: no two-time G2 for q_idx {k} (label {k + 1}) in "
            f"{group}/{name}; available q_idx: {sorted(lb - 1 for lb in labels)}"
        )
    return [labels.index(k + 1)]


def _build(
    loc: Locator,
    group: str,
    name: str,
    labels: list[int],
    q_idx: int | None,
    first_lag: int,
    per_frame: float,
    q_of: Array,
    phi_of: Array | None,
) -> G2Data:
    ds = loc.dataset(group, name)
    if ds.ndim != 2 or ds.shape[1] != len(labels):
        why = f"expected (n_lag, {len(labels)}), one column per processed bin; found {ds.shape}"
        raise invalid(loc, group, name, why)
    checked_size(loc, group, name)
    cols = _pick(loc, labels, q_idx, group, name)
    sel = np.s_[:, cols[0] : cols[0] + 1] if len(cols) == 1 and q_idx is not None else ()
    g2 = np.asarray(loc.read(group, name, sel))
    picked = [labels[c] for c in cols]
    if any(not 1 <= lb <= q_of.size for lb in picked):
        raise invalid(loc, group, name, f"processed labels {picked} beyond {q_of.size} bins")
    idx = np.asarray(picked, dtype=np.int64) - 1
    n_lag = g2.shape[0]
    return G2Data.unchecked(
        g2=g2,
        g2_err=np.full(g2.shape, np.nan, dtype=g2.dtype if g2.dtype.kind == "f" else np.float64),
        delay_times=(np.arange(n_lag, dtype=np.float64) + first_lag) * per_frame,
        q_values=q_of[idx].astype(np.float64),
        phi_values=None if phi_of is None else phi_of[idx].astype(np.float64),
    )


def nexus_twotime_g2(loc: Locator, q_idx: int | None) -> G2Data:
    """G2 of the two-time result of a NeXus file (unchecked; see the module docstring).

    Raises:
        KeyError: no ``/xpcs/twotime/normalized_g2``, or no column for ``q_idx``.
        TypeError: ``q_idx`` is not an integer.
        HDF5ValidationError: shapes disagree with ``processed_bins``.
    """
    labels = [int(v) for v in vector(loc, TWOTIME, "processed_bins").tolist()]
    loc.dataset(TWOTIME, "normalized_g2")
    n_bins = max([*labels, 1])
    if exists(loc, aps8idi.QMAP, "dynamic_index_mapping"):
        n_bins = int(vector(loc, aps8idi.QMAP, "dynamic_index_mapping").size)
    q_all = aps8idi._g2_q_values(loc, n_bins, None)
    phi_all = nexus_g2_phi(loc, n_bins, None)
    return _build(
        loc,
        TWOTIME,
        "normalized_g2",
        labels,
        q_idx,
        1,
        nexus_seconds_per_frame(loc),
        q_all,
        phi_all,
    )


def legacy_twotime_g2(loc: Locator, q_idx: int | None) -> G2Data:
    """G2 of the two-time result of a legacy file, ``<result>/g2full`` (unchecked).

    Raises:
        KeyError: no ``g2full``, or no column for ``q_idx``.
        TypeError: ``q_idx`` is not an integer.
        HDF5ValidationError: shapes disagree with ``qphi_bin_to_process``.
    """
    group = legacy8idi.result_group(loc)
    ds = loc.dataset(group, "g2full")
    q_bins, phi_bins = legacy8idi.dynamic_bins(loc)
    if exists(loc, legacy8idi.XPCS, "qphi_bin_to_process"):
        labels = [int(v) for v in vector(loc, legacy8idi.XPCS, "qphi_bin_to_process").tolist()]
    else:
        labels = list(range(1, int(ds.shape[-1]) + 1))
    phi = phi_bins if legacy_g2_phi(loc, q_bins.size, None) is not None else None
    return _build(
        loc,
        group,
        "g2full",
        labels,
        q_idx,
        0,
        legacy_seconds_per_frame(loc),
        q_bins,
        phi,
    )
