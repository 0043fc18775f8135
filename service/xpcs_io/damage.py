"""How the facade tells a damaged file from a caller's mistake when HDF5 fails.

Errors that already say precisely what is wrong (``PASS_THROUGH``) are never re-labelled;
an HDF5 library failure on a file that did not change while it was read means its bytes are
damaged (``damage_error``), answered as ``HDF5ValidationError`` naming the file.
"""

from __future__ import annotations

from xpcs_io.errors import (
    FileBusyError,
    FileMarkedOpenError,
    HDF5ValidationError,
    InsufficientStorageError,
    LockFileError,
    SchemaError,
    SchemaTypeError,
    WriteLockTimeout,
)

__all__ = ["PASS_THROUGH", "damage_error"]

# Errors that already say precisely what is wrong: never re-labelled as damage.
PASS_THROUGH = (
    LookupError,
    FileNotFoundError,
    PermissionError,
    FileBusyError,
    FileMarkedOpenError,
    LockFileError,
    InsufficientStorageError,
    WriteLockTimeout,
    HDF5ValidationError,
    SchemaError,
    SchemaTypeError,
)


def _is_damage_key(text: str) -> bool:
    missing = ("not found", "doesn't exist", "does not exist", "no such")
    return "Unable to" in text and not any(m in text.lower() for m in missing)


def damage_error(exc: Exception, display: str) -> HDF5ValidationError | None:
    """The error to answer for an HDF5 library failure while reading a file that did not
    change: its bytes are damaged. ``None`` for anything else (the caller's mistakes)."""
    if isinstance(exc, KeyError) and _is_damage_key(str(exc)):
        # h5py raises KeyError for every failure to open an object, damage included.
        return HDF5ValidationError(
            f"{display} is damaged: HDF5 cannot read it ({str(exc).strip(chr(39))})",
            file=display,
        )
    if isinstance(exc, OSError | RuntimeError | SystemError | OverflowError):
        reason = str(exc).split("(", 1)[-1].rstrip(")") if "(" in str(exc) else str(exc)
        return HDF5ValidationError(
            f"{display} is damaged: HDF5 cannot read it ({reason or type(exc).__name__})",
            file=display,
        )
    if type(exc) in (ValueError, TypeError) and _raised_in_h5py(exc):
        # e.g. a datatype h5py cannot map to numpy: a bad file, not a bad request.
        return HDF5ValidationError(f"{display}: HDF5 cannot read it ({exc})", file=display)
    return None


def _raised_in_h5py(exc: BaseException) -> bool:
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return last is not None and ("/h5py/" in last or last.startswith("h5py/"))
