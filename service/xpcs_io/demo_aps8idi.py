"""Demo files in the APS 8-ID-I NeXus layout: kept here for scripts written against this path.

The writers live in ``xpcs_io.tools.demo_aps8idi``.
"""

from xpcs_io.tools.demo_aps8idi import write_aps8idi_file, write_pysimplemask_file

__all__ = ["write_aps8idi_file", "write_pysimplemask_file"]
