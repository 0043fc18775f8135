"""The API documentation pages (/docs: Swagger UI, /redoc: ReDoc) in real headless Chromium:
they must render the app's OpenAPI 3.1 document, listing its operations, from assets the
server itself serves."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from .conftest import Server
from .test_quicklook import DevTools, chromium

TIMEOUT = 30.0


def _open(devtools: DevTools, url: str) -> None:
    devtools.events.clear()
    devtools.call("Page.navigate", {"url": url})
    devtools.wait_event("Page.loadEventFired", TIMEOUT)


def _wait_for(devtools: DevTools, expression: str) -> Any:
    deadline = time.monotonic() + TIMEOUT
    while True:
        value = devtools.evaluate(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            text = devtools.evaluate("document.body.innerText")
            raise AssertionError(f"{expression} still false; page shows: {text[:2000]!r}")
        time.sleep(0.2)


def _fetched(devtools: DevTools) -> list[str]:
    """The URLs the page fetched, once every request it made has ended (requests the page's
    content policy blocked excluded)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        started = {
            e["params"]["requestId"]: e["params"]["request"]["url"]
            for e in devtools.events
            if e["method"] == "Network.requestWillBeSent"
            and not e["params"]["request"]["url"].startswith(("data:", "blob:"))
        }
        ended = {
            e["params"]["requestId"]: e["params"].get("blockedReason")
            for e in devtools.events
            if e["method"] in ("Network.loadingFinished", "Network.loadingFailed")
        }
        if started.keys() <= ended.keys() or time.monotonic() > deadline:
            return [url for rid, url in started.items() if ended.get(rid) != "csp"]
        devtools.evaluate("1")  # lets the events that arrived meanwhile in
        time.sleep(0.1)


def _operations(server: Server) -> list[tuple[str, str]]:
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    return [(m.upper(), p) for p, methods in spec["paths"].items() for m in methods]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with chromium(tmp_path_factory.mktemp("chromium-docs")) as devtools:
        for domain in ("Runtime", "Log", "Page", "Network"):
            devtools.call(f"{domain}.enable")
        yield devtools


def test_swagger_ui_lists_every_operation(server: Server, browser: DevTools) -> None:
    operations = _operations(server)
    _open(browser, f"{server.url}/docs")
    shown = _wait_for(
        browser,
        "document.querySelectorAll('.opblock').length > 0 && "
        "Array.from(document.querySelectorAll('.opblock-summary'), e => [e.querySelector("
        "'.opblock-summary-method').innerText, e.querySelector('.opblock-summary-path')"
        ".getAttribute('data-path')])",
    )
    text = browser.evaluate("document.body.innerText")
    assert "Unable to render" not in text
    assert sorted(tuple(x) for x in shown) == sorted(operations)
    requested = _fetched(browser)
    assert any(u.endswith("/openapi.json") for u in requested), requested
    assert all(u.startswith(server.url) for u in requested), requested


def test_redoc_lists_every_operation(server: Server, browser: DevTools) -> None:
    operations = _operations(server)
    _open(browser, f"{server.url}/redoc")
    summaries = _wait_for(
        browser,
        "document.querySelectorAll('[data-section-id^=\"operation/\"]').length > 0 && "
        "Array.from(document.querySelectorAll('[data-section-id^=\"operation/\"]'),"
        " e => e.getAttribute('data-section-id'))",
    )
    spec = httpx.get(f"{server.url}/openapi.json").json()
    ids = {op["operationId"] for methods in spec["paths"].values() for op in methods.values()}
    assert len(ids) == len(operations)
    assert {s.removeprefix("operation/") for s in summaries} == ids
    assert "Something went wrong" not in browser.evaluate("document.body.innerText")
    requested = _fetched(browser)
    assert all(u.startswith(server.url) for u in requested), requested
