"""What each facade method sends (path, parameters, body; arguments checked as the local
facade checks them) and how the decoded message becomes its result. No HTTP and no I/O: see
``transport`` for how the client package is split."""

from __future__ import annotations

import operator
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from xpcs_io import wire
from xpcs_io.errors import ServerError, exception_from_problem
from xpcs_io.schemas import (
    G2Data,
    GeometryMetadata,
    MaskSchema,
    PartitionSchema,
    QMapSchema,
    Schema,
)

__all__ = ["Call", "schema_decoder"]

T = TypeVar("T")
S = TypeVar("S", bound=Schema)


@dataclass(frozen=True)
class Call(Generic[T]):
    """One HTTP exchange: request parts, whether it may be retried, and the decoder of the
    message into the method's result."""

    method: str
    path: str
    params: dict[str, Any]
    decode: Callable[[Any], T]
    body: list[bytes | memoryview] | None = None
    idempotent: bool = True
    cacheable: bool = False
    headers: dict[str, str] = field(default_factory=dict)


def _file(file_path: Any) -> str:
    if isinstance(file_path, PurePath):
        return file_path.as_posix()
    if not isinstance(file_path, str):
        raise TypeError(f"file_path must be str or Path, got {type(file_path).__name__}")
    return file_path


def _group(group: Any) -> str:
    if not isinstance(group, str):
        raise TypeError(f"group must be a string, got {type(group).__name__}")
    return group


def _int_or_none(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None


def schema_decoder(cls: type[S], validate: bool) -> Callable[[Any], S]:
    """Build ``cls`` from a decoded message. The server has already validated it when asked
    to, so the client does not pay the checks a second time."""

    del validate  # the server honoured it; see the docstring

    def decode(data: Any) -> S:
        if not isinstance(data, dict):
            raise ServerError(f"expected a {cls.__name__} map, got {type(data).__name__}")
        return cls.from_dict(data, validate=False)

    return decode


def _params(validate: bool = True, **given: Any) -> dict[str, Any]:
    """Query parameters: each checked as its name says (file_path, group, layout, q_idx,
    version), None left out, ``validate=false`` when asked."""
    params: dict[str, Any] = {}
    for name, value in given.items():
        if value is None:
            continue
        check = _CHECKS.get(name)
        params[name] = check(value) if check is not None else value
    if not validate:
        params["validate"] = "false"
    return params


def _read(path: str, cls: type[S], validate: bool, **params: Any) -> Call[S]:
    params = _params(validate, **params)
    return Call("GET", path, params, schema_decoder(cls, validate), cacheable=True)


_LAYOUTS = ("native", "aps8idi", "aps8idi-legacy", "pysimplemask")


def _layout(layout: Any) -> str | None:
    if layout is not None and layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {list(_LAYOUTS)} or None, got {layout!r}")
    return layout  # type: ignore[no-any-return]


def _q_index(q_idx: Any) -> int | None:
    q = _int_or_none(q_idx, "q_idx")
    if q is not None and q < 0:
        raise IndexError(f"q_idx {q} out of range: negative indices are not allowed")
    return q


def _version(version: Any) -> int | None:
    v = _int_or_none(version, "version")
    if v is not None and v < 1:
        raise KeyError(f"version {v} not found (versions start at 1)")
    return v


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "file_path": _file,
    "group": _group,
    "layout": _layout,
    "q_idx": _q_index,
    "version": _version,
}


def read_qmap(file_path: Any, group: Any, validate: bool, layout: Any = None) -> Call[QMapSchema]:
    return _read("/v1/qmap", QMapSchema, validate, file_path=file_path, group=group, layout=layout)


def read_c2(file_path: Any, q_idx: Any, max_size: Any) -> Call[npt.NDArray[np.float32]]:
    q = _int_or_none(q_idx, "q_idx")
    if q is None:
        raise TypeError("q_idx must be an integer, got None")
    size = _int_or_none(max_size, "max_size")
    if size is not None and size < 1:
        raise ValueError(f"max_size must be a positive integer, got {size}")
    params = {"file_path": _file(file_path), "q_idx": q, "max_size": size}

    def decode(data: Any) -> Any:
        if not isinstance(data, np.ndarray):
            raise ServerError(f"expected an array, got {type(data).__name__}")
        return data

    params = {k: v for k, v in params.items() if v is not None}
    return Call("GET", "/v1/c2", params, decode, cacheable=True)


def read_g2_data(
    file_path: Any, q_idx: Any, group: Any, validate: bool, layout: Any = None
) -> Call[G2Data]:
    params = {"file_path": file_path, "q_idx": q_idx, "group": group, "layout": layout}
    return _read("/v1/g2", G2Data, validate, **params)


def read_geometry_metadata(
    file_path: Any, group: Any, validate: bool, layout: Any = None
) -> Call[GeometryMetadata]:
    params = {"file_path": file_path, "group": group, "layout": layout}
    return _read("/v1/geometry", GeometryMetadata, validate, **params)


def read_mask(file_path: Any, group: Any, version: Any, validate: bool) -> Call[MaskSchema]:
    params = {"file_path": file_path, "group": group, "version": version}
    return _read("/v1/mask", MaskSchema, validate, **params)


def read_partition(
    file_path: Any, group: Any, version: Any, validate: bool
) -> Call[PartitionSchema]:
    params = {"file_path": file_path, "group": group, "version": version}
    return _read("/v1/partition", PartitionSchema, validate, **params)


