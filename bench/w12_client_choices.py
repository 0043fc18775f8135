"""w12: the client's own choices, measured: its HTTP/1.1 drivers against the standard
library's ``http.client`` (``readinto``) and httpx for a whole q-map body, and its msgpack
decoder (``xpcs_io.wire``) against msgspec's zero-copy typed decoding, q-map and G2,
plain and blosc2-compressed."""

from __future__ import annotations

import http.client
import statistics
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np

from bench.common import Case, Result, Row, interleave
from bench.env import Env
from xpcs_io import arraycodec, wire
from xpcs_io.client.core import MAX_DECODED_BYTES, Attempt
from xpcs_io.client.drivers import AsyncSockets, Sockets
from xpcs_io.client.transport import Origin, Request, ResponseReader

NAME = "w12"
NEEDS = {"ours"}
DECODE_REPEATS = 15


def _request(origin: Origin, path: str, params: str, codec: str | None) -> Request:
    headers = {"accept": "application/msgpack"}
    if codec:
        headers[arraycodec.HEADER] = codec
    target = f"{path}?{params}"
    return Request("GET", origin.url + target, target, headers)


def _fetch(origin: Origin, path: str, params: str, codec: str | None) -> np.ndarray[Any, Any]:
    sockets = Sockets(origin, 300)
    step = Attempt(_request(origin, path, params, codec), ResponseReader("GET"))
    sockets.move(step)
    sockets.close()
    body: np.ndarray[Any, Any] = step.reader.response().body
    return body


