"""The quick-look page at ``/`` in real headless Chromium, driven over the DevTools protocol.

No browser package is needed: Chromium is started with ``--remote-debugging-port=0`` and
driven through one page's websocket with the ``websockets`` package (a uvicorn dependency).
Chromium missing makes the test fail, unless ``XPCS_IO_SKIP_BROWSER=1`` is set.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import h5py
import httpx
import msgpack
import numpy as np
import pytest
from websockets.sync.client import ClientConnection, connect

from xpcs_io import wire
from xpcs_io.client import RemoteHDF5Facade
from xpcs_io.facade import HDF5Facade
from xpcs_io.pool import HDF5ConnectionPool
from xpcs_io.schemas import MaskSchema
from xpcs_io.tools.demo import DemoSpec, write_native_file

from .conftest import Server, start_server

ARTIFACTS = Path(__file__).with_name("artifacts")
READY_TIMEOUT = 30.0


def _chromium_executable() -> str:
    if os.environ.get("XPCS_IO_SKIP_BROWSER") == "1":
        pytest.skip("XPCS_IO_SKIP_BROWSER=1: browser test skipped")
    exe = os.environ.get("XPCS_IO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
        pytest.fail(
            f"chromium not found ({exe}): the quick-look tests need a headless Chromium. Install "
            "Debian's package (apt-get install -y chromium), point XPCS_IO_CHROMIUM at a "
            "Chromium binary, or set XPCS_IO_SKIP_BROWSER=1 to skip these tests.",
            pytrace=False,
        )
    return exe


class DevTools:
    """A minimal Chrome DevTools protocol session on one page target."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(
        self, method: str, params: dict[str, Any] | None = None, timeout: float = 15.0
    ) -> dict[str, Any]:
        """Send one command and wait for its answer, keeping the events that arrive meanwhile."""
        self.next_id += 1
        call_id = self.next_id
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{method}: no answer within {timeout} s")
            message: dict[str, Any] = json.loads(self.ws.recv(timeout=remaining))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method} failed: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            if "method" in message:
                self.events.append(message)

    def wait_event(self, method: str, timeout: float) -> dict[str, Any]:
        """The first event ``method`` received since the events were last cleared."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event["method"] == method:
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {method} event within {timeout} s")
            message: dict[str, Any] = json.loads(self.ws.recv(timeout=remaining))
            if "method" in message:
                self.events.append(message)

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression (promises are awaited)."""
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def page_errors(self) -> list[str]:
        """Uncaught exceptions, console.error/assert calls and browser-logged errors so far."""
        errors = []
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                text = details.get("exception", {}).get("description") or details.get("text")
                errors.append(f"uncaught: {text}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                args = [a.get("value", a.get("description", "")) for a in params.get("args", [])]
                errors.append(f"console.{params['type']}: {' '.join(map(str, args))}")
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                entry = params["entry"]
                errors.append(f"log: {entry.get('text')} {entry.get('url', '')}".strip())
        return errors

    def screenshot(self, path: Path) -> None:
        """Save the whole page (beyond the viewport) as a PNG."""
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        shot = self.call(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {
                    "x": 0,
                    "y": 0,
                    "width": size["width"],
                    "height": size["height"],
                    "scale": 1,
                },
            },
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop Chromium's process group (we started it in its own session), bounded."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # helpers left behind by the browser process


@contextlib.contextmanager
def chromium(tmp: Path) -> Iterator[DevTools]:
    """Headless Chromium with a throw-away profile; yields a session on its blank page."""
    exe = _chromium_executable()
    profile = tmp / "chromium-profile"
    profile.mkdir()
    log = tmp / "chromium.log"
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",  # Chromium picks a free port, written to DevToolsActivePort
        "about:blank",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 20
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"chromium did not start:\n{log.read_text()[-3000:]}", pytrace=False)
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
        page = next(t for t in targets if t["type"] == "page")
        with connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10) as ws:
            yield DevTools(ws)
    finally:
        _stop(proc)


