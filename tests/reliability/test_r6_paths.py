"""R6: path escapes. Over 30 ways of naming a file outside the data root, tried on every read
endpoint (and writes, and the file listing), against a server whose root sits beside an
"outside" folder holding a planted secret (a token string and a distinctive float, in an HDF5
file and a text file).

Targets: no response ever contains a byte of the secret, nothing outside changes, each
pattern answers its documented status, and a pattern naming an existing outside file answers
exactly like the same pattern naming a missing one (status, error and detail).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import httpx
import numpy as np
import pytest

from xpcs_io import wire
from xpcs_io.tools.demo import DemoSpec, write_native_file

from ..conftest import Server
from .support import Figure, geometry, server_5xx, serving

SECRET_TOKEN = "XPCS-SECRET-7f3a9c1e"
SECRET_FLOAT = 31337.25  # exact in float32 and float64
SECRET_BYTES = [
    SECRET_TOKEN.encode(),
    struct.pack(">d", SECRET_FLOAT),  # msgpack float64
    struct.pack("<d", SECRET_FLOAT),
    struct.pack("<f", SECRET_FLOAT),  # float32 array payload
    b"31337.25",  # JSON
]
READS = ("/v1/geometry", "/v1/qmap", "/v1/g2", "/v1/mask", "/v1/mask/versions", "/v1/partition")


@dataclass
class Pattern:
    """A way of naming a file; ``raw`` patterns go into the query string as they are (the
    server decodes them once), others are encoded by the client."""

    name: str
    value: str
    status: int
    error: str | None
    raw: bool = False
    endpoints: tuple[str, ...] = READS
    write: bool = False  # also try a write (which must be refused)
    twin: str | None = None  # the same pattern naming a missing outside target
    tokens: tuple[str, ...] = ("secret", "missing")


def _plant(outside: Path) -> None:
    outside.mkdir()
    path = write_native_file(outside / "secret.hdf5", DemoSpec(shape=(16, 16), n_delay=4, n_q=2))
    with h5py.File(path, "a") as f:
        f["/xpcs/metadata/bcx"][()] = SECRET_FLOAT
        f["/xpcs/qmap/sqmap"][...] = np.float32(SECRET_FLOAT)
        f["/xpcs/g2/g2"][...] = np.float32(SECRET_FLOAT)
        f["/xpcs/qmap"].attrs["note"] = SECRET_TOKEN
        del f["/xpcs/qmap/sqmap_unit"]
        f["/xpcs/qmap/sqmap_unit"] = SECRET_TOKEN  # an invalid unit naming the secret
        f["/simplemask/mask/description"] = SECRET_TOKEN
    (outside / "secret.txt").write_text(SECRET_TOKEN * 10)


def _external(path: Path, target: str) -> None:
    with h5py.File(path, "w") as f:
        f["xpcs/metadata"] = h5py.ExternalLink(target, "/xpcs/metadata")
        f["xpcs/qmap"] = h5py.ExternalLink(target, "/xpcs/qmap")
        f["xpcs/g2"] = h5py.ExternalLink(target, "/xpcs/g2")


def _virtual(path: Path, target: str) -> None:
    layout = h5py.VirtualLayout(shape=(16, 16), dtype="f4")
    layout[:] = h5py.VirtualSource(target, "/xpcs/qmap/sqmap", shape=(16, 16))
    with h5py.File(path, "w") as f:
        g = f.create_group("xpcs/qmap")
        g.create_virtual_dataset("sqmap", layout, fillvalue=0)
        for name in ("dqmap", "phis"):
            g[name] = np.zeros((16, 16), "f4")


def _soft_chain(path: Path, target: str) -> None:
    with h5py.File(path, "w") as f:
        f["xpcs/metadata"] = h5py.SoftLink("/a")
        f["a"] = h5py.SoftLink("/b")
        f["b"] = h5py.ExternalLink(target, "/xpcs/metadata")


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("r6")
    root, outside = base / "root", base / "outside"
    _plant(outside)
    root.mkdir()
    write_native_file(root / "small.hdf5", DemoSpec(shape=(16, 16), n_delay=4, n_q=2))
    (root / "subdir").mkdir()
    write_native_file(root / "subdir" / "inner.hdf5", DemoSpec(shape=(8, 8), n_delay=4, n_q=2))
    for kind, target in (
        ("secret", outside / "secret.hdf5"),
        ("missing", outside / "missing.hdf5"),
    ):
        (root / f"escape-{kind}.hdf5").symlink_to(target)
        (root / f"chain-{kind}-3.hdf5").symlink_to(target)
        (root / f"chain-{kind}-2.hdf5").symlink_to(f"chain-{kind}-3.hdf5")
        (root / f"chain-{kind}-1.hdf5").symlink_to(f"chain-{kind}-2.hdf5")
        for folder, make in (("ext", _external), ("vds", _virtual), ("soft", _soft_chain)):
            (root / f"{folder}-{kind}").mkdir()
            make(root / f"{folder}-{kind}" / "f.hdf5", str(target))
        nest = root / f"nestext-{kind}"
        nest.mkdir()
        with h5py.File(nest / "b.hdf5", "w") as f:
            f["xpcs/metadata"] = h5py.ExternalLink(str(target), "/xpcs/metadata")
        with h5py.File(nest / "a.hdf5", "w") as f:
            f["xpcs/metadata"] = h5py.ExternalLink("b.hdf5", "/xpcs/metadata")
        (root / f"nestvds-{kind}").mkdir()
        _virtual(root / f"nestvds-{kind}" / "v1.hdf5", str(target))
        _virtual(root / f"nestvds-{kind}" / "v2.hdf5", "v1.hdf5")
        rel = f"../../outside/{target.name}"
        (root / f"relext-{kind}").mkdir()
        _external(root / f"relext-{kind}" / "f.hdf5", rel)
    (root / "linkdir").symlink_to(outside, target_is_directory=True)
    (root / "updir").symlink_to("..", target_is_directory=True)
    return root, outside


def _patterns(outside: Path) -> list[Pattern]:
    p: list[Pattern] = []

    def escape(name: str, value: str, *, raw: bool = False, write: bool = False) -> None:
        twin = value.replace("secret", "missing")
        p.append(Pattern(name, value, 403, "PermissionError", raw=raw, write=write, twin=twin))

    escape("dot-dot", "../outside/secret.hdf5", write=True)
    escape("absolute", str(outside / "secret.hdf5"), write=True)
    escape("double slash absolute", "/" + str(outside / "secret.hdf5"))
    escape("percent-encoded", "%2e%2e%2foutside%2fsecret.hdf5", raw=True, write=True)
    escape("percent-encoded slashes only", "..%2F..%2Foutside/secret.hdf5", raw=True)
    escape("backslashes", "..\\outside\\secret.hdf5", write=True)
    escape("NUL byte", "small.hdf5%00/../../outside/secret.hdf5", raw=True, write=True)
    escape("overlong path", "x/" * 2100 + "../outside/secret.hdf5")
    escape("dot slash dot-dot", "./../outside/secret.hdf5")
    escape("dot-dot after a folder", "subdir/../../outside/secret.hdf5", write=True)
    escape("dot-dot after a file", "subdir/inner.hdf5/../../../outside/secret.hdf5")
    escape("tilde", "~/../outside/secret.hdf5")
    escape("symlink out of the root", "escape-secret.hdf5", write=True)
    escape("symlinked directory", "linkdir/secret.hdf5", write=True)
    escape("symlink to the parent", "updir/outside/secret.hdf5", write=True)
    escape("symlink chain", "chain-secret-1.hdf5", write=True)
    for name, folder, endpoints in (
        ("HDF5 external link", "ext", ("/v1/geometry", "/v1/qmap", "/v1/g2")),
        ("HDF5 external link, relative", "relext", ("/v1/geometry", "/v1/qmap", "/v1/g2")),
        ("HDF5 virtual dataset", "vds", ("/v1/qmap",)),
    ):
        p.append(
            Pattern(
                name,
                f"{folder}-secret/f.hdf5",
                403,
                "PermissionError",
                endpoints=endpoints,
                twin=f"{folder}-missing/f.hdf5",
            )
        )
    p += [
        Pattern("double-encoded", "%252e%252e%252foutside%252fsecret.hdf5", 404, "FileNotFoundError", raw=True),
        Pattern("overlong UTF-8 dots", "%c0%ae%c0%ae/outside/secret.hdf5", 404, "FileNotFoundError", raw=True),
        Pattern("U+2024 one-dot leaders", "\u2024\u2024/outside/secret.hdf5", 404, "FileNotFoundError"),
        Pattern("U+FF0E fullwidth dots", "\uff0e\uff0e/outside/secret.hdf5", 404, "FileNotFoundError"),
        Pattern("U+2215 division slashes", "..\u2215outside\u2215secret.hdf5", 404, "FileNotFoundError"),
        Pattern("U+FF0F fullwidth slashes", "..\uff0foutside\uff0fsecret.hdf5", 404, "FileNotFoundError"),
        Pattern("file URL", "file://" + str(outside / "secret.hdf5"), 404, "FileNotFoundError"),
        Pattern("empty path", "", 422, "ValueError"),
        Pattern("the root itself", ".", 403, "PermissionError"),
        Pattern("the root, with slashes", "./", 403, "PermissionError"),
        Pattern("a directory", "subdir", 422, "HDF5ValidationError"),
        Pattern("a symlinked directory", "linkdir", 403, "PermissionError"),
        Pattern(
            "parameter pollution",
            "small.hdf5&file_path=../outside/secret.hdf5",
            403,
            "PermissionError",
            raw=True,
        ),
    ]  # fmt: skip
    return p


LISTING_PREFIXES = [
    ("..", 403),
    ("../outside", 403),
    ("updir", 403),
    ("updir/outside", 403),
    ("linkdir", 403),
    ("%2e%2e", 403),
    ("subdir/../..", 403),
]


@dataclass
class Seen:
    requests: int = 0
    leaks: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)


def _request(
    http: httpx.Client, method: str, endpoint: str, pattern: Pattern, value: str, seen: Seen
) -> httpx.Response:
    extra = {"q_idx": "0"} if endpoint == "/v1/c2" else {}
    body = None
    headers = {}
    if method == "POST":
        m = wire.pack(
            {"mask": np.ones((16, 16), np.uint8), "metadata": geometry((16, 16)).to_dict()}
        )
        body, headers = m, {"content-type": wire.MEDIA_TYPE}
    if pattern.raw:
        url = f"{endpoint}?file_path={value}"
        if extra:
            url += "&q_idx=0"
        r = http.request(method, url, content=body, headers=headers)
    else:
        r = http.request(
            method, endpoint, params={"file_path": value, **extra}, content=body, headers=headers
        )
    seen.requests += 1
    blob = r.content + json.dumps(dict(r.headers)).encode()
    for secret in SECRET_BYTES:
        if secret in blob:
            seen.leaks.append(f"{pattern.name} {method} {endpoint}: response holds {secret!r}")
    if r.status_code >= 500:
        seen.server_errors.append(f"{pattern.name} {method} {endpoint}: {r.status_code}")
    return r


def _outcome(r: httpx.Response) -> tuple[int, str | None, str]:
    if r.headers.get("content-type", "").startswith("application/problem+json"):
        doc = json.loads(r.content)
        return r.status_code, doc.get("error"), str(doc.get("detail"))
    return r.status_code, None, ""


def _norm(outcome: tuple[int, str | None, str], pattern: Pattern) -> str:
    text = repr(outcome)
    for token in pattern.tokens:
        text = text.replace(token, "<name>")
    return text


def _fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def r6_server(
    layout: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    root, _ = layout
    with serving(root, tmp_path_factory.mktemp("r6-logs") / "server.log") as srv:
        yield srv


def test_path_escapes(r6_server: Server, layout: tuple[Path, Path]) -> None:
    fig = Figure("R6", "path-escapes", "Ways out of the data root, and what they reveal")
    _, outside = layout
    patterns = _patterns(outside)
    before = _fingerprint(outside)
    seen = Seen()
    existence_leaks: list[str] = []
    with httpx.Client(base_url=r6_server.url, timeout=30) as http:
        for pattern in patterns:
            for endpoint in pattern.endpoints:
                r = _request(http, "GET", endpoint, pattern, pattern.value, seen)
                status, error, detail = _outcome(r)
                if (status, error) != (pattern.status, pattern.error):
                    seen.wrong.append(
                        f"{pattern.name} GET {endpoint}: {status} {error}, "
                        f"want {pattern.status} {pattern.error}"
                    )
                if pattern.twin is not None:
                    twin = _outcome(_request(http, "GET", endpoint, pattern, pattern.twin, seen))
                    if _norm((status, error, detail), pattern) != _norm(twin, pattern):
                        existence_leaks.append(
                            f"{pattern.name} {endpoint}: existing {(status, error, detail)} "
                            f"vs missing {twin}"
                        )
            if pattern.write:
                r = _request(http, "POST", "/v1/mask", pattern, pattern.value, seen)
                status, error, _ = _outcome(r)
                if (status, error) != (403, "PermissionError"):
                    seen.wrong.append(f"{pattern.name} POST /v1/mask: {status} {error}")
        # The listing: escapes refused, and the root's listing shows nothing from outside.
        for prefix, want in LISTING_PREFIXES:
            raw = Pattern(f"listing {prefix}", prefix, want, "PermissionError", raw=True)
            r = http.get(f"/v1/files?prefix={prefix}")
            seen.requests += 1
            if r.status_code != want:
                seen.wrong.append(f"GET /v1/files?prefix={prefix}: {r.status_code}, want {want}")
            if any(s in r.content for s in SECRET_BYTES) or b"secret" in r.content:
                seen.leaks.append(f"{raw.name}: names an outside file")
        listing = http.get("/v1/files", headers={"accept": "application/json"}).json()
        seen.requests += 1
        outside_names = [
            e["path"]
            for e in listing
            if e["path"].startswith(("escape-", "chain-", "linkdir/", "updir/"))
        ]
        if outside_names:
            seen.leaks.append(f"the root listing shows outside files: {outside_names}")
        server_side = server_5xx(r6_server.url)
    changed = sorted(set(before.items()) ^ set(_fingerprint(outside).items()))
    fig["patterns"] = len(patterns)
    fig["requests"] = seen.requests
    fig["pattern names"] = [p.name for p in patterns]
    fig.notes += (seen.leaks + seen.wrong + existence_leaks + seen.server_errors)[:60]
    fig.target("patterns tried", len(patterns), ">= 20", len(patterns) >= 20)
    fig.target("responses holding secret bytes", len(seen.leaks), "0", not seen.leaks)
    fig.target("files changed outside the root", len(changed), "0", not changed)
    fig.target(
        "existing vs missing outside target told apart",
        len(existence_leaks),
        "0",
        not existence_leaks,
    )
    fig.target("statuses other than documented", len(seen.wrong), "0", not seen.wrong)
    n5xx = max(len(seen.server_errors), server_side)
    fig.target("5xx responses", n5xx, "0", n5xx == 0)
    fig.check()


LINK_BYPASSES = [
    Pattern(
        "HDF5 soft link chain ending in an external link",
        "soft-secret/f.hdf5",
        403,
        "PermissionError",
        endpoints=("/v1/geometry",),
        twin="soft-missing/f.hdf5",
    ),
    Pattern(
        "HDF5 external link to an inside file whose object links outside",
        "nestext-secret/a.hdf5",
        403,
        "PermissionError",
        endpoints=("/v1/geometry",),
        twin="nestext-missing/a.hdf5",
    ),
    Pattern(
        "HDF5 virtual dataset whose inside source is a virtual dataset from outside",
        "nestvds-secret/v2.hdf5",
        403,
        "PermissionError",
        endpoints=("/v1/qmap",),
        twin="nestvds-missing/v2.hdf5",
    ),
]


BUG_LINKS = (
    "BUG: the HDF5 link guard checks only the first hop; soft-link chains, external links "
    "via an inside file and nested virtual datasets reach files outside the root"
)


@pytest.mark.parametrize("pattern", LINK_BYPASSES, ids=[p.name for p in LINK_BYPASSES])
def test_multi_hop_hdf5_links_out_of_the_root_are_refused(
    r6_server: Server, pattern: Pattern
) -> None:
    slug = pattern.value.split("-", 1)[0]
    fig = Figure("R6", f"link-bypass-{slug}", pattern.name, bug=BUG_LINKS)
    seen = Seen()
    endpoint = pattern.endpoints[0]
    with httpx.Client(base_url=r6_server.url, timeout=30) as http:
        got = _outcome(_request(http, "GET", endpoint, pattern, pattern.value, seen))
        twin = _outcome(_request(http, "GET", endpoint, pattern, str(pattern.twin), seen))
    fig["existing target"] = repr(got)
    fig["missing target"] = repr(twin)
    fig.target("responses holding secret bytes", len(seen.leaks), "0", not seen.leaks)
    want = (pattern.status, pattern.error)
    fig.target("status", list(got[:2]), repr(want), got[:2] == want)
    same = _norm(got, pattern) == _norm(twin, pattern)
    fig.target("existing vs missing told apart", not same, "False", same)
    fig.check()
