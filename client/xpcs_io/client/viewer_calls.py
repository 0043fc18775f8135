"""What the viewer reads (SAXS 2-D and 1-D, intensity vs time, two-time G2, metadata) and
the generic browsing calls (files, tree, any dataset) send, shared by both clients."""

from __future__ import annotations

from typing import Any

from xpcs_io.client.calls import Call, _file, _int_or_none, _params, _read, schema_decoder
from xpcs_io.errors import ServerError
from xpcs_io.schemas import G2Data, IntensityTimeData, Saxs1DData, Saxs2DData

__all__ = [
    "list_files",
    "read_dataset",
    "read_intensity_time",
    "read_metadata",
    "read_saxs_1d",
    "read_saxs_2d",
    "read_tree",
    "read_twotime_g2",
]


def read_saxs_2d(file_path: Any, validate: bool, layout: Any = None) -> Call[Saxs2DData]:
    return _read("/v1/saxs2d", Saxs2DData, validate, file_path=file_path, layout=layout)


def read_saxs_1d(file_path: Any, validate: bool, layout: Any = None) -> Call[Saxs1DData]:
    return _read("/v1/saxs1d", Saxs1DData, validate, file_path=file_path, layout=layout)


def read_intensity_time(
    file_path: Any, validate: bool, layout: Any = None
) -> Call[IntensityTimeData]:
    params = {"file_path": file_path, "layout": layout}
    return _read("/v1/intensity-time", IntensityTimeData, validate, **params)


def read_twotime_g2(file_path: Any, q_idx: Any, validate: bool, layout: Any = None) -> Call[G2Data]:
    params = _params(validate, file_path=file_path, layout=layout)
    q = _int_or_none(q_idx, "q_idx")  # any integer: the server names the bins it has
    if q is not None:
        params["q_idx"] = q
    return Call("GET", "/v1/g2/twotime", params, schema_decoder(G2Data, validate), cacheable=True)


def _mapping(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ServerError(f"expected a map, got {type(data).__name__}")
    return data


def _listing(data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise ServerError(f"expected a list, got {type(data).__name__}")
    return data


def read_metadata(file_path: Any, layout: Any = None) -> Call[dict[str, Any]]:
    params = _params(file_path=file_path, layout=layout)
    return Call("GET", "/v1/metadata", params, _mapping, cacheable=True)


def list_files(prefix: Any = None) -> Call[list[dict[str, Any]]]:
    if prefix is not None and not isinstance(prefix, str):
        raise TypeError(f"prefix must be a string, got {type(prefix).__name__}")
    params = {} if prefix is None else {"prefix": prefix}
    return Call("GET", "/v1/files", params, _listing)


def read_tree(file_path: Any) -> Call[dict[str, Any]]:
    return Call("GET", "/v1/tree", {"file_path": _file(file_path)}, _mapping, cacheable=True)


def read_dataset(file_path: Any, path: Any, selection: Any = None) -> Call[Any]:
    if not isinstance(path, str):
        raise TypeError(f"path must be a string, got {type(path).__name__}")
    if selection is not None and not isinstance(selection, str):
        raise TypeError(f"selection must be a string such as '0:10,::2', got {selection!r}")
    params = {"file_path": _file(file_path), "path": path}
    if selection is not None:
        params["selection"] = selection
    return Call("GET", "/v1/dataset", params, lambda data: data, cacheable=True)
