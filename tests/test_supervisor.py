"""``xpcs-io serve --workers N``'s supervisor: dead workers are restarted and logged, a crash
loop backs off, and /metrics counts every worker's requests whichever worker answers."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from xpcs_io.server.supervisor import BACKOFF_MAX, restart_delay

from .conftest import Server, start_server


def test_restart_delay_doubles_up_to_a_ceiling() -> None:
    assert restart_delay(0) == 0.0
    assert [restart_delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert restart_delay(50) == BACKOFF_MAX


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "root"
    root.mkdir()
    srv = start_server(root, tmp_path / "serve.log", args=("--workers", "2"))
    yield srv
    srv.stop()


def _workers_of(server: Server) -> set[int]:
    pid = server.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    found = set()
    for child in map(int, children):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in cmdline:  # not multiprocessing's resource tracker
            found.add(child)
    return found


def _wait_for_workers(server: Server, count: int, exclude: set[int]) -> set[int]:
    for _ in range(600):  # generous: spawning a worker imports the whole server
        pids = _workers_of(server) - exclude
        if len(pids) == count:
            return pids
        time.sleep(0.05)
    raise AssertionError(f"{count} new workers never appeared: {_workers_of(server)}")


def _restart_lines(server: Server) -> list[dict[str, object]]:
    lines = []
    for line in server.log.read_text().splitlines():
        if line.startswith("{") and "restarting it in" in line:
            lines.append(json.loads(line))
    return lines


@pytest.mark.slow
def test_a_dying_worker_is_restarted_with_a_growing_delay(workers: Server) -> None:
    killed: set[int] = set()
    alive = _wait_for_workers(workers, 2, killed)
    victim = min(alive)
    for _ in range(3):  # one worker slot dies young three times in a row
        os.kill(victim, signal.SIGKILL)
        killed.add(victim)
        now = _wait_for_workers(workers, 2, killed)
        (victim,) = now - alive  # its replacement, killed next
        alive = now
    lines = _restart_lines(workers)
    assert len(lines) == 3, lines
    assert {line["worker"] for line in lines} == {lines[0]["worker"]}
    assert all("status -9" in str(line["message"]) for line in lines)
    delays = [float(re.findall(r"in ([\d.]+) s", str(line["message"]))[0]) for line in lines]
    assert delays == [0.5, 1.0, 2.0]
    for _ in range(600):  # the replacement takes requests again
        try:
            if httpx.get(f"{workers.url}/health").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    else:
        raise AssertionError("the workers never answered again")


def test_metrics_count_every_workers_requests(workers: Server) -> None:
    _wait_for_workers(workers, 2, set())
    sent = 40
    for _ in range(sent):  # a new connection each: SO_REUSEPORT spreads them over both
        assert httpx.get(f"{workers.url}/v1/files").status_code == 200
    pattern = re.compile(
        r'xpcs_io_request_duration_seconds_count\{method="GET",route="/v1/files",status="200"\}'
        r" (\S+)"
    )
    # Scrapes land on either worker: each must come to show all the requests (the other
    # worker's counts arrive through a file it publishes every 0.2 s, and a request is
    # counted just after its answer was sent: poll, bounded), never more.
    for _ in range(6):
        for _ in range(200):
            text = httpx.get(f"{workers.url}/metrics").text
            counts = pattern.findall(text)
            assert len(counts) == 1, text[:2000]
            assert float(counts[0]) <= sent
            if float(counts[0]) == sent:
                break
            time.sleep(0.05)
        assert float(counts[0]) == sent
        assert "xpcs_io_pool_open_handles" in text
