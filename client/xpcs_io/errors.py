"""The one exception tree of xpcs-io, shared by the local facade, the server and the client.

Every error a caller can see is a standard Python exception or a subclass of one, so code
written against the local ``HDF5Facade`` catches the same things remotely::

    Exception
     ├── HDF5ValidationError              stored data break a schema rule, or the file is not HDF5
     │    └── DatasetTooLargeError        a read would allocate more than the configured limit
     ├── ValueError
     │    ├── SchemaError                 a schema value breaks a rule (.field)
     │    ├── WireFormatError             bytes that are not valid msgpack (HTTP 400)
     │    └── PayloadTooLargeError        a request body above the server's limit (HTTP 413)
     ├── TypeError
     │    └── SchemaTypeError             a schema field of the wrong type (.field)
     ├── LookupError
     │    ├── KeyError                    a missing HDF5 group or dataset, or version
     │    └── IndexError                  q_idx out of range
     ├── OSError
     │    ├── FileNotFoundError           a missing file
     │    ├── PermissionError             a path outside the data root, or a missing/wrong API key
     │    ├── ConnectionError
     │    │    └── RemoteConnectionError  the server could not be reached (keeps the cause)
     │    ├── TimeoutError
     │    │    ├── WriteLockTimeout       another writer held the file's lock too long (HTTP 503)
     │    │    ├── RequestTimeoutError    the request body stalled; the server gave up (HTTP 408)
     │    │    └── ServerBusyError        the server holds too many answers right now (HTTP 503)
     │    ├── BlockingIOError
     │    │    └── FileBusyError          another program has the file open for writing, or it
     │    │                               changed during every read attempt (HTTP 423, retry)
     │    ├── FileMarkedOpenError         the file is marked open for writing but nobody holds
     │    │                               its lock: a crashed writer; ``h5clear -s`` (HTTP 409)
     │    ├── LockFileError               the write lock cannot be taken: its path is not a
     │    │                               regular file, or the filesystem refuses locks (409)
     │    └── InsufficientStorageError    the disk or quota is full; nothing changed (HTTP 507)
     └── ServerError                      the server failed (HTTP 5xx): never a client mistake

``ERROR_TABLE`` maps each class to its HTTP status and is the single source for both
directions: the server turns an exception into a status and a problem+json body naming the
class; the client turns that body back into the same class. This module imports nothing
heavier than the standard library.
"""

from __future__ import annotations

__all__ = [
    "CLIENT_ONLY",
    "ERROR_TABLE",
    "RETRYABLE",
    "DatasetTooLargeError",
    "FileBusyError",
    "FileMarkedOpenError",
    "HDF5ValidationError",
    "InsufficientStorageError",
    "LockFileError",
    "PayloadTooLargeError",
    "RemoteConnectionError",
    "RequestTimeoutError",
    "SchemaError",
    "SchemaTypeError",
    "ServerBusyError",
    "ServerError",
    "WireFormatError",
    "WriteLockTimeout",
    "exception_from_problem",
    "status_for",
]


class HDF5ValidationError(Exception):
    """Raised when HDF5 data fails schema validation, or the file is not readable HDF5.

    Attributes name where the problem is: ``file`` (as the caller named it), ``group`` and
    ``field`` (the schema field or dataset), each ``None`` when not applicable.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        group: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.file = file
        self.group = group
        self.field = field


class SchemaError(ValueError):
    """A schema value breaks a validation rule; ``field`` names the offending field."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class SchemaTypeError(TypeError):
    """A schema field has the wrong type; ``field`` names it."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class WireFormatError(ValueError):
    """Bytes that do not decode as msgpack at all (malformed, truncated, too deep)."""


class PayloadTooLargeError(ValueError):
    """A request body larger than the server accepts."""


class RemoteConnectionError(ConnectionError):
    """The server could not be reached or the connection broke; ``__cause__`` keeps why."""


class WriteLockTimeout(TimeoutError):  # noqa: N818  (reads as its parent, TimeoutError)
    """Another writer held the file's write lock for longer than the configured timeout."""


