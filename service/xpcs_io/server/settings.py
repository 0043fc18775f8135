"""The one settings object of the service: environment variables prefixed ``XPCS_IO_``,
overridable by command-line flags. No other module reads the environment."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["SCOPES", "Scope", "Settings", "is_loopback"]

Scope = Literal["read", "write", "admin"]
SCOPES: tuple[Scope, ...] = ("read", "write", "admin")


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Service configuration (env prefix ``XPCS_IO_``, e.g. ``XPCS_IO_DATA_ROOT=/data``)."""

    model_config = SettingsConfigDict(env_prefix="XPCS_IO_", extra="ignore")

    data_root: Path = Field(Path("."), description="Directory whose files the service serves.")
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to bind.")
    pool_size: int = Field(32, ge=1, description="Open HDF5 handles kept in the pool.")
    api_keys: str = Field(
        "",
        description="Comma-separated 'key:scope' pairs, scope in read, write, admin.",
        repr=False,
    )
    api_keys_file: Path | None = Field(
        None, description="File with one 'key scope' pair per line ('#' starts a comment)."
    )
    allow_anonymous: bool = Field(
        False, description="Serve without API keys on a non-loopback address."
    )
    max_body_bytes: int = Field(256 * 1024 * 1024, ge=1, description="Largest request body.")
    json_max_elements: int = Field(
        1_000_000, ge=1, description="Largest array sent as JSON; bigger ones need msgpack."
    )
    cache_bytes: int = Field(
        1 << 30,
        ge=0,
        description="Bytes of read results kept for all viewers (0 disables the cache).",
    )
    lock_timeout: float = Field(
        30.0,
        gt=0,
        description=(
            "Seconds a write waits for another writer (below the clients' 60 s timeout, so a "
            "remote caller gets the 423 and knows the write did not happen)."
        ),
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    workers: int = Field(
        1, ge=1, le=64, description="Server processes (h5py runs one call at a time per process)."
    )
    state_dir: Path | None = Field(
        None, description="Set by `xpcs-io serve --workers N`: where workers share pool state."
    )
    watch: bool = Field(
        True, description="Watch the data root and publish file and version events."
    )
    events_heartbeat: float = Field(
        15.0, gt=0, description="Seconds between keep-alive lines on an idle event stream."
    )
    events_retention: float = Field(
        600.0, gt=0, description="Seconds events are kept for clients that reconnect."
    )
    batch_max_files: int = Field(1000, ge=1, description="Most files one many-file read may name.")
    batch_whole_bytes: int = Field(
        64 << 20,
        ge=0,
        description=(
            "A many-file answer up to this size is sent whole with its length (cheapest for "
            "clients); a larger one is streamed as its files are read."
        ),
    )
    file_locking: Literal["auto", "on", "off"] = Field(
        "auto",
        description=(
            "Locks shared with other HDF5 programs and between writers: on (required), off "
            "(none: no protection against other programs), auto (on, except on a filesystem "
            "that refuses locks, e.g. NFS without lockd: one warning, then off there)."
        ),
    )

    # Resources and browsers: bounds that hold under hostile or broken clients.
    allowed_hosts: str = Field(
        "",
        description="Comma-separated Host names a server without API keys answers besides its "
        "loopback names (127.0.0.1, localhost, [::1]); '*' turns the Host check off.",
    )
    max_read_bytes: int = Field(
        2 << 30, ge=1, description="Largest dataset selection one read may allocate (bytes)."
    )
    max_inflight_body_bytes: int = Field(
        512 << 20,
        ge=1,
        description="Request body bytes held by all requests at once; more answer 503.",
    )
    max_unshared_result_bytes: int = Field(
        1 << 30,
        ge=1,
        description="Bytes of read results held by answers outside the result cache (too "
        "large for it, or the cache off); past it reads answer 503.",
    )
    header_timeout: float = Field(
        10.0, gt=0, description="Seconds a connection may take to send a request head."
    )
    body_timeout: float = Field(
        30.0, gt=0, description="Seconds a request body may stall before the request gets 408."
    )
    keep_alive_timeout: float = Field(
        75.0, gt=0, description="Seconds an idle keep-alive connection stays open."
    )
    max_connections: int = Field(
        1000,
        ge=1,
        description="Open connections per process (kept below the descriptor limit); "
        "more are answered 503 and closed.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    def keys(self) -> dict[str, Scope]:
        """The configured API keys and their scopes.

        Raises:
            ValueError: a malformed entry or an unknown scope.
        """
        pairs: list[tuple[str, str]] = []
        for item in self.api_keys.split(","):
            if item.strip():
                key, sep, scope = item.strip().rpartition(":")
                if not sep or not key:
                    raise ValueError("XPCS_IO_API_KEYS entries must look like 'key:scope'")
                pairs.append((key, scope))
        if self.api_keys_file is not None:
            for line in self.api_keys_file.read_text().splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    parts = line.split()
                    if len(parts) != 2:
                        raise ValueError(f"{self.api_keys_file}: expected 'key scope' per line")
                    pairs.append((parts[0], parts[1]))
        out: dict[str, Scope] = {}
        for key, scope in pairs:
            if scope not in SCOPES:
                raise ValueError(f"unknown API key scope {scope!r} (use {', '.join(SCOPES)})")
            out[key] = scope  # checked against SCOPES above
        return out

    def allowed_host_names(self) -> frozenset[str]:
        """The extra Host names of ``allowed_hosts``, lower case, without ports."""
        return frozenset(h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip())