def _msgspec_decoder() -> Callable[[Any], dict[str, Any]] | None:
    try:
        import msgspec
    except ImportError:
        return None

    class ArrayMap(msgspec.Struct, forbid_unknown_fields=True):
        dtype: str
        shape: list[int]
        data: memoryview  # a writable view into the body: no copy
        codec: str | None = None

    decoder = msgspec.msgpack.Decoder(dict[str, ArrayMap | str | int | float | bool | None])

    def decode(body: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in decoder.decode(body).items():
            if isinstance(value, ArrayMap):
                fields = {"dtype": value.dtype, "shape": value.shape, "data": value.data}
                if value.codec is not None:
                    fields["codec"] = value.codec
                value = wire.decode_array(fields, codecs=True, max_nbytes=MAX_DECODED_BYTES)
            out[key] = value
        return out

    return decode


def _msgspec_generic() -> Callable[[Any], dict[str, Any]] | None:
    """msgspec's untyped decoder, as a full replacement of ``wire.unpack`` would need it
    (the client's messages nest free-form maps, which a typed decoder cannot describe):
    bin values come out as read-only bytes, so every array is copied once more."""
    try:
        import msgspec
    except ImportError:
        return None
    decoder = msgspec.msgpack.Decoder()

    def decode(body: Any) -> dict[str, Any]:
        return {
            key: wire.decode_array(value, codecs=True, max_nbytes=MAX_DECODED_BYTES)
            if wire.is_array_map(value)
            else value
            for key, value in decoder.decode(body).items()
        }

    return decode


def _own_decode(body: Any) -> dict[str, Any]:
    out: dict[str, Any] = wire.unpack(memoryview(body), codecs=True, max_decoded=MAX_DECODED_BYTES)
    return out


def run(env: Env) -> Result:
    cfg, files = env.cfg, env.files
    res = Result(
        NAME,
        "Client choices: HTTP/1.1 driver and msgpack decoder",
        "Transport: the whole raw q-map answer (GET /v1/qmap, no compression) into one "
        "buffer, interleaved: our blocking driver (recv_into the reader's numpy buffer), "
        "http.client with readinto into a preallocated numpy buffer (keep-alive), our asyncio "
        "driver, and httpx's default transport (.content). Decoding: the same answer bodies, "
        "fetched once, decoded (interleaved) to validated numpy arrays by our parser "
        "(wire.unpack); by msgspec's typed decoder (arrays as writable memoryviews into the "
        "body, then the same wire.decode_array checks; flat maps only); by msgspec's untyped "
        "decoder (bin values as bytes, so arrays are copied). Medians, same run.",
    )
    origin = Origin.parse(env.url("ours"))
    qmap_params = f"file_path={files.main}"
    qmap_request = _request(origin, "/v1/qmap", qmap_params, None)
    sockets = Sockets(origin, 300)
    async_sockets = AsyncSockets(origin, 300)
    runner = env.runner
    conn = http.client.HTTPConnection(origin.host, origin.port, timeout=300)
    plain = httpx.Client(timeout=300)

    def own_sync() -> int:
        step = Attempt(qmap_request, ResponseReader("GET"))
        sockets.move(step)
        return int(step.reader.response().body.nbytes)

    def own_async() -> int:
        step = Attempt(qmap_request, ResponseReader("GET"))
        runner.run(async_sockets.move(step))
        return int(step.reader.response().body.nbytes)

    def stdlib() -> int:
        conn.request("GET", qmap_request.target, headers=qmap_request.headers)
        response = conn.getresponse()
        n = int(response.getheader("content-length") or 0)
        buf = np.empty(n, dtype=np.uint8)
        view, got = memoryview(buf), 0
        while got < n:
            got += response.readinto(view[got:])
        return got

    def with_httpx() -> int:
        return len(plain.get(qmap_request.url, headers=qmap_request.headers).content)

    cases: list[Case] = [
        ("own_sync", own_sync),
        ("http_client", stdlib),
        ("own_async", own_async),
        ("httpx", with_httpx),
    ]
    labels = {
        "own_sync": ("ours: blocking driver", "socket recv_into the reader's buffer"),
        "http_client": ("http.client", "HTTPResponse.readinto into np.empty"),
        "own_async": ("ours: asyncio driver", "loop.sock_recv_into the reader's buffer"),
        "httpx": ("httpx default transport", "Client.get().content"),
    }
    repeats = max(5, cfg.repeats)
    timing = interleave(cases, repeats, warmup=1)
    for key, _ in cases:
        res.rows.append(timing.row(key, *labels[key]))
    sockets.close()
    async_sockets.close()
    conn.close()
    plain.close()

    ms_decode = _msgspec_decoder()
    ms_generic = _msgspec_generic()
    if ms_decode is None:
        res.notes.append("msgspec is not installed: decoding compared with nothing")
    for what, path, params in (
        ("q-map", "/v1/qmap", qmap_params),
        ("G2", "/v1/g2", f"file_path={files.main}"),
    ):
        for codec in (None, "blosc2-zstd"):
            if codec and not arraycodec.available():
                continue
            body = _fetch(origin, path, params, codec)
            label = f"{what} {codec or 'raw'} ({body.nbytes / 1e6:.1f} MB body)"
            decoders: dict[str, tuple[str, Callable[[Any], Any]]] = {
                "wire": ("ours: wire.unpack", _own_decode)
            }
            if ms_decode is not None and ms_generic is not None:
                decoders["msgspec"] = ("msgspec typed (flat maps only)", ms_decode)
                decoders["msgspec_any"] = ("msgspec untyped", ms_generic)
            decode_cases: list[Case] = [
                (key, lambda fn=fn, body=body: len(fn(body)))  # type: ignore[misc]
                for key, (_, fn) in decoders.items()
            ]
            times = interleave(decode_cases, DECODE_REPEATS, warmup=1).times
            for key, (system, _) in decoders.items():
                row_key = f"decode_{what}_{codec or 'raw'}_{key}"
                res.rows.append(Row(row_key, system, f"decode {label}", times[key]))
    own = statistics.median(timing.times["own_sync"])
    std = statistics.median(timing.times["http_client"])
    res.notes.append(
        f"q-map transfer: own blocking driver {own * 1e3:.1f} ms, http.client readinto "
        f"{std * 1e3:.1f} ms (medians of {repeats}). The client keeps its own parser: "
        "http.client is not faster, and the asyncio driver cannot use it, so one parser "
        "serves both drivers."
    )
    res.notes.append(
        "Decoding: msgspec's typed decoder saves tens of microseconds on flat maps, but "
        "cannot describe the client's nested answers (many-file reads, trees, metadata); "
        "its untyped decoder copies every array. The client keeps wire.unpack, which the "
        "server needs anyway."
    )
    return res
