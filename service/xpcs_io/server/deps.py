"""What a route needs from the application, typed: ``Annotated`` dependency aliases for
route signatures (``facade: FacadeDep``), and the ``get_*`` getters behind them for code that
already holds the request (the read path, error bodies). This is the one module that reads
``app.state``, which ``create_app`` and its lifespan fill: settings, data root and keys at
build time; pool, facades, result cache and worker group at startup.

None of these dependencies takes a parameter of its own, so none changes a route's OpenAPI
operation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import Depends
from starlette.requests import HTTPConnection

from xpcs_io.facade import HDF5Facade
from xpcs_io.pool import HDF5ConnectionPool
from xpcs_io.server.events import EventHub
from xpcs_io.server.observability import Metrics
from xpcs_io.server.results import ResultCache
from xpcs_io.server.settings import Scope, Settings
from xpcs_io.server.workers import WorkerGroup

__all__ = [
    "ApiKeysDep",
    "EventsDep",
    "FacadeDep",
    "Facades",
    "FacadesDep",
    "MetricsDep",
    "ResultsDep",
    "RootDep",
    "SettingsDep",
    "WorkersDep",
    "get_api_keys",
    "get_events",
    "get_facade",
    "get_facades",
    "get_metrics",
    "get_pool",
    "get_results",
    "get_root",
    "get_root_text",
    "get_settings",
    "get_workers",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Facades:
    """The app's two facades on its one pool: one validates what it reads, one does not."""

    checked: HDF5Facade
    unchecked: HDF5Facade

    def pick(self, validate: bool = True) -> HDF5Facade:
        """The facade for a request's ``validate`` parameter."""
        return self.checked if validate else self.unchecked


def get_settings(conn: HTTPConnection) -> Settings:
    """The settings the app was built with."""
    settings: Settings = conn.app.state.settings
    return settings


def get_root(conn: HTTPConnection) -> Path:
    """The resolved data root."""
    root: Path = conn.app.state.root
    return root


def get_root_text(conn: HTTPConnection) -> str | None:
    """The resolved data root as text (to keep it out of error details), ``None`` before the
    app set it."""
    text: str | None = getattr(conn.app.state, "root_str", None)
    return text


def get_api_keys(conn: HTTPConnection) -> Mapping[str, Scope]:
    """The API keys and their scopes (empty: the server is open)."""
    keys: Mapping[str, Scope] = conn.app.state.api_keys
    return keys


def get_facade(conn: HTTPConnection) -> HDF5Facade:
    """The facade that validates what it reads (the one writes go through)."""
    facade: HDF5Facade = conn.app.state.facade
    return facade


def get_facades(conn: HTTPConnection) -> Facades:
    """Both facades, to pick one by the request's ``validate``."""
    state = conn.app.state
    return Facades(state.facade, state.facade_unchecked)


def get_pool(conn: HTTPConnection) -> HDF5ConnectionPool | None:
    """The pool, ``None`` outside the app's lifespan."""
    pool: HDF5ConnectionPool | None = getattr(conn.app.state, "pool", None)
    return pool


def get_results(conn: HTTPConnection) -> ResultCache:
    """The cache of read results shared by every viewer."""
    results: ResultCache = conn.app.state.results
    return results


def get_events(conn: HTTPConnection) -> EventHub:
    """The hub of Server-Sent Events."""
    events: EventHub = conn.app.state.events
    return events


def get_workers(conn: HTTPConnection) -> WorkerGroup | None:
    """The group of worker processes (``serve --workers``), ``None`` in a single process."""
    workers: WorkerGroup | None = conn.app.state.workers
    return workers


def get_metrics(conn: HTTPConnection) -> Metrics:
    """The Prometheus metrics."""
    metrics: Metrics = conn.app.state.metrics
    return metrics


def _depends(getter: Callable[[HTTPConnection], T]) -> Any:
    # An async wrapper: FastAPI runs it on the event loop, where a sync dependency would
    # cost a trip through the thread pool per request for an attribute lookup.
    async def dependency(conn: HTTPConnection) -> T:
        return getter(conn)

    return Depends(dependency)


SettingsDep = Annotated[Settings, _depends(get_settings)]
RootDep = Annotated[Path, _depends(get_root)]
ApiKeysDep = Annotated[Mapping[str, Scope], _depends(get_api_keys)]
FacadeDep = Annotated[HDF5Facade, _depends(get_facade)]
FacadesDep = Annotated[Facades, _depends(get_facades)]
ResultsDep = Annotated[ResultCache, _depends(get_results)]
EventsDep = Annotated[EventHub, _depends(get_events)]
WorkersDep = Annotated[WorkerGroup | None, _depends(get_workers)]
MetricsDep = Annotated[Metrics, _depends(get_metrics)]
