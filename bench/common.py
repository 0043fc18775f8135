"""Shared pieces: run configuration, results, interleaved timing and RSS sampling."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psutil

MB = 1_000_000


@dataclass(frozen=True)
class Config:
    """How big and how long: ``quick`` is a smoke test, ``full`` the real run."""

    mode: str
    shape: tuple[int, int]
    n_delay: int
    n_q: int
    repeats: int  # w1, w2 (large reads)
    small_repeats: int  # w3 (small reads)
    load_seconds: float  # w4 duration of one load window
    load_rounds: int  # w4, w6 interleaved rounds
    clients: int  # w4 concurrency
    cache_trials: int  # w5 fresh-file trials
    cache_repeats: int  # w5 repeated reads per trial
    readers: int  # w6 concurrency
    reads_per_reader: int  # w6
    rss_reads: int  # w6 geometry + small q-map pairs for the RSS growth check
    viewers: int  # w7 concurrency
    gz_single_reads: int  # w7 reads of the single reader per round
    gz_reads_per_viewer: int  # w7
    gz_rounds: int  # w7 interleaved rounds (after one untimed round of each)
    write_repeats: int  # w8
    write_sizes: tuple[int, ...]  # w8 target file sizes in bytes

    @staticmethod
    def quick() -> Config:
        return Config(
            mode="quick",
            shape=(512, 1024),
            n_delay=74,
            n_q=360,
            repeats=5,
            small_repeats=10,
            load_seconds=1.5,
            load_rounds=2,
            clients=8,
            cache_trials=2,
            cache_repeats=10,
            readers=16,
            reads_per_reader=1,
            rss_reads=200,
            viewers=8,
            gz_single_reads=4,
            gz_reads_per_viewer=1,
            gz_rounds=2,
            write_repeats=2,
            write_sizes=(100 * MB,),
        )

    @staticmethod
    def full() -> Config:
        return Config(
            mode="full",
            shape=(2162, 2068),
            n_delay=74,
            n_q=360,
            repeats=20,
            small_repeats=60,
            load_seconds=5.0,
            load_rounds=4,
            clients=8,
            cache_trials=5,
            cache_repeats=12,
            readers=16,
            reads_per_reader=1,
            rss_reads=1000,
            viewers=8,
            gz_single_reads=4,
            gz_reads_per_viewer=1,
            gz_rounds=8,
            write_repeats=5,
            write_sizes=(100 * MB, 1000 * MB),
        )


@dataclass
class Row:
    """One system's measurements in a workload; ``samples`` are seconds unless ``unit`` says
    otherwise (``req/s`` and ``MB/s`` are higher-is-better)."""

    key: str
    system: str
    what: str
    samples: list[float]
    unit: str = "s"
    payload: int | None = None  # bytes delivered by one operation
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def min(self) -> float:
        return min(self.samples) if self.samples else float("nan")

    @property
    def max(self) -> float:
        return max(self.samples) if self.samples else float("nan")

    @property
    def mb_per_s(self) -> float | None:
        """Median throughput for timed reads with a known payload."""
        if self.unit != "s" or not self.payload or not self.samples:
            return None
        return self.payload / MB / self.median

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "system": self.system,
            "what": self.what,
            "unit": self.unit,
            "payload_bytes": self.payload,
            "median": self.median,
            "min": self.min,
            "max": self.max,
            "mb_per_s_median": self.mb_per_s,
            "n": len(self.samples),
            "samples": self.samples,
            "note": self.note,
            "extra": self.extra,
        }


@dataclass
class Result:
    """A workload's rows, the method notes printed with its table, and any errors."""

    name: str
    title: str
    method: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def row(self, key: str) -> Row | None:
        for r in self.rows:
            if r.key == key:
                return r
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "method": self.method,
            "rows": [r.to_json() for r in self.rows],
            "notes": self.notes,
            "errors": self.errors,
            "seconds": self.seconds,
        }


Case = tuple[str, Callable[[], int]]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its children so far (0 when gone)."""
    try:
        proc = psutil.Process(pid)
        t = proc.cpu_times()
        total = t.user + t.system
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                ct = child.cpu_times()
                total += ct.user + ct.system
        return float(total)
    except psutil.Error:
        return 0.0


def cpu_note(client_s: float | None, server_s: float | None) -> str:
    """'CPU/op client X ms, server Y ms' (means) for a table's note column."""
    parts = []
    if client_s is not None:
        parts.append(f"client {fmt_seconds(client_s)}")
    if server_s is not None:
        parts.append(f"server {fmt_seconds(server_s)}")
    return "CPU/op " + ", ".join(parts) if parts else ""