def list_versions(kind: str, file_path: Any, group: Any) -> Call[list[dict[str, Any]]]:
    return Call(  # not cached: a list is small, and callers expect to own it
        "GET", f"/v1/{kind}/versions", {"file_path": _file(file_path), "group": _group(group)}, list
    )


IDEMPOTENCY_HEADER = "idempotency-key"
_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")


def _idempotency_key(key: Any) -> str:
    if not isinstance(key, str):
        raise TypeError(f"idempotency_key must be a string, got {type(key).__name__}")
    if not 0 < len(key) <= 200 or not set(key) <= _KEY_CHARS:
        raise ValueError(f"idempotency_key must be 1-200 letters, digits or ._:- (got {key!r:.60})")
    return key


def write(
    kind: str,
    cls: type[Schema],
    file_path: Any,
    schema: Any,
    group: Any,
    compression: Any,
    compression_opts: Any,
    writer: Any,
    idempotency_key: Any = None,
) -> Call[dict[str, Any]]:
    if not isinstance(schema, cls):
        raise TypeError(f"{kind}_schema must be a {cls.__name__}, got {type(schema).__name__}")
    schema.validate()  # same ValueError/TypeError as locally, before any byte is sent
    if compression is not None and not isinstance(compression, str):
        raise TypeError(f"compression must be a string or None, got {compression!r}")
    if writer is not None and not isinstance(writer, str):
        raise TypeError(f"writer must be a string, got {type(writer).__name__}")
    params: dict[str, Any] = {
        "file_path": _file(file_path),
        "group": _group(group),
        "compression": "none" if compression is None else compression,
    }
    opts = _int_or_none(compression_opts, "compression_opts")
    if opts is not None:
        if not 0 <= opts <= 9:
            raise ValueError(f"compression_opts must be 0..9, got {opts}")
        params["compression_opts"] = opts
    elif compression == "gzip":
        params["compression_opts"] = 4
    if compression == "lzf" and compression_opts is not None:
        raise ValueError("lzf takes no compression_opts (pass None)")
    if writer is not None:
        params["writer"] = writer
    # The server stores the key with the version it creates and answers a resend with that
    # version: the write becomes safe to retry, so it is retried like a read.
    key = uuid.uuid4().hex if idempotency_key is None else _idempotency_key(idempotency_key)
    return Call(
        "POST",
        f"/v1/{kind}",
        params,
        dict,
        body=wire.pack_chunks(schema.to_dict()),
        idempotent=True,
        headers={"content-type": wire.MEDIA_TYPE, IDEMPOTENCY_HEADER: key},
    )


def write_mask(
    file_path: Any, schema: Any, group: Any, compression: Any, opts: Any, writer: Any, key: Any
) -> Call[dict[str, Any]]:
    return write("mask", MaskSchema, file_path, schema, group, compression, opts, writer, key)


def write_partition(
    file_path: Any, schema: Any, group: Any, compression: Any, opts: Any, writer: Any, key: Any
) -> Call[dict[str, Any]]:
    return write(
        "partition", PartitionSchema, file_path, schema, group, compression, opts, writer, key
    )


def pool_stats() -> Call[dict[str, Any]]:
    return Call("GET", "/v1/pool/stats", {}, dict)


def pool_clear() -> Call[None]:
    return Call("POST", "/v1/pool/clear", {}, lambda _: None, idempotent=False)


def read_many(
    path: str, cls: type[S], file_paths: Any, validate: bool, **params: Any
) -> Call[list[S | Exception]]:
    """A many-file read: one item per file, the result or the exception it stands for."""
    if isinstance(file_paths, str | bytes | PurePath) or not isinstance(file_paths, list | tuple):
        raise TypeError(f"file_paths must be a list of paths, got {type(file_paths).__name__}")
    paths = [_file(p) for p in file_paths]
    params = _params(validate, **params)

    def decode(data: Any) -> list[Any]:
        if not isinstance(data, list) or len(data) != len(paths):
            raise ServerError(f"expected {len(paths)} items, got {type(data).__name__}")
        out: list[Any] = [None] * len(paths)
        for item in data:
            index = item.get("index") if isinstance(item, dict) else None
            if not isinstance(index, int) or not 0 <= index < len(paths):
                raise ServerError("a many-file answer holds an item without a valid index")
            if "result" in item:
                out[index] = schema_decoder(cls, validate)(item["result"])
            else:
                problem = item.get("error")
                problem = problem if isinstance(problem, dict) else {}
                name = problem.get("error")
                status = problem.get("status")
                field_name = problem.get("field")
                exc = exception_from_problem(
                    name if isinstance(name, str) else None,
                    str(problem.get("detail", "unknown error")),
                    status=status if isinstance(status, int) else 500,
                    field=field_name if isinstance(field_name, str) else None,
                )
                out[index] = exc
        if any(v is None for v in out):
            raise ServerError("a many-file answer misses items")
        return out

    return Call(
        "POST",
        path,
        params,
        decode,
        body=[wire.pack({"file_paths": paths})],
        headers={"content-type": wire.MEDIA_TYPE},
    )


def read_g2_data_many(
    file_paths: Any, q_idx: Any, group: Any, validate: bool, layout: Any = None
) -> Call[list[G2Data | Exception]]:
    params = {"q_idx": q_idx, "group": group, "layout": layout}
    return read_many("/v1/g2/many", G2Data, file_paths, validate, **params)


def read_qmap_many(
    file_paths: Any, group: Any, validate: bool, layout: Any = None
) -> Call[list[QMapSchema | Exception]]:
    params = {"group": group, "layout": layout}
    return read_many("/v1/qmap/many", QMapSchema, file_paths, validate, **params)