class ServerError(Exception):
    """The server failed while handling a valid request (HTTP 5xx)."""

    def __init__(self, message: str, *, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


class FileBusyError(BlockingIOError):
    """Another program has the file open for writing (it holds HDF5's file lock, or the file
    is being written in place): retry later. Never a sign of a damaged file."""


class FileMarkedOpenError(OSError):
    """The file's superblock says it is open for writing, but no program holds its lock: a
    writer crashed (or writes without HDF5's file locking). If nothing is writing it, clear the
    mark with ``h5clear -s FILE``."""


class LockFileError(OSError):
    """The service's write lock for the file cannot be taken: the lock path is not a regular
    file (a folder, a symlink), or the filesystem refuses locks while locking is ``on``."""


class InsufficientStorageError(OSError):
    """A write failed because the disk (or the quota) is full; the file was left unchanged."""


class DatasetTooLargeError(HDF5ValidationError):
    """Reading a dataset (or the asked selection of it) would allocate more bytes than the
    configured read limit (``XPCS_IO_MAX_READ_BYTES``); the message names the dataset, its
    declared shape, dtype and size. The file may be fine: it is simply too large to read
    whole (HTTP 422)."""


class RequestTimeoutError(TimeoutError):
    """The server stopped waiting for a request body that stalled or crawled (HTTP 408)."""


class ServerBusyError(TimeoutError):
    """The server holds as many answers for slow readers as it may: retry shortly (HTTP 503,
    retried by the client for reads)."""


# Most specific first: the first ``isinstance`` match decides the status.
ERROR_TABLE: tuple[tuple[type[BaseException], int], ...] = (
    (DatasetTooLargeError, 422),
    (RequestTimeoutError, 408),
    (ServerBusyError, 503),
    (HDF5ValidationError, 422),
    (SchemaError, 422),
    (SchemaTypeError, 422),
    (WireFormatError, 400),
    (PayloadTooLargeError, 413),
    (FileNotFoundError, 404),
    (PermissionError, 403),
    (WriteLockTimeout, 503),
    (KeyError, 404),
    (IndexError, 422),
    (ValueError, 422),
    (TypeError, 422),
    (ServerError, 500),
    (FileBusyError, 423),
    (FileMarkedOpenError, 409),
    (LockFileError, 409),
    (InsufficientStorageError, 507),
)

#: Errors a caller may simply retry later; the server answers them with ``Retry-After``.
RETRYABLE: tuple[type[BaseException], ...] = (FileBusyError, WriteLockTimeout)

# Raised by the client itself, never sent by a server, so they have no status.
CLIENT_ONLY: tuple[type[BaseException], ...] = (RemoteConnectionError,)

_BY_NAME: dict[str, type[BaseException]] = {cls.__name__: cls for cls, _ in ERROR_TABLE}


def status_for(exc: BaseException) -> int | None:
    """Return the HTTP status for ``exc``, or ``None`` when it is not a client-facing error."""
    for cls, status in ERROR_TABLE:
        if isinstance(exc, cls):
            return status
    return None


def exception_from_problem(
    name: str | None, detail: str, *, status: int, field: str | None = None
) -> BaseException:
    """Rebuild the exception a problem+json body describes.

    Only classes of ``ERROR_TABLE`` are ever built (never an arbitrary name from the wire).
    An unknown name falls back on the status: 404 -> ``KeyError``, 401/403 ->
    ``PermissionError``, 413 -> ``PayloadTooLargeError``, 400 and other 4xx -> ``ValueError``,
    5xx -> ``ServerError``.
    """
    cls = _BY_NAME.get(name or "")
    if cls is None:
        if status >= 500:
            return ServerError(detail, status=status)
        if status == 404:
            cls = KeyError
        elif status in (401, 403):
            cls = PermissionError
        elif status == 413:
            cls = PayloadTooLargeError
        else:
            cls = ValueError
    if cls is HDF5ValidationError or cls is DatasetTooLargeError:
        return cls(detail, field=field)
    if cls is SchemaError:
        return SchemaError(detail, field=field)
    if cls is SchemaTypeError:
        return SchemaTypeError(detail, field=field)
    if cls is ServerError:
        return ServerError(detail, status=status)
    return cls(detail)
