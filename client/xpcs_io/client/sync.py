"""``RemoteHDF5Facade``: the ``HDF5Facade`` API over HTTP, blocking. Each method hands its
``Call`` to the core; ``_run`` drives the core's exchange with blocking I/O (the only code
here besides the methods)."""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from types import TracebackType
from typing import Any, TypeVar

import httpx
import numpy as np
import numpy.typing as npt

from xpcs_io.api import PathLike, VersionRecord
from xpcs_io.client import calls, viewer_calls
from xpcs_io.client.calls import Call
from xpcs_io.client.core import ClientCore
from xpcs_io.client.drivers import Httpx, Sockets
from xpcs_io.client.transport import TransportError
from xpcs_io.client.watching import EventWatch
from xpcs_io.events import Event
from xpcs_io.schemas import (
    G2Data,
    GeometryMetadata,
    IntensityTimeData,
    MaskSchema,
    PartitionSchema,
    QMapSchema,
    Saxs1DData,
    Saxs2DData,
)

__all__ = ["RemoteHDF5Facade"]

T = TypeVar("T")


class RemoteHDF5Facade(ClientCore[httpx.Client]):
    """The facade API served by an xpcs-io server: same methods, defaults, return types and
    exceptions as ``HDF5Facade``; file paths are relative to the server's data root.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000`` (a trailing ``/`` or ``/v1`` is dropped;
            ``ValueError`` when it does not start with ``http://`` or ``https://``).
        api_key: sent as ``Authorization: Bearer``.
        timeout: seconds any wait for the server may take (connect, send, each receive).
        validate: ask the server to validate (``False`` returns unchecked objects).
        http: an existing ``httpx.Client`` to send through (not closed by this object);
            by default plain-http servers are reached on the client's own sockets, TLS
            and proxies through httpx.
        retry: retry policy for transient failures (see ``xpcs_io.client.core``; each
            write carries an idempotency key, so a resent write never stores a second
            version).
        cache_bytes: keep up to this many bytes of read results and revalidate them with
            the server's ETag (an unchanged file answers 304 and nothing is transferred).
            Cached arrays are read-only. 0 (the default) disables the cache.
        progress: show a progress bar (tqdm, ``pip install 'xpcs-io[progress]'``) for
            downloads above 8 MiB.
        max_response_bytes: the largest answer accepted (default 4 GiB); a larger one, or
            one that lies about its size, raises ``RemoteConnectionError`` before memory is
            allocated for it.
        compression: arrays compressed on the wire: ``"auto"`` (the default) asks for
            ``blosc2-zstd`` when blosc2 is installed and the server is not on this machine
            (loopback), where the link, not decompression, is the limit; ``"none"``; or a
            preset, ``"blosc2-zstd"`` or ``"blosc2-lz4"`` (see docs/wire-format.md).

    Network failures raise ``RemoteConnectionError`` (a ``ConnectionError``).
    """

    def _connect(self, http: httpx.Client | None) -> None:
        self._driver: Sockets | Httpx
        if http is not None:
            self._driver = Httpx(http, owned=False)
        elif self.origin.plain_sockets():
            self._driver = Sockets(self.origin, self._timeout)
        else:
            self._driver = Httpx(httpx.Client(timeout=self._timeout), owned=True)

    def _run(self, call: Call[T]) -> T:
        """Drive the core's exchange of ``call`` with blocking I/O."""
        exchange = self.exchange(call)
        for step in exchange:
            if isinstance(step, float):
                time.sleep(step)
                continue
            try:
                self._driver.move(step)
            except TransportError as exc:
                exchange.failed(exc)
        return exchange.result

    def close(self) -> None:
        """Close the connections (not an ``http`` client passed in)."""
        self._driver.close()

    def __enter__(self) -> RemoteHDF5Facade:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ the facade API

    def read_qmap(
        self, file_path: PathLike, group: str = "/xpcs/qmap", *, layout: str | None = None
    ) -> QMapSchema:
        """Read a q-map (see ``HDF5Facade.read_qmap``)."""
        return self._run(calls.read_qmap(file_path, group, self.validate, layout))

    def read_g2_data(
        self,
        file_path: PathLike,
        q_idx: int | None = None,
        group: str = "/xpcs/g2",
        *,
        layout: str | None = None,
    ) -> G2Data:
        """Read G2, optionally one q bin (see ``HDF5Facade.read_g2_data``)."""
        return self._run(calls.read_g2_data(file_path, q_idx, group, self.validate, layout))

    def read_c2(
        self, file_path: PathLike, q_idx: int, max_size: int | None = None
    ) -> npt.NDArray[np.float32]:
        """A two-time map of an APS 8-ID-I file (see ``HDF5Facade.read_c2``)."""
        return self._run(calls.read_c2(file_path, q_idx, max_size))

    def read_geometry_metadata(
        self, file_path: PathLike, group: str = "/xpcs/metadata", *, layout: str | None = None
    ) -> GeometryMetadata:
        """Read geometry (see ``HDF5Facade.read_geometry_metadata``)."""
        return self._run(calls.read_geometry_metadata(file_path, group, self.validate, layout))

    def read_mask(
        self, file_path: PathLike, group: str = "/simplemask/mask", version: int | None = None
    ) -> MaskSchema:
        """Read a mask version (see ``HDF5Facade.read_mask``)."""
        return self._run(calls.read_mask(file_path, group, version, self.validate))

    def read_partition(
        self,
        file_path: PathLike,
        group: str = "/simplemask/partition",
        version: int | None = None,
    ) -> PartitionSchema:
        """Read a partition version (see ``HDF5Facade.read_partition``)."""
        return self._run(calls.read_partition(file_path, group, version, self.validate))

    def list_mask_versions(
        self, file_path: PathLike, group: str = "/simplemask/mask"
    ) -> list[VersionRecord]:
        """The versions of a mask group, oldest first."""
        return self._run(calls.list_versions("mask", file_path, group))

    def list_partition_versions(
        self, file_path: PathLike, group: str = "/simplemask/partition"
    ) -> list[VersionRecord]:
        """The versions of a partition group, oldest first."""
        return self._run(calls.list_versions("partition", file_path, group))

    def write_mask(
        self,
        file_path: PathLike,
        mask_schema: MaskSchema,
        group: str = "/simplemask/mask",
        compression: str | None = "gzip",
        compression_opts: int | None = 4,
        *,
        writer: str | None = None,
        idempotency_key: str | None = None,
    ) -> VersionRecord:
        """Write a new mask version (see ``HDF5Facade.write_mask``).

        Each call carries an idempotency key (``idempotency_key``, else a fresh random one),
        so a resend after a dropped connection returns the version the first attempt stored
        instead of storing a second one; the write is retried like a read.
        """
        return self._run(
            calls.write_mask(
                file_path,
                mask_schema,
                group,
                compression,
                compression_opts,
                writer,
                idempotency_key,
            )
        )

    def write_partition(
        self,
        file_path: PathLike,
        partition_schema: PartitionSchema,
        group: str = "/simplemask/partition",
        compression: str | None = "gzip",
        compression_opts: int | None = 4,
        *,
        writer: str | None = None,
        idempotency_key: str | None = None,
    ) -> VersionRecord:
        """Write a new partition version (see ``HDF5Facade.write_partition``); one
        idempotency key per call, as in ``write_mask``."""
        return self._run(
            calls.write_partition(
                file_path,
                partition_schema,
                group,
                compression,
                compression_opts,
                writer,
                idempotency_key,
            )
        )

    def get_pool_stats(self) -> dict[str, Any]:
        """The server pool's statistics."""
        return self._run(calls.pool_stats())

    def clear_pool(self) -> None:
        """Close every handle in the server's pool (needs an admin key when keys are set)."""
        self._run(calls.pool_clear())

    # ------------------------------------------------------------------ many files

    def read_g2_data_many(
        self,
        file_paths: Sequence[PathLike],
        q_idx: int | None = None,
        group: str = "/xpcs/g2",
        *,
        layout: str | None = None,
    ) -> list[G2Data | Exception]:
        """G2 of many files in one round trip (see ``HDF5Facade.read_g2_data_many``): each
        item is the file's ``G2Data`` or the exception reading it raised."""
        return self._run(calls.read_g2_data_many(file_paths, q_idx, group, self.validate, layout))

    def read_qmap_many(
        self,
        file_paths: Sequence[PathLike],
        group: str = "/xpcs/qmap",
        *,
        layout: str | None = None,
    ) -> list[QMapSchema | Exception]:
        """The q-maps of many files in one round trip (see ``HDF5Facade.read_qmap_many``)."""
        return self._run(calls.read_qmap_many(file_paths, group, self.validate, layout))

    # ------------------------------------------------------------------ viewer reads

    def read_saxs_2d(self, file_path: PathLike, layout: str | None = None) -> Saxs2DData:
        """The SAXS 2-D image (see ``HDF5Facade.read_saxs_2d``)."""
        return self._run(viewer_calls.read_saxs_2d(file_path, self.validate, layout))

    def read_saxs_1d(self, file_path: PathLike, layout: str | None = None) -> Saxs1DData:
        """The SAXS 1-D curve and segments (see ``HDF5Facade.read_saxs_1d``)."""
        return self._run(viewer_calls.read_saxs_1d(file_path, self.validate, layout))

    def read_intensity_time(
        self, file_path: PathLike, layout: str | None = None
    ) -> IntensityTimeData:
        """Intensity vs time (see ``HDF5Facade.read_intensity_time``)."""
        return self._run(viewer_calls.read_intensity_time(file_path, self.validate, layout))

    def read_twotime_g2(
        self, file_path: PathLike, q_idx: int | None = None, layout: str | None = None
    ) -> G2Data:
        """G2 of the two-time result (see ``HDF5Facade.read_twotime_g2``)."""
        return self._run(viewer_calls.read_twotime_g2(file_path, q_idx, self.validate, layout))

    def read_metadata(self, file_path: PathLike, layout: str | None = None) -> dict[str, Any]:
        """The flat metadata dict (see ``HDF5Facade.read_metadata``)."""
        return self._run(viewer_calls.read_metadata(file_path, layout))

    def list_files(self, prefix: str | None = None) -> list[dict[str, Any]]:
        """HDF5 files under the server's data root (or its folder ``prefix``): dicts with
        path, size and mtime, sorted by path."""
        return self._run(viewer_calls.list_files(prefix))

    def read_tree(self, file_path: PathLike) -> dict[str, Any]:
        """Every group and dataset of a file (h5grove ``/meta`` form, children at every
        level): names, kinds, shapes, dtypes, chunks, filters, attributes.

        Raises:
            FileNotFoundError, PermissionError: as every read.
            PayloadTooLargeError: the file holds too many entities to list at once.
        """
        return self._run(viewer_calls.read_tree(file_path))

    def read_dataset(self, file_path: PathLike, path: str, selection: str | None = None) -> Any:
        """The values of any dataset, or of ``selection`` (NumPy slicing text such as
        ``"0:10,::2"``): an array with the stored dtype (strings as a list).

        Raises:
            KeyError: no such dataset. ValueError: a malformed selection (HTTP 422).
            PayloadTooLargeError: the selection is above the server's size limit.
            FileNotFoundError, PermissionError: as every read.
        """
        return self._run(viewer_calls.read_dataset(file_path, path, selection))

    # ------------------------------------------------------------------ events

    def watch(
        self,
        prefix: str | None = None,
        *,
        file_path: str | None = None,
        last_event_id: int | None = None,
        reconnect_delay: float = 1.0,
    ) -> Generator[Event, None, None]:
        """Yield the server's events (files created, changed or removed, mask and partition
        versions written, pool cleared) for files under ``prefix`` (or one ``file_path``),
        forever: a dropped connection is reopened by itself and resumes after the last event
        seen, so none is lost (an ``events.reset`` event says when some were). Stop by
        leaving the loop.

        Raises:
            PermissionError: no key, or a key without the read scope.
            ValueError: bad parameters.
        """
        state = EventWatch(self._headers, prefix, file_path, last_event_id, reconnect_delay)
        # Its own connection: an open stream must not hold one of the reads' connections,
        # and no read timeout (the server sends a heartbeat; a dead link is noticed by it).
        timeout = httpx.Timeout(self._timeout, read=max(self._timeout, 60.0))
        with httpx.Client(timeout=timeout) as http:
            while True:
                try:
                    with http.stream(
                        "GET",
                        self.base_url + "/v1/events",
                        params=state.params,
                        headers=state.headers(),
                    ) as response:
                        ctype = response.headers.get("content-type", "")
                        body = b"" if response.status_code == 200 else response.read()
                        if state.connected(response.status_code, ctype, body):
                            for chunk in response.iter_raw():
                                yield from state.events(chunk)
                except httpx.TransportError:
                    pass  # reconnect below
                time.sleep(state.backoff())
