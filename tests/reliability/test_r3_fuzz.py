"""R3: fuzzing. Schemathesis drives a live server from ``openapi/openapi.json`` (every
operation, positive and negative cases, free and pinned to real files, JSON and msgpack
bodies); Hypothesis drives the schemas (``from_dict`` on arbitrary and mutated dicts), the
server's body decoder (``wire.unpack`` + ``from_dict`` on arbitrary bytes and on mutated valid
messages, JSON too) and the path resolver (``resolve_under_root`` on arbitrary strings).

Targets: no 5xx, no exception outside the error table (which would be a 5xx), no hang, a
resolved path always inside the root. Every failing example Hypothesis ever found stays
below as an ``@example`` or a plain test.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis.extra.numpy as hnp
import msgpack
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, status_code_conformance

from xpcs_io import wire
from xpcs_io.errors import SchemaError, WireFormatError, status_for
from xpcs_io.paths import resolve_under_root
from xpcs_io.schemas import (
    G2Data,
    GeometryMetadata,
    MaskSchema,
    PartitionSchema,
    QMapSchema,
    Schema,
)
from xpcs_io.tools.demo import DemoSpec, write_native_file
from xpcs_io.tools.demo_aps8idi import write_aps8idi_file

from ..conftest import Server
from .support import SOAK, Figure, scale, serving

OPENAPI = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"
API_CASES_PER_OPERATION = scale(20, 100)
SCHEMA_CASES = scale(500, 4000)
DECODER_CASES = scale(500, 4000)
PATH_CASES = scale(500, 3000)
#: A case counts as a hang after this: generous, since a real hang never ends and a loaded
#: machine may take a while over one honest case.
HANG_SECONDS = 60.0
CLASSES: tuple[type[Schema], ...] = (
    QMapSchema,
    G2Data,
    GeometryMetadata,
    MaskSchema,
    PartitionSchema,
)

schema = schemathesis.openapi.from_path(str(OPENAPI))
# An event stream never ends, so it cannot be fuzzed by reading whole answers: its
# parameters are fuzzed in tests/test_events.py, reading only each answer's head.
OPERATIONS = [
    schema[path][method.upper()]
    for path, methods in sorted(json.loads(OPENAPI.read_text())["paths"].items())
    for method, op in sorted(methods.items())
    if "text/event-stream" not in op.get("responses", {}).get("200", {}).get("content", {})
]


def _fit_msgpack(value: Any, key: str = "") -> Any:
    """JSON-schema data made sendable as msgpack: ints beyond 64 bits become floats, and a
    string under ``data`` becomes bytes (an array payload), so array maps get exercised."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return float(value)
    if isinstance(value, str) and key == "data":
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, dict):
        return {k: _fit_msgpack(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_fit_msgpack(v) for v in value]
    return value


def _msgpack_body(ctx: schemathesis.SerializationContext, value: Any) -> bytes:
    del ctx
    packed: bytes = msgpack.packb(_fit_msgpack(value), use_bin_type=True)
    return packed


schemathesis.serializer("application/msgpack")(_msgpack_body)


# ---------------------------------------------------------------- the figure


class Tally:
    """Counts shared by the tests of this module; written as the R3 figure."""

    def __init__(self) -> None:
        self.fig = Figure("R3", "fuzzing", "Schemathesis on the live API, Hypothesis offline")
        self.api_cases = 0
        self.api_5xx: list[str] = []
        self.api_failures: list[str] = []
        self.hangs: list[str] = []
        self.statuses: dict[str, int] = {}
        self.offline_cases = {"schemas": 0, "decoder": 0, "paths": 0}
        self.unhandled: list[str] = []
        self.escapes: list[str] = []

    def finish(self) -> Figure:
        fig = self.fig
        offline = sum(self.offline_cases.values())
        fig["API cases (schemathesis)"] = self.api_cases
        fig["API statuses"] = dict(sorted(self.statuses.items()))
        fig["offline cases (hypothesis)"] = offline
        for name, n in self.offline_cases.items():
            fig[f"offline cases: {name}"] = n
        fig.notes[:] = (self.api_5xx + self.api_failures + self.hangs + self.unhandled)[:40]
        fig.notes += self.escapes[:20]
        fig.targets.clear()
        want_api = scale(200, 1000)
        want_offline = scale(1500, 10_000)
        fig.target("API cases", self.api_cases, f">= {want_api}", self.api_cases >= want_api)
        fig.target("offline cases", offline, f">= {want_offline}", offline >= want_offline)
        fig.target("5xx responses", len(self.api_5xx), "0", not self.api_5xx)
        fig.target("schema check failures", len(self.api_failures), "0", not self.api_failures)
        fig.target(f"hangs (> {HANG_SECONDS:g} s)", len(self.hangs), "0", not self.hangs)
        fig.target(
            "exceptions outside the error table", len(self.unhandled), "0", not self.unhandled
        )
        fig.target("resolved paths outside the root", len(self.escapes), "0", not self.escapes)
        return fig


def _whole_module(config: pytest.Config) -> bool:
    """True when no -k, -m or node id narrowed the run, so the module's counts are due."""
    narrowed = config.getoption("keyword") or config.getoption("markexpr")
    return not narrowed and not any("::" in str(arg) for arg in config.args)


@pytest.fixture(scope="module")
def tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    """The module's counts. Once the last test using them is done, whatever the order the
    tests ran in, the R3 figure is written and (on a whole-module run) its targets checked:
    a missed target is reported as an error of that last test."""
    t = Tally()
    yield t
    figure = t.finish()
    if _whole_module(request.config):
        figure.check()
    else:
        figure.write()


# ---------------------------------------------------------------- schemathesis, live


FILES = ("x.hdf5", "aps.hdf5")
MASK_JSON: dict[str, Any] = {
    "mask": np.ones((16, 16), int).tolist(),
    "metadata": {
        "bcx": 8.0,
        "bcy": 8.0,
        "det_dist": 5000.0,
        "lambda_": 1.5,
        "pix_dim": 0.075,
        "shape": [16, 16],
    },
}
PARTITION_JSON: dict[str, Any] = {
    "partition_map": np.ones((16, 16), int).tolist(),
    "num_pts": 1,
    "val_list": [0.1],
    "num_list": [256],
    "metadata": MASK_JSON["metadata"],
}


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("fuzz-root")
    write_native_file(root / "x.hdf5", DemoSpec(shape=(16, 16), n_delay=5, n_q=3))
    write_aps8idi_file(root / "aps.hdf5")
    # Names Hypothesis likes to generate, so free-form file_path values hit real files too.
    for name in ("0", "a", "A", "00"):
        write_native_file(root / name, DemoSpec(shape=(16, 16), n_delay=5, n_q=3))
    with serving(root, tmp_path_factory.mktemp("fuzz-logs") / "server.log") as srv:
        yield srv


def _strategy(op: Any) -> st.SearchStrategy[Case[Any]]:
    raw = op.definition.raw
    params = {p["name"] for p in raw.get("parameters", [])}
    modes = [GenerationMode.POSITIVE]
    if params or "requestBody" in raw:
        modes.append(GenerationMode.NEGATIVE)
    options = [op.as_strategy(generation_mode=m) for m in modes]
    if "file_path" in params:
        for f in FILES:
            options += [op.as_strategy(generation_mode=m, query={"file_path": f}) for m in modes]
    if "requestBody" in raw:
        body = MASK_JSON if op.path.endswith("mask") else PARTITION_JSON
        options.append(
            op.as_strategy(query={"file_path": "w.hdf5"}, body=body, media_type="application/json")
        )
    return st.one_of(options)


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance]


