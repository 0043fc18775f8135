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
    compressed answer cached), which a client cannot know in advance. So it measures: every
    large answer (at least ``MIN_BYTES`` of arrays) gives seconds per array byte, request to
    decoded result, kept as a running mean for "compressed" and for "raw". It asks for the
    cheaper one, and for the other on every ``PROBE_EVERY``-th large read, so a changed link
    is noticed. It starts with compression (the default off loopback).
    """

    MIN_BYTES = 1 << 20
    PROBE_EVERY = 8

    def __init__(self, preset: str) -> None:
        self.preset = preset
        self.cost: dict[bool, float | None] = {True: None, False: None}
        self.large = 0

    def wanted(self) -> bool:
        """Whether the next request should ask for compressed arrays."""
        on, off = self.cost[True], self.cost[False]
        if on is None or off is None:
            return on is None  # one large answer each way first: compressed, then raw
        best = on <= off
        return (not best) if self.large % self.PROBE_EVERY == 0 else best

    def observe(self, compressed: bool, nbytes: int, seconds: float) -> None:
        """Record one answer: whether compression was asked, array bytes, seconds taken."""
        if nbytes < self.MIN_BYTES or seconds <= 0:
            return
        self.large += 1
        cost = seconds / nbytes
        old = self.cost[compressed]
        self.cost[compressed] = cost if old is None else 0.5 * old + 0.5 * cost
