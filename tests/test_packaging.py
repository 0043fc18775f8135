"""Package shape: a light client side, one namespace package over two source roots, complete
and sorted ``__all__`` lists, and an error table that maps every exception both ways."""

from __future__ import annotations

import importlib
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import xpcs_io
from xpcs_io import errors
from xpcs_io.errors import (
    ERROR_TABLE,
    RemoteConnectionError,
    SchemaError,
    ServerError,
    exception_from_problem,
    status_for,
)

REPO = Path(__file__).resolve().parent.parent
ROOTS = [REPO / "client" / "xpcs_io", REPO / "service" / "xpcs_io"]
SERVER_ONLY = ("h5py", "hdf5plugin", "fastapi", "starlette", "uvicorn")


def _modules() -> list[str]:
    names = set()
    for root in ROOTS:
        for path in root.rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__main__":
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.add(".".join(("xpcs_io", *parts)))
    return sorted(names)


MODULES = _modules()


def _isort_key(name: str) -> tuple[int, list[int | str]]:
    """The order ruff's RUF022 keeps ``__all__`` in (the project's lint rule): CONSTANTS,
    then Classes, then everything else, each in natural order (``v2`` before ``v10``)."""
    if len(name) > 1 and name.upper() == name and name.lower() != name:
        kind = 0
    elif name[:1].isupper():
        kind = 1
    else:
        kind = 2
    return kind, [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def test_isort_key_matches_ruff() -> None:
    names = ["b", "Beta", "ALPHA", "x10", "x2", "A", "CONST_2", "_private", "Alpha"]
    assert sorted(names, key=_isort_key) == [
        "ALPHA", "CONST_2", "A", "Alpha", "Beta", "_private", "b", "x2", "x10"
    ]  # fmt: skip


def _fresh_import(*modules: str) -> dict[str, object]:
    """Import ``modules`` in a new interpreter; report what ended up in ``sys.modules``."""
    code = (
        "import importlib, importlib.util, json, sys\n"
        f"mods = {list(modules)!r}\n"
        "present = [m for m in mods if importlib.util.find_spec(m) is not None]\n"
        "for m in present:\n"
        "    importlib.import_module(m)\n"
        "import xpcs_io\n"
        "print(json.dumps({'present': present, 'loaded': sorted(sys.modules),\n"
        "                  'path': list(xpcs_io.__path__),\n"
        "                  'file': getattr(xpcs_io, '__file__', None)}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def _top_level(loaded: object) -> set[str]:
    assert isinstance(loaded, list)
    return {str(name).split(".")[0] for name in loaded}


# ---------------------------------------------------------------- what the client side loads


def test_client_side_modules_load_no_server_packages() -> None:
    wanted = ("xpcs_io.schemas", "xpcs_io.errors", "xpcs_io.api", "xpcs_io.wire")
    result = _fresh_import(*wanted)
    present = result["present"]
    assert isinstance(present, list)
    assert {"xpcs_io.schemas", "xpcs_io.errors", "xpcs_io.api"} <= set(present)
    loaded = _top_level(result["loaded"])
    assert "xpcs_io" in loaded
    assert loaded.isdisjoint(SERVER_ONLY), sorted(loaded & set(SERVER_ONLY))


def test_http_client_package_loads_no_server_packages() -> None:
    result = _fresh_import("xpcs_io.client")
    if not result["present"]:
        pytest.skip("xpcs_io.client does not exist yet")
    loaded = _top_level(result["loaded"])
    assert loaded.isdisjoint(SERVER_ONLY), sorted(loaded & set(SERVER_ONLY))


def test_errors_module_needs_only_the_standard_library() -> None:
    loaded = _top_level(_fresh_import("xpcs_io.errors")["loaded"])
    assert "numpy" not in loaded
    assert "msgpack" not in loaded
    assert loaded.isdisjoint(SERVER_ONLY)


def test_server_side_does_load_h5py() -> None:
    # The check above would pass vacuously if the probe could never see h5py.
    assert "h5py" in _top_level(_fresh_import("xpcs_io.pool")["loaded"])


# ---------------------------------------------------------------- the HDF5 core's layer

# Modules kept at their old paths for scripts; each only re-exports from ``xpcs_io.tools``.
COMPAT_SHIMS = ("xpcs_io.cli", "xpcs_io.demo", "xpcs_io.demo_aps8idi")
OUTER_LAYERS = ("xpcs_io.server", "xpcs_io.tools")


def _core_modules() -> list[str]:
    """Every service-side module below ``xpcs_io`` outside the server and the tools."""
    names = []
    for path in ROOTS[1].rglob("*.py"):
        parts = path.relative_to(ROOTS[1]).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        name = ".".join(("xpcs_io", *parts))
        if name in COMPAT_SHIMS or name.startswith(OUTER_LAYERS):
            continue
        names.append(name)
    return sorted(names)


def test_core_modules_import_no_web_or_tools_code() -> None:
    core = _core_modules()
    assert {"xpcs_io.pool", "xpcs_io.facade", "xpcs_io.layouts.registry"} <= set(core)
    loaded = _fresh_import(*core)["loaded"]
    assert isinstance(loaded, list)
    assert set(core) <= set(loaded)
    outer = sorted(
        m
        for m in loaded
        if str(m).split(".")[0] in ("fastapi", "starlette", "uvicorn")
        or str(m).startswith(OUTER_LAYERS)
    )
    assert outer == []


def test_compat_shims_reexport_the_tools() -> None:
    from xpcs_io import cli, demo, demo_aps8idi
    from xpcs_io.tools import cli as tools_cli
    from xpcs_io.tools import demo as tools_demo
    from xpcs_io.tools import demo_aps8idi as tools_aps8idi

    assert demo.write_native_file is tools_demo.write_native_file
    assert demo.DemoSpec is tools_demo.DemoSpec
    assert demo_aps8idi.write_aps8idi_file is tools_aps8idi.write_aps8idi_file
    assert cli.main is tools_cli.main


# ---------------------------------------------------------------- one namespace package


def test_xpcs_io_is_a_namespace_package_over_both_roots() -> None:
    for root in ROOTS:
        assert root.is_dir(), root
        assert not (root / "__init__.py").exists(), f"{root} must not have __init__.py"
    result = _fresh_import("xpcs_io.errors", "xpcs_io.pool")
    assert result["file"] is None
    paths = result["path"]
    assert isinstance(paths, list)
    assert {str(Path(p).resolve()) for p in paths} >= {str(r) for r in ROOTS}
    assert {Path(p).resolve() for p in xpcs_io.__path__} >= set(ROOTS)


def test_client_and_service_roots_do_not_shadow_each_other() -> None:
    client = {p.relative_to(ROOTS[0]) for p in ROOTS[0].rglob("*.py")}
    service = {p.relative_to(ROOTS[1]) for p in ROOTS[1].rglob("*.py")}
    assert client.isdisjoint(service), sorted(map(str, client & service))


# ---------------------------------------------------------------- __all__


def test_module_discovery_finds_the_core() -> None:
    for name in ("xpcs_io.errors", "xpcs_io.schemas", "xpcs_io.pool", "xpcs_io.facade"):
        assert name in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_all_is_sorted_and_every_name_exists(name: str) -> None:
    module = importlib.import_module(name)
    if not hasattr(module, "__all__"):
        public = [
            n
            for n, v in vars(module).items()
            if not n.startswith("_") and not inspect.ismodule(v) and n != "annotations"
        ]
        assert public == [], f"{name} has public names but no __all__: {public}"
        return
    exported = list(module.__all__)
    assert exported == sorted(exported, key=_isort_key), f"{name}.__all__ is not sorted"
    assert len(exported) == len(set(exported)), f"{name}.__all__ has duplicates"
    missing = [n for n in exported if not hasattr(module, n)]
    assert missing == [], f"{name}.__all__ names missing attributes: {missing}"


# ---------------------------------------------------------------- the error table

EXPORTED_CLASSES = sorted(
    (
        obj
        for name in errors.__all__
        if inspect.isclass(obj := getattr(errors, name)) and issubclass(obj, BaseException)
    ),
    key=lambda c: c.__name__,
)
TABLE = dict(ERROR_TABLE)


def test_exported_classes_found() -> None:
    names = {c.__name__ for c in EXPORTED_CLASSES}
    assert {"HDF5ValidationError", "SchemaError", "SchemaTypeError", "ServerError"} <= names
    assert "ERROR_TABLE" in errors.__all__


@pytest.mark.parametrize("cls", EXPORTED_CLASSES, ids=lambda c: c.__name__)
def test_every_exported_exception_has_a_status(cls: type[BaseException]) -> None:
    if cls in errors.CLIENT_ONLY:
        # Raised by the client itself; a server never sends it, so it must not have a status.
        assert cls not in TABLE
        return
    assert cls in TABLE, f"{cls.__name__} has no entry in ERROR_TABLE"


def test_every_exported_exception_is_drawn_in_the_docstring() -> None:
    doc = errors.__doc__ or ""
    for cls in EXPORTED_CLASSES:
        assert cls.__name__ in doc, cls.__name__


def _instance(cls: type[BaseException]) -> BaseException:
    return cls("boom")


@pytest.mark.parametrize(("cls", "status"), ERROR_TABLE, ids=lambda v: getattr(v, "__name__", v))
def test_status_for_each_table_entry(cls: type[BaseException], status: int) -> None:
    # No earlier, broader entry shadows a later, more specific one.
    assert status_for(_instance(cls)) == status
    assert 400 <= status <= 599


@pytest.mark.parametrize(("cls", "status"), ERROR_TABLE, ids=lambda v: getattr(v, "__name__", v))
def test_problem_round_trip_rebuilds_the_same_class(cls: type[BaseException], status: int) -> None:
    rebuilt = exception_from_problem(cls.__name__, "x went wrong", status=status)
    assert type(rebuilt) is cls
    text = str(rebuilt)
    assert "x went wrong" in text
    assert status_for(rebuilt) == status


def test_round_trip_keeps_field_and_status() -> None:
    for cls in (errors.HDF5ValidationError, SchemaError, errors.SchemaTypeError):
        rebuilt = exception_from_problem(cls.__name__, "bad", status=422, field="sqmap")
        assert type(rebuilt) is cls
        assert getattr(rebuilt, "field", None) == "sqmap"
    server = exception_from_problem("ServerError", "down", status=502)
    assert isinstance(server, ServerError)
    assert server.status == 502


def test_subclasses_keep_their_standard_parents() -> None:
    assert issubclass(errors.WriteLockTimeout, TimeoutError)
    assert issubclass(errors.WireFormatError, ValueError)
    assert issubclass(errors.PayloadTooLargeError, ValueError)
    assert issubclass(RemoteConnectionError, ConnectionError)
    assert not issubclass(errors.HDF5ValidationError, ValueError | TypeError | OSError)
    assert not issubclass(ServerError, ValueError | TypeError | OSError)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (404, KeyError),
        (403, PermissionError),
        (401, PermissionError),
        (413, errors.PayloadTooLargeError),
        (400, ValueError),
        (409, ValueError),
        (422, ValueError),
        (500, ServerError),
        (502, ServerError),
        (503, ServerError),
    ],
)
@pytest.mark.parametrize("name", ["NoSuchError", None, "SystemExit", "OSError", "Exception"])
def test_unknown_names_fall_back_on_status(
    status: int, expected: type[BaseException], name: str | None
) -> None:
    rebuilt = exception_from_problem(name, "detail", status=status)
    assert type(rebuilt) is expected
    if isinstance(rebuilt, ServerError):
        assert rebuilt.status == status


def test_status_for_non_client_errors_is_none() -> None:
    assert status_for(RuntimeError("x")) is None
    assert status_for(RemoteConnectionError("x")) is None
    assert status_for(KeyboardInterrupt()) is None
