"""The ``xpcs-io`` command: serve a data root, write demo data, validate or inspect a file."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xpcs_io.server.settings import Settings

__all__ = ["banner", "build_parser", "main"]

# Exit status of a program whose reader went away (128 + SIGPIPE), as shells report it.
_CLOSED_PIPE = 141


def _version() -> str:
    try:
        return metadata.version("xpcs-io")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _port(text: str) -> int:
    """An argparse type: a TCP port number (0 lets the system pick one)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port: use 1-65535 (0: any free one)")
    return port


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1")
    return value


def banner(settings: Settings, root: Path) -> str:
    """What ``xpcs-io serve`` prints at start: the version, the quick-look and docs URLs, the
    data root and who may use the service."""
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()  # every address: name one a viewer can reach
    if ":" in host:
        host = f"[{host}]"
    base = f"http://{host}:{settings.port}" if settings.port else f"http://{host}:<any free port>"
    keys = settings.keys()
    if keys:
        scopes = sorted(set(keys.values()))
        auth = f"API keys ({len(keys)}: {', '.join(scopes)}); send 'Authorization: Bearer KEY'"
    elif settings.allow_anonymous:
        auth = "anonymous (--allow-anonymous): everyone who reaches it can read and write"
    else:
        auth = "none (loopback only): everyone on this machine can read and write"
    workers = f"\n  workers     {settings.workers}" if settings.workers > 1 else ""
    return (
        f"xpcs-io {_version()} serving {root}\n"
        f"  quick look  {base}/\n"
        f"  API docs    {base}/docs  (ReDoc: {base}/redoc)\n"
        f"  data root   {root}\n"
        f"  auth        {auth}{workers}\n"
        "  stop with Ctrl-C"
    )


def _serve(args: argparse.Namespace) -> int:
    from xpcs_io.server import create_app
    from xpcs_io.server.logs import configure_logging
    from xpcs_io.server.settings import Settings

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
    print(banner(settings, Path(os.path.realpath(settings.data_root))), flush=True)
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
    from xpcs_io.tools.demo import write_demo_dir

    for path in write_demo_dir(args.dir):
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from xpcs_io.tools.inspect import validate_file

    return validate_file(args.file, sys.stdout)


def _inspect(args: argparse.Namespace) -> int:
    from xpcs_io.tools.inspect import inspect_file

    return inspect_file(args.file, sys.stdout)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``xpcs-io``."""
    parser = argparse.ArgumentParser(
        prog="xpcs-io",
        description="Typed, validated XPCS data from HDF5 files, locally and over HTTP.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="serve the HDF5 files under a data root over HTTP",
        description="Serve the HDF5 files under --root. Settings also come from XPCS_IO_* "
        "environment variables; flags win.",
    )
    serve.add_argument("--root", type=Path, help="data root (env XPCS_IO_DATA_ROOT; default .)")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="port to bind (default 8000)")
    serve.add_argument("--pool-size", type=_positive, help="open HDF5 handles to keep (default 32)")
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
        type=_positive,
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


def _closed_pipe() -> int:
    # The reader left (`xpcs-io inspect f | head -1`): stop quietly, and point stdout at
    # /dev/null so the interpreter's final flush does not raise again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return _CLOSED_PIPE


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for a usage or set-up error)."""
    args = build_parser().parse_args(argv)
    try:
        status: int = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        return _closed_pipe()
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.startswith("xpcs_io"):
            raise
        print(
            f"xpcs-io {args.command}: needs the server extra, which this installation lacks "
            f"(no module {exc.name!r}): pip install 'xpcs-io[server]'",
            file=sys.stderr,
        )
        return 2
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
