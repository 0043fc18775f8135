"""Demo files in the facade's layout: kept here for scripts written against this path.

The writers live in ``xpcs_io.tools.demo``.
"""

from xpcs_io.tools.demo import (
    DETECTORS,
    DemoSpec,
    multitau_delays,
    write_demo_dir,
    write_native_file,
)

__all__ = ["DETECTORS", "DemoSpec", "multitau_delays", "write_demo_dir", "write_native_file"]
