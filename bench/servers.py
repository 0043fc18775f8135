"""Start every server on 127.0.0.1 on a free port, wait until it answers, stop it by PID."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

TILED_API_KEY = "xpcsiobenchkey0123456789"  # tiled wants alphanumerics only
REPO = Path(__file__).resolve().parent.parent  # so ``-m bench.*`` resolves in children


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    """One server process we started; ``stop`` ends it (and only it and its children)."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    ready: Callable[[Server], bool]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.tail()}")
            with contextlib.suppress(httpx.TransportError, OSError):
                if self.ready(self):
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not become ready in {timeout:.0f} s: {self.tail()}")

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            children = []
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for child in children:  # started by our server: end them by PID if still there
            with contextlib.suppress(psutil.Error):
                if child.is_running():
                    child.kill()


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XPCS_IO_")}
    env.update(extra or {})
    return env


def spawn(
    name: str,
    cmd: list[str],
    port: int,
    logdir: Path,
    ready: Callable[[Server], bool],
    env: dict[str, str] | None = None,
) -> Server:
    log = logdir / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(env),
            cwd=REPO,
            start_new_session=True,  # Ctrl-C reaches the bench, which stops servers itself
        )
    return Server(name, proc, port, log, ready)


def _http_ok(path: str) -> Callable[[Server], bool]:
    def check(server: Server) -> bool:
        return httpx.get(server.url + path, timeout=2).status_code == 200

    return check


def _tcp_ok(server: Server) -> bool:
    with socket.create_connection(("127.0.0.1", server.port), timeout=1):
        return True


def ours_supports(setting: str) -> bool:
    """Whether ``xpcs-io serve`` has this setting (the service evolves; the bench adapts)."""
    from xpcs_io.server.settings import Settings

    return setting in Settings.model_fields


def start_ours(
    root: Path,
    logdir: Path,
    name: str = "xpcs-io",
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> Server:
    """``xpcs-io serve`` with its defaults, plus ``args`` flags and ``env`` settings."""
    port = free_port()
    cmd = [sys.executable, "-m", "xpcs_io.tools.cli", "serve", "--root", str(root)]
    cmd += ["--port", str(port), "--log-level", "warning", *args]
    tmp = logdir / f"{name}-tmp"  # e.g. the state folder of --workers
    tmp.mkdir(exist_ok=True)
    return spawn(name, cmd, port, logdir, _http_ok("/health"), {"TMPDIR": str(tmp), **(env or {})})


# The result cache of the service (when it has one) turns repeated reads of an unchanged file
# into memory copies; a second instance with it off measures the read path itself.
NO_CACHE_ENV = {"XPCS_IO_CACHE_BYTES": "0"}


def start_h5grove(root: Path, logdir: Path) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "bench.h5grove_app", "--root", str(root), "--port", str(port)]
    return spawn("h5grove", cmd, port, logdir, _http_ok("/"))


def tiled_command() -> list[str] | None:
    """How to run ``tiled`` from this interpreter's environment, if it is installed."""
    script = Path(sys.executable).parent / "tiled"
    if script.exists():
        return [str(script)]
    found = shutil.which("tiled")
    return [found] if found else None


def start_tiled(directory: Path, logdir: Path, probe: str) -> Server:
    """``tiled serve directory`` (public reads; the API key is fixed so clients can use it).
    Ready once ``probe`` (an array path) is indexed."""
    base = tiled_command()
    if base is None:
        raise RuntimeError("tiled is not installed in this environment")
    port = free_port()
    tmp = logdir / "tiled-tmp"  # its temporary catalog goes here and is removed with it
    tmp.mkdir(exist_ok=True)
    cmd = [*base, "serve", "directory", str(directory), "--public", "--api-key", TILED_API_KEY]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    return spawn(
        "tiled", cmd, port, logdir, _http_ok(f"/api/v1/metadata/{probe}"), {"TMPDIR": str(tmp)}
    )


def start_socket(size: int, logdir: Path) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "bench.sockserver", "--port", str(port), "--size", str(size)]
    return spawn("socket", cmd, port, logdir, _tcp_ok)
