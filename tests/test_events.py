"""``GET /v1/events`` and the clients' ``watch()``: a real server watching a real folder, two
clients and watchers in separate threads or tasks, files written by plain h5py."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import httpx
import numpy as np
import pytest

from tests.conftest import Server, start_server
from xpcs_io.client import AsyncRemoteHDF5Facade, RemoteHDF5Facade
from xpcs_io.events import Event, EventStreamParser
from xpcs_io.schemas import MaskSchema
from xpcs_io.server.app import create_app
from xpcs_io.server.events import EventHub
from xpcs_io.server.settings import Settings
from xpcs_io.server.watcher import RootWatcher
from xpcs_io.tools.demo import DemoSpec, write_native_file


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[Server]:
    """A server of its own over a fresh root, with a short heartbeat."""
    root = tmp_path / "root"
    root.mkdir()
    # Folders the tests write into exist before the server watches the root.
    for folder in ("run1", "run2", "other"):
        (root / folder).mkdir()
    write_native_file(root / "run1" / "a.hdf5", DemoSpec(shape=(16, 12), n_delay=4, n_q=3))
    srv = start_server(root, tmp_path / "server.log", env={"XPCS_IO_EVENTS_HEARTBEAT": "0.5"})
    yield srv
    srv.stop()


#: Seconds a wait for an event may take before the test fails: a safety cap far above the
#: fraction of a second an event takes on an idle machine, so a loaded one passes too.
EVENT_CAP = 30.0
#: A URL no connection can be opened to (``httpx.InvalidURL``, not a transport error): a
#: watch that reconnects to it ends instead of retrying.
_CLOSED_URL = "http://watcher-closed:no-port"


class Watcher:
    """``client.watch()`` in a thread; every event it yields is kept in ``seen`` (and queued
    in ``events`` for tests that drain them). ``close()`` ends the thread."""

    def __init__(self, url: str, *, api_key: str | None = None, **kwargs: object) -> None:
        self.url = url
        self.client = RemoteHDF5Facade(url, api_key=api_key)
        self.events: queue.Queue[Event] = queue.Queue()
        self.seen: list[Event] = []
        self._closing = threading.Event()
        self._iter = self.client.watch(**kwargs)  # type: ignore[arg-type]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self.wait_for("stream.opened", EVENT_CAP)  # listening from here on

    def _run(self) -> None:
        try:
            for event in self._iter:
                if self._closing.is_set():
                    break
                self.seen.append(event)
                self.events.put(event)
        except Exception as exc:  # surfaced by wait_for
            if not self._closing.is_set():
                self.seen.append(Event(type=f"error:{exc!r}"))
        finally:
            self._iter.close()

    def close(self) -> None:
        """End the thread and its stream, so it never reconnects to a later server on the
        same port. A live stream ends at its next event (a pool clear is one), a dropped one
        at its next reconnection (to a URL that cannot be opened)."""
        self._closing.set()
        self.client.base_url = _CLOSED_URL
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(f"{self.url}/v1/pool/clear", timeout=10)
        self._thread.join(60)  # at most one reconnection delay (30 s at most)
        assert not self._thread.is_alive(), "the watcher thread did not end"
        self.client.close()

    def wait_for(
        self, kind: str | tuple[str, ...], timeout: float, **match: object
    ) -> tuple[Event, float]:
        """The first event of ``kind`` (one type or several) matching ``match`` seen so far
        or within ``timeout`` seconds, and the seconds the wait took."""
        kinds = (kind,) if isinstance(kind, str) else kind
        start = time.monotonic()
        while True:
            for event in list(self.seen):
                assert not event.type.startswith("error:"), event.type
                if event.type in kinds and all(getattr(event, k) == v for k, v in match.items()):
                    return event, time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise AssertionError(f"no {kind} {match} within {timeout} s: {self.seen}")
            time.sleep(0.02)


@pytest.fixture
def watch() -> Iterator[Callable[..., Watcher]]:
    """Makes ``Watcher``s; every one is closed after the test."""
    made: list[Watcher] = []

    def make(url: str, **kwargs: object) -> Watcher:
        watcher = Watcher(url, **kwargs)  # type: ignore[arg-type]
        made.append(watcher)
        return watcher

    yield make
    for watcher in made:
        watcher.close()


def _mask(client: RemoteHDF5Facade, path: str) -> MaskSchema:
    geometry = client.read_geometry_metadata(path)
    return MaskSchema(mask=np.ones(geometry.shape, np.uint8), metadata=geometry)


def test_watcher_sees_another_clients_mask_within_a_second(
    watched: Server, watch: Callable[..., Watcher]
) -> None:
    # Within a second on an idle machine (the latency is printed); the assertion's bound is
    # a safety cap, so a loaded machine does not fail the test, a lost event still does.
    watcher = watch(watched.url)
    with RemoteHDF5Facade(watched.url) as writer, RemoteHDF5Facade(watched.url) as reader:
        assert reader.read_g2_data("run1/a.hdf5").g2.shape == (4, 3)
        start = time.monotonic()
        writer.write_mask("run1/a.hdf5", _mask(writer, "run1/a.hdf5"), writer="alice")
        event, _ = watcher.wait_for("mask.written", EVENT_CAP, file_path="run1/a.hdf5")
        took = time.monotonic() - start
    assert (event.kind, event.version, event.writer, event.group) == (
        "mask",
        1,
        "alice",
        "/simplemask/mask",
    )
    print(f"mask event {took:.3f} s after the write was sent")


def test_watcher_sees_a_file_plain_h5py_creates_within_two_seconds(
    watched: Server, watch: Callable[..., Watcher]
) -> None:
    # Within two seconds on an idle machine (the latency is printed); the bound asserted is
    # a safety cap. run2 existed before the server watched the root.
    watcher = watch(watched.url, prefix="run2")
    start = time.monotonic()
    with h5py.File(watched.root / "run2" / "new.h5", "w") as f:
        f["x"] = np.arange(3)
    event, _ = watcher.wait_for("file.created", EVENT_CAP, file_path="run2/new.h5")
    print(f"file.created {time.monotonic() - start:.3f} s after the file was written")
    (watched.root / "run2" / "new.h5").unlink()
    watcher.wait_for("file.removed", EVENT_CAP, file_path="run2/new.h5")
    assert event.id is not None


def test_prefix_filter_and_no_hidden_files(watched: Server, watch: Callable[..., Watcher]) -> None:
    watcher = watch(watched.url, prefix="run1")  # "other" is watched too: it existed before
    with h5py.File(watched.root / "other" / "x.h5", "w") as f:
        f["x"] = 1
    with h5py.File(watched.root / "run1" / "b.h5", "w") as f:
        f["x"] = 1
    event, _ = watcher.wait_for("file.created", EVENT_CAP)
    assert event.file_path == "run1/b.h5"  # other/x.h5 came first but is not under run1
    # The service's lock files and temporary copies never show up.
    with RemoteHDF5Facade(watched.url) as writer:
        writer.write_mask("run1/a.hdf5", _mask(writer, "run1/a.hdf5"))
    watcher.wait_for("mask.written", EVENT_CAP)
    seen = []
    while not watcher.events.empty():
        seen.append(watcher.events.get())
    assert all(not (e.file_path or "").split("/")[-1].startswith(".") for e in seen)


def test_reconnect_with_last_event_id_replays_missed_events(
    watched: Server, watch: Callable[..., Watcher]
) -> None:
    with RemoteHDF5Facade(watched.url) as client:
        it = client.watch()
        next(e for e in it if e.type == "stream.opened")  # listening: the file comes next
        with h5py.File(watched.root / "run1" / "first.h5", "w") as f:
            f["x"] = 1
        first = next(e for e in it if e.type == "file.created")
        it.close()  # the viewer goes away...
        for name in ("m1.h5", "m2.h5"):
            with h5py.File(watched.root / "run1" / name, "w") as f:
                f["x"] = 1
        client.write_mask("run1/a.hdf5", _mask(client, "run1/a.hdf5"), writer="w")
        time.sleep(1.0)  # ...while these happen
    # Reconnect with the last id seen: the missed events come first, in a bounded wait.
    resumed = watch(watched.url, last_event_id=first.id)
    got = [resumed.wait_for("mask.written", 30)[0]]
    got += [resumed.wait_for("file.created", 30, file_path=f"run1/{n}.h5")[0] for n in ("m1", "m2")]
    assert all(e.id is not None and first.id is not None and e.id > first.id for e in got)


def test_reconnects_by_itself_after_the_server_restarts(
    tmp_path: Path, watch: Callable[..., Watcher]
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    srv = start_server(root, tmp_path / "a.log", env={"XPCS_IO_EVENTS_HEARTBEAT": "0.5"})
    port = int(srv.url.rsplit(":", 1)[1])
    watcher = watch(srv.url, reconnect_delay=0.1)
    srv.stop()
    srv2 = start_server(root, tmp_path / "b.log", port=port)
    try:
        # Back within its backoff: told that events may have been lost meanwhile (the
        # server restarted), then listening again.
        watcher.wait_for("events.reset", 30)
        deadline = time.monotonic() + 30
        while sum(e.type == "stream.opened" for e in watcher.seen) < 2:
            assert time.monotonic() < deadline, watcher.seen
            time.sleep(0.05)
        with h5py.File(root / "after.h5", "w") as f:
            f["x"] = 1
        event, _ = watcher.wait_for("file.created", EVENT_CAP, file_path="after.h5")
        assert event.id is not None
    finally:
        srv2.stop()


def test_server_shutdown_is_not_held_up_by_open_streams(
    tmp_path: Path, watch: Callable[..., Watcher]
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    srv = start_server(root, tmp_path / "s.log")
    for _ in range(3):
        watch(srv.url)
    start = time.monotonic()
    assert srv.stop() in (0, -15)
    # Well inside the 30 s graceful-shutdown timeout an unended stream would cost.
    assert time.monotonic() - start < 10


def test_pool_cleared_event_and_heartbeats(watched: Server) -> None:
    with httpx.stream("GET", f"{watched.url}/v1/events", timeout=10) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"
        parser = EventStreamParser()
        raw = b""
        httpx.post(f"{watched.url}/v1/pool/clear").raise_for_status()
        cleared = False
        for chunk in response.iter_raw():
            raw += chunk
            cleared = cleared or any(e.type == "pool.cleared" for e in parser.feed(chunk))
            if cleared and b": keep-alive" in raw:
                break
    assert b"retry: 1000" in raw


def test_events_need_the_read_scope(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    srv = start_server(root, tmp_path / "k.log", env={"XPCS_IO_API_KEYS": "r:read"})
    try:
        assert httpx.get(f"{srv.url}/v1/events", timeout=5).status_code == 401
        with RemoteHDF5Facade(srv.url, api_key="wrong") as client, pytest.raises(PermissionError):
            next(iter(client.watch()))
        # Listening (stream.opened seen) before the file is written, and a bounded wait.
        watcher = Watcher(srv.url, api_key="r")
        try:
            with h5py.File(root / "k.h5", "w") as f:
                f["x"] = 1
            event, _ = watcher.wait_for(("file.created", "file.changed"), EVENT_CAP)
        finally:
            srv.stop()
            watcher.close()  # its stream ended with the server: it ends at its reconnection
        assert event.file_path == "k.h5"
    finally:
        srv.stop()


def test_events_never_name_files_outside_the_root(
    tmp_path: Path, watch: Callable[..., Watcher]
) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "escape").symlink_to(outside, target_is_directory=True)
    srv = start_server(root, tmp_path / "o.log")
    try:
        watcher = watch(srv.url)
        with h5py.File(outside / "secret.h5", "w") as f:
            f["x"] = 1
        with h5py.File(root / "inside.h5", "w") as f:
            f["x"] = 1
        watcher.wait_for("file.created", EVENT_CAP, file_path="inside.h5")
        time.sleep(0.3)
        seen = [watcher.events.get() for _ in range(watcher.events.qsize())]
        assert not any("secret" in (e.file_path or "") for e in seen)
    finally:
        srv.stop()


def test_async_watch(watched: Server) -> None:
    async def main() -> Event:
        async with AsyncRemoteHDF5Facade(watched.url) as client:
            stream = client.watch(file_path="run1/a.hdf5")
            # Listening (the stream subscribes at its first step) before the mask is written.
            async for event in stream:
                if event.type == "stream.opened":
                    break

            async def write_soon() -> None:
                geometry = await client.read_geometry_metadata("run1/a.hdf5")
                mask = MaskSchema(mask=np.ones(geometry.shape, np.uint8), metadata=geometry)
                await client.write_mask("run1/a.hdf5", mask, writer="async")

            task = asyncio.create_task(write_soon())
            async for event in stream:
                if event.type == "mask.written":
                    break
            await task
            await stream.aclose()
            return event

    event = asyncio.run(asyncio.wait_for(main(), EVENT_CAP))
    assert (event.file_path, event.writer, event.version) == ("run1/a.hdf5", "async", 1)


def test_parser_handles_split_lines_comments_and_crlf() -> None:
    parser = EventStreamParser()
    stream = (
        b": keep-alive\r\n\r\nid: 7\r\nevent: file.changed\r\n"
        b'data: {"file_path": "a.h5", "id": 7}\r\n\r\nevent: events.reset\ndata: {}\n\n'
    )
    events = [e for i in range(len(stream)) for e in parser.feed(stream[i : i + 1])]
    assert [(e.type, e.id, e.file_path) for e in events] == [
        ("file.changed", 7, "a.h5"),
        ("events.reset", None, None),
    ]
    with pytest.raises(ValueError, match="too long"):
        EventStreamParser().feed(b"x" * (2 << 20))


@pytest.mark.parametrize(
    ("params", "headers"),
    [
        ({"prefix": "../"}, {}),
        ({"prefix": "/etc"}, {}),
        ({"file_path": "a\x00b"}, {}),
        ({"prefix": "x" * 5000}, {}),
        ({"file_path": "%2e%2e/secret.h5"}, {}),
        ({}, {"last-event-id": "not-a-number"}),
        ({}, {"last-event-id": "9" * 400}),
        ({}, {"last-event-id": "-5"}),
        ({"prefix": "run1", "unknown": "1"}, {}),
    ],
)
def test_hostile_event_parameters_get_a_stream_or_a_client_error(
    server: Server, params: dict[str, str], headers: dict[str, str]
) -> None:
    with httpx.stream(
        "GET", f"{server.url}/v1/events", params=params, headers=headers, timeout=10
    ) as response:
        assert response.status_code in (200, 400, 403, 422), response.status_code
        if response.status_code == 200:
            first = next(response.iter_raw())
            assert first.startswith(b"retry:")
        else:
            assert response.headers["content-type"] == "application/problem+json"


def test_ready_only_once_the_root_is_watched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The watcher's first scan of the root is held: until it is released and the watcher
    # watches, /ready answers 503, so a client that waited for /ready never creates a file
    # the watcher would miss.
    scanning = threading.Event()
    release = threading.Event()
    scan = RootWatcher._scan

    def held_scan(self: RootWatcher) -> None:
        scanning.set()
        assert release.wait(60)
        scan(self)

    monkeypatch.setattr(RootWatcher, "_scan", held_scan)
    app = create_app(Settings(data_root=tmp_path))

    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client,
        ):
            try:
                for _ in range(1200):  # bounded: the scan starts as soon as the app does
                    if scanning.is_set():
                        break
                    await asyncio.sleep(0.05)
                assert scanning.is_set()
                assert (await client.get("/health")).status_code == 200  # alive, not ready
                held = await client.get("/ready")
                assert held.status_code == 503, held.text
                assert "file watcher" in held.text
                release.set()
                for _ in range(1200):  # bounded: the scan of an empty root is quick
                    answer = await client.get("/ready")
                    if answer.status_code == 200:
                        break
                    await asyncio.sleep(0.05)
                assert answer.status_code == 200, answer.text
                # Watching from then on: a file created right away becomes an event.
                with h5py.File(tmp_path / "right-after.h5", "w") as f:
                    f["x"] = 1
                hub: EventHub = app.state.events
                for _ in range(1200):
                    if any(e.data.get("file_path") == "right-after.h5" for e in hub.since(0)[0]):
                        return
                    await asyncio.sleep(0.05)
                raise AssertionError("no event for a file created once /ready answered 200")
            finally:
                release.set()  # the app's shutdown waits for the scan

    asyncio.run(main())
