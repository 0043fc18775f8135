"""Lint a Dockerfile for the rules this project's image must follow.

No container engine runs on the machines that build and test xpcs-io, so the image is checked
statically here and its install and start commands are replayed in a clean venv by a test.
Rules: a multi-stage build from a pinned slim Python base; a non-root USER before CMD; a
HEALTHCHECK that probes /health on the configured port (XPCS_IO_PORT, not a fixed number); the
data root declared as a VOLUME; settings by ENV (no secrets baked in); exec-form
CMD/ENTRYPOINT; pip without a cache and with versions pinned by a constraints file; no
compiler installed in the runtime stage; no ADD of URLs and no piping downloads to a shell;
a .dockerignore beside the Dockerfile that keeps venvs, git history and data out of the build
context. Exit status 1 and one line per problem when a rule is broken.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

SECRET = re.compile(r"(KEY|TOKEN|PASSWORD|SECRET)", re.IGNORECASE)
COMPILER = re.compile(
    r"\b(gcc|g\+\+|clang|build-essential|build-base|gfortran|cmake|make|"
    r"python3?-dev|libc6?-dev|musl-dev)\b"
)
CONSTRAINED = re.compile(r"(\s-c\s|--constraint[=\s])")
# What the build context must not carry (any one pattern of each row excluding it will do).
IGNORED = {
    "virtual environments": (".venv", ".venv*", "**/.venv"),
    "git history": (".git", "**/.git"),
    "HDF5 data": ("*.hdf5", "**/*.hdf5", "demo-data"),
}


def instructions(text: str) -> list[tuple[int, str, str]]:
    """(line number, INSTRUCTION, arguments), with continuation lines joined."""
    out: list[tuple[int, str, str]] = []
    buf, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if not buf:
            start = number
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, args = buf.partition(" ")
        out.append((start, word.upper(), args.strip()))
        buf = ""
    return out


def lint(text: str) -> list[str]:
    """The problems found in a Dockerfile's text."""
    items = instructions(text)
    problems: list[str] = []
    froms = [(n, a) for n, w, a in items if w == "FROM"]
    if len(froms) < 2:
        problems.append("use a multi-stage build (build stage + slim runtime stage)")
    for n, args in froms:
        image = args.split()[0]
        if ":" not in image or image.endswith(":latest"):
            problems.append(f"line {n}: pin the base image tag ({image})")
        elif not image.startswith("python:") or "slim" not in image:
            problems.append(f"line {n}: base on a slim Python image ({image})")
    last_stage = max((n for n, _ in froms), default=0)
    runtime = [(n, w, a) for n, w, a in items if n >= last_stage]
    users = [a for _, w, a in runtime if w == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("the runtime stage must switch to a non-root USER")
    if not any(w == "HEALTHCHECK" for _, w, _ in runtime):
        problems.append("add a HEALTHCHECK (on /health)")
    elif not any(w == "HEALTHCHECK" and "/health" in a for _, w, a in runtime):
        problems.append("the HEALTHCHECK should probe /health")
    elif not any(w == "HEALTHCHECK" and "XPCS_IO_PORT" in a for _, w, a in runtime):
        problems.append("the HEALTHCHECK must probe the configured port (read XPCS_IO_PORT)")
    for n, w, a in runtime:
        if w == "RUN" and re.search(r"\b(apt-get|apt|apk)\b.*\b(install|add)\b", a):
            found = COMPILER.search(a.split("install", 1)[-1].split(" add ", 1)[-1])
            if found:
                problems.append(
                    f"line {n}: no compiler in the runtime stage ({found.group(0)}): build in "
                    "the build stage"
                )
    if not any(w == "VOLUME" for _, w, _ in runtime):
        problems.append("declare the data root as a VOLUME")
    cmd_line = [n for n, w, _ in runtime if w in ("CMD", "ENTRYPOINT")]
    user_line = [n for n, w, _ in runtime if w == "USER"]
    if not cmd_line:
        problems.append("the runtime stage needs a CMD")
    elif user_line and user_line[-1] > cmd_line[-1]:
        problems.append("USER must come before CMD")
    for n, w, a in items:
        if w in ("CMD", "ENTRYPOINT") and not a.startswith("["):
            problems.append(
                f"line {n}: use the exec form for {w} (JSON array) so signals reach the server"
            )
        if w == "ADD" and re.search(r"https?://", a):
            problems.append(f"line {n}: do not ADD from a URL")
        if w == "RUN" and re.search(r"(curl|wget)[^|]*\|\s*(ba)?sh", a):
            problems.append(f"line {n}: do not pipe a download into a shell")
        if w == "RUN" and "pip install" in a and "--no-cache-dir" not in a:
            problems.append(f"line {n}: pip install without --no-cache-dir bloats the image")
        if w == "RUN":
            for command in re.split(r"&&|;|\|\|", a):
                if "pip install" in command and not CONSTRAINED.search(command + " "):
                    problems.append(
                        f"line {n}: pin versions with pip install -c constraints.txt "
                        f"({command.strip()})"
                    )
        if w == "ENV":
            for key in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", a):
                if SECRET.search(key):
                    problems.append(
                        f"line {n}: do not bake {key} into the image; pass it at run time"
                    )
    return problems


def lint_ignore(text: str | None) -> list[str]:
    """The problems of a .dockerignore's text (``None``: the file is missing)."""
    if text is None:
        return ["add a .dockerignore: the build context would carry venvs, .git and data"]
    patterns = [line.strip() for line in text.splitlines()]
    patterns = [p.rstrip("/") for p in patterns if p and not p.startswith("#")]
    if "*" in patterns or "**" in patterns:  # everything excluded, then the needed files listed
        kept = [p[1:] for p in patterns if p.startswith("!")]
        return [
            f".dockerignore: keeps {p}, which holds {what}"
            for what, names in IGNORED.items()
            for p in kept
            if p.rstrip("/") in names
        ]
    return [
        f".dockerignore: exclude {what} ({names[0]})"
        for what, names in IGNORED.items()
        if not any(name in patterns for name in names)
    ]


def main(argv: list[str]) -> int:
    """Lint the files named (default ./Dockerfile) and the .dockerignore beside each."""
    status = 0
    for name in argv or ["Dockerfile"]:
        ignore = Path(name).with_name(".dockerignore")
        problems = lint(Path(name).read_text())
        problems += lint_ignore(ignore.read_text() if ignore.exists() else None)
        for problem in problems:
            print(f"{name}: {problem}")
            status = 1
    if status == 0:
        print("Dockerfile lint: ok")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