@pytest.mark.slow
@pytest.mark.parametrize("op", OPERATIONS, ids=[op.label for op in OPERATIONS])
def test_api_fuzz(op: Any, fuzz_server: Server, tally: Tally) -> None:
    failures: list[str] = []

    @settings(
        max_examples=API_CASES_PER_OPERATION,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        derandomize=not SOAK,
    )
    @given(_strategy(op))
    def run(case: Case[Any]) -> None:
        t0 = time.monotonic()
        try:
            response = case.call(base_url=fuzz_server.url, timeout=HANG_SECONDS)
        except Exception as exc:  # requests' timeouts and connection errors
            tally.hangs.append(
                f"{op.label}: {type(exc).__name__} after {time.monotonic() - t0:.1f} s"
            )
            failures.append(tally.hangs[-1])
            return
        tally.api_cases += 1
        status = str(response.status_code)
        tally.statuses[status] = tally.statuses.get(status, 0) + 1
        if response.status_code >= 500:
            tally.api_5xx.append(f"{op.label} {case.query} -> {status} {response.text[:200]}")
            failures.append(tally.api_5xx[-1])
            return
        try:
            case.validate_response(response, checks=CHECKS)
        except Exception as exc:
            tally.api_failures.append(f"{op.label} {case.query}: {str(exc)[:300]}")
            failures.append(tally.api_failures[-1])

    run()
    assert not failures, failures[:5]


