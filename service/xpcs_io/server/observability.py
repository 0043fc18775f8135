"""Prometheus metrics and one structured access-log line per request.

Metrics live in a registry owned by the app (two apps in one process never collide):
request latency by route, method and status; bytes sent by route; write durations; and the
pool's hits, misses, evictions, reopens and open handles read live from the pool.

Under ``xpcs-io serve --workers N`` every worker writes its request metrics to files in one
folder (prometheus-client's multiprocess mode, switched on by the supervisor) and ``/metrics``
renders the sum over all of them, so a scrape counts every worker whichever one answers; the
pool and result-cache figures are then the group's merged statistics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from xpcs_io.server.zerocopy import SENDFILE

__all__ = ["Metrics", "ObservabilityMiddleware", "render"]

access_log = logging.getLogger("xpcs_io.access")

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _PoolCollector(Collector):
    def __init__(
        self,
        stats: Callable[[], dict[str, Any] | None],
        results: Callable[[], dict[str, Any] | None],
    ) -> None:
        self._stats = stats
        self._results = results

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        results = self._results()
        if results is not None:
            for name in ("hits", "misses", "coalesced"):
                yield CounterMetricFamily(
                    f"xpcs_io_result_cache_{name}", f"Result cache {name}", value=results[name]
                )
            for name in ("plans", "responses", "sendfile_bytes", "copied_bytes", "aborts"):
                yield CounterMetricFamily(
                    f"xpcs_io_zero_copy_{name}",
                    f"Answers sent from file plans: {name.replace('_', ' ')}",
                    value=results.get(f"zero_copy_{name}", 0),
                )
            yield GaugeMetricFamily(
                "xpcs_io_result_cache_bytes",
                "Bytes held by the result cache",
                value=results["bytes"],
            )
        stats = self._stats()
        if stats is None:
            return
        for name in ("hits", "misses", "opens", "evictions", "reopens_on_change"):
            yield CounterMetricFamily(
                f"xpcs_io_pool_{name}", f"HDF5 pool {name.replace('_', ' ')}", value=stats[name]
            )
        yield GaugeMetricFamily(
            "xpcs_io_pool_open_handles", "HDF5 handles open in the pool", value=stats["pool_size"]
        )
        yield GaugeMetricFamily(
            "xpcs_io_pool_max_handles", "Pool capacity", value=stats["max_pool_size"]
        )


class Metrics:
    """The app's metrics; ``pool_stats`` and ``result_stats`` read the live pool and result
    cache (None before start-up); ``multiprocess_dir`` is the folder every worker of a group
    records into (None: this process only)."""

    def __init__(
        self,
        pool_stats: Callable[[], dict[str, Any] | None],
        result_stats: Callable[[], dict[str, Any] | None],
        multiprocess_dir: Path | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # What /metrics renders: this process's registry, or every worker's files summed.
        self.exposed = self.registry
        if multiprocess_dir is not None:
            self.exposed = CollectorRegistry()
            MultiProcessCollector(self.exposed, path=str(multiprocess_dir))  # type: ignore[no-untyped-call]
        self.latency = Histogram(
            "xpcs_io_request_duration_seconds",
            "Time to answer a request, by route",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.bytes_sent = Counter(
            "xpcs_io_response_bytes",
            "Response body bytes sent, by route",
            ["route"],
            registry=self.registry,
        )
        self.write_duration = Histogram(
            "xpcs_io_write_duration_seconds",
            "Duration of versioned mask/partition writes",
            ["kind"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.exposed.register(_PoolCollector(pool_stats, result_stats))


def render(metrics: Metrics) -> bytes:
    """The Prometheus text exposition of ``metrics`` (of every worker under ``--workers``)."""
    return generate_latest(metrics.exposed)


class ObservabilityMiddleware:
    """Times each request, counts bytes sent and logs one JSON line with the request id."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        sent = 0

        async def counting_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            elif message["type"] == SENDFILE:
                sent += message["count"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            elapsed = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.latency.labels(scope["method"], route, str(status)).observe(elapsed)
            self.metrics.bytes_sent.labels(route).inc(sent)
            access_log.info(
                "request",
                extra={
                    "request_id": scope.get("state", {}).get("request_id"),
                    "method": scope["method"],
                    "route": route,
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                    "bytes": sent,
                    "client": (scope.get("client") or ("", 0))[0],
                },
            )
