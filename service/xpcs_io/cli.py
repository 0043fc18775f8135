"""The ``xpcs-io`` command: serve a data root, write demo data, validate or inspect a file."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    from xpcs_io.logs import configure_logging
    from xpcs_io.server import create_app
    from xpcs_io.settings import Settings

    overrides: dict[str, Any] = {
        name: value
        for name, value in {
            "data_root": args.root,
            "host": args.host,
            "port": args.port,
            "pool_size": args.pool_size,
            "api_keys_file": args.api_keys_file,
            "log_level": args.log_level,
            "workers": args.workers,
        }.items()
        if value is not None
    }
    if args.allow_anonymous:
        overrides["allow_anonymous"] = True
    if args.allowed_host:
        overrides["allowed_hosts"] = ",".join(args.allowed_host)
    try:
        settings = Settings(**overrides)
        app = create_app(settings)
    except (ValueError, OSError) as exc:
        print(f"xpcs-io serve: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    from xpcs_io.server.protocol import serve_options

    common: dict[str, Any] = {"host": settings.host, "port": settings.port}
    common.update(serve_options(settings))
    if settings.workers == 1:
        from xpcs_io.server.serving import run

        del common["header_timeout"]  # set for this process by serve_options
        run(app, **common)
        return 0
    from xpcs_io.server.supervisor import serve_workers

    del common["host"], common["port"]
    return serve_workers(settings, common)


def _demo(args: argparse.Namespace) -> int:
    from xpcs_io.demo import write_demo_dir

    for path in write_demo_dir(args.dir):
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from xpcs_io.inspect_file import validate_file

    return validate_file(args.file, sys.stdout)


def _inspect(args: argparse.Namespace) -> int:
    from xpcs_io.inspect_file import inspect_file

    return inspect_file(args.file, sys.stdout)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``xpcs-io``."""
    parser = argparse.ArgumentParser(
        prog="xpcs-io",
        description="Typed, validated XPCS data from HDF5 files, locally and over HTTP.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="serve the HDF5 files under a data root over HTTP",
        description="Serve the HDF5 files under --root. Settings also come from XPCS_IO_* "
        "environment variables; flags win.",
    )
    serve.add_argument("--root", type=Path, help="data root (env XPCS_IO_DATA_ROOT; default .)")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 8000)")
    serve.add_argument("--pool-size", type=int, help="open HDF5 handles to keep (default 32)")
    serve.add_argument("--api-keys-file", type=Path, help="file of 'key scope' lines")
    serve.add_argument(
        "--allow-anonymous",
        action="store_true",
        help="serve without API keys on a non-loopback address (everyone can read and write)",
    )
    serve.add_argument(
        "--allowed-host",
        action="append",
        metavar="NAME",
        help="a Host name a server without API keys answers besides 127.0.0.1, localhost and "
        "[::1] (repeatable; env XPCS_IO_ALLOWED_HOSTS, comma-separated; '*' for any)",
    )
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--workers",
        type=int,
        help="server processes sharing one logical pool (default 1; use the number of cores "
        "for compressed data read by many viewers at once)",
    )
    serve.set_defaults(func=_serve)
    demo = sub.add_parser(
        "demo", help="write demo files (a small one and an Eiger-4M-sized one) into DIR"
    )
    demo.add_argument("dir", type=Path, help="folder to write into (created if missing)")
    demo.set_defaults(func=_demo)
    validate = sub.add_parser(
        "validate",
        help="check every group xpcs-io knows in FILE against its schema",
        description="Say which layout FILE is in (native, aps8idi, aps8idi-legacy, "
        "pysimplemask), then check its q-map, G2, geometry, every two-time map and every "
        "mask/partition version. "
        "Exit status: 0 valid, 1 a group is invalid or none was found, 2 not readable HDF5.",
    )
    validate.add_argument("file", type=Path, help="the HDF5 file")
    validate.set_defaults(func=_validate)
    inspect = sub.add_parser(
        "inspect", help="list what FILE holds: groups, datasets, dtypes, shapes, versions"
    )
    inspect.add_argument("file", type=Path, help="the HDF5 file")
    inspect.set_defaults(func=_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
