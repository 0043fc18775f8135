"""The mask a result file's producer stored: what ``read_mask`` returns when nothing wrote one.

- APS 8-ID-I NeXus result files (boost_corr, pySimpleMask): ``/xpcs/qmap/mask`` (bool), with
  the geometry of ``/xpcs/qmap`` (see ``layouts.aps8idi.read_geometry``).
- Legacy APS 8-ID-I result files (``/xpcs/Version`` present, 2013-2024): ``/xpcs/mask``, uint8,
  int or bool, ``(H, W)`` or ``(1, H, W)``, possibly stored transposed against ``/xpcs/dqmap``;
  geometry from ``/measurement/instrument`` (``(1, 1)`` scalars): beam centre in pixels shifted
  by the detector stage offset, distance and pixel size in mm, energy in keV.

Legacy files are recognised first, as the beamline viewer does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xpcs_io.errors import HDF5ValidationError
from xpcs_io.h5access import Locator
from xpcs_io.layouts import aps8idi
from xpcs_io.schemas import GeometryMetadata, MaskSchema

__all__ = ["read_original_mask"]

HC_KEV_ANGSTROM = 12.398
_LEGACY_MARK = "/xpcs/Version"
_LEGACY_MASK = "/xpcs/mask"
_NEXUS_MASK = "/xpcs/qmap/mask"
_INSTRUMENT = "/measurement/instrument"


def _exists(loc: Locator, path: str) -> bool:
    try:
        loc.get(path)
    except KeyError:
        return False
    return True


def _number(loc: Locator, path: str) -> float:
    group, name = path.rsplit("/", 1)
    value = np.asarray(loc.read(group, name))
    if value.size != 1 or value.dtype.kind not in "iuf":
        raise HDF5ValidationError(
            f"{loc.display}: {path}: expected a number, got {value.dtype} {value.shape}",
            file=loc.display,
            group=group,
            field=name,
        )
    return float(value.reshape(()))


def _legacy_map(loc: Locator, path: str) -> np.ndarray[Any, Any]:
    group, name = path.rsplit("/", 1)
    arr = np.asarray(loc.read(group, name))
    while arr.ndim > 2 and arr.shape[0] == 1:  # boost_corr's (1, H, W)
        arr = arr[0]
    if arr.ndim != 2:
        raise HDF5ValidationError(
            f"{loc.display}: {path}: expected an (H, W) map, got shape {arr.shape}",
            file=loc.display,
            group=group,
            field=name,
        )
    return arr


def _legacy_geometry(loc: Locator, shape: tuple[int, int]) -> GeometryMetadata:
    acq = f"{_INSTRUMENT}/acquisition"
    det = f"{_INSTRUMENT}/detector"
    pix_x = _number(loc, f"{det}/x_pixel_size")
    pix_y = _number(loc, f"{det}/y_pixel_size") if _exists(loc, f"{det}/y_pixel_size") else pix_x
    bcx = _number(loc, f"{acq}/beam_center_x")
    bcy = _number(loc, f"{acq}/beam_center_y")
    # The beam centre was measured at the stage's zero position (mm): shift it to where the
    # detector stood, as the beamline viewer does.
    stage = [f"{acq}/{n}" for n in ("stage_x", "stage_zero_x", "stage_z", "stage_zero_z")]
    if all(_exists(loc, p) for p in stage):
        sx, sx0, sz, sz0 = (_number(loc, p) for p in stage)
        bcx += (sx - sx0) / pix_x
        bcy += (sz - sz0) / pix_y
    energy = _number(loc, f"{_INSTRUMENT}/source_begin/energy")
    return GeometryMetadata.unchecked(
        bcx=bcx,
        bcy=bcy,
        det_dist=_number(loc, f"{det}/distance"),
        lambda_=HC_KEV_ANGSTROM / energy if energy else float("nan"),
        pix_dim=pix_x,
        shape=shape,
    )


def _legacy(loc: Locator) -> MaskSchema:
    mask = _legacy_map(loc, _LEGACY_MASK)
    if _exists(loc, "/xpcs/dqmap"):
        ref = loc.dataset("/xpcs", "dqmap").shape[-2:]
        if mask.shape != tuple(ref) and mask.shape[::-1] == tuple(ref):
            mask = mask.T  # stored (W, H): the viewer transposes it the same way
    geometry = _legacy_geometry(loc, (int(mask.shape[0]), int(mask.shape[1])))
    return MaskSchema.unchecked(
        mask=np.ascontiguousarray(mask),
        metadata=geometry,
        description=f"the file's original mask ({_LEGACY_MASK})",
    )


def _nexus(loc: Locator) -> MaskSchema:
    arr = np.asarray(loc.read("/xpcs/qmap", "mask"))
    mask = arr.reshape(arr.shape[-2:]) if arr.ndim > 2 and arr.size else arr
    return MaskSchema.unchecked(
        mask=mask,
        metadata=aps8idi.read_geometry(loc),
        description=f"the file's original mask ({_NEXUS_MASK})",
    )


def read_original_mask(loc: Locator) -> MaskSchema | None:
    """The mask the file's producer stored (unchecked), or None when it has none.

    Raises:
        KeyError: a geometry dataset the mask needs is missing (the message names it).
        HDF5ValidationError: a stored value has the wrong shape or type.
        PermissionError: a link on the way leads outside the data root.
    """
    if _exists(loc, _LEGACY_MARK) and _exists(loc, _LEGACY_MASK):
        return _legacy(loc)
    if _exists(loc, _NEXUS_MASK) and aps8idi.is_aps8idi(loc):
        return _nexus(loc)
    return None
