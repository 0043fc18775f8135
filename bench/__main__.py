"""``python -m bench``: write the files, start the servers, run the workloads interleaved,
print and save the report, stop the servers (also on error or Ctrl-C)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import FrameType, ModuleType

from bench import (
    data,
    report,
    servers,
    w1_full_map,
    w2_qmap,
    w3_g2,
    w4_geometry_load,
    w5_repeat_read,
    w6_readers_rss,
    w7_gzip_viewers,
    w8_write_mask,
    w9_g2_many,
    w10_links,
    w11_saxs_2d,
    w12_client_choices,
)
from bench.common import MB, Config, Result, process_rss
from bench.env import Env

WORKLOADS: dict[str, ModuleType] = {
    m.NAME: m
    for m in (
        w1_full_map,
        w2_qmap,
        w3_g2,
        w4_geometry_load,
        w5_repeat_read,
        w6_readers_rss,
        w7_gzip_viewers,
        w8_write_mask,
        w9_g2_many,
        w10_links,
        w11_saxs_2d,
        w12_client_choices,
    )
}
REPO = Path(__file__).resolve().parent.parent
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[bench {time.perf_counter() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="few repeats, small files (< 3 min)")
    p.add_argument("--only", help="comma-separated workloads, e.g. w1,w4 (default: all)")
    p.add_argument(
        "--out",
        type=Path,
        help="folder for BENCHMARKS.md and results.json (default: the repository for a "
        "full run of every workload, else bench/out/)",
    )
    p.add_argument("--work", type=Path, help="parent folder of the temporary data directory")
    p.add_argument("--keep", action="store_true", help="keep the data directory and logs")
    p.add_argument("--list", action="store_true", help="list the workloads and exit")
    return p.parse_args(argv)


def select(only: str | None) -> list[str]:
    if not only:
        return list(WORKLOADS)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise SystemExit(f"unknown workload(s) {unknown}; choose from {list(WORKLOADS)}")
    return [n for n in WORKLOADS if n in names]


def prepare(cfg: Config, root: Path, names: list[str]) -> data.Files:
    log(f"writing files into {root}")
    files = data.write_main(cfg, root)
    if "w7" in names:
        data.write_gzip(cfg, files, cfg.viewers)
    fresh = w5_repeat_read.copies_needed(cfg) if "w5" in names else 0
    fresh += w6_readers_rss.copies_needed(cfg) if "w6" in names else 0
    data.write_fresh(files, fresh)
    if "w8" in names:
        for size in cfg.write_sizes:
            data.write_padded(files, size)
    os.sync()  # flush our own dirty pages now rather than during a measurement
    log("files ready")
    return files


def start(
    needs: set[str],
    files: data.Files,
    cfg: Config,
    logdir: Path,
    started: dict[str, servers.Server],
    startup_rss: dict[str, int],
) -> dict[str, str]:
    """Start what the selected workloads need, concurrently, into ``started`` (the caller
    stops them whatever happens); a peer that cannot start is returned as skipped (ours and
    the socket must start)."""
    skipped: dict[str, str] = {}
    qmap_bytes = cfg.shape[0] * cfg.shape[1] * 15  # 3 x f4 + u1 + u2 per pixel
    makers = {
        "ours": lambda: servers.start_ours(files.root, logdir),
        "ours_nocache": lambda: servers.start_ours(
            files.root, logdir, "xpcs-io-nocache", env=servers.NO_CACHE_ENV
        ),
        "socket": lambda: servers.start_socket(qmap_bytes + MB, logdir),
        "h5grove": lambda: servers.start_h5grove(files.root, logdir),
        "tiled": lambda: servers.start_tiled(
            files.tiled_dir, logdir, f"{data.TILED_NODE}{data.QMAP}/sqmap"
        ),
    }
    for name in ("ours", "ours_nocache", "socket", "h5grove", "tiled"):
        if name not in needs:
            continue
        if name == "ours_nocache" and not servers.ours_supports("cache_bytes"):
            skipped[name] = "xpcs-io serve has no result cache to turn off"
            continue
        if name == "h5grove" and not _importable("h5grove"):
            skipped[name] = "h5grove is not installed (run `make bench`, which installs it)"
            continue
        if name == "tiled" and servers.tiled_command() is None:
            skipped[name] = "tiled is not installed (run `make bench`, which installs it)"
            continue
        started[name] = makers[name]()
    for name, srv in list(started.items()):
        try:
            srv.wait_ready(timeout=120 if name == "tiled" else 60)
            log(f"{name} ready on {srv.url} (pid {srv.pid})")
            startup_rss[name] = process_rss(srv.pid)
        except RuntimeError as exc:
            if name in ("ours", "socket"):
                raise
            errors = [ln for ln in srv.tail(4000).splitlines() if "Error" in ln]
            why = errors[-1].strip() if errors else str(exc).splitlines()[0]
            skipped[name] = f"server did not start ({why}); log: {srv.log}"
            srv.stop()
            del started[name]
    return skipped


def _command(srv: servers.Server) -> str:
    """The server's command line with the temporary paths shortened."""
    args = [str(a) for a in srv.proc.args]  # type: ignore[union-attr]
    args[0] = Path(args[0]).name
    return " ".join("<dir>" if "xpcs-io-bench-" in a else a for a in args)


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_workloads(env: Env, names: list[str]) -> dict[str, Result]:
    results: dict[str, Result] = {}
    for name in names:
        mod = WORKLOADS[name]
        log(f"{name} starting")
        t0 = time.perf_counter()
        try:
            res: Result = mod.run(env)
        except Exception:
            res = Result(name, (mod.__doc__ or name).splitlines()[0], "")
            res.errors.append(traceback.format_exc())
            log(f"{name} FAILED:\n{res.errors[-1]}")
        finally:
            env.close_http()
        res.seconds = time.perf_counter() - t0
        results[name] = res
        log(f"{name} done in {res.seconds:.1f} s")
        print(report.results_text({name: res}), flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.list:
        for name, mod in WORKLOADS.items():
            print((mod.__doc__ or name).splitlines()[0])
        return 0
    cfg = Config.quick() if args.quick else Config.full()
    names = select(args.only)
    if args.out is not None:
        md_path, json_path = args.out / "BENCHMARKS.md", args.out / "results.json"
    elif cfg.mode == "full" and names == list(WORKLOADS):
        md_path, json_path = REPO / "BENCHMARKS.md", REPO / "bench" / "results.json"
    else:
        md_path, json_path = REPO / "bench/out/BENCHMARKS.md", REPO / "bench/out/results.json"
    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with it ignored
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="xpcs-io-bench-", dir=args.work))
    logdir = work / "logs"
    logdir.mkdir()
    started: dict[str, servers.Server] = {}
    env: Env | None = None
    load_before = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    try:
        files = prepare(cfg, work / "data", names)
        needs = set().union(*(WORKLOADS[n].NEEDS for n in names))
        startup_rss: dict[str, int] = {}
        skipped = start(needs, files, cfg, logdir, started, startup_rss)
        server_cmds = {k: _command(v) for k, v in started.items()}
        with asyncio.Runner() as runner:
            env = Env(cfg, files, started, runner, logdir, skipped=skipped)
            env.startup_rss = startup_rss
            results = run_workloads(env, names)
        ts = report.targets(results)
        info = {
            "mode": cfg.mode,
            "date": date,
            "seconds": time.perf_counter() - T0,
            "load_before": load_before,
            "load_after": ", ".join(f"{v:.2f}" for v in os.getloadavg()),
            "shape": list(cfg.shape),
            "n_delay": cfg.n_delay,
            "n_q": cfg.n_q,
            "workloads": names,
            "config": cfg.__dict__,
            "machine": report.machine(),
            "servers": server_cmds,
        }
        report.write(md_path, json_path, info, results, ts, skipped)
        print(report.targets_text(ts), flush=True)
        log(f"wrote {md_path} and {json_path}")
        failed = any(r.errors for r in results.values())
        return 1 if failed else 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        for srv in started.values():
            srv.stop()
        if env is not None:
            env.pool.shutdown()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
