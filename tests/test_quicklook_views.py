"""The quick-look page's result views in real headless Chromium: SAXS 2-D and 1-D,
intensity vs time, C2 maps, metadata, the G2 legend with phi and the downloads, on an APS
8-ID-I NeXus file, a two-time-only file and a legacy file."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

from xpcs_io.tools.demo_aps8idi import write_aps8idi_file
from xpcs_io.tools.demo_legacy8idi import write_boost_file

from .conftest import Server
from .test_quicklook import _browser, _canvas, _open, shared_browser  # noqa: F401

FETCH = """(async () => {
  const blob = await (%s);
  const bytes = new Uint8Array(await blob.arrayBuffer());
  let s = "";
  for (let i = 0; i < bytes.length; i += 8192) s += String.fromCharCode(...bytes.subarray(i, i + 8192));
  return btoa(s);
})()"""


def _fetch(browser: Any, expression: str) -> bytes:
    return base64.b64decode(browser.evaluate(FETCH % expression))


def _errors(browser: Any) -> list[str]:
    """Console errors, but for the 404 of a file without mask versions (shown as none)."""
    return [e for e in browser.page_errors() if "/v1/mask/versions" not in e]


def _coloured(plot: np.ndarray) -> int:
    """Pixels that are neither white, grey nor black (drawn data)."""
    spread = plot.max(axis=-1) - plot.min(axis=-1)
    return int((spread > 40).sum())


def test_nexus_file_views_and_downloads(
    server: Server, workdir: Path, request: pytest.FixtureRequest
) -> None:
    browser = _browser(request)
    path = write_aps8idi_file(workdir / "views.hdf", n_phi=2)
    rel = path.relative_to(server.root).as_posix()
    ql = _open(browser, f"{server.url}/?file={rel}&bins=0,1")
    assert ql["errors"] == []
    assert browser.evaluate("document.getElementById('error').hidden") is True
    views = ql["views"]
    with h5py.File(path, "r") as f:
        image = f["/xpcs/temporal_mean/scattering_2d"][0]
        segments = f["/xpcs/temporal_mean/scattering_1d_segments"][()]
        n_frames = f["/xpcs/spatial_mean/intensity_vs_time"].shape[1]
        phis = f["/xpcs/qmap/dynamic_v_list_dim1"][()]

    # SAXS 2-D: log colour scale over the positive pixels, colour bar ticks, units
    saxs = views["saxs2d"]
    assert saxs["shape"] == list(image.shape)
    assert saxs["log"] is True
    assert saxs["min"] == pytest.approx(float(image[image > 0].min()), rel=1e-5)
    assert saxs["max"] == pytest.approx(float(image.max()), rel=1e-5)
    assert saxs["ticks"], "no colour bar ticks"
    assert all(t.startswith(("10", "2·", "5·")) for t in saxs["ticks"])
    assert _coloured(_canvas(browser, "saxs2d-canvas")) > image.size // 4
    # SAXS 1-D: log-log, one curve per stability segment and per phi sector
    s1 = views["saxs1d"]
    assert s1["segments"] == segments.shape[0]
    assert len(s1["phi"]) == 2
    assert sum(label.startswith("φ = ") for label in s1["legend"]) == 2
    assert views["intt"]["n"] == n_frames
    # C2 of the first bin with a map
    assert views["c2"]["bin"] == 0
    assert views["c2"]["shape"] == [64, 64]
    assert views["metadata"]["layout"] == "aps8idi"
    assert "silica-50nm" in browser.evaluate("document.getElementById('metadata').innerText")
    # G2: phi in the legend, the legend beside the plot
    legend = ql["g2"]["legend"]
    assert len(legend) == 2
    assert all("φ = " in text for text in legend)
    assert {float(t.split("φ = ")[1].rstrip("°")) for t in legend} <= {
        round(float(p), 1) for p in phis
    }

    # downloads, read back
    def export(route: str, fmt: str) -> bytes:
        return _fetch(
            browser, f'quicklookViews.fetchExport("{route}", {{file_path: "{rel}"}}, "{fmt}")'
        )

    npy = export("saxs2d", "npy")
    np.testing.assert_array_equal(np.load(io.BytesIO(npy)), image)
    png = export("saxs2d", "png")
    assert np.asarray(Image.open(io.BytesIO(png))).shape == image.shape
    tiff = export("saxs2d", "tiff")
    np.testing.assert_array_equal(tifffile.imread(io.BytesIO(tiff)), image)
    csv = export("saxs1d", "csv")
    assert csv.decode().startswith("q_A^-1,intensity_a.u.,phi_deg,segment_0")
    c2png = _fetch(browser, 'quicklookViews.canvasPng("c2")')
    assert Image.open(io.BytesIO(c2png)).size[0] > 64
    buttons = browser.evaluate(
        "[...document.querySelectorAll('#saxs2d-dl button')].map((b) => b.dataset.format)"
    )
    assert buttons == ["npy", "png", "tiff", "csv"]
    assert _errors(browser) == []


def test_two_time_only_file(server: Server, workdir: Path, request: pytest.FixtureRequest) -> None:
    browser = _browser(request)
    path = write_aps8idi_file(workdir / "tt_only.hdf", n_delay=0, twotime_bins=(1, 4))
    rel = path.relative_to(server.root).as_posix()
    ql = _open(browser, f"{server.url}/?file={rel}")
    # no red banner: the page shows the two-time G2 and the C2 maps
    assert ql["errors"] == []
    assert browser.evaluate("document.getElementById('error').hidden") is True
    assert ql["g2"]["twotime"] is True
    assert "two-time" in browser.evaluate("document.getElementById('g2-info').innerText")
    with h5py.File(path, "r") as f:
        tt = f["/xpcs/twotime/normalized_g2"][()]
    assert np.allclose([p[1] for p in ql["g2"]["firstPoints"]], tt[0, : len(ql["g2"]["bins"])])
    assert ql["views"]["metadata"]["c2"] == [1, 4]
    assert ql["views"]["c2"]["bin"] == 1
    assert browser.evaluate("document.getElementById('c2-bin').options.length") == 2
    browser.evaluate(
        "(() => { const s = document.getElementById('c2-bin'); s.value = '4';"
        " s.dispatchEvent(new Event('change')); })()"
    )
    for _ in range(100):
        if browser.evaluate("window.quicklook.views.c2.bin") == 4:
            break
        browser.evaluate("new Promise((r) => setTimeout(r, 50))")
    assert browser.evaluate("window.quicklook.views.c2.bin") == 4
    # the G2 download is the two-time G2, as npy
    npy = _fetch(
        browser,
        "(async () => quicklookViews.npyBlob((await fetch("
        f"'/v1/g2/twotime?file_path={rel}', {{headers: {{Accept: 'application/json'}}}})"
        ".then((r) => r.json())).g2))()",
    )
    np.testing.assert_allclose(np.load(io.BytesIO(npy)), tt, rtol=1e-6)
    # The page asked for multi-tau G2 first: that 404 is the only other one in the console.
    assert [e for e in _errors(browser) if "/v1/g2?" not in e] == []


def test_legacy_file(server: Server, workdir: Path, request: pytest.FixtureRequest) -> None:
    browser = _browser(request)
    path, truth = write_boost_file(workdir / "legacy.hdf")
    rel = path.relative_to(server.root).as_posix()
    ql = _open(browser, f"{server.url}/?file={rel}&bins=0,1,2")
    assert ql["errors"] == []
    views = ql["views"]
    assert views["saxs2d"]["shape"] == list(truth.shape)
    assert views["saxs1d"]["n"] == len(truth.q_bins)
    assert views["intt"]["n"] == 18
    assert views["metadata"]["layout"] == "aps8idi-legacy"
    assert views["c2"] is None
    assert "no two-time maps" in browser.evaluate("document.getElementById('c2-info').innerText")
    legend = ql["g2"]["legend"]
    assert all("φ = " in text for text in legend)
    assert _errors(browser) == []