def _wait_for(devtools: DevTools, expression: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = devtools.evaluate(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            devtools.screenshot(ARTIFACTS / "quicklook-timeout.png")
            banner = devtools.evaluate("document.getElementById('error').innerText")
            raise AssertionError(
                f"{expression} still false after {timeout} s; banner: {banner!r}; "
                f"page errors: {devtools.page_errors()}"
            )
        time.sleep(0.1)


DECODE = """((blobs) => {
  const bytes = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const unpack = (name) => window.quicklookWire.unpack(bytes(blobs[name]));
  const plain = (x) => typeof x === "bigint" ? `${x}n`
    : ArrayBuffer.isView(x) ? {typed: x.constructor.name, values: Array.from(x, plain)}
    : Array.isArray(x) ? x.map(plain)
    : x !== null && typeof x === "object"
      ? Object.fromEntries(Object.entries(x).map(([k, v]) => [k, plain(v)])) : x;
  const refuse = (name) => {
    try { unpack(name); return "accepted"; } catch (e) { return e.message; }
  };
  const refused = {};
  for (const name of ["truncated", "trailing", "ext", "bad_dtype"]) refused[name] = refuse(name);
  return {message: plain(unpack("message")), singles: plain(unpack("singles")), refused};
})(%s)"""


READ_CANVAS = """(() => {
  const c = document.getElementById(%r);
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let s = "";
  for (let i = 0; i < d.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, d.subarray(i, i + 0x8000));
  }
  return {width: c.width, height: c.height, rgba: btoa(s)};
})()"""


def _canvas(devtools: DevTools, canvas_id: str) -> np.ndarray:
    """The canvas's pixels as an (height, width, 3) uint8 RGB array."""
    got = devtools.evaluate(READ_CANVAS % canvas_id)
    rgba = np.frombuffer(base64.b64decode(got["rgba"]), dtype=np.uint8)
    return rgba.reshape(got["height"], got["width"], 4)[..., :3].astype(np.int16)


def _masked_blocks(mask: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """For each canvas pixel: is its source block all masked / all unmasked? (The page's rule:
    canvas pixel i covers source [floor(i n / N), max(that + 1, floor((i + 1) n / N)).)"""
    h, w = mask.shape
    zeros = np.zeros((h + 1, w + 1), dtype=np.int64)  # summed-area table of masked pixels
    zeros[1:, 1:] = (mask == 0).cumsum(axis=0).cumsum(axis=1)

    def edges(n: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        i = np.arange(count)
        lo = i * n // count
        return lo, np.maximum(lo + 1, (i + 1) * n // count)

    (r0, r1), (c0, c1) = edges(h, height), edges(w, width)
    r0, r1, c0, c1 = r0[:, None], r1[:, None], c0[None, :], c1[None, :]
    count = zeros[r1, c1] - zeros[r0, c1] - zeros[r1, c0] + zeros[r0, c0]
    all_masked: np.ndarray = count == (r1 - r0) * (c1 - c0)
    none_masked: np.ndarray = count == 0
    return all_masked, none_masked


def _tinted(rgb: np.ndarray) -> np.ndarray:
    """The mask tint (red blend): no viridis colour has R >= 150 with G more than 60 below."""
    r, g = rgb[..., 0], rgb[..., 1]
    result: np.ndarray = (r >= 150) & (r - g >= 60)
    return result


@pytest.fixture(scope="module")
def shared_browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevTools]:
    """One headless Chromium for this module, its Runtime, Log and Page events enabled."""
    with chromium(tmp_path_factory.mktemp("chromium")) as devtools:
        for domain in ("Runtime", "Log", "Page"):
            devtools.call(f"{domain}.enable")
        devtools.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1600, "height": 1000, "deviceScaleFactor": 1, "mobile": False},
        )
        yield devtools


def _browser(request: pytest.FixtureRequest) -> DevTools:
    """The shared browser, checking for Chromium in the test itself: when it is missing the
    test fails (or skips with XPCS_IO_SKIP_BROWSER=1) instead of erroring in a fixture."""
    _chromium_executable()
    devtools: DevTools = request.getfixturevalue("shared_browser")
    return devtools


def _navigate(devtools: DevTools, url: str) -> None:
    """Load ``url`` in the page and wait for its load event (deferred scripts have run)."""
    devtools.events.clear()
    devtools.call("Page.navigate", {"url": url})
    devtools.wait_event("Page.loadEventFired", READY_TIMEOUT)


def _open(devtools: DevTools, url: str) -> dict[str, Any]:
    """Load the page afresh and wait until everything for its file has been drawn."""
    _navigate(devtools, url)
    _wait_for(devtools, "window.quicklook && window.quicklook.ready === true", READY_TIMEOUT)
    state: dict[str, Any] = devtools.evaluate("window.quicklook")
    return state


def _text(devtools: DevTools, element_id: str) -> str:
    text: str = devtools.evaluate(f"document.getElementById({element_id!r}).innerText")
    return text


def test_quicklook_page_draws_the_file(
    server: Server, workdir: Path, request: pytest.FixtureRequest
) -> None:
    browser = _browser(request)
    path = write_native_file(workdir / "quick.hdf5", DemoSpec(shape=(96, 80), n_delay=24, n_q=8))
    pool = HDF5ConnectionPool(max_size=2)
    try:
        facade = HDF5Facade(pool)
        geometry = facade.read_geometry_metadata(path)
        qmap_mask = facade.read_qmap(path).mask
        assert qmap_mask is not None
        gaps = np.asarray(qmap_mask, dtype=np.uint8)
        facade.write_mask(
            path,
            MaskSchema(mask=gaps, metadata=geometry, description="module gaps from the q-map"),
            writer="alice",
        )
        beamstop = gaps.copy()
        beamstop[30:62, 24:52] = 0
        facade.write_mask(
            path,
            MaskSchema(mask=beamstop, metadata=geometry, description="beamstop shadow added"),
            writer="bob",
        )
    finally:
        pool.shutdown()
    with h5py.File(path, "r") as f:
        sqmap = f["xpcs/qmap/sqmap"][()]
        g2 = f["xpcs/g2/g2"][()]
        delays = f["xpcs/g2/delay_times"][()]
    rel = path.relative_to(server.root).as_posix()

    ql = _open(browser, f"{server.url}/?file={quote(rel)}&bins=0,3")
    # live pool stats: refreshed after the load, naming the file the server now holds open
    _wait_for(browser, f"document.getElementById('pool').innerText.includes({rel!r})", 10)
    browser.screenshot(ARTIFACTS / "quicklook.png")
    assert ql["file"] == rel
    assert ql["errors"] == []
    assert browser.evaluate("document.getElementById('error').hidden") is True
    assert rel in _text(browser, "files")

    # (2) the q-map's reported range is the file's sqmap range
    qm = ql["qmap"]
    assert qm["name"] == "sqmap"
    assert qm["shape"] == list(sqmap.shape)
    assert qm["min"] == pytest.approx(float(sqmap.min()), rel=1e-6)
    assert qm["max"] == pytest.approx(float(sqmap.max()), rel=1e-6)
    assert qm["mask"] == "mask v2 by bob"

    # (1) the image: many colours, the newest mask tinted exactly where it is 0
    pixels = _canvas(browser, "qmap-canvas")
    height, width = pixels.shape[:2]
    assert [width, height] == qm["canvas"]
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 64, f"only {len(colours)} distinct colours drawn"
    all_masked, none_masked = _masked_blocks(beamstop, height, width)
    assert all_masked.sum() > 1000  # the beamstop is large on the canvas
    tinted = _tinted(pixels)
    assert tinted[all_masked].all()
    assert not tinted[none_masked].any()
    # the toggle removes the tint and changes nothing else
    browser.evaluate("document.getElementById('mask-toggle').click()")
    bare = _canvas(browser, "qmap-canvas")
    assert not _tinted(bare).any()
    assert (bare[none_masked] == pixels[none_masked]).all()
    assert (bare[all_masked] != pixels[all_masked]).any(axis=-1).all()
    browser.evaluate("document.getElementById('mask-toggle').click()")
    assert (_canvas(browser, "qmap-canvas") == pixels).all()

    # (3) the G2 curves drawn are the file's bins 0 and 3, each in its own colour
    assert ql["g2"]["bins"] == [0, 3]
    expected = [[float(delays[0]), float(g2[0, b])] for b in (0, 3)]
    assert np.allclose(ql["g2"]["firstPoints"], expected, rtol=1e-6, atol=0)
    assert len(set(ql["g2"]["colors"])) == 2
    plot = _canvas(browser, "g2-canvas")
    for css in ql["g2"]["colors"]:
        rgb = np.array([int(css[i : i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(plot - rgb).max(axis=-1) <= 2).sum() > 50, f"no {css} curve drawn"

    # (4) the mask versions with who wrote them and why; geometry; live pool stats
    versions_text = _text(browser, "versions")
    for text in ("v1", "v2", "alice", "bob", "module gaps from the q-map", "beamstop shadow"):
        assert text in versions_text
    geometry_text = _text(browser, "geometry")
    assert "5000" in geometry_text
    assert "96 × 80" in geometry_text
    assert "hit ratio" in _text(browser, "pool")

    # (5) a clean console
    assert browser.page_errors() == []


def test_msgpack_decoder_reads_what_the_server_writes(
    server: Server, request: pytest.FixtureRequest
) -> None:
    """The page's decoder against xpcs_io.wire.pack: every msgpack type the server sends and
    typed views of every dtype, in both byte orders."""
    browser = _browser(request)
    arrays = {
        "<f4": np.array([[1.5, -2.25], [3e-7, 1e30]], dtype="<f4"),
        "<f8": np.array([0.1, -1e300], dtype="<f8"),
        ">f8": np.array([2.5, -0.125], dtype=">f8"),
        "<f2": np.array([1.0, -0.5, 65504.0, 6e-8], dtype="<f2"),
        "|u1": np.array([0, 255], dtype="|u1"),
        "<u2": np.array([[1, 65535]], dtype="<u2"),
        ">u2": np.array([258, 7], dtype=">u2"),
        "<u4": np.array([4_000_000_000], dtype="<u4"),
        "|b1": np.array([True, False, True]),
        "|i1": np.array([-128, 127], dtype="|i1"),
        "<i2": np.array([-32768, 5], dtype="<i2"),
        "<i4": np.array([-2_000_000_000, 7], dtype="<i4"),
        "<i8": np.array([-(2**62), 3], dtype="<i8"),
        "<u8": np.array([2**64 - 1], dtype="<u8"),
        "empty": np.zeros((0, 3), dtype="<f4"),
    }
    message = {
        "arrays": arrays,
        "nil": None,
        "yes": True,
        "no": False,
        "ints": [0, 127, 128, 255, 65535, 65536, 2**32, 2**53, 2**64 - 1, -1, -32, -33, -(2**63)],
        "float": 0.1,
        "text": "q-map ü " + "x" * 300,
        "bin": b"\x00\x01\xff",
        "long_list": list(range(20)),
        "long_map": {f"k{i}": i for i in range(20)},
    }
    raw = wire.pack(message)
    bad_dtype = {"dtype": "=f4", "shape": [1], "data": bytes(4)}
    blobs = {
        "message": raw,
        "singles": msgpack.packb([1.5, -0.25], use_single_float=True),  # 0xca: unused by wire
        "truncated": raw[:-1],
        "trailing": raw + b"\x00",
        "ext": b"\xd4\x01\x00",
        "bad_dtype": msgpack.packb(bad_dtype, use_bin_type=True),
    }
    _navigate(browser, f"{server.url}/")
    args = {k: base64.b64encode(v).decode() for k, v in blobs.items()}
    result = browser.evaluate(DECODE % json.dumps(args))
    decoded, single_floats, refused = result["message"], result["singles"], result["refused"]
    for key, expected in arrays.items():
        got = decoded["arrays"][key]
        assert got["dtype"] == expected.dtype.str
        assert got["shape"] == list(expected.shape)
        values = [int(v[:-1]) if isinstance(v, str) else v for v in got["values"]["values"]]
        assert values == expected.astype(object).reshape(-1).tolist(), key
    assert decoded["arrays"]["<u8"]["values"]["typed"] == "BigUint64Array"
    assert decoded["arrays"]["|b1"]["values"]["typed"] == "Uint8Array"
    assert decoded["arrays"][">f8"]["values"]["typed"] == "Float64Array"
    ints = [int(v[:-1]) if isinstance(v, str) else v for v in decoded["ints"]]
    assert ints == message["ints"]
    for key in ("nil", "yes", "no", "float", "text", "long_list", "long_map"):
        assert decoded[key] == message[key], key
    assert decoded["bin"] == {"typed": "Uint8Array", "values": [0, 1, 255]}
    assert single_floats == [1.5, -0.25]
    assert refused == {
        "truncated": "msgpack: truncated message",
        "trailing": "msgpack: bytes after the value",
        "ext": "msgpack: unsupported type byte 0xd4",
        "bad_dtype": "unsupported dtype =f4",
    }
    assert browser.page_errors() == []


def test_problem_details_and_api_key(
    data_root: Path, workdir: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Errors show the problem's detail; the key typed in is kept and sent as a Bearer token."""
    browser = _browser(request)
    path = write_native_file(workdir / "keyed.hdf5", DemoSpec(shape=(32, 24), n_delay=8, n_q=4))
    rel = path.relative_to(data_root).as_posix()
    keyed = start_server(
        data_root, tmp_path / "keyed.log", env={"XPCS_IO_API_KEYS": "s3cret-key:read"}
    )
    try:
        ql = _open(browser, f"{keyed.url}/?file={quote(rel)}")
        assert ql["errors"], "no error shown without the API key"
        banner = _text(browser, "error")
        assert "an API key is required" in banner
        assert "HTTP 401" in banner
        browser.evaluate(
            "(() => { const k = document.getElementById('apikey'); k.value = 's3cret-key';"
            " k.dispatchEvent(new Event('change')); })()"
        )
        ql = _open(browser, f"{keyed.url}/?file={quote(rel)}&bins=1")  # the key is remembered
        assert ql["errors"] == []
        assert ql["g2"]["bins"] == [1]
        assert ql["qmap"]["shape"] == [32, 24]
        assert "no masks yet" in _text(browser, "versions")
        ql = _open(browser, f"{keyed.url}/?file=nowhere/missing.hdf5")
        assert any("No such file: nowhere/missing.hdf5 (HTTP 404)" in e for e in ql["errors"])
        assert "No such file" in _text(browser, "error")
        uncaught = [e for e in browser.page_errors() if not e.startswith("log: Failed to load")]
        assert uncaught == []  # only the browser's own notes of the 401/404 answers
    finally:
        keyed.stop()


def test_quicklook_page_follows_live_events(
    server: Server, workdir: Path, request: pytest.FixtureRequest
) -> None:
    browser = _browser(request)
    path = write_native_file(workdir / "live.hdf5", DemoSpec(shape=(40, 32), n_delay=8, n_q=4))
    rel = path.relative_to(server.root).as_posix()
    _open(browser, f"{server.url}/?file={quote(rel)}")
    _wait_for(browser, "window.quicklook.live === true", READY_TIMEOUT)
    assert browser.evaluate("window.quicklook.versions.length") == 0
    # Another viewer saves a mask: this page shows the new version without a click.
    with RemoteHDF5Facade(server.url) as other:
        geometry = other.read_geometry_metadata(rel)
        mask = np.ones(geometry.shape, np.uint8)
        mask[:4] = 0
        other.write_mask(rel, MaskSchema(mask=mask, metadata=geometry), writer="other-viewer")
    _wait_for(
        browser,
        "window.quicklook.ready && window.quicklook.versions.length === 1 "
        "&& window.quicklook.versions[0].writer === 'other-viewer'",
        READY_TIMEOUT,
    )
    assert "other-viewer" in _text(browser, "versions")
    # The correlator finishes a new result file: the file list shows it.
    new = workdir / "fresh_result.hdf5"
    write_native_file(new, DemoSpec(shape=(16, 12), n_delay=4, n_q=2))
    _wait_for(
        browser,
        f"document.getElementById('files').innerText.includes({new.name!r})",
        READY_TIMEOUT,
    )
    kinds = browser.evaluate("window.quicklook.events.map((e) => e.type)")
    assert "mask.written" in kinds
    assert "file.created" in kinds
    # A file without masks answers 404 to its version list (the page shows "no masks yet").
    errors = [e for e in browser.page_errors() if "404" not in e or "/mask/versions" not in e]
    assert errors == []
