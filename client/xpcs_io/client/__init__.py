"""The xpcs-io HTTP client: ``RemoteHDF5Facade`` (blocking) and ``AsyncRemoteHDF5Facade``.

Both mirror ``HDF5Facade``: same methods, parameters, defaults, return types and exceptions.
This package needs only numpy, msgpack and httpx.
"""

from xpcs_io.client.aio import AsyncRemoteHDF5Facade
from xpcs_io.client.core import RetryPolicy
from xpcs_io.client.sync import RemoteHDF5Facade
from xpcs_io.errors import RemoteConnectionError

__all__ = ["AsyncRemoteHDF5Facade", "RemoteConnectionError", "RemoteHDF5Facade", "RetryPolicy"]
