"""OpenAPI fragments: response and body schemas of the msgpack/JSON forms, and the errors.

The schemas are derived from the dataclasses in ``xpcs_io.schemas`` so documentation cannot
drift from the code: an array field is a wire array map in msgpack and nested lists in JSON.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from xpcs_io.schemas import (
    G2Data,
    GeometryMetadata,
    IntensityTimeData,
    MaskSchema,
    PartitionSchema,
    QMapSchema,
    Saxs1DData,
    Saxs2DData,
    Schema,
)

__all__ = ["BODY_ERRORS", "ERRORS", "WRITE_ERRORS", "body_doc", "ok"]

_ARRAY_MAP = {
    "type": "object",
    "description": "A numpy array: dtype string (byte order explicit), shape, raw C-order bytes.",
    "required": ["dtype", "shape", "data"],
    "properties": {
        "dtype": {"type": "string", "example": "<f4"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "data": {"type": "string", "format": "binary"},
    },
}
_NESTED_LIST = {"type": "array", "description": "Nested lists (NaN/Inf as null).", "items": {}}
_SCALARS: dict[str, dict[str, Any]] = {
    "float": {"type": "number"},
    "float | None": {"type": "number", "nullable": True},
    "int": {"type": "integer"},
    "str": {"type": "string"},
    "str | None": {"type": "string", "nullable": True},
    "tuple[int, int]": {
        "type": "array",
        "items": {"type": "integer"},
        "minItems": 2,
        "maxItems": 2,
    },
}
_CLASSES: dict[str, type[Schema]] = {
    c.__name__: c
    for c in (
        QMapSchema,
        G2Data,
        GeometryMetadata,
        MaskSchema,
        PartitionSchema,
        Saxs2DData,
        Saxs1DData,
        IntensityTimeData,
    )
}
_RECORD = {
    "type": "object",
    "properties": {
        "version": {"type": "integer"},
        "origin": {
            "type": "string",
            "enum": ["xpcs-io", "found"],
            "description": "xpcs-io: written here; found: left in the group by another program",
        },
        "created": {"type": "string", "format": "date-time", "nullable": True},
        "description": {"type": "string", "nullable": True},
        "sha256": {"type": "string"},
        "schema_version": {"type": "string", "nullable": True},
        "writer": {"type": "string", "nullable": True},
        "dtype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "idempotency_key": {"type": "string", "description": "The write's Idempotency-Key"},
    },
}
_OTHER: dict[str, dict[str, Any]] = {
    "Metadata": {
        "type": "object",
        "description": "Flat map of HDF5 path (or summary key) to a number, string, bool, "
        "null or short list; units alongside as '<key>@unit'.",
        "additionalProperties": True,
    },
    "Tree": {
        "type": "object",
        "description": "Nested groups and datasets (h5grove /meta form, children at every level).",
        "additionalProperties": True,
    },
    "VersionRecord": _RECORD,
    "VersionList": {"type": "array", "items": _RECORD},
    "C2Map": {
        "description": "A float32 (N, N) array: an array map in msgpack, nested lists in JSON.",
        "oneOf": [_ARRAY_MAP, _NESTED_LIST],
    },
    "FileList": {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "size": {"type": "integer"},
                "mtime": {"type": "number", "description": "seconds since the epoch"},
            },
        },
    },
    "PoolStats": {
        "type": "object",
        "properties": {
            k: {"type": "number"}
            for k in (
                "hits",
                "misses",
                "opens",
                "evictions",
                "reopens_on_change",
                "pool_size",
                "max_pool_size",
                "hit_ratio",
            )
        }
        | {"open_files": {"type": "array", "items": {"type": "object"}}},
    },
}


def _schema(name: str, array: dict[str, Any]) -> dict[str, Any]:
    if name in _OTHER:
        return _OTHER[name]
    cls = _CLASSES[name]
    props: dict[str, Any] = {}
    required = []
    for f in dataclasses.fields(cls):
        if f.name in cls._nested:
            props[f.name] = _schema(cls._nested[f.name].__name__, array)
        elif f.name in cls._array_fields:
            props[f.name] = dict(array, nullable=True) if f.default is None else array
        else:
            props[f.name] = _SCALARS.get(str(f.type), {})
        if f.default is dataclasses.MISSING:
            required.append(f.name)
    return {"type": "object", "title": name, "required": required, "properties": props}


def _content(name: str) -> dict[str, Any]:
    return {
        "application/msgpack": {"schema": _schema(name, _ARRAY_MAP)},
        "application/json": {"schema": _schema(name, _NESTED_LIST)},
    }


def ok(name: str, status: int = 200) -> dict[int | str, dict[str, Any]]:
    """The success response of an endpoint returning ``name``."""
    return {
        status: {
            "description": f"{name} (msgpack by default; JSON on request)",
            "content": _content(name),
        }
    }


def body_doc(name: str) -> dict[str, Any]:
    """``openapi_extra`` documenting a request body holding ``name``."""
    return {"requestBody": {"required": True, "content": _content(name)}}


_PROBLEM = {
    "application/problem+json": {
        "schema": {
            "type": "object",
            "required": ["type", "title", "status", "detail"],
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "error": {"type": "string", "description": "Python exception class to raise."},
                "field": {"type": "string", "description": "The schema field at fault."},
                "request_id": {"type": "string"},
            },
        }
    }
}


def _err(text: str) -> dict[str, Any]:
    return {"description": text, "content": _PROBLEM}


ERRORS: dict[int | str, dict[str, Any]] = {
    401: _err("No or unknown API key (PermissionError)."),
    403: _err("Key lacks the scope, or the path leads outside the data root (PermissionError)."),
    404: _err("Missing file (FileNotFoundError), group, dataset or version (KeyError)."),
    406: _err("JSON asked for an array above the JSON size limit: use msgpack."),
    422: _err(
        "Invalid stored data or not HDF5 (HDF5ValidationError); q_idx out of range "
        "(IndexError); invalid parameters (ValueError / TypeError)."
    ),
}
BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    400: _err("The body is not msgpack/JSON (WireFormatError)."),
    413: _err("The body exceeds the size limit (PayloadTooLargeError)."),
}
WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    **BODY_ERRORS,
    503: _err("Another writer held the file's lock too long (WriteLockTimeout)."),
}
