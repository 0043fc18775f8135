"""Whether arrays travel compressed (``XPCS-Array-Codec``): the preset a client asks for,
and ``compression="auto"``'s running measurement of which way is faster."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from xpcs_io import arraycodec
from xpcs_io.schemas import Schema

__all__ = ["AutoCompression", "array_bytes", "array_compression"]


def _is_loopback(base_url: str) -> bool:
    host = urlsplit(base_url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def array_compression(compression: str, base_url: str) -> str | None:
    """The ``XPCS-Array-Codec`` preset a client asks for, or None (raw arrays).

    Raises:
        ValueError: ``compression`` is not "auto", "none" or a preset.
        ImportError: a preset was named and blosc2 is not installed.
    """
    if compression == "none":
        return None
    if compression == "auto":
        # On loopback nothing limits raw bytes but the copies: compressing only adds CPU.
        if _is_loopback(base_url) or not arraycodec.available():
            return None
        return "blosc2-zstd"
    if compression not in arraycodec.PRESETS:
        names = ", ".join(["auto", "none", *arraycodec.PRESETS])
        raise ValueError(f"compression must be one of {names}; got {compression!r}")
    if not arraycodec.available():
        raise ImportError(f"compression={compression!r} needs blosc2: pip install blosc2")
    return compression


def array_bytes(value: Any) -> int:
    """The bytes of every numpy array in a result (schemas, dicts, lists)."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, Schema):
        value = value.to_dict()
    if isinstance(value, dict):
        return sum(array_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(array_bytes(v) for v in value)
    return 0


class AutoCompression:
    """``compression="auto"``: ask for compressed arrays only while that is faster here.

    Whether compression pays depends on the link (and on whether the server has the
    compressed answer cached), which a client cannot know in advance. So it measures every
    large answer (at least ``MIN_BYTES`` of arrays): seconds per array byte, request to
    decoded result, kept as a running mean for "compressed" and for "raw". It starts with
    compression (the default off loopback) and asks for the cheaper way.

    Raw answers are not tried blindly: over a slow link one costs several compressed ones.
    A compressed answer also tells what raw would cost: its compressed bytes crossed the
    link in its seconds less the decompression (``arraycodec.take_decode_stats``), so the
    link moves at least that many bytes a second, and the raw bytes at that rate bound what
    raw would take. Raw is asked for when that bound (or raw's measured cost, once known)
    is lower: when decompressing is slower than the link. A server that compresses while
    it sends (``streamed``: result cache off) may itself be what limits that rate: when its
    raw bytes came faster than ``SERVER_RATE`` (what a compressing server surely manages:
    a slower answer was paced by the link) and than 3/4 of the pace the server says it
    compresses at (``arraycodec.RATE_HEADER``), the link may be much faster than it looked,
    and one raw answer is measured (the one way to tell, once), unless the answer's pieces
    show the server was waiting for the link (``arraycodec.link_paced``). Beyond that,
    the way not taken is tried again only with probe credit: ``PROBE_SHARE`` of the time of
    each large read, spent when it covers the expected extra time of the other way, so
    probing costs at most about that share of the time, whatever the link.
    """

    MIN_BYTES = 1 << 20
    PROBE_SHARE = 0.05
    SERVER_RATE = 150e6  # raw bytes/s

    def __init__(self, preset: str) -> None:
        self.preset = preset
        #: Measured seconds per array byte, compressed (True) and raw (False).
        self.cost: dict[bool, float | None] = {True: None, False: None}
        #: Raw's seconds per array byte as judged from compressed answers (None: not judged,
        #: or not judgeable because the server's compression may have set the pace).
        self.estimate: float | None = None
        self.credit = 0.0
        self.size = 0  # array bytes of the last large answer

    def _raw_cost(self) -> float | None:
        return self.cost[False] if self.cost[False] is not None else self.estimate

    def _best(self) -> bool | None:
        """The cheaper way as known now (True: compressed); None while it is not known."""
        on, off = self.cost[True], self._raw_cost()
        if on is None or off is None:
            return None if on is None and off is None else on is not None
        return on <= off

    def wanted(self) -> bool:
        """Whether the next request should ask for compressed arrays."""
        on, off = self.cost[True], self._raw_cost()
        if on is None:
            return True  # start compressed (and after raw answers only, compare once)
        if off is None:
            return False  # raw's cost could not be judged: measure it once
        best = on <= off
        return (not best) if self.credit >= abs(on - off) * self.size else best

    def observe(
        self,
        compressed: bool,
        nbytes: int,
        seconds: float,
        *,
        streamed: bool = False,
        decoded: tuple[int, float] | None = None,
        server_rate: float | None = None,
        link_paced: bool | None = None,
    ) -> None:
        """Record one answer: whether compression was asked, array bytes, seconds taken,
        whether the server compressed while sending (no Content-Length), the compressed
        bytes decompressed with the seconds that took (default: what this thread
        decompressed since the last answer, ``arraycodec.take_decode_stats``), and the raw
        bytes a second the server said it compresses at (``arraycodec.RATE_HEADER``), and
        whether the answer's pieces say the link paced it (``arraycodec.link_paced``)."""
        taken = arraycodec.take_decode_stats()
        wire_bytes, decode_s = taken if decoded is None else decoded
        if nbytes < self.MIN_BYTES or seconds <= 0:
            return
        compressed = compressed and wire_bytes > 0  # else the server sent every array raw
        best = self._best()
        if best is not None and compressed != best:  # a probe: paid from the credit
            usual = self.cost[True] if best else self._raw_cost()
            self.credit -= max(0.0, seconds - (usual or 0.0) * nbytes)
        else:
            self.credit += self.PROBE_SHARE * seconds
        self.size = nbytes
        old = self.cost[compressed]
        cost = seconds / nbytes
        self.cost[compressed] = cost if old is None else 0.5 * old + 0.5 * cost
        if not compressed:
            return
        moving = max(seconds - decode_s, 1e-9)  # request to last byte
        # Paced by the server's compression, not the link, unless its pieces say otherwise
        # or it came in clearly below the pace the server says it compresses at (or below
        # what any server manages).
        pace = (
            self.SERVER_RATE if server_rate is None else max(self.SERVER_RATE, 0.75 * server_rate)
        )
        if streamed and not link_paced and nbytes / moving > pace:
            if self.cost[False] is None:  # as fast as a server compresses: the link may be
                self.estimate = None  # much faster than any estimate says; measure raw
            return
        guess = moving / wire_bytes
        self.estimate = guess if self.estimate is None else 0.5 * self.estimate + 0.5 * guess