# ---------------------------------------------------------------- hypothesis, offline


def _table_error(exc: BaseException) -> bool:
    """Whether ``exc`` is one the server answers with a 4xx (anything else is a 500)."""
    status = status_for(exc)
    return status is not None and 400 <= status < 500


def _valid_dicts() -> dict[type[Schema], dict[str, Any]]:
    geo: dict[str, Any] = {"bcx": 8.0, "bcy": 8.0, "det_dist": 5000.0, "lambda_": 1.5}
    geo |= {"pix_dim": 0.075, "shape": [4, 5]}
    shape = (4, 5)
    return {
        GeometryMetadata: dict(geo),
        MaskSchema: {"mask": np.ones(shape, np.uint8), "metadata": dict(geo)},
        PartitionSchema: {
            "partition_map": np.ones(shape, np.uint16),
            "num_pts": 1,
            "val_list": np.array([0.5]),
            "num_list": np.array([20]),
            "metadata": dict(geo),
        },
        QMapSchema: {
            "sqmap": np.full(shape, 0.1, np.float32),
            "dqmap": np.full(shape, 0.1, np.float32),
            "phis": np.zeros(shape, np.float32),
        },
        G2Data: {
            "g2": np.ones((3, 2)),
            "g2_err": np.full((3, 2), 0.01),
            "delay_times": np.array([1e-5, 2e-5, 4e-5]),
            "q_values": np.array([0.01, 0.02]),
        },
    }


VALID = _valid_dicts()
_any_array = hnp.arrays(
    dtype=st.one_of(
        hnp.boolean_dtypes(),
        hnp.integer_dtypes(endianness="?"),
        hnp.unsigned_integer_dtypes(endianness="?"),
        hnp.floating_dtypes(endianness="?"),
        hnp.complex_number_dtypes(endianness="?"),
        hnp.byte_string_dtypes(max_len=3),
        hnp.unicode_string_dtypes(max_len=3),
        hnp.datetime64_dtypes(),
    ),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
)
_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.complex_numbers(),
    st.text(max_size=8),
    st.binary(max_size=8),
)
_values = st.recursive(
    st.one_of(_scalar, _any_array),
    lambda kids: st.one_of(
        st.lists(kids, max_size=4),
        st.tuples(kids, kids),
        st.dictionaries(st.text(max_size=6), kids, max_size=4),
    ),
    max_leaves=12,
)


@st.composite
def _schema_input(draw: st.DrawFn) -> tuple[type[Schema], Any]:
    cls = draw(st.sampled_from(CLASSES))
    valid = VALID[cls]
    how = draw(st.sampled_from(["arbitrary", "replace", "drop", "extra", "nested", "not a map"]))
    if how == "not a map":
        return cls, draw(_values)
    if how == "arbitrary":
        keys = st.one_of(st.sampled_from([*sorted(valid), "version", "description"]), st.text())
        return cls, draw(st.dictionaries(keys, _values, max_size=8))
    data = dict(valid)
    name = draw(st.sampled_from(sorted(data)))
    if how == "replace":
        data[name] = draw(_values)
    elif how == "drop":
        del data[name]
    elif how == "extra":
        data[draw(st.text(min_size=1, max_size=6))] = draw(_values)
    elif "metadata" in data:
        meta = dict(data["metadata"])
        meta[draw(st.sampled_from(sorted(meta)))] = draw(_values)
        data["metadata"] = meta
    return cls, data


