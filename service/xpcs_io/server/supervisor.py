"""``xpcs-io serve --workers N``: N server processes sharing one port through SO_REUSEPORT.

Each worker listens on its own socket bound to the same address, so the kernel spreads new
connections over the workers (uvicorn's own multi-worker mode shares one listening socket,
where whichever process wakes first takes the connection and a burst of viewers can all land
on one worker). The parent only reserves the port, starts the workers, restarts one that dies
and passes SIGTERM / SIGINT on for a graceful shutdown.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import tempfile
import time
from typing import Any

from xpcs_io.settings import Settings

__all__ = ["serve_workers"]


def _socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _worker(host: str, port: int, options: dict[str, Any]) -> None:
    import uvicorn

    from xpcs_io.server.protocol import set_header_timeout
    from xpcs_io.server.serving import Server

    options = dict(options)
    set_header_timeout(options.pop("header_timeout"))
    sock = _socket(host, port)
    sock.listen(2048)
    config = uvicorn.Config("xpcs_io.server.app:create_app", factory=True, **options)
    Server(config).run(sockets=[sock])


def serve_workers(settings: Settings, options: dict[str, Any]) -> int:
    """Run ``settings.workers`` server processes on ``settings.host:port`` until SIGTERM or
    SIGINT; ``options`` are uvicorn settings. Returns the exit status."""
    reserve = _socket(settings.host, settings.port)  # learns the port when 0 was asked for
    port = reserve.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    with tempfile.TemporaryDirectory(prefix="xpcs-io-workers-") as state_dir:
        # Workers build their app from the environment: the settings, flags included, and
        # the folder where they share the pool's state.
        for name, value in settings.model_dump(exclude={"api_keys"}).items():
            if value is not None:
                os.environ[f"XPCS_IO_{name.upper()}"] = str(value)
        os.environ["XPCS_IO_PORT"] = str(port)
        os.environ["XPCS_IO_STATE_DIR"] = state_dir
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        procs = [
            ctx.Process(target=_worker, args=(settings.host, port, options), daemon=False)
            for _ in range(settings.workers)
        ]
        for proc in procs:
            proc.start()
        while not stopping:
            time.sleep(0.2)
            for i, proc in enumerate(procs):
                if not proc.is_alive() and not stopping:
                    procs[i] = ctx.Process(target=_worker, args=(settings.host, port, options))
                    procs[i].start()
        for proc in procs:
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + float(options.get("timeout_graceful_shutdown", 30)) + 5
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
    reserve.close()
    return 0
