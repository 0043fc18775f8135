"""Deployment, checked for real where this machine allows: no container engine runs here, so
the Dockerfile is linted and its install and start commands are replayed in clean venvs; the
compose file is parsed by docker-compose; the scale topology runs for real with Debian's nginx
in front of two ``xpcs-io serve`` replicas on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from xpcs_io.client import RemoteHDF5Facade
from xpcs_io.schemas import MaskSchema
from xpcs_io.tools.demo import DemoSpec, write_native_file

from .conftest import Server, free_port, start_server
from .nginxsupport import ROOT, need, running_nginx, shipped_conf

sys.path.insert(0, str(ROOT / "scripts"))

import lint_dockerfile  # type: ignore[import-not-found]

# ---------------------------------------------------------------- Dockerfile


def test_dockerfile_passes_the_lint() -> None:
    assert lint_dockerfile.lint((ROOT / "Dockerfile").read_text()) == []


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('FROM python:3.11-slim\nCMD ["x"]\n', "multi-stage"),
        ('FROM python:latest AS a\nFROM python:3.11-slim\nUSER app\nCMD ["x"]\n', "pin"),
        ('FROM python:3.11-slim AS a\nFROM python:3.11-slim\nCMD ["x"]\n', "non-root"),
        (
            "FROM python:3.11-slim AS a\nFROM python:3.11-slim\nUSER app\nCMD xpcs-io serve\n",
            "exec form",
        ),
        (
            'FROM python:3.11-slim AS a\nFROM python:3.11-slim\nENV API_KEY=abc\nUSER a\nCMD ["x"]\n',
            "API_KEY",
        ),
        (
            'FROM python:3.11-slim AS a\nRUN curl -s https://x | sh\nFROM python:3.11-slim\nCMD ["x"]\n',
            "pipe",
        ),
        (
            'FROM python:3.11-slim AS a\nRUN pip install x\nFROM python:3.11-slim\nCMD ["x"]\n',
            "no-cache",
        ),
        (
            "FROM python:3.11-slim AS a\nRUN pip install --no-cache-dir x\n"
            'FROM python:3.11-slim\nCMD ["x"]\n',
            "constraints",
        ),
        (
            "FROM python:3.11-slim AS a\nFROM python:3.11-slim\n"
            "RUN apt-get update && apt-get install -y --no-install-recommends gcc\n"
            'USER a\nCMD ["x"]\n',
            "no compiler",
        ),
        (
            "FROM python:3.11-slim AS a\nFROM python:3.11-slim\nUSER a\n"
            'HEALTHCHECK CMD ["curl", "http://127.0.0.1:8000/health"]\nCMD ["x"]\n',
            "configured port",
        ),
    ],
)
def test_lint_catches_problems(text: str, problem: str) -> None:
    assert any(problem in p for p in lint_dockerfile.lint(text)), lint_dockerfile.lint(text)


def test_dockerignore_keeps_venvs_git_and_data_out() -> None:
    assert lint_dockerfile.lint_ignore((ROOT / ".dockerignore").read_text()) == []
    assert lint_dockerfile.lint_ignore(None)
    assert any(".git" in p for p in lint_dockerfile.lint_ignore(".venv\n*.hdf5\n"))
    assert any("venv" in p for p in lint_dockerfile.lint_ignore("*\n!.venv/\n!service/\n"))
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "lint_dockerfile.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout


def _stages(text: str) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for _, word, args in lint_dockerfile.instructions(text):
        if word == "FROM":
            stages.append([])
        stages[-1].append((word, args))
    return stages


@pytest.mark.slow
def test_image_install_and_start_replayed_in_clean_venvs(tmp_path: Path) -> None:
    """Run the Dockerfile's build-stage RUN lines and its CMD with its ENV, with the image's
    absolute paths mapped into a temporary folder."""
    build, runtime = _stages((ROOT / "Dockerfile").read_text())
    fs = tmp_path / "image"
    mapping = {
        "/opt/venv": str(fs / "opt/venv"),
        "/dist": str(fs / "dist"),
        "/src": str(fs / "src"),
    }

    def mapped(cmd: str) -> str:
        for src, dst in mapping.items():
            cmd = re.sub(rf"(?<![\w/]){re.escape(src)}(?=[/\s\"')]|$)", dst, cmd)
        return cmd

    workdir = fs / "src"
    workdir.mkdir(parents=True)
    for word, args in build:
        if word == "COPY":
            *sources, _dest = args.split()
            for src in sources:
                (shutil.copytree if (ROOT / src).is_dir() else shutil.copy)(
                    ROOT / src, workdir / src
                )
        elif word == "RUN":
            cmd = mapped(args).replace("python -m venv", f"{sys.executable} -m venv", 1)
            r = subprocess.run(
                ["bash", "-c", cmd], cwd=workdir, capture_output=True, text=True, timeout=600
            )
            assert r.returncode == 0, f"RUN {cmd}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    env_lines = [args for word, args in runtime if word == "ENV"]
    env = {k: mapped(v) for line in env_lines for k, v in re.findall(r"(\w+)=(\S+)", line)}
    env["PATH"] = env["PATH"].replace("$PATH", os.environ["PATH"])
    cmd = next(args for word, args in runtime if word == "CMD")
    health = next(args for word, args in runtime if word == "HEALTHCHECK")
    data = tmp_path / "data"
    data.mkdir()
    write_native_file(data / "f.hdf5", DemoSpec(shape=(8, 8), n_delay=4, n_q=2))
    port = free_port()
    env.update(
        XPCS_IO_DATA_ROOT=str(data),
        XPCS_IO_HOST="127.0.0.1",  # the image binds 0.0.0.0 inside its own network namespace
        XPCS_IO_PORT=str(port),
        XPCS_IO_API_KEYS="k:read",
    )
    argv = [mapped(a) for a in json.loads(cmd)]
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        exec_form = health.split(" CMD ", 1)[1].strip()
        probe = [p.replace("8000", str(port)) for p in json.loads(exec_form)]
        deadline = time.monotonic() + 30
        while True:
            probed = subprocess.run(probe, env=env, capture_output=True, timeout=10)
            if probed.returncode == 0:
                break
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the HEALTHCHECK never passed"
            time.sleep(0.3)
        r2 = httpx.get(
            f"http://127.0.0.1:{port}/v1/geometry",
            params={"file_path": "f.hdf5"},
            headers={"authorization": "Bearer k", "accept": "application/json"},
        )
        assert r2.json()["shape"] == [8, 8]
        installed = subprocess.run(
            [
                str(fs / "opt/venv/bin/python"),
                "-c",
                "import xpcs_io.facade, xpcs_io.server, hdf5plugin",
            ],
            capture_output=True,
        )
        assert installed.returncode == 0, installed.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


# ---------------------------------------------------------------- compose


def test_compose_file_parses_and_fails_fast_without_keys() -> None:
    compose = need("docker-compose")
    env = {**os.environ, "XPCS_IO_API_KEYS": "k:read"}
    for args in ([], ["--profile", "scale"]):
        r = subprocess.run(
            [compose, *args, "config"], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert r.returncode == 0, r.stderr
    scaled = subprocess.run(
        [compose, "--profile", "scale", "config"], cwd=ROOT, env=env, capture_output=True, text=True
    ).stdout
    assert "nginx" in scaled
    assert "scale: 2" in scaled
    no_keys = {k: v for k, v in os.environ.items() if k != "XPCS_IO_API_KEYS"}
    r = subprocess.run([compose, "config"], cwd=ROOT, env=no_keys, capture_output=True, text=True)
    assert r.returncode != 0
    assert "XPCS_IO_API_KEYS" in r.stderr


# ---------------------------------------------------------------- nginx + two replicas


@pytest.fixture
def scaled(tmp_path: Path) -> Iterator[tuple[str, list[Server], Path]]:
    need("nginx")
    root = tmp_path / "shared"
    root.mkdir()
    write_native_file(root / "shared.hdf5", DemoSpec(shape=(200, 180), n_delay=8, n_q=4))
    replicas = [start_server(root, tmp_path / f"replica{i}.log") for i in range(2)]
    # The replicas by address: a variable naming an upstream{} block is used as is, unresolved.
    upstreams = "".join(f"server {s.url.removeprefix('http://')}; " for s in replicas)
    conf = shipped_conf().replace("set $replicas replica:8000;", "set $replicas local_replicas;")
    conf = conf.replace("server {", f"upstream local_replicas {{ {upstreams}}}\n    server {{", 1)
    try:
        with running_nginx(tmp_path, conf) as nginx:
            yield nginx.url, replicas, root
    finally:
        for s in replicas:
            s.stop()


def _write_count(server: Server) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    m = re.search(r'xpcs_io_write_duration_seconds_count\{kind="mask"\} (\S+)', text)
    return float(m.group(1)) if m else 0.0


def test_two_replicas_behind_nginx_lose_no_version(scaled: tuple[str, list[Server], Path]) -> None:
    url, replicas, _ = scaled
    per_client = 8

    def client(name: str) -> list[str]:
        done = []
        with RemoteHDF5Facade(url) as api:
            geo = api.read_geometry_metadata("shared.hdf5")
            for i in range(per_client):
                mask = np.ones(geo.shape, np.uint8)
                mask[i % geo.shape[0], :] = 0
                desc = f"{name}-{i}"
                api.write_mask("shared.hdf5", MaskSchema(mask=mask, metadata=geo, description=desc))
                done.append(desc)
        return done

    with ThreadPoolExecutor(2) as pool:
        written = [d for ds in pool.map(client, ["alice", "bob"]) for d in ds]
    with RemoteHDF5Facade(url) as api:
        versions = api.list_mask_versions("shared.hdf5")
        latest = api.read_mask("shared.hdf5")
    assert [v["version"] for v in versions] == list(range(1, 2 * per_client + 1))
    assert sorted(v["description"] for v in versions) == sorted(written)
    assert latest.description == versions[-1]["description"]
    # Both replicas took writes: the lock file, not luck, kept the versions apart.
    assert all(_write_count(s) > 0 for s in replicas)
    served = {httpx.get(f"{url}/health").headers["x-served-by"] for _ in range(6)}
    assert len(served) == 2


def test_a_watcher_behind_nginx_hears_writes_through_every_replica(
    scaled: tuple[str, list[Server], Path],
) -> None:
    url, replicas, _ = scaled
    with RemoteHDF5Facade(url) as watcher_client:
        stream = watcher_client.watch(file_path="shared.hdf5")
        heard: list[tuple[int | None, str | None]] = []

        def collect() -> None:
            for event in stream:
                if event.type == "mask.written":
                    heard.append((event.version, event.writer))
                    if len(heard) == 2:
                        return

        opened = next(stream)  # the stream is open: every write from here on is heard
        assert opened.type == "stream.opened"
        thread = threading.Thread(target=collect, daemon=True)
        thread.start()
        for i, replica in enumerate(replicas):  # each write straight to one replica
            with RemoteHDF5Facade(replica.url) as api:
                geo = api.read_geometry_metadata("shared.hdf5")
                mask = MaskSchema(mask=np.ones(geo.shape, np.uint8), metadata=geo)
                api.write_mask("shared.hdf5", mask, writer=f"replica{i}")
        thread.join(timeout=30)
        assert not thread.is_alive(), heard
        stream.close()
    assert heard == [(1, "replica0"), (2, "replica1")]
