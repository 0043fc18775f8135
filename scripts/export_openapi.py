"""Write ``openapi/openapi.json`` from the application (``make openapi``).

A test regenerates the document and fails when the committed file differs, so the published
API description cannot drift from the code.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from xpcs_io.server import create_app
from xpcs_io.server.settings import Settings

OUT = Path(__file__).resolve().parent.parent / "openapi" / "openapi.json"


def build() -> dict[str, Any]:
    """The OpenAPI document of an app with default settings (the data root does not matter)."""
    with tempfile.TemporaryDirectory() as root:
        spec: dict[str, Any] = create_app(Settings(data_root=Path(root))).openapi()
    return spec


def render() -> str:
    """The document as committed: sorted keys, two-space indent, trailing newline."""
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    """Write the file; print where."""
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(render())
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
