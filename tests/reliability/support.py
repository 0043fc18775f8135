"""What the reliability suites share: the bounded/soak switch, the figure each suite writes,
servers that are always stopped, and small probes of a server process (/proc, /metrics)."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import numpy.typing as npt

from xpcs_io import wire
from xpcs_io.schemas import GeometryMetadata, MaskSchema

from ..conftest import Server, start_server

__all__ = [
    "MODE",
    "OUT",
    "SOAK",
    "Figure",
    "fd_count",
    "geometry",
    "log_errors",
    "mask_body",
    "percentile",
    "port_of",
    "rss_bytes",
    "scale",
    "server_5xx",
    "serving",
    "sha256_of",
    "stop",
]

SOAK = os.environ.get("XPCS_IO_SOAK", "") == "1"
MODE = "soak" if SOAK else "bounded"
OUT = Path(__file__).resolve().parent / "out"

T = TypeVar("T")


def scale(bounded: T, soak: T) -> T:
    """``soak`` under ``XPCS_IO_SOAK=1``, else ``bounded``."""
    return soak if SOAK else bounded


@dataclass
class Figure:
    """The measured figure of one test: values, targets (each met or not) and notes.

    ``check()`` writes it to ``out/<mode>/<suite>-<name>.json`` and then asserts every
    target, so the figure exists even when the test fails (or is an expected failure).
    """

    suite: str
    name: str
    title: str
    values: dict[str, Any] = field(default_factory=dict)
    targets: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    bug: str | None = None  # set by tests marked xfail: the known bug this figure shows
    started: float = field(default_factory=time.monotonic)

    def __setitem__(self, key: str, value: Any) -> None:
        self.values[key] = value

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def add(self, key: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``key``."""
        self.values[key] = self.values.get(key, 0) + n

    def target(self, label: str, value: Any, want: str, ok: bool) -> bool:
        """Record a target: ``label`` measured ``value``, wanted ``want``, met when ``ok``."""
        self.targets.append({"label": label, "value": value, "want": want, "ok": bool(ok)})
        return ok

    @property
    def ok(self) -> bool:
        return all(t["ok"] for t in self.targets)

    def write(self) -> Path:
        folder = OUT / MODE
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.suite}-{self.name}.json"
        doc = {
            "suite": self.suite,
            "name": self.name,
            "title": self.title,
            "mode": MODE,
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "duration_s": round(time.monotonic() - self.started, 2),
            "values": self.values,
            "targets": self.targets,
            "notes": self.notes,
            "bug": self.bug,
            "ok": self.ok,
        }
        path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        return path

    def check(self) -> None:
        """Write the figure, then fail on every missed target."""
        self.write()
        missed = [t for t in self.targets if not t["ok"]]
        assert not missed, "missed targets: " + "; ".join(
            f"{t['label']} = {t['value']!r} (want {t['want']})" for t in missed
        )


# ---------------------------------------------------------------- servers


def stop(srv: Server) -> None:
    """SIGTERM (then SIGKILL after 20 s) unless the process is already gone."""
    if srv.process.poll() is None:
        srv.stop()
    else:
        srv.process.wait()


@contextlib.contextmanager
def serving(
    root: Path, log: Path, *, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
) -> Iterator[Server]:
    """A real ``xpcs-io serve`` on 127.0.0.1 for the block, stopped whatever happens."""
    srv = start_server(root, log, env=env, args=args)
    try:
        yield srv
    finally:
        stop(srv)


def port_of(srv: Server) -> int:
    return int(srv.url.rsplit(":", 1)[1])


def fd_count(pid: int) -> int:
    """Open file descriptors of process ``pid``."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


_COUNT = re.compile(r"^xpcs_io_request_duration_seconds_count\{([^}]*)\} ([0-9.e+]+)$")


def server_5xx(url: str) -> int:
    """Requests the server itself answered with a 5xx status (from its /metrics)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    total = 0.0
    for line in text.splitlines():
        m = _COUNT.match(line)
        if m and re.search(r'status="5\d\d"', m.group(1)):
            total += float(m.group(2))
    return int(total)


def log_errors(log: Path) -> list[str]:
    """The ERROR (and worse) lines of a server's JSON log."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if '"level": "ERROR"' in line or '"level": "CRITICAL"' in line:
            out.append(line[:400])
    return out


# ---------------------------------------------------------------- data


def geometry(shape: tuple[int, int]) -> GeometryMetadata:
    return GeometryMetadata(
        bcx=shape[1] / 2, bcy=shape[0] / 2, det_dist=5000.0, lambda_=1.5, pix_dim=0.075, shape=shape
    )


def mask_body(mask: npt.NDArray[np.uint8], description: str | None = None) -> bytes:
    """The msgpack body of a mask write, exactly as the client sends it."""
    schema = MaskSchema(mask=mask, metadata=geometry(mask.shape), description=description)
    return wire.pack(schema.to_dict())


def sha256_of(arr: npt.NDArray[Any]) -> str:
    """sha256 of an array's C-order bytes (what the service records per version)."""
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]
