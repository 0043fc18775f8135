"""A simulated network link: two network namespaces joined by a veth pair, rate-limited by a
``tc tbf`` queue on each end (both directions), made and removed by the bench.

Needs root and iproute2 (``ip``, ``tc``). Everything it makes carries the bench's PID in its
name; it uses only the two addresses of the pair it made (10.213.<n>.1 for the servers' side,
.2 for the clients' side), inside those namespaces, so nothing outside them is touched or
reachable. ``close`` deletes both namespaces, which removes the veth pair and its queues.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

__all__ = ["Link", "unavailable"]


def unavailable() -> str | None:
    """Why a link cannot be simulated here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and tc)"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"needs iproute2 ({', '.join(missing)} not found; apt-get install iproute2)"
    return None


def _run(*cmd: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")


@dataclass
class Link:
    """The two namespaces (``server_ns``, ``client_ns``) and their addresses."""

    server_ns: str
    client_ns: str
    server_ip: str
    client_ip: str

    @staticmethod
    def make() -> Link:
        """Create the namespaces and the veth pair between them (no rate limit yet).

        Raises:
            RuntimeError: a command failed (anything made so far is removed).
        """
        tag = os.getpid() % 100_000
        link = Link(f"xpcsb{tag}s", f"xpcsb{tag}c", f"10.213.{tag % 250}.1", "")
        link.client_ip = link.server_ip[:-1] + "2"
        try:
            _run("ip", "netns", "add", link.server_ns)
            _run("ip", "netns", "add", link.client_ns)
            _run(
                "ip", "link", "add", f"xb{tag}s", "netns", link.server_ns,
                "type", "veth", "peer", "name", f"xb{tag}c", "netns", link.client_ns,
            )  # fmt: skip
            for ns, dev, ip in (
                (link.server_ns, f"xb{tag}s", link.server_ip),
                (link.client_ns, f"xb{tag}c", link.client_ip),
            ):
                _run("ip", "-n", ns, "addr", "add", f"{ip}/30", "dev", dev)
                _run("ip", "-n", ns, "link", "set", dev, "up")
                _run("ip", "-n", ns, "link", "set", "lo", "up")
        except RuntimeError:
            link.close()
            raise
        return link

    def _devices(self) -> list[tuple[str, str]]:
        tag = self.server_ns[5:-1]
        return [(self.server_ns, f"xb{tag}s"), (self.client_ns, f"xb{tag}c")]

    def set_rate(self, mbit: int) -> None:
        """Limit both directions to ``mbit`` Mbit/s (token bucket of 4 ms, at least 128 kB,
        so segmentation offload packets always fit).

        Raises:
            RuntimeError: tc failed.
        """
        burst = max(mbit * 1_000_000 // 8 // 250, 128 * 1024)
        for ns, dev in self._devices():
            _run(
                "ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root",
                "tbf", "rate", f"{mbit}mbit", "burst", str(burst), "latency", "50ms",
            )  # fmt: skip

    def prefix(self, ns: str) -> list[str]:
        """The command prefix that runs a program inside namespace ``ns``."""
        return ["ip", "netns", "exec", ns]

    def close(self) -> None:
        """Delete both namespaces (and with them the veth pair); never raises."""
        for ns in (self.server_ns, self.client_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