def _to_json(value: Any) -> Any:
    """A to_dict() document as JSON data (arrays as nested lists), as curl users send it."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    return value


def _round_trips(obj: Schema) -> bool:
    again = type(obj).from_dict(wire.unpack(wire.pack(obj.to_dict())))
    return again == obj


@pytest.mark.slow
@settings(
    max_examples=SCHEMA_CASES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    derandomize=not SOAK,
)
@given(_schema_input())
@example(item=(GeometryMetadata, {**VALID[GeometryMetadata], "bcx": 10**400}))
@example(item=(MaskSchema, {**VALID[MaskSchema], "mask": [[1, 0], [1]]}))
@example(item=(G2Data, {**VALID[G2Data], "delay_times": np.array(["a", "b", "c"])}))
@example(item=(PartitionSchema, {**VALID[PartitionSchema], "num_pts": 2**70}))
def test_from_dict_only_raises_table_errors(tally: Tally, item: tuple[type[Schema], Any]) -> None:
    cls, data = item
    tally.offline_cases["schemas"] += 1
    try:
        obj = cls.from_dict(data)
    except Exception as exc:
        if not _table_error(exc):
            tally.unhandled.append(f"{cls.__name__}.from_dict: {type(exc).__name__}: {exc}")
            raise
        return
    obj.validate()
    assert _round_trips(obj), f"{cls.__name__} does not survive the wire"


@st.composite
def _message(draw: st.DrawFn) -> tuple[type[Schema], bytes, str]:
    cls = draw(st.sampled_from(CLASSES))
    doc = cls.from_dict(VALID[cls]).to_dict()
    if draw(st.booleans()):
        raw = bytearray(wire.pack(doc))
        media = wire.MEDIA_TYPE
    else:
        raw = bytearray(json.dumps(_to_json(doc)).encode())
        media = "application/json"
    how = draw(st.sampled_from(["bytes", "mutate", "mutate", "truncate", "splice"]))
    if how == "bytes":
        return cls, draw(st.binary(max_size=300)), media
    if how == "truncate":
        return cls, bytes(raw[: draw(st.integers(0, len(raw)))]), media
    if how == "splice":
        i = draw(st.integers(0, len(raw)))
        return cls, bytes(raw[:i] + draw(st.binary(max_size=16)) + raw[i:]), media
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(raw) - 1))
        op = draw(st.sampled_from(["set", "cut", "insert", "flip"]))
        if op == "set":
            raw[i] = draw(st.integers(0, 255))
        elif op == "flip":
            raw[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut" and len(raw) > 1:
            del raw[i]
        else:
            raw.insert(i, draw(st.integers(0, 255)))
    return cls, bytes(raw), media


def _server_decode(body: bytes, media: str, cls: type[Schema]) -> Schema:
    """What the write routes do with a body: decode by media type, then ``from_dict``."""
    if media == "application/json":
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise WireFormatError(str(exc)) from None
    else:
        data = wire.unpack(bytearray(body))
    if not isinstance(data, dict):
        raise SchemaError("the body must be a map")
    return cls.from_dict(data)


@pytest.mark.slow
@settings(
    max_examples=DECODER_CASES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    derandomize=not SOAK,
)
@given(_message())
@example(item=(MaskSchema, b"\xdd\xff\xff\xff\xff", wire.MEDIA_TYPE))
@example(item=(MaskSchema, b"[" * 100_000, "application/json"))
@example(item=(MaskSchema, b'{"mask": [[1e999]], "metadata": {}}', "application/json"))
def test_body_decoder_only_raises_table_errors(
    tally: Tally, item: tuple[type[Schema], bytes, str]
) -> None:
    cls, body, media = item
    tally.offline_cases["decoder"] += 1
    t0 = time.monotonic()
    try:
        _server_decode(body, media, cls)
    except Exception as exc:
        if not _table_error(exc):
            tally.unhandled.append(f"decode {media}: {type(exc).__name__}: {exc}")
            raise
    elapsed = time.monotonic() - t0
    if elapsed > HANG_SECONDS:
        tally.hangs.append(f"decode took {elapsed:.1f} s")
    assert elapsed <= HANG_SECONDS


# ---------------------------------------------------------------- the path resolver


@pytest.fixture(scope="module")
def resolver_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("resolver")
    root, outside = base / "root", base / "outside"
    (root / "sub" / "deeper").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.hdf5").write_bytes(b"secret")
    (root / "in.hdf5").write_bytes(b"in")
    (root / "sub" / "in.hdf5").write_bytes(b"in")
    (root / "out").symlink_to(outside / "secret.hdf5")
    (root / "outdir").symlink_to(outside, target_is_directory=True)
    (root / "updir").symlink_to("..", target_is_directory=True)
    (root / "sub" / "up").symlink_to("../..", target_is_directory=True)
    (root / "inlink").symlink_to("in.hdf5")
    (root / "loop").symlink_to("loop")
    (root / "dangling").symlink_to(outside / "missing.hdf5")
    return Path(os.path.realpath(root))


_TOKENS = st.sampled_from(
    [
        ".", "..", "/", "//", "\\", "\x00", "a", "sub", "deeper", "in.hdf5", "out", "outdir",
        "updir", "up", "inlink", "loop", "dangling", "secret.hdf5", "missing", "~", "%2e",
        "%2f", "\u2024", "\uff0e", "\u2215", "\uff0f", " ", "\udc80", "\u202e", "x" * 300,
    ]
)  # fmt: skip
_PATHS = st.one_of(
    st.text(max_size=40),
    st.lists(_TOKENS, min_size=1, max_size=10).map("".join),
    st.lists(st.one_of(_TOKENS, st.text(max_size=4)), min_size=1, max_size=8).map("/".join),
)


@pytest.mark.slow
@settings(
    max_examples=PATH_CASES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    derandomize=not SOAK,
)
@given(st.one_of(_PATHS, _PATHS.map(Path), st.sampled_from([None, 3, b"in.hdf5", ["in.hdf5"]])))
@example(user_path="updir/" + "x" * 10)
@example(user_path="sub/up/outside/secret.hdf5")
@example(user_path="a" * 4097)
def test_resolver_stays_inside_the_root(tally: Tally, resolver_root: Path, user_path: Any) -> None:
    tally.offline_cases["paths"] += 1
    root = resolver_root
    try:
        real, display = resolve_under_root(root, user_path)
    except (PermissionError, TypeError):
        return
    except Exception as exc:
        tally.unhandled.append(f"resolve_under_root({user_path!r}): {type(exc).__name__}: {exc}")
        raise
    resolved = Path(os.path.realpath(real))
    inside = resolved == root or root in resolved.parents
    if not inside or not real.is_absolute() or ".." in display.split("/"):
        tally.escapes.append(f"{user_path!r} -> {real} ({display!r})")
    assert inside, f"{user_path!r} resolved outside the root: {real}"
    assert Path(os.path.realpath(root / display)) == real


# Failing cases the fuzzers found, kept as plain regression tests: (method, path, query).
FOUND_BY_FUZZING = [
    # soak run 1: "0" is a regular file, so "0/0" goes through a file (ENOTDIR) -> was a 500
    ("GET", "/v1/partition", {"file_path": "0/0", "validate": "true"}),
    ("GET", "/v1/geometry", {"file_path": "0/0"}),
    ("POST", "/v1/mask", {"file_path": "0/0"}),
]


@pytest.mark.parametrize(("method", "path", "query"), FOUND_BY_FUZZING)
def test_fuzzing_regressions(
    fuzz_server: Server, method: str, path: str, query: dict[str, str]
) -> None:
    body = json.dumps(MASK_JSON).encode() if method == "POST" else None
    r = httpx.request(
        method,
        f"{fuzz_server.url}{path}",
        params=query,
        content=body,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 404, r.text
    assert json.loads(r.content)["error"] == "FileNotFoundError"
