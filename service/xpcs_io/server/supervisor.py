"""``xpcs-io serve --workers N``: N server processes sharing one port through SO_REUSEPORT.

Each worker listens on its own socket bound to the same address, so the kernel spreads new
connections over the workers (uvicorn's own multi-worker mode shares one listening socket,
where whichever process wakes first takes the connection and a burst of viewers can all land
on one worker). Measured (bench/connection_spread.py, BENCHMARKS.md): bursts of 200 keep-alive
connections to 2 asyncio workers put 64-82% on the busiest one through a shared socket, 52%
through SO_REUSEPORT sockets; uvicorn's and gunicorn's supervisors both hand every worker the
parent's one socket, hence this module.

The parent only reserves the port, starts the workers, restarts one that dies (logged; a worker
that keeps dying soon after start is restarted after a doubling delay, up to
``BACKOFF_MAX`` seconds, so a crash loop does not spin) and passes SIGTERM / SIGINT on for a
graceful shutdown. Workers record their request metrics in ``<state dir>/metrics``
(prometheus-client's multiprocess mode), so ``/metrics`` on any worker counts them all.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from xpcs_io.server.settings import Settings

__all__ = ["BACKOFF_MAX", "BACKOFF_START", "STABLE_AFTER", "restart_delay", "serve_workers"]

BACKOFF_START = 0.5  # seconds before restarting a worker that died young the first time
BACKOFF_MAX = 30.0
STABLE_AFTER = 30.0  # a worker that served this long before dying was not crash-looping
log = logging.getLogger("xpcs_io.server")


def restart_delay(failures: int) -> float:
    """Seconds to wait before restarting a worker after ``failures`` early deaths in a row
    (0 after a worker that had run stably)."""
    if failures <= 0:
        return 0.0
    return min(BACKOFF_MAX, BACKOFF_START * 2.0 ** (failures - 1))


@dataclass
class _Slot:
    """One worker position: its current process and its recent crash history."""

    number: int
    process: BaseProcess
    started: float
    failures: int = 0
    due: float | None = None  # when a dead worker's replacement starts


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
    sock.listen(int(options.get("backlog", 2048)))
    config = uvicorn.Config("xpcs_io.server.app:create_app", factory=True, **options)
    Server(config).run(sockets=[sock])


def _tend(slot: _Slot, spawn: Any) -> None:
    """Restart ``slot``'s worker if it died, after its back-off delay; log both."""
    now = time.monotonic()
    proc = slot.process
    if proc.is_alive():
        return
    if slot.due is None:
        proc.join()
        ran = now - slot.started
        slot.failures = 0 if ran >= STABLE_AFTER else slot.failures + 1
        delay = restart_delay(slot.failures)
        slot.due = now + delay
        log.warning(
            "worker %d (pid %s) exited with status %s after %.1f s; restarting it in %.1f s",
            slot.number,
            proc.pid,
            proc.exitcode,
            ran,
            delay,
            extra={"worker": slot.number, "exitcode": proc.exitcode, "restart_in": delay},
        )
    if now >= slot.due:
        slot.process = spawn()
        slot.started = time.monotonic()
        slot.due = None
        log.info("worker %d restarted as pid %s", slot.number, slot.process.pid)


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
        # the folder where they share the pool's state and their metrics.
        for name, value in settings.model_dump(exclude={"api_keys"}).items():
            if value is not None:
                os.environ[f"XPCS_IO_{name.upper()}"] = str(value)
        os.environ["XPCS_IO_PORT"] = str(port)
        os.environ["XPCS_IO_STATE_DIR"] = state_dir
        metrics_dir = Path(state_dir) / "metrics"
        metrics_dir.mkdir()
        # Read by prometheus-client when a worker imports it: counters go to shared files.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

        def spawn() -> BaseProcess:
            proc = ctx.Process(target=_worker, args=(settings.host, port, options))
            proc.start()
            return proc

        slots = [_Slot(i, spawn(), time.monotonic()) for i in range(settings.workers)]
        log.info("started %d workers on port %d", len(slots), port)
        while not stopping:
            time.sleep(0.2)
            for slot in slots:
                if stopping:
                    break
                _tend(slot, spawn)
        for slot in slots:
            pid = slot.process.pid
            if pid is not None and slot.process.is_alive():
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + float(options.get("timeout_graceful_shutdown", 30)) + 5
        for slot in slots:
            slot.process.join(max(0.0, deadline - time.monotonic()))
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join()
    reserve.close()
    return 0
