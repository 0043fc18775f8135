"""Read results as files: npy, CSV (1-D and 2-D), PNG and TIFF (images), one encoder per
format, chosen by ``format=`` or by ``Accept``.

- npy: the read's main array (image (H, W); G2 (n_delay, n_q); curves stacked as rows,
  e.g. (2, n) q and intensity), as ``numpy.save`` writes it.
- CSV: curves as columns with a header naming each with its unit; G2 as delay then one column
  per q; images as H rows of W values.
- PNG: images only, 16-bit greyscale, log10 of the positive values scaled to 0..65535
  (0 for values <= 0 or NaN): a picture, not the numbers (use TIFF or npy for those).
- TIFF: images only, the float values as stored (float32 or float64).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import numpy.typing as npt
from starlette.requests import Request
from starlette.responses import Response

from xpcs_io.schemas import G2Data, IntensityTimeData, Saxs1DData, Saxs2DData, Schema

__all__ = ["FORMATS", "MEDIA_TYPES", "export", "wanted_format"]

MEDIA_TYPES = {
    "npy": "application/x-npy",
    "csv": "text/csv",
    "png": "image/png",
    "tiff": "image/tiff",
}
FORMATS = tuple(MEDIA_TYPES)
Array = npt.NDArray[Any]


def wanted_format(request: Request, given: str | None) -> str | None:
    """``given``, else the export format named by ``Accept``, else None (msgpack/JSON)."""
    if given is not None:
        return given
    accept = request.headers.get("accept", "")
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        for fmt, media_type in MEDIA_TYPES.items():
            if media == media_type:
                return fmt
    return None


def _columns(obj: Schema) -> tuple[list[str], list[Array]]:
    if isinstance(obj, Saxs1DData):
        names, cols = [f"q_{obj.q_unit}", f"intensity_{obj.intensity_unit}"], [obj.q, obj.intensity]
        if obj.phi is not None:
            names.append("phi_deg")
            cols.append(obj.phi)
        for i, seg in enumerate(obj.intensity_segments):
            names.append(f"segment_{i}")
            cols.append(seg)
        return names, cols
    if isinstance(obj, IntensityTimeData):
        return ["time_s", f"intensity_{obj.unit}"], [obj.time, obj.intensity]
    if isinstance(obj, G2Data):
        names = ["delay_s"]
        for k, q in enumerate(obj.q_values.tolist()):
            phi = "" if obj.phi_values is None else f"_phi{obj.phi_values[k]:g}deg"
            names.append(f"g2_q{q:.6g}A^-1{phi}")
        return names, [obj.delay_times, *obj.g2.T]
    raise TypeError(f"{type(obj).__name__} has no columns")


def _image(obj: Any) -> Array | None:
    if isinstance(obj, Saxs2DData):
        return obj.image
    if isinstance(obj, np.ndarray) and obj.ndim == 2:
        return obj
    return None


def _main(obj: Any) -> Array:
    image = _image(obj)
    if image is not None:
        return image
    if isinstance(obj, G2Data):
        return obj.g2
    _, cols = _columns(obj)
    return np.stack([np.asarray(c, dtype=np.float64) for c in cols])


def _npy(obj: Any) -> bytes:
    buf = io.BytesIO()
    np.save(buf, _main(obj), allow_pickle=False)
    return buf.getvalue()


def _csv(obj: Any) -> bytes:
    buf = io.StringIO()
    image = _image(obj)
    if image is not None:
        np.savetxt(buf, image, delimiter=",", fmt="%.9g")
    else:
        names, cols = _columns(obj)
        table = np.column_stack([np.asarray(c, dtype=np.float64) for c in cols])
        np.savetxt(buf, table, delimiter=",", fmt="%.9g", header=",".join(names), comments="")
    return buf.getvalue().encode()


def _png(obj: Any) -> bytes:
    from PIL import Image

    image = _image(obj)
    if image is None:
        raise ValueError("format=png is for images (SAXS 2-D, C2): use csv or npy for curves")
    values = np.asarray(image, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(values > 0, np.log10(values), np.nan)
    scaled = np.zeros(values.shape, dtype=np.uint16)
    finite = np.isfinite(logs)
    if finite.any():
        lo, hi = float(logs[finite].min()), float(logs[finite].max())
        span = hi - lo if hi > lo else 1.0
        scaled[finite] = np.rint(1 + (logs[finite] - lo) / span * 65534).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(scaled).save(buf, format="PNG")
    return buf.getvalue()


def _tiff(obj: Any) -> bytes:
    import tifffile

    image = _image(obj)
    if image is None:
        raise ValueError("format=tiff is for images (SAXS 2-D, C2): use csv or npy for curves")
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.ascontiguousarray(image))
    return buf.getvalue()


_ENCODERS = {"npy": _npy, "csv": _csv, "png": _png, "tiff": _tiff}


def export(obj: Any, fmt: str, name: str) -> Response:
    """``obj`` (a schema or an array) encoded as ``fmt``, offered as file ``name.<fmt>``.

    Raises:
        ValueError: an image format for something that is not an image.
    """
    body = _ENCODERS[fmt](obj)
    return Response(
        body,
        media_type=MEDIA_TYPES[fmt],
        headers={"content-disposition": f'attachment; filename="{name}.{fmt}"'},
    )
