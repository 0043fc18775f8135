"""w10: typed read_qmap over a rate-limited link (100 Mbit/s, 1 Gbit/s, 10 Gbit/s).

The servers run in one network namespace and the timed client in another, joined by a veth
pair with a ``tc tbf`` limit on both ends (``bench.netns``): the bytes cross a link of that
rate instead of loopback. Ours runs as shipped and with its result cache off, each read with
the client's ``compression="auto"`` (off loopback: blosc2-zstd), ``"none"`` (raw arrays) and
``"blosc2-lz4"``; h5grove serves the three float maps (format=bin, identity) and tiled's own
Python client reads them with the encoding it negotiates (its best). Needs root; skipped with
a note otherwise. ``XPCS_IO_BENCH_W10_RATES=1000`` runs one rate only (the N1/N2 rows, in
about 40 s instead of 160 s).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench import netns, servers
from bench.common import Result, Row
from bench.data import QMAP, TILED_NODE
from bench.env import Env

NAME = "w10"
NEEDS: set[str] = set()
RATES = (100, 1000, 10_000)  # Mbit/s
#: A comma-separated subset of RATES to run (e.g. "1000" for the N1 and N2 rows only).
RATES_ENV = "XPCS_IO_BENCH_W10_RATES"
MAPS = ("sqmap", "dqmap", "phis")
LABELS = {
    "ours_auto": ("ours: RemoteHDF5Facade", "read_qmap, compression=auto (blosc2-zstd)"),
    "ours_none": ("ours: RemoteHDF5Facade", "read_qmap, compression=none"),
    "ours_blosc2-lz4": ("ours: RemoteHDF5Facade", "read_qmap, compression=blosc2-lz4"),
    "ours_cold_auto": ("ours: RemoteHDF5Facade", "read_qmap, auto, server result cache off"),
    "ours_cold_none": ("ours: RemoteHDF5Facade", "read_qmap, none, server result cache off"),
    "ours_cold_blosc2-lz4": ("ours: RemoteHDF5Facade", "read_qmap, lz4, server result cache off"),
    "h5grove": ("h5grove + httpx", "the 3 float maps, GET /data format=bin, identity"),
    "tiled": ("tiled Python client", "the 3 float maps, node.read(), its negotiated encoding"),
}


def _repeats(env: Env, mbit: int) -> int:
    if env.cfg.mode == "quick":
        return 2
    return {100: 3, 1000: 6, 10_000: 8}[mbit]


def _start(env: Env, link: netns.Link) -> dict[str, str]:
    """Start the servers inside the servers' namespace; returns system -> URL."""
    root, logdir, host = env.files.root, env.logdir, link.server_ip
    prefix = link.prefix(link.server_ns)
    py = sys.executable
    ours = [py, "-m", "xpcs_io.tools.cli", "serve", "--root", str(root), "--host", host]
    ours += ["--log-level", "warning", "--allow-anonymous"]
    cmds: dict[str, tuple[list[str], int, dict[str, str]]] = {
        "ours": ([*ours, "--port", "18001"], 18001, {}),
        "ours_nocache": ([*ours, "--port", "18002"], 18002, servers.NO_CACHE_ENV),
        "h5grove": (
            [py, "-m", "bench.h5grove_app", "--root", str(root), "--host", host, "--port", "18003"],
            18003,
            {},
        ),
    }
    tiled = servers.tiled_command()
    if tiled is not None:
        tmp = logdir / "tiled-link-tmp"
        tmp.mkdir(exist_ok=True)
        cmd = [*tiled, "serve", "directory", str(env.files.tiled_dir), "--public"]
        cmd += ["--api-key", servers.TILED_API_KEY, "--host", host, "--port", "18004"]
        cmds["tiled"] = (cmd, 18004, {"TMPDIR": str(tmp)})
    urls: dict[str, str] = {}
    for name, (cmd, port, extra) in cmds.items():
        key = f"link_{name}"
        srv = servers.spawn(key, prefix + cmd, port, logdir, lambda _: True, extra)
        env.servers[key] = srv
        urls[name] = f"http://{host}:{port}"
    return urls


def run(env: Env) -> Result:
    res = Result(
        NAME,
        "Typed read_qmap over a rate-limited link: 100 Mbit/s, 1 Gbit/s, 10 Gbit/s",
        "Servers in one network namespace, the client in another, joined by a veth pair "
        "limited by tc tbf on both ends. Ours: read_qmap (3 maps + mask + partition) with "
        "the client's compression auto (blosc2-zstd off loopback), none and blosc2-lz4, "
        "against the server as shipped and with its result cache off; h5grove: the 3 float "
        "maps raw; tiled: the 3 float maps through its Python client (best negotiated "
        "encoding). Interleaved rounds per rate after one warm-up; medians.",
    )
    why = netns.unavailable()
    if why is not None:
        res.notes.append(f"skipped: {why}")
        return res
    link = netns.Link.make()
    try:
        urls = _start(env, link)
        chosen = os.environ.get(RATES_ENV)
        rates = [int(r) for r in chosen.split(",")] if chosen else list(RATES)
        for mbit in rates:
            link.set_rate(mbit)
            spec = {
                "urls": urls,
                "main": env.files.main,
                "tiled_node": TILED_NODE,
                "qmap": QMAP,
                "maps": list(MAPS),
                "repeats": _repeats(env, mbit),
                "api_key": servers.TILED_API_KEY,
            }
            cmd = link.prefix(link.client_ns)
            cmd += [sys.executable, "-m", "bench.linkclient", json.dumps(spec)]
            done = subprocess.run(
                cmd, capture_output=True, text=True, cwd=Path(__file__).parent.parent, check=False
            )
            if done.returncode != 0:
                raise RuntimeError(f"link client at {mbit} Mbit/s failed: {done.stderr[-3000:]}")
            got = json.loads(done.stdout.strip().splitlines()[-1])
            for key, times in got["times"].items():
                system, what = LABELS[key]
                rate = f"{mbit // 1000} Gbit/s" if mbit >= 1000 else f"{mbit} Mbit/s"
                row = Row(f"{key}_{mbit}", system, f"{rate}: {what}", times)
                row.payload = got["payload"][key]
                cpu = got["cpu"][key]
                row.extra["client_cpu_s"] = sum(cpu) / len(cpu) if cpu else None
                link_s = row.payload * 8 / (mbit * 1e6)
                row.note = f"raw bytes at link rate: {link_s * 1e3:.0f} ms"
                res.rows.append(row)
    finally:
        for key in [k for k in env.servers if k.startswith("link_")]:
            env.servers.pop(key).stop()
        link.close()
    return res
