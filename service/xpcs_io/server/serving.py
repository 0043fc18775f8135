"""Running the app under uvicorn."""

from __future__ import annotations

from types import FrameType
from typing import Any

import uvicorn

from xpcs_io.server.events import close_all_hubs

__all__ = ["Server", "run"]


class Server(uvicorn.Server):
    """uvicorn's server, ending open event streams as soon as it is asked to exit: a stream
    never ends by itself, so it would hold up the graceful shutdown until its timeout."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        close_all_hubs()
        super().handle_exit(sig, frame)


def run(app: Any, **options: Any) -> None:
    """Serve ``app`` (an ASGI app, or an import string with ``factory=True``) until asked to
    exit; ``options`` are uvicorn's."""
    Server(uvicorn.Config(app, **options)).run()
