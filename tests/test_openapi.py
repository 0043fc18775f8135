"""The committed OpenAPI document is the one the app generates, and it documents everything."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import export_openapi  # type: ignore[import-not-found]  # noqa: E402


def test_openapi_file_is_current() -> None:
    committed = (ROOT / "openapi" / "openapi.json").read_text()
    assert committed == export_openapi.render(), "run `make openapi` and commit the result"


def test_every_operation_is_documented() -> None:
    spec: dict[str, Any] = json.loads(export_openapi.render())
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            where = f"{method.upper()} {path}"
            assert op.get("summary"), where
            assert op.get("operationId"), where
            for param in op.get("parameters", []):
                assert param.get("description"), f"{where} {param['name']}"
            if path.startswith("/v1/"):
                codes = set(op["responses"])
                assert {"401", "403", "404", "422"} <= codes, where
                ok = next(c for c in codes if c.startswith("2"))
                streams = "text/event-stream" in op["responses"][ok].get("content", {})
                if ok != "204" and not streams:
                    assert "application/msgpack" in op["responses"][ok]["content"], where
                    assert "application/json" in op["responses"][ok]["content"], where
                assert "application/problem+json" in op["responses"]["404"]["content"], where
