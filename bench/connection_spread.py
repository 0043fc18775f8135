"""How a burst of keep-alive connections spreads over two asyncio worker processes: one
listening socket shared by both (what uvicorn's and gunicorn's supervisors hand their workers)
against one SO_REUSEPORT socket per worker (``xpcs-io serve --workers``).

Run: ``python -m bench.connection_spread`` (Linux; about 10 s). Prints each round's
connections per worker and the busiest worker's share over all rounds (50% is even).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import time
from multiprocessing.sharedctypes import Synchronized

CONNECTIONS = 200
ROUNDS = 5


def _listener(port: int, reuse_port: bool) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)
    return sock


def _worker(shared: socket.socket | None, port: int, count: Synchronized[int]) -> None:
    sock = shared if shared is not None else _listener(port, True)

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with count.get_lock():
            count.value += 1
        await reader.read()  # a viewer keeping its connection open

    async def serve() -> None:
        await asyncio.start_server(hold, sock=sock)
        await asyncio.sleep(3600)

    asyncio.run(serve())


def spread(mode: str) -> list[tuple[int, int]]:
    """Connections taken by each of the two workers, per round."""
    ctx = multiprocessing.get_context("fork")
    rounds = []
    for _ in range(ROUNDS):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        shared = _listener(port, False) if mode == "shared" else None
        counts = [ctx.Value("i", 0) for _ in range(2)]
        procs = [ctx.Process(target=_worker, args=(shared, port, c)) for c in counts]
        for proc in procs:
            proc.start()
        time.sleep(0.5)
        conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(CONNECTIONS)]
        time.sleep(0.5)
        rounds.append((counts[0].value, counts[1].value))
        for conn in conns:
            conn.close()
        for proc in procs:
            proc.kill()
            proc.join()
        if shared is not None:
            shared.close()
    return rounds


def main() -> None:
    for mode in ("shared", "reuseport"):
        rounds = spread(mode)
        busiest = sum(max(r) for r in rounds) / sum(sum(r) for r in rounds)
        print(f"{mode:>9}: {rounds}  busiest worker's share {busiest:.0%}")


if __name__ == "__main__":
    main()
