"""Where the API documentation pages' assets come from: Swagger UI 5 (which reads the
OpenAPI 3.1 document the app emits) and ReDoc, both packaged by ``fastapi-offline`` and served
by the app itself, so ``/docs`` and ``/redoc`` work without any CDN."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline

__all__ = ["DOCS_ASSETS"]

DOCS_ASSETS = Path(fastapi_offline.__file__).with_name("static")
