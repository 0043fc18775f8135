"""``AsyncRemoteHDF5Facade``: the ``HDF5Facade`` API over HTTP for asyncio code. Each
method hands its ``Call`` to the core; ``_run`` drives the core's exchange with asyncio I/O
(the only code here besides the methods)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from types import TracebackType
from typing import Any, TypeVar

import httpx
import numpy as np
import numpy.typing as npt

from xpcs_io.api import PathLike, VersionRecord
from xpcs_io.client import calls, viewer_calls
from xpcs_io.client.calls import Call
from xpcs_io.client.core import ClientCore
from xpcs_io.client.drivers import AsyncHttpx, AsyncSockets
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

__all__ = ["AsyncRemoteHDF5Facade"]

T = TypeVar("T")


class AsyncRemoteHDF5Facade(ClientCore[httpx.AsyncClient]):
    """``RemoteHDF5Facade`` for asyncio: the same constructor (``http`` is an
    ``httpx.AsyncClient``) and methods, as coroutines; file paths are relative to the
    server's data root. Network failures raise ``RemoteConnectionError``."""

    def _connect(self, http: httpx.AsyncClient | None) -> None:
        self._driver: AsyncSockets | AsyncHttpx
        if http is not None:
            self._driver = AsyncHttpx(http, owned=False)
        elif self.origin.plain_sockets():
            self._driver = AsyncSockets(self.origin, self._timeout)
        else:
            self._driver = AsyncHttpx(httpx.AsyncClient(timeout=self._timeout), owned=True)

    async def _run(self, call: Call[T]) -> T:
        """Drive the core's exchange of ``call`` with asyncio I/O."""
        exchange = self.exchange(call)
        for step in exchange:
            if isinstance(step, float):
                await asyncio.sleep(step)
                continue
            try:
                await self._driver.move(step)
            except TransportError as exc:
                exchange.failed(exc)
        return exchange.result

    async def aclose(self) -> None:
        """Close the connections (not an ``http`` client passed in)."""
        if isinstance(self._driver, AsyncHttpx):
            await self._driver.aclose()
        else:
            self._driver.close()

    async def __aenter__(self) -> AsyncRemoteHDF5Facade:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ the facade API

    async def read_qmap(
        self, file_path: PathLike, group: str = "/xpcs/qmap", *, layout: str | None = None
    ) -> QMapSchema:
        """Read a q-map (see ``HDF5Facade.read_qmap``)."""
        return await self._run(calls.read_qmap(file_path, group, self.validate, layout))

    async def read_g2_data(
        self,
        file_path: PathLike,
        q_idx: int | None = None,
        group: str = "/xpcs/g2",
        *,
        layout: str | None = None,
    ) -> G2Data:
        """Read G2, optionally one q bin (see ``HDF5Facade.read_g2_data``)."""
        return await self._run(calls.read_g2_data(file_path, q_idx, group, self.validate, layout))

    async def read_c2(
        self, file_path: PathLike, q_idx: int, max_size: int | None = None
    ) -> npt.NDArray[np.float32]:
        """A two-time map of an APS 8-ID-I file (see ``HDF5Facade.read_c2``)."""
        return await self._run(calls.read_c2(file_path, q_idx, max_size))

    async def read_geometry_metadata(
        self, file_path: PathLike, group: str = "/xpcs/metadata", *, layout: str | None = None
    ) -> GeometryMetadata:
        """Read geometry (see ``HDF5Facade.read_geometry_metadata``)."""
        return await self._run(
            calls.read_geometry_metadata(file_path, group, self.validate, layout)
        )

    async def read_mask(
        self, file_path: PathLike, group: str = "/simplemask/mask", version: int | None = None
    ) -> MaskSchema:
        """Read a mask version (see ``HDF5Facade.read_mask``)."""
        return await self._run(calls.read_mask(file_path, group, version, self.validate))

    async def read_partition(
        self,
        file_path: PathLike,
        group: str = "/simplemask/partition",
        version: int | None = None,
    ) -> PartitionSchema:
        """Read a partition version (see ``HDF5Facade.read_partition``)."""
        return await self._run(calls.read_partition(file_path, group, version, self.validate))

    async def list_mask_versions(
        self, file_path: PathLike, group: str = "/simplemask/mask"
    ) -> list[VersionRecord]:
        """The versions of a mask group, oldest first."""
        return await self._run(calls.list_versions("mask", file_path, group))

    async def list_partition_versions(
        self, file_path: PathLike, group: str = "/simplemask/partition"
    ) -> list[VersionRecord]:
        """The versions of a partition group, oldest first."""
        return await self._run(calls.list_versions("partition", file_path, group))

    async def write_mask(
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
        """``RemoteHDF5Facade.write_mask`` for asyncio."""
        return await self._run(
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

    async def write_partition(
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
        """``RemoteHDF5Facade.write_partition`` for asyncio."""
        return await self._run(
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

    async def get_pool_stats(self) -> dict[str, Any]:
        """The server pool's statistics."""
        return await self._run(calls.pool_stats())

    async def clear_pool(self) -> None:
        """Close every handle in the server's pool (needs an admin key when keys are set)."""
        await self._run(calls.pool_clear())

    # ------------------------------------------------------------------ many files

    async def read_g2_data_many(
        self,
        file_paths: Sequence[PathLike],
        q_idx: int | None = None,
        group: str = "/xpcs/g2",
        *,
        layout: str | None = None,
    ) -> list[G2Data | Exception]:
        """G2 of many files in one round trip (see ``HDF5Facade.read_g2_data_many``)."""
        return await self._run(
            calls.read_g2_data_many(file_paths, q_idx, group, self.validate, layout)
        )

    async def read_qmap_many(
        self,
        file_paths: Sequence[PathLike],
        group: str = "/xpcs/qmap",
        *,
        layout: str | None = None,
    ) -> list[QMapSchema | Exception]:
        """The q-maps of many files in one round trip (see ``HDF5Facade.read_qmap_many``)."""
        return await self._run(calls.read_qmap_many(file_paths, group, self.validate, layout))

    # ------------------------------------------------------------------ viewer reads

    async def read_saxs_2d(self, file_path: PathLike, layout: str | None = None) -> Saxs2DData:
        """The SAXS 2-D image (see ``HDF5Facade.read_saxs_2d``)."""
        return await self._run(viewer_calls.read_saxs_2d(file_path, self.validate, layout))

    async def read_saxs_1d(self, file_path: PathLike, layout: str | None = None) -> Saxs1DData:
        """The SAXS 1-D curve and segments (see ``HDF5Facade.read_saxs_1d``)."""
        return await self._run(viewer_calls.read_saxs_1d(file_path, self.validate, layout))

    async def read_intensity_time(
        self, file_path: PathLike, layout: str | None = None
    ) -> IntensityTimeData:
        """Intensity vs time (see ``HDF5Facade.read_intensity_time``)."""
        return await self._run(viewer_calls.read_intensity_time(file_path, self.validate, layout))

    async def read_twotime_g2(
        self, file_path: PathLike, q_idx: int | None = None, layout: str | None = None
    ) -> G2Data:
        """G2 of the two-time result (see ``HDF5Facade.read_twotime_g2``)."""
        return await self._run(
            viewer_calls.read_twotime_g2(file_path, q_idx, self.validate, layout)
        )

    async def read_metadata(self, file_path: PathLike, layout: str | None = None) -> dict[str, Any]:
        """The flat metadata dict (see ``HDF5Facade.read_metadata``)."""
        return await self._run(viewer_calls.read_metadata(file_path, layout))

    async def list_files(self, prefix: str | None = None) -> list[dict[str, Any]]:
        """``RemoteHDF5Facade.list_files`` for asyncio."""
        return await self._run(viewer_calls.list_files(prefix))

    async def read_tree(self, file_path: PathLike) -> dict[str, Any]:
        """``RemoteHDF5Facade.read_tree`` for asyncio."""
        return await self._run(viewer_calls.read_tree(file_path))

    async def read_dataset(
        self, file_path: PathLike, path: str, selection: str | None = None
    ) -> Any:
        """``RemoteHDF5Facade.read_dataset`` for asyncio."""
        return await self._run(viewer_calls.read_dataset(file_path, path, selection))

    # ------------------------------------------------------------------ events

    async def watch(
        self,
        prefix: str | None = None,
        *,
        file_path: str | None = None,
        last_event_id: int | None = None,
        reconnect_delay: float = 1.0,
    ) -> AsyncGenerator[Event, None]:
        """``RemoteHDF5Facade.watch`` as an async iterator: ``async for event in
        client.watch("run42/"): ...``.

        Raises:
            PermissionError: no key, or a key without the read scope.
            ValueError: bad parameters.
        """
        state = EventWatch(self._headers, prefix, file_path, last_event_id, reconnect_delay)
        timeout = httpx.Timeout(self._timeout, read=max(self._timeout, 60.0))
        async with httpx.AsyncClient(timeout=timeout) as http:
            while True:
                try:
                    async with http.stream(
                        "GET",
                        self.base_url + "/v1/events",
                        params=state.params,
                        headers=state.headers(),
                    ) as response:
                        ctype = response.headers.get("content-type", "")
                        body = b"" if response.status_code == 200 else await response.aread()
                        if state.connected(response.status_code, ctype, body):
                            async for chunk in response.aiter_raw():
                                for event in state.events(chunk):
                                    yield event
                except httpx.TransportError:
                    pass  # reconnect below
                await asyncio.sleep(state.backoff())
