"""Programs around the core: the ``xpcs-io`` command, file inspection and demo data writers.

Nothing in the HDF5 core (``xpcs_io.pool``, ``xpcs_io.facade``, ``xpcs_io.layouts``, ...)
imports from here.
"""
