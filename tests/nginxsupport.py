"""What the tests that run deploy/nginx.conf for real share: the configuration as shipped,
and ``running_nginx``, which starts nginx with a test's edit of it on a free loopback port
(one worker, its own prefix) and stops it, whatever happens."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


def need(tool: str) -> str:
    """The path of ``tool``; fails the test when it is missing (``.ci/run`` installs it)."""
    path = shutil.which(tool) or (
        f"/usr/sbin/{tool}" if Path(f"/usr/sbin/{tool}").exists() else None
    )
    if path is None:
        pytest.fail(f"{tool} is not installed (.ci/run installs it with apt-get)")
    return path


def shipped_conf() -> str:
    """deploy/nginx.conf as the project ships it."""
    return (ROOT / "deploy" / "nginx.conf").read_text()


class Nginx:
    """A running nginx: its base URL, process and error log."""

    def __init__(self, url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.url, self.proc, self.log = url, proc, log

    def check_alive(self) -> None:
        """Fail with nginx's error log when it has exited."""
        assert self.proc.poll() is None, self.log.read_text()


@contextlib.contextmanager
def running_nginx(tmp_path: Path, conf: str, *, wait_healthy: bool = True) -> Iterator[Nginx]:
    """nginx with ``conf`` (deploy/nginx.conf edited by the test), listening on a free
    port of 127.0.0.1 with one worker; with ``wait_healthy`` it is yielded once ``/health``
    answers 200 through it (at most 20 s). Stopped (SIGQUIT, then killed) on exit."""
    nginx = need("nginx")
    port = free_port()
    conf = conf.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    conf = conf.replace("worker_processes auto;", "worker_processes 1;")
    prefix = tmp_path / "nginx"
    (prefix / "logs").mkdir(parents=True)
    (prefix / "nginx.conf").write_text(conf)
    log = prefix / "logs/error.log"
    cmd = [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(log)]
    cmd += ["-g", f"daemon off; pid {prefix}/nginx.pid;"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    server = Nginx(f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + 20
        while wait_healthy:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                    break
            server.check_alive()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        yield server
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