@dataclass
class Timing:
    """What ``interleave`` measured: wall seconds, payload bytes, and the CPU seconds the bench
    process (client) and the case's server spent per call."""

    times: dict[str, list[float]]
    payload: dict[str, int]
    client_cpu: dict[str, list[float]]
    server_cpu: dict[str, list[float]]

    def row(self, key: str, system: str, what: str) -> Row:
        row = Row(key, system, what, self.times[key], payload=self.payload.get(key))
        # Means, not medians: process CPU times tick in 10 ms steps, so single calls are
        # quantised while the mean over all calls is not biased.
        client = statistics.fmean(self.client_cpu[key]) if self.client_cpu[key] else None
        server = statistics.fmean(self.server_cpu[key]) if self.server_cpu[key] else None
        row.extra["client_cpu_s"] = client
        row.extra["server_cpu_s"] = server
        row.note = cpu_note(client, server)
        return row


def interleave(
    cases: Sequence[Case],
    repeats: int,
    warmup: int = 1,
    servers: Mapping[str, int] | None = None,
) -> Timing:
    """Time each case ``repeats`` times, interleaved: round r runs the cases starting at
    offset r (A B C, B C A, ...), so no case always follows the same neighbour.

    Each case returns the number of payload bytes it received (recorded from the warm-up,
    or the first timed run when ``warmup`` is 0). ``servers`` maps a case to the PID of the
    server it talks to, whose CPU time per call is recorded too (read outside the timed
    window, so it does not add to the wall time).
    """
    servers = servers or {}
    payload: dict[str, int] = {}
    for _ in range(warmup):
        for name, fn in cases:
            payload[name] = fn()
    names = [name for name, _ in cases]
    timing = Timing({n: [] for n in names}, payload, {n: [] for n in names}, {n: [] for n in names})
    n = len(cases)
    for r in range(repeats):
        for i in range(n):
            name, fn = cases[(r + i) % n]
            pid = servers.get(name)
            s0 = cpu_seconds(pid) if pid else 0.0
            c0 = time.process_time()
            t0 = time.perf_counter()
            got = fn()
            t1 = time.perf_counter()
            c1 = time.process_time()
            if pid:
                timing.server_cpu[name].append(cpu_seconds(pid) - s0)
            timing.times[name].append(t1 - t0)
            timing.client_cpu[name].append(c1 - c0)
            payload.setdefault(name, got)
    return timing


def nbytes(obj: Any) -> int:
    """Bytes of the arrays in a schema object (or an array, or bytes)."""
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, bytes | bytearray | memoryview):
        return len(obj)
    total = 0
    for value in vars(obj).values():
        if isinstance(value, np.ndarray):
            total += int(value.nbytes)
    return total


def process_rss(pid: int) -> int:
    """RSS of a process and its children, in bytes (0 when it is gone)."""
    try:
        proc = psutil.Process(pid)
        total = int(proc.memory_info().rss)
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += int(child.memory_info().rss)
        return total
    except psutil.Error:
        return 0


def idle_rss(pid: int, samples: int = 5, every: float = 0.02) -> int:
    """Median RSS over a short quiet moment."""
    values = []
    for _ in range(samples):
        values.append(process_rss(pid))
        time.sleep(every)
    return int(statistics.median(values))


class RssSampler:
    """Samples a process's RSS every ``every`` seconds in a thread; ``peak`` after ``stop``."""

    def __init__(self, pid: int, every: float = 0.02) -> None:
        self.pid = pid
        self.every = every
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, process_rss(self.pid))
            self.samples += 1
            self._stop.wait(self.every)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, process_rss(self.pid))


async def run_for(
    fn: Callable[[], Awaitable[int]], concurrency: int, seconds: float
) -> tuple[int, int, float]:
    """``concurrency`` tasks call ``fn`` until ``seconds`` have passed.

    Returns (completed calls, bytes received, wall seconds).
    """
    deadline = time.perf_counter() + seconds
    done = 0
    received = 0

    async def worker() -> None:
        nonlocal done, received
        while time.perf_counter() < deadline:
            got = await fn()  # not `received += await fn()`: that reads `received` first
            received += got
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, received, time.perf_counter() - t0


async def run_count(
    fn: Callable[[int], Awaitable[int]], concurrency: int, per_task: int
) -> tuple[int, float]:
    """``concurrency`` tasks each call ``fn(task_index)`` ``per_task`` times.

    Returns (bytes received, wall seconds).
    """
    received = 0

    async def worker(i: int) -> None:
        nonlocal received
        for _ in range(per_task):
            got = await fn(i)
            received += got

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return received, time.perf_counter() - t0


def fmt_seconds(value: float) -> str:
    """Seconds as ms or s with three significant digits."""
    if value != value:  # NaN
        return "n/a"
    if value < 1.0:
        return f"{value * 1e3:.3g} ms"
    return f"{value:.3g} s"


def fmt_value(value: float, unit: str) -> str:
    if unit == "s":
        return fmt_seconds(value)
    if value != value:
        return "n/a"
    if unit == "bytes":
        return f"{value / MB:.1f} MB"
    return f"{value:,.4g} {unit}"
